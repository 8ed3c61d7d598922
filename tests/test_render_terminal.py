"""The rich terminal report (`torchtrace show`): module tree, op histogram,
witnesses; names are printed verbatim, never as rich markup."""
from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import torchtrace
import zoo
from torchtrace.errors import UsageError
from torchtrace.renderers.terminal import print_graph, renderable, terminal_view


def test_tree_counts_and_folds(viz_graph):
    out = torchtrace.render(viz_graph("gpt2_12"), "terminal")
    assert "h.0…11 GPT2Block × 12  39 ops · 12.7k params · → f32[1,8,32] · saved" in out
    assert out.count("GPT2Block") == 1
    assert "attn GPT2Attention" in out and "c_attn Conv1D" in out  # all levels by default
    assert "saved for backward" in out.splitlines()[1]
    assert "ops (forward)" in out and "│" in out


def test_depth_limits_the_tree(viz_graph):
    out = torchtrace.render(viz_graph("gpt2_12"), "terminal", depth=1)  # depth 1: the root's children
    assert "GPT2Block" not in out and "transformer GPT2Model" in out
    assert "h.0…11 GPT2Block × 12" in torchtrace.render(viz_graph("gpt2_12"), "terminal", depth=2)


def test_backward_tree(viz_graph):
    out = torchtrace.render(viz_graph("gpt2_2"), "terminal", phase="both")
    assert "GPT2Block × 2 [backward]" in out and "h.1…0" in out


def test_histogram_and_witnesses(viz_graph):
    out = torchtrace.render(viz_graph("branchy"), "terminal")
    hist = out[out.index("ops (forward)"):]
    assert "_local_scalar_dense" in hist
    wit = out[out.index("witnesses"):]
    rows = [ln for ln in wit.splitlines() if "in Branchy.forward" in ln]
    lines = {zoo.marker_line(m) for m in ("if", "item", "while")}
    assert {int(re.search(r"zoo\.py:(\d+) in", ln).group(1)) for ln in rows} == lines
    assert any("True" in r for r in rows) and any("False" in r for r in rows)
    assert all(r.rstrip().endswith("<root>") for r in rows)  # read in the root model's own forward


def test_a_read_outside_any_module_call_is_not_the_root_s():
    """A read in the training loop (an optimizer's, a logged loss) sat in a row
    whose module said `<root>` though the pass had no module call around it."""
    import torch

    m = torch.nn.Linear(2, 1)
    with torchtrace.trace(m) as t:
        loss = m(torch.ones(1, 2)).sum()
        loss.item()
    out = torchtrace.render(t.graph, "terminal", phase="both")
    [row] = [ln for ln in out[out.index("witnesses"):].splitlines() if "_local_scalar_dense" in ln]
    assert row.rstrip().endswith("-") and "<root>" not in row, row


def test_names_are_not_markup(viz_graph):
    out = torchtrace.render(viz_graph("hostile"), "terminal", fold=False)
    assert "blocks.[red]x[/red] Linear" in out
    assert 'weird Weird<T> & "Q"' in out
    assert "blocks.new\u23celine Linear" in out  # a line break in a name keeps the tree on one line per call


def test_renderable_prints_to_a_console(viz_graph):
    buf = io.StringIO()
    print_graph(viz_graph("cell_loop"), Console(file=buf, width=120, color_system=None))
    assert "loop conftest.py:" in buf.getvalue() and "× 6" in buf.getvalue()
    assert terminal_view is renderable


def test_bad_width():
    with pytest.raises(UsageError, match="width"):
        torchtrace.render(torchtrace.Graph(), "terminal", width=10)


class _WhileOverLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i < 3 and x.sum() > -1e9:  # a loop with a read: its body is several items
            x = self.layers[i](x).tanh()
            i += 1
        return x


def test_a_loop_over_other_modules_names_them_all_and_a_focus_is_said():
    """The tree named only the loop's first module (`layers.0 Linear`), where the
    drawings name `layers.0…2`; a focused report did not say why ops were missing."""
    m = _WhileOverLayers()
    x = torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        m(x)
    out = torchtrace.render(t.graph, "terminal", width=120)
    assert "layers.0…2 Linear" in out and "layers.0 Linear" not in out
    focused = torchtrace.render(t.graph, "terminal", width=120, focus="layers.1").splitlines()[2]
    assert focused.startswith("showing phase forward: ") and "in focus 'layers.1': 1 call(s)" in focused


