"""views: collapse to a depth, fold repeated blocks and loops, phase filter,
hidden bookkeeping, focus -- on recorded models and on small hand-built graphs."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

import pytest

import torchtrace
from torchtrace.errors import UsageError
from torchtrace.ir import Graph, ModuleCall, Node, Source, Value
from torchtrace.views import Box, Cluster, build_view


# -- hand-built graphs (no torch) ----------------------------------------------------------------
def make_graph(ops: Sequence[Tuple[str, Sequence[int], int]], *, modules: Sequence[Tuple[str, str, Optional[str]]] = (),
               module_of: Optional[Sequence[Optional[str]]] = None, tags: Optional[Sequence[Tuple[str, ...]]] = None,
               phases: Optional[Sequence[str]] = None) -> Graph:
    """ops[k] = (op, input op indices (-1: the graph input), source line); op k makes value v{k+1}."""
    values = [Value("v0", (2, 3), "float32", role="input", name="x")]
    nodes = []
    for k, (op, ins, line) in enumerate(ops):
        values.append(Value(f"v{k + 1}", (2, 3), "float32"))
        nodes.append(Node(f"n{k}", f"aten.{op}.default", tuple(f"v{i + 1}" for i in ins), (f"v{k + 1}",),
                          phase=phases[k] if phases else "forward",
                          module=module_of[k] if module_of else None, source=Source("/x/model.py", line, "f"),
                          tags=tags[k] if tags else ()))
    mods = tuple(ModuleCall(mid, path, typ, 0, parent) for mid, (path, typ, parent) in
                 zip([f"m{i}" for i in range(len(modules))], modules))
    return Graph(meta={}, modules=mods, values=tuple(values), nodes=tuple(nodes), outputs=(f"v{len(ops)}",))


def titles(view) -> List[str]:
    return [b.title for b in view.boxes] + [c.title for c in view.clusters]


# -- folding ---------------------------------------------------------------------------------------
def test_12_layer_default_view_shows_the_block_once(viz_graph):
    view = build_view(viz_graph("gpt2_12"))
    blocks = [t for t in titles(view) if "GPT2Block" in t]
    assert blocks == ["h.0…11 · GPT2Block × 12"]
    drawn = [ln for ln in torchtrace.render(viz_graph("gpt2_12"), "text").splitlines() if not ln.startswith("#")]
    assert sum("GPT2Block" in ln for ln in drawn) == 1
    assert any(n == "folded h.0…11 GPT2Block × 12" for n in view.notes)


def test_default_view_does_not_grow_with_layers(viz_graph):
    sizes = {n: (len(v.boxes), len(v.edges)) for n in (2, 12, 48)
             for v in [build_view(viz_graph(f"gpt2_{n}"))]}
    assert sizes[2] == sizes[12] == sizes[48]
    assert sizes[48][0] <= 50


def test_fold_off_draws_every_block(viz_graph):
    view = build_view(viz_graph("gpt2_12"), fold=False, depth=2)
    blocks = [b for b in view.boxes if b.kind == "module" and "GPT2Block" in b.title]
    assert [b.title for b in blocks] == [f"h.{k} · GPT2Block" for k in range(12)]
    assert not view.stats["folds"]


def test_backward_blocks_fold_in_reverse_order(viz_graph):
    view = build_view(viz_graph("gpt2_12"), phase="backward", depth=2)
    assert [b.title for b in view.boxes if "GPT2Block" in b.title] == ["h.11…0 · GPT2Block × 12"]


def test_python_loop_over_a_module_folds(viz_graph):
    view = build_view(viz_graph("cell_loop"))
    loops = [c for c in view.clusters if c.kind == "loop"]
    assert len(loops) == 1 and loops[0].repeat == 6 and loops[0].title.endswith("× 6")
    assert loops[0].note == "index differs"  # (x[:, t])
    assert sum("LSTMCell" in t for t in titles(view)) == 1
    [wit] = [b for b in view.boxes if b.witness]
    assert wit.lines[0] in ("read True", "read False") and wit.lines[1].startswith("conftest.py:")


def test_a_fold_of_blocks_that_ran_with_other_arguments_says_which_differ(viz_graph, dot_check):
    """A conv stack with dilations 1, 2, 4, 8 folded into "Block x 4" as if the
    four blocks were the same; GPT-2's blocks, which are, get no note."""
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.conv, self.act = nn.Conv1d(4, 4, 3, padding=d, dilation=d), nn.LeakyReLU(0.1 * d)

        def forward(self, x):
            return x + self.act(self.conv(x))

    m = nn.Sequential(*[Block(d) for d in (1, 2, 4, 8)])
    with torchtrace.trace(m) as t:
        m(torch.randn(1, 4, 32))
    for depth in (1, 2):  # a frame around the block's ops; a collapsed box
        view = build_view(t.graph, depth=depth)
        said = [c.note for c in view.clusters if c.repeat == 4] + [
            line for b in view.boxes if b.repeat == 4 for line in b.lines if "differ" in line]
        assert said == ["padding, dilation, negative_slope differ"], (depth, said)
    assert "padding, dilation, negative_slope differ" in torchtrace.render(t.graph, "text")
    assert "padding, dilation, negative#95;slope differ" in torchtrace.render(t.graph, "mermaid")
    assert "padding, dilation, negative_slope differ" in dot_check(torchtrace.render(t.graph, "dot"))
    gpt2 = build_view(viz_graph("gpt2_2"))
    assert any(c.repeat == 2 for c in gpt2.clusters) or any(b.repeat == 2 for b in gpt2.boxes)
    assert not any(c.note for c in gpt2.clusters) and not any("differ" in x for b in gpt2.boxes for x in b.lines)


def test_loop_of_plain_ops_folds(viz_graph):
    view = build_view(viz_graph("rnn"))
    [loop] = [c for c in view.clusters if c.kind == "loop"]
    assert loop.repeat == 50
    assert sorted(b.title for b in view.boxes if b.kind == "op" and b.cluster == loop.id) == [
        "add.Tensor", "mm", "mm", "select.int", "tanh"]


def test_equal_neighbours_that_are_not_chained_stay_apart():
    # q/k/v-like: three independent (view, transpose) pairs at one line: not a loop
    ops = [("view", [-1], 5), ("transpose", [0], 5), ("view", [-1], 5), ("transpose", [2], 5),
           ("view", [-1], 5), ("transpose", [4], 5), ("cat", [1, 3, 5], 6)]
    view = build_view(make_graph(ops))
    assert not view.clusters and not view.stats["folds"]


def test_attention_qkv_reshapes_are_not_a_loop(viz_graph):
    # nn.MultiheadAttention: every op has the caller's line; q/k/v look alike but are not a loop
    view = build_view(viz_graph("transformer_encoder"), depth=5)
    assert [c.title for c in view.clusters if c.kind == "loop"] == []
    assert "layers.0…1 · TransformerEncoderLayer × 2" in titles(view)


def test_four_independent_repeats_fold():
    ops = [(("view", "transpose")[k % 2], [-1] if k % 2 == 0 else [k - 1], 5) for k in range(8)]
    ops.append(("cat", [1, 3, 5, 7], 6))
    view = build_view(make_graph(ops))
    [loop] = view.clusters
    assert loop.kind == "loop" and loop.repeat == 4


def test_chained_op_repeats_fold_into_one_box():
    ops = [("add", [k - 1], 9) for k in range(10)]
    view = build_view(make_graph(ops))
    [op] = [b for b in view.boxes if b.kind == "op"]
    assert op.title == "add × 10" and op.repeat == 10


def test_fold_keeps_edges_from_outside_into_every_iteration():
    # x feeds every iteration; the recurrence is drawn once, not as a back edge
    ops = [("zeros", [], 2)] + [("mul", [-1, k], 3) for k in range(5)]
    view = build_view(make_graph(ops))
    assert [b.title for b in view.boxes if b.kind == "op"] == ["zeros", "mul × 5"]
    assert {(e.src, e.dst) for e in view.edges} == {("n0", "n1"), ("v:v0", "n1"), ("n1", "out:v6")}