def test_a_call_s_outputs_are_listed_in_the_order_it_returned_them():
    """`return logits, mask` with the mask computed first read "→ b8[2,4], f32[2,4]"."""
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            mask = x > 0
            return self.lin(x), mask

    m = M()
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 4))
    [row] = [line for line in torchtrace.render(t.graph, "terminal").splitlines() if "<root>" in line]
    assert "→ f32[2,4], b8[2,4]" in row, row


def test_an_empty_view_says_there_is_nothing_to_draw():
    """`show --phase backward` of a forward pass printed an empty module tree and
    an empty table; the diagrams say "nothing to draw" (README)."""
    m = torch.nn.Linear(3, 2)
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(torch.ones(1, 3))
    text = torchtrace.render(t.graph, "terminal", phase="backward")
    assert "nothing to draw: no ops in this view" in text and "module calls" not in text.split("\n", 3)[-1]
    assert "nothing to draw" not in torchtrace.render(t.graph, "terminal")


def test_a_recompute_group_counts_the_parameters_it_reads():
    """Checkpoint's recompute re-runs forward code that reads the block's
    parameters: its group showed no count, forward and backward groups did."""
    from torch.utils.checkpoint import checkpoint

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Linear(4, 4)

        def forward(self, x):
            return checkpoint(self.block, x, use_reentrant=False).sum()

    m = Net()
    with torchtrace.trace(m) as t:
        m(torch.ones(2, 4, requires_grad=True)).backward()
    text = torchtrace.render(t.graph, "terminal", phase="backward", width=160)
    [line] = [ln for ln in text.splitlines() if "[recompute]" in ln]
    assert "16 params" in line, line  # (it re-ran only `t` of the weight: what backward saved)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.l(x))


class _EncDec(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.ModuleList([_Block() for _ in range(3)])
        self.dec = _Block()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.enc:
            x = b(x)
        return self.head(self.dec(x))


def test_a_fold_names_every_module_it_holds():
    """Three encoder blocks and a decoder block of one type, in a row, fold into one
    box: it read `enc.0 (+3 more)`, as if the decoder were a fourth encoder block."""
    m = _EncDec()
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 4))
    text = torchtrace.render(t.graph, "text")
    assert "enc.0…2, dec · _Block × 4" in text and "(+3 more)" not in text
    assert "enc.0…2, dec _Block × 4" in torchtrace.render(t.graph, "terminal", width=160)


def test_a_folded_run_of_blocks_that_saved_different_bytes_gives_the_range():
    """Four Linear+ReLU blocks: the first also saves the input they share (each
    storage is counted once per pass), 64 B against 32 B. The folded line said
    "saved 64 B each" (256 B, more than the root's 160 B): it gives the range."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()) for _ in range(4)])
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 4)).sum().backward()
    text = torchtrace.render(t.graph, "terminal", depth=1)
    assert "saved 160 B" in text and "× 4" in text
    assert "saved 32 B–64 B each" in text, text
    unfolded = torchtrace.render(t.graph, "terminal", depth=1, fold=False)
    assert [int(b) for b in re.findall(r"saved (\d+) B", unfolded)] == [160, 64, 32, 32, 32]


def test_an_optimizer_view_has_no_empty_module_heading_and_names_the_hidden_tags():
    """(A 2026-11-28 audit.) Optimizer ops run outside any module call: the report
    printed a "module calls" heading with nothing under it, and called the hidden
    `record_function` markers "bookkeeping ops"."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4)).sum().backward()
        opt.step()
    text = torchtrace.render(t.graph, "terminal", phase="optimizer")
    assert "\nmodule calls" not in text and "add_.Tensor" in text
    assert "showing phase optimizer: 4 ops (2 ops tagged annotation hidden)" in text
    forward = torchtrace.render(t.graph, "terminal", phase="backward")
    assert "\nmodule calls" in forward and "tagged autograd_internal hidden" in forward