def test_parameters_drawn_for_a_fold_are_named_for_every_block_it_stands_for():
    """Eval ``nn.TransformerEncoder`` runs one fused op per layer, so its folded
    box takes layer 0's parameters as inputs: they read ``layers.0.norm1.weight``
    beside "layers.0…2 × 3". Same for a loop over one-op modules."""
    import torch

    class Norms(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(4) for _ in range(3)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for n in self.norms:
                x = torch.tanh(n(x))
            return x

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    norms = Norms()
    for model, block, x in ((enc, enc.layers, torch.randn(1, 5, 16)), (norms, norms.norms, torch.randn(2, 4))):
        with torch.no_grad(), torchtrace.trace(model) as t:
            model(x)
        params = sorted(b.title for b in build_view(t.graph).boxes if b.kind == "param")
        head = "layers" if model is enc else "norms"
        assert params == sorted(f"{head}.0…2.{n}" for n, _ in block[0].named_parameters()), params

    stack = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])  # an optimizer's loop over parameters
    opt = torch.optim.AdamW(stack.parameters(), lr=1e-3, foreach=False)
    with torchtrace.trace(stack) as t:
        stack(torch.randn(2, 8)).sum().backward()
        opt.step()
    view = build_view(t.graph, phase="optimizer")
    assert [c.repeat for c in view.clusters if c.kind == "loop"] == [4, 4], view.clusters
    assert sorted(b.title for b in view.boxes if b.kind == "param") == ["0…3.bias", "0…3.weight"]

    class Outer(torch.nn.Module):  # (a frame around folded one-op blocks: `body`, not one of theirs)
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(*[torch.nn.Conv2d(2, 2, 3, padding=1) for _ in range(4)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    outer = Outer()
    with torch.no_grad(), torchtrace.trace(outer) as t:
        outer(torch.randn(1, 2, 5, 5))
    assert sorted(b.title for b in build_view(t.graph).boxes if b.kind == "param") == ["0…3.bias", "0…3.weight"]


def test_the_inputs_of_a_fold_are_named_for_every_repeat():
    """One encoder applied to four inputs folds into `enc × 4`: only the first
    repeat's input (`a`) was drawn, `b`..`d` nowhere, with no word of them."""
    import torch

    class MultiView(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def forward(self, a, b, c, d):
            return torch.stack([self.enc(v) for v in (a, b, c, d)]).mean(0)

    m, xs = MultiView(), [torch.randn(2, 4) for _ in range(4)]
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(*xs)
    view = build_view(t.graph)
    assert any(c.repeat == 4 for c in view.clusters), view.clusters
    assert [b.title for b in view.boxes if b.kind == "input"] == ["a (+3 more)"]


# -- depth ---------------------------------------------------------------------------------------
def test_depth_zero_is_one_box(viz_graph):
    view = build_view(viz_graph("bert"), depth=0)
    [mod] = [b for b in view.boxes if b.kind == "module"]
    assert mod.title == "BertModel" and not view.clusters
    assert mod.lines[0].startswith(f"{len(view_nodes(viz_graph('bert')))} ops")


def view_nodes(g):
    return [n for n in g.nodes if "autograd_internal" not in n.tags and n.phase == "forward"]


def test_depth_counts_from_the_root(viz_graph):
    g = viz_graph("bert")
    one = build_view(g, depth=1)
    assert [c.title for c in one.clusters] == ["BertModel"]
    assert {b.title for b in one.boxes if b.kind == "module"} == {
        "embeddings · BertEmbeddings", "encoder · BertEncoder", "pooler · BertPooler"}
    sizes = [len(build_view(g, depth=d, fold=False).boxes) for d in range(6)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_collapsed_box_says_what_is_inside(viz_graph):
    view = build_view(viz_graph("gpt2_2"), depth=2)
    [block] = [b for b in view.boxes if "GPT2Block" in b.title]
    assert block.kind == "module" and block.repeat == 2
    assert block.lines[0] == "39 ops · 12.7k params"  # eval mode: no dropout
    assert block.lines[1] == "f32[1,8,32] → f32[1,8,32]"
    assert len(block.nodes) == 39


def test_auto_depth_fits_the_budget(viz_graph):
    for name in ("gpt2_2", "bert", "t5", "transformer_encoder", "resnet_block", "cell_loop"):
        view = build_view(viz_graph(name))
        assert len(view.boxes) <= 50, name
        bigger = build_view(viz_graph(name), depth=view.options["depth"] + 1)
        assert len(bigger.boxes) > 50 or bigger.boxes == view.boxes or view.options["depth"] >= 5, name


def test_one_op_module_is_one_box_not_a_frame(viz_graph):
    view = build_view(viz_graph("gpt2_2"))
    [wte] = [b for b in view.boxes if b.title == "wte · Embedding"]
    assert wte.kind == "op" and wte.lines == ("embedding → f32[1,8,32]",)
    assert "wte · Embedding" not in [c.title for c in view.clusters]


def test_a_small_flat_graph_is_chunked_by_source_line_not_in_pairs():
    """60 ops from 20 lines, 3 a line: the default view cut them into chunks of
    2 ops each, pairing ops of two lines; a chunk is now a line's ops."""
    ops = [(("mul", "add", "sub")[k % 3], [k - 1], 10 + k // 3) for k in range(60)]
    view = build_view(make_graph(ops))
    assert len(view.boxes) <= 50
    chunks = [b for b in view.boxes if b.kind == "chunk"]
    assert len(chunks) == 20 and all(len(b.nodes) == 3 for b in chunks)
    by_id = {f"n{k}": 10 + k // 3 for k in range(60)}
    assert all(len({by_id[n] for n in b.nodes}) == 1 for b in chunks)


def test_huge_flat_graph_is_chunked():
    ops = [("add" if k % 3 else "mul", [k - 1], 10 + k) for k in range(3000)]
    view = build_view(make_graph(ops))
    assert len(view.boxes) <= 50
    chunks = [b for b in view.boxes if b.kind == "chunk"]
    assert chunks and sum(len(b.nodes) for b in chunks) >= 2900
    assert any("chunk" in n for n in view.notes)
    assert len(build_view(make_graph(ops), depth=0).boxes) > 3000  # an explicit depth is honoured


# -- phase, hide, focus ----------------------------------------------------------------------------
def test_phase_filter(viz_graph):
    g = viz_graph("gpt2_2")
    fwd, bwd, both = (build_view(g, phase=p) for p in ("forward", "backward", "both"))
    drawn = lambda v: {b.phase for b in v.boxes if b.kind in ("op", "module")}  # noqa: E731
    assert drawn(fwd) == {"forward"} and drawn(bwd) == {"backward"} and drawn(both) == {"forward", "backward"}
    n_bwd = sum(n.phase != "forward" for n in g.nodes)
    assert f"phase forward: {n_bwd} ops of other phases not shown" in fwd.notes
    assert build_view(g).options["phase"] == "forward"
    assert {c.title for c in both.clusters if c.phase == "backward"} >= {"GPT2LMHeadModel · backward"}


def test_backward_view_marks_forward_values():
    ops = [("mul", [-1], 1), ("mul_backward", [0], 1)]
    g = make_graph(ops, phases=["forward", "backward"])
    view = build_view(g, phase="backward")
    assert [b.title for b in view.boxes if b.kind == "input"] == ["forward value"]


def test_a_backward_box_counts_the_parameters_whose_gradients_it_computes():
    """Its ops read saved tensors, not parameters: boxes said "16 ops" with no
    params. Each backward box counts what its forward call read, as the
    forward box does; the terminal tree says the same."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                            torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)))
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4)).sum().backward()
    want = {name: sum(p.numel() for p in sub.parameters()) for name, sub in (("0", m[0]), ("2", m[2]))}
    for phase in ("forward", "backward"):
        boxes = {b.title.split(" · ")[0]: b for b in build_view(t.graph, phase=phase, depth=1).boxes
                 if b.kind == "module"}
        assert {k: boxes[k].lines[0].split(" · ")[1] for k in want} == {k: f"{n} params" for k, n in want.items()}
    tree = torchtrace.render(t.graph, "terminal", phase="backward")
    assert all(re.search(rf"^\W*{k} \w+ \[backward\]  \d+ ops · {n} params", tree, re.M)
               for k, n in want.items()), tree


def test_bookkeeping_is_hidden_but_dataflow_kept():
    ops = [("tanh", [-1], 1), ("detach", [0], 1), ("mul", [1], 2)]
    g = make_graph(ops, tags=[(), ("view", "autograd_internal"), ()])
    view = build_view(g)
    assert [b.title for b in view.boxes if b.kind == "op"] == ["tanh", "mul"]
    assert ("n0", "n2") in {(e.src, e.dst) for e in view.edges}
    assert [b.title for b in build_view(g, hide=()).boxes if b.kind == "op"] == ["tanh", "detach", "mul"]


def test_focus_on_a_module(viz_graph):
    g = viz_graph("gpt2_2")
    view = build_view(g, focus="transformer.h.1.attn", depth=1)
    attn = {m.id for m in g.modules if m.path.startswith("transformer.h.1.attn")}
    shown = {nid for b in view.boxes for nid in b.nodes}
    assert shown and all(g.node(nid).module in attn for nid in shown)
    assert [b.title for b in view.boxes if b.kind == "input"] == ["input"]
    assert view.clusters[0].title == "transformer.h.1.attn · GPT2Attention"


def _ops_of_a_step(opt) -> int:
    """The ops ``opt.step()`` runs, counted by a dispatch mode of the test's own
    (the step's own profiler markers update no parameter)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.namespace != "profiler"
            return func(*args, **(kwargs or {}))

    with Count():
        opt.step()
    return Count.n


def test_focus_with_phase_optimizer_shows_the_updates_of_its_parameters():
    """Optimizer ops run in no module call: a focus on a module with
    ``phase="optimizer"`` was empty. It shows the ops that update the module's
    parameters: as many as an Adam step over those parameters alone runs."""
    import torch
    import torch.nn as nn

    def step(params):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))
        m(torch.randn(3, 4)).sum().backward()
        return m, torch.optim.Adam(params(m), foreach=False)

    m, opt = step(lambda m: m.parameters())
    with torchtrace.trace(m) as t:
        m(torch.randn(3, 4)).sum().backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1e9)  # (reads every gradient: the root's alone)
        opt.step()
    g = t.graph
    shown = {}
    for focus in ("2.1", "2", "0"):
        view = build_view(g, focus=focus, phase="optimizer")
        shown[focus] = {nid for b in view.boxes for nid in b.nodes}
    n = _ops_of_a_step(step(lambda m: m[2][1].parameters())[1])
    assert len(shown["2.1"]) == n > 0
    assert shown["2.1"] < shown["2"] and not shown["2"] & shown["0"] and len(shown["0"]) == n
    assert all(g.node(n).phase == "optimizer" for ids in shown.values() for n in ids)
    root = {nid for b in build_view(g, focus="", phase="optimizer").boxes for nid in b.nodes}
    assert root == {nid for b in build_view(g, phase="optimizer").boxes for nid in b.nodes} > shown["2"] | shown["0"]
    forward = {nid for b in build_view(g, focus="2.1").boxes for nid in b.nodes}  # (forward: as before)
    assert forward and all(g.module(g.node(n).module).path == "2.1" for n in forward)


def test_focus_with_phase_optimizer_shows_the_updates_of_a_tied_weight():
    """GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``, named by the module
    that registered it first: a focus on ``lm_head`` with ``phase="optimizer"``
    showed none of its updates. It shows the updates of the parameters the focus
    reads: an AdamW step over that one weight."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def step(params):
        torch.manual_seed(0)
        m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
        x = torch.randint(0, 50, (1, 6))
        m(x, labels=x).loss.backward()
        return m, x, torch.optim.AdamW(params(m), foreach=False)

    m, x, opt = step(lambda m: m.parameters())
    assert m.lm_head.weight is m.transformer.wte.weight
    with torchtrace.trace(m) as t:
        m(x, labels=x).loss.backward()
        opt.step()
    g = t.graph
    shown = {f: {nid for b in build_view(g, focus=f, phase="optimizer").boxes for nid in b.nodes}
             for f in ("lm_head", "transformer.wte", "transformer.wpe")}
    n = _ops_of_a_step(step(lambda m: [m.transformer.wte.weight])[2])
    assert len(shown["lm_head"]) == n > 0 and shown["lm_head"] == shown["transformer.wte"]
    assert len(shown["transformer.wpe"]) == n and not shown["transformer.wpe"] & shown["lm_head"]


def test_focus_with_phase_optimizer_follows_a_weight_passed_in_as_a_view():
    """(A review.) A head given ``emb.weight.t()``, a view made outside it, reads the
    weight through the view: its focus shows the weight's update (SGD: one op)."""
    import torch
    import torch.nn as nn

    class Head(nn.Module):
        def forward(self, h, w):
            return h @ w

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 4), Head()

        def forward(self, x):
            return self.head(self.emb(x), self.emb.weight.t()).sum()

    torch.manual_seed(0)
    m = Net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, foreach=False)
    with torchtrace.trace(m) as t:
        m(torch.randint(0, 10, (2, 3))).backward()
        opt.step()
    shown = {f: [n for b in build_view(t.graph, focus=f, phase="optimizer").boxes for n in b.nodes]
             for f in ("head", "emb")}
    assert [t.graph.node(n).op for n in shown["head"]] == ["aten.add_.Tensor"] and shown["head"] == shown["emb"]


def test_unknown_focus_lists_paths(viz_graph):
    with pytest.raises(UsageError) as err:
        build_view(viz_graph("gpt2_2"), focus="transformer.h.9.atn")
    assert "transformer.h.0.attn" in str(err.value) or "transformer.h.1.attn" in str(err.value)


@pytest.mark.parametrize("opts, words", [
    ({"dpeth": 2}, ["unknown view option 'dpeth'", "depth", "did you mean 'depth'"]),
    ({"depth": -1}, ["depth", ">= 0"]),
    ({"depth": "2"}, ["depth"]),
    ({"phase": "fwd"}, ["phase", "forward, backward, optimizer, both"]),
    ({"hide": ["detach"]}, ["hide", "autograd_internal"]),
    ({"fold": "yes"}, ["fold", "True or False"]),
    ({"max_boxes": 0}, ["max_boxes", ">= 1"]),
])
def test_bad_options_say_what_is_valid(opts, words):
    with pytest.raises(UsageError) as err:
        build_view(make_graph([("relu", [-1], 1)]), **opts)
    for w in words:
        assert w in str(err.value)


# -- determinism and the no-torch rule -------------------------------------------------------------
def test_views_are_deterministic(viz_graph):
    g = viz_graph("hostile")
    assert build_view(g) == build_view(g)
    again = Graph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert torchtrace.render(again, "dot") == torchtrace.render(g, "dot")


def test_every_box_and_edge_is_consistent(viz_graph):
    for name in ("gpt2_2", "bert", "cell_loop", "branchy", "hostile"):
        for opts in ({}, {"phase": "both"}, {"fold": False}, {"depth": 1}):
            view = build_view(viz_graph(name), **opts)
            ids = [b.id for b in view.boxes]
            assert len(ids) == len(set(ids))
            cids = {c.id for c in view.clusters}
            assert all(b.cluster is None or b.cluster in cids for b in view.boxes)
            assert all(c.parent is None or c.parent in cids for c in view.clusters)
            assert all(e.src in ids and e.dst in ids and e.src != e.dst for e in view.edges)
            assert all(isinstance(x, (Box, Cluster)) for _, x in view.walk())


def test_rendering_a_saved_graph_never_imports_torch(viz_graph, tmp_path):
    path = tmp_path / "g.json"
    torchtrace.save(viz_graph("cell_loop"), path)
    code = ("import sys, torchtrace; g = torchtrace.load(sys.argv[1]); "
            "[torchtrace.render(g, f) for f in ('text', 'dot', 'mermaid', 'markdown', 'terminal')]; "
            "g._repr_mimebundle_(); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_a_repeated_backward_is_not_called_a_loop():
    """Reentrant checkpoint recomputes each block inside backward: the three
    recompute-then-backward pieces fold, named for what they are. Their ops carry
    the forward's lines (`Blk.forward`'s return), where no loop is."""
    import torch
    import torch.nn as nn
    from torch.utils.checkpoint import checkpoint

    class Blk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return x + self.b(torch.tanh(self.a(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Blk() for _ in range(3))

        def forward(self, x):
            for b in self.blocks:
                x = checkpoint(b, x, use_reentrant=True)
            return x

    torch.manual_seed(0)
    m = Net()
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 8, requires_grad=True)).sum().backward()
    titles = [c.title for c in build_view(t.graph, phase="backward", depth=3).clusters if c.kind == "loop"]
    assert titles and all(x.startswith("backward of test_views.py:") and x.endswith("× 3") for x in titles), titles
    fwd = [c.title for c in build_view(t.graph, phase="forward", depth=0).clusters if c.kind == "loop"]
    assert all(x.startswith("loop ") for x in fwd)


def test_a_loop_whose_body_starts_with_a_nested_loop_renders(dot_check):
    """The inner loop's cluster got the outer one's id (both start at the same op):
    a cluster that was its own parent, and rendering looped until memory ran out."""
    import torch

    w = torch.nn.Parameter(torch.randn(4))
    x = torch.randn(4)
    with torchtrace.trace() as t:
        for _ in range(3):
            for _ in range(2):
                x = x * w
                x = x - 1
            x = x + 1
    view = build_view(t.graph)
    loops = [c for c in view.clusters if c.kind == "loop"]
    assert len(loops) == 2 and len({c.id for c in loops}) == 2
    inner = next(c for c in loops if c.repeat == 2)
    assert inner.parent == next(c for c in loops if c.repeat == 3).id
    text = torchtrace.render(t.graph, "text")
    assert "× 3 {" in text and "× 2 {" in text
    dot_check(torchtrace.render(t.graph, "dot"))
    assert torchtrace.render(t.graph, "mermaid").count("subgraph") >= 2


def test_looking_for_loops_in_a_long_flat_phase_is_bounded():
    """One AdamW step with clipping of a tiny Whisper: the optimizer phase is a
    flat list of ~900 ops of many parameter shapes, and looking for runs signed
    2.4 million ops (6 s for one view). The search stops at a bound; the view is
    still built and drawn."""
    import torch

    import zoo
    from torchtrace.views import Prepared, view_options
    from torchtrace.views.fold import MAX_PERIOD, WORK_MAX

    m = zoo.whisper()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    feats, labels = torch.randn(2, 8, 32), torch.randint(3, 100, (2, 6))
    m(input_features=feats, labels=labels).loss.backward()
    opt.step()
    with torchtrace.trace(m) as t:
        opt.zero_grad()
        m(input_features=feats, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    prep = Prepared(t.graph, view_options(phase="optimizer"))
    prep.assemble(0)
    assert prep.folder.work <= WORK_MAX + MAX_PERIOD * 8 < 1_000_000  # (unbounded: 2.4 million)
    assert build_view(t.graph, phase="optimizer").boxes and torchtrace.render(t.graph, "text", phase="optimizer")


def test_a_box_budget_too_small_for_depth_one_draws_the_model_as_one_box(viz_graph):
    """A budget depth 1 cannot meet even in chunks (DistilBERT, `max_boxes=5`: 13
    boxes) drew depth 1 and said it stayed within it; depth 0 draws fewer."""
    g = viz_graph("bert")
    whole = build_view(g, depth=0)
    for budget, met in ((len(whole.boxes), True), (len(whole.boxes) - 1, False)):
        view = build_view(g, max_boxes=budget)
        assert view.options["depth"] == 0 and len(view.boxes) == len(whole.boxes)
        note = f"max_boxes={budget} cannot be met: {len(whole.boxes)} boxes is the fewest this view draws"
        assert (note in view.notes) is not met and not any("to stay within" in n for n in view.notes)
    roomy = build_view(g, max_boxes=len(whole.boxes) + 40)
    assert roomy.options["depth"] >= 1 and len(roomy.boxes) <= len(whole.boxes) + 40
    assert not any("cannot be met" in n for n in roomy.notes)


def test_a_returned_input_or_parameter_gets_an_output_box():
    """A model that returns its input and a parameter beside a result: the IR has
    three outputs, the drawing had one."""
    import torch

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return x, self.fc(x), self.fc.weight

    m, x = M(), torch.randn(2, 4)
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(x)
    view = build_view(t.graph)
    outs = {b.id: b for b in view.boxes if b.kind == "output"}
    assert len(outs) == len(t.graph.outputs) == 3
    fed = {e.dst: view.box(e.src).kind for e in view.edges if e.dst in outs}
    assert sorted(fed.values()) == ["input", "op", "param"], fed


def test_folded_names_of_thousands_of_instances_are_said_in_linear_work(monkeypatch):
    """(Audit: each new name compressed the whole run so far again: a ModuleList of 2,000
    layers took 12 s to render.) Counted, not timed."""
    from torchtrace.views import labels

    calls = []
    compress = labels._compress
    monkeypatch.setattr(labels, "_compress", lambda names: calls.append(len(names)) or compress(names))
    names = [f"layers.{i}" for i in range(2000)]
    assert labels.range_name(names) == "layers.0…1999"
    assert labels.range_name(["enc.0", "enc.1", "enc.2", "dec", "dec"]) == "enc.0…2, dec"
    assert sum(calls) < 10 * (len(names) + 5), sum(calls)  # (quadratic: about 2 million names compared)
