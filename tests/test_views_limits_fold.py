"""Limits a views audit found (2026-11-27): the optimizer's flat ops used up the fold
search of a whole training step, an optimizer step of thousands of ops was drawn as a
few chunk boxes of hundreds of ops each, a focused backward view drew parameter
gradients as outputs "to the caller", and a focus output named only its first reader."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchtrace
import zoo
from torchtrace.views import Prepared, build_view, view_options
from torchtrace.views import fold


def _step(m: nn.Module, loss, clip: bool = False, backwards: int = 1):
    """The graph of one training step of ``m``: backward of ``loss(m)``, an AdamW step
    (one op per parameter at a time, ``foreach=False``)."""
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=False)
    with torchtrace.trace(m) as t:
        for _ in range(backwards):
            loss(m).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    return t.graph


@pytest.fixture(scope="module")
def whisper_step():
    """A tiny Whisper's step with clipping: ~1,150 optimizer ops over parameters of many
    shapes, two encoder and two decoder layers."""
    m = zoo.whisper()
    feats, labels = torch.randn(2, 8, 32), torch.randint(3, 100, (2, 6))
    return _step(m, lambda m: m(input_features=feats, labels=labels).loss, clip=True)


@pytest.fixture(scope="module")
def gpt2_step():
    m, ids = zoo.gpt2(4).train(), zoo.token_ids(8)
    return _step(m, lambda m: m(ids, labels=ids).loss)


def _folds(view):
    return [n for n in view.notes if n.startswith("folded ")]


# -- 1. the fold search of a whole step ---------------------------------------------------------------
def test_the_optimizer_ops_do_not_use_up_the_fold_search_of_a_training_step(whisper_step):
    """phase="both" of a whole step: the search for loops among the ~1,150 optimizer ops
    (top level, searched first) signed 400,000 ops and stopped every search after it, so the
    encoder and decoder layers did not fold; it signs ~6,500 now."""
    prep = Prepared(whisper_step, view_options(phase="both", depth=3))
    view = build_view(whisper_step, phase="both", depth=3)
    folds = _folds(view)
    assert "folded layers.0…1 WhisperEncoderLayer × 2" in folds, folds
    assert "folded layers.0…1 WhisperDecoderLayer × 2" in folds, folds
    assert sum(f.startswith("folded loop ") and f.endswith(" × 5") for f in folds) == 4, folds  # (AdamW's)
    prep.assemble(3)
    assert prep.folder.work < fold.WORK_MAX // 10, prep.folder.work


def test_one_container_search_cannot_starve_the_others(whisper_step, monkeypatch):
    """Each container's search (the top level: the optimizer's ops) stops at its own share,
    so the module calls searched after it still fold."""
    monkeypatch.setattr(fold, "SEARCH_MAX", 300)
    prep = Prepared(whisper_step, view_options(phase="both", depth=3))
    prep.assemble(3)
    top = prep.folder.runs(prep.top.items, cache_key=prep.top.key)
    assert not any(r.reps == 5 for r in top)  # (the optimizer's loops: cut off at this share)
    folds = _folds(build_view(whisper_step, phase="both", depth=3))
    assert "folded layers.0…1 WhisperEncoderLayer × 2" in folds, folds


# -- 2. a large optimizer step ----------------------------------------------------------------------
def test_a_large_optimizer_step_is_chunked_per_module_whose_parameters_it_updates(gpt2_step, whisper_step):
    """All optimizer ops run at the line of `opt.step()`: chunked per line, the step was a
    few boxes of hundreds of ops (Whisper: 470) that said nothing of what they update."""
    view = build_view(gpt2_step, phase="optimizer")
    chunks = [b for b in view.boxes if b.kind == "chunk"]
    said = [b.lines[0] for b in chunks]
    assert "updates transformer.wte.weight" in said and "updates 2 params of transformer.ln_f" in said, said
    loops = {c.id for c in view.clusters if c.kind == "loop" and c.repeat == 4}
    inside = [b.lines[0] for b in chunks if b.cluster in loops]  # (a loop over the blocks: all it stands for)
    assert "updates 8 params of transformer.h.0…3.attn.c_attn" in inside, inside
    assert all(len(b.nodes) <= 20 for b in chunks) and len(view.boxes) <= 50

    view = build_view(whisper_step, phase="optimizer")
    chunks = [b for b in view.boxes if b.kind == "chunk"]
    said = {b.lines[0] for b in chunks}
    assert {"updates 15 params of model.encoder.layers.0", "updates 2 params of model.encoder.conv1"} <= said, said
    assert max(len(b.nodes) for b in chunks) <= 240 and len(view.boxes) <= 50  # (was 470)
    assert sum(b.lines[0].startswith("updates ") for b in chunks) == len(chunks) - 1  # (but clip_grad_norm_'s)


def test_updates_names_the_parameters():
    from torchtrace.views.labels import updates

    assert updates([]) == "" and updates(["fc.weight"]) == "updates fc.weight"
    assert updates(["h.0.fc.weight", "h.0.fc.bias", "h.0.ln.weight"]) == "updates 3 params of h.0"
    assert updates([f"h.{k}.fc.{p}" for k in range(3) for p in ("weight", "bias")]) == "updates 6 params of h.0…2.fc"
    assert updates(["weight", "fc.bias"]) == "updates 2 params"


# -- 3. parameter gradients in a focused backward view ----------------------------------------------
@pytest.mark.parametrize("hide", [None, ()])
def test_a_focused_backward_view_draws_parameter_gradients_as_grads(hide):
    """Focus on a block, phase backward: what AccumulateGrad puts in each parameter's
    .grad (read by its hidden bookkeeping detach, outside any module) was drawn as
    twelve outputs "to the caller"; also when the .grad existed (a second backward:
    AccumulateGrad adds into it)."""
    m, ids = zoo.gpt2(2).train(), zoo.token_ids(8)
    g = _step(m, lambda m: m(ids, labels=ids).loss, backwards=2)
    opts = {} if hide is None else {"hide": hide}
    outs = [b.title for b in build_view(g, focus="transformer.h.0", phase="backward", **opts).boxes
            if b.kind == "output"]
    grads = sorted(f"transformer.h.0.{n}.grad" for n, _ in m.transformer.h[0].named_parameters())
    assert sorted(t for t in outs if t.endswith(".grad")) == sorted(grads * 2), outs  # (two backwards)
    assert [t for t in outs if not t.endswith(".grad")] == ["to transformer.drop"] * 2, outs

    view = build_view(g, focus="transformer", phase="backward", depth=2)  # (the blocks fold: h.1…0 × 2)
    assert "folded h.1…0 GPT2Block × 2" in _folds(view)
    outs = [b.title for b in view.boxes if b.kind == "output"]
    assert "transformer.h.1…0.attn.c_attn.weight.grad" in outs and "transformer.wte.weight.grad" in outs, outs


# -- 4. every reader of a focus output --------------------------------------------------------------
def test_a_focus_output_names_every_module_that_reads_it():
    """BERT's embeddings feed query, key, value and the residual of the first layer's
    attention: the output box said only "to encoder.layer.0.attention.self.query"."""
    m = zoo.bert(2)
    with torch.no_grad(), torchtrace.trace(m) as t:
        m(zoo.token_ids(8))
    outs = [b.title for b in build_view(t.graph, focus="embeddings").boxes if b.kind == "output"]
    assert outs == ["to encoder.layer.0.attention: self.query, self.key, self.value, output"], outs

    class Fan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(4, 4)
            self.heads = nn.ModuleDict({k: nn.Linear(4, 1) for k in "qkvog"})

        def forward(self, x: torch.Tensor, skip: bool) -> torch.Tensor:
            h = self.enc(x)
            return torch.cat([head(h) for head in self.heads.values()] + ([h] if skip else []), -1)

    fan = Fan()
    for skip, said in ((False, "to heads: q, k, v (+2 more)"), (True, "to <root>")):  # (heads are in the root)
        with torch.no_grad(), torchtrace.trace(fan) as t:
            fan(torch.randn(2, 4), skip)
        outs = [b.title for b in build_view(t.graph, focus="enc").boxes if b.kind == "output"]
        assert outs == [said], outs


def test_to_readers_names_a_few_and_counts_the_rest():
    from torchtrace.views.labels import to_readers

    assert to_readers(["decoder"]) == "to decoder" and to_readers([None]) == "to the caller"
    assert to_readers(["h.1.ln_1", "h.1"]) == "to h.1"  # (one reader inside the other)
    assert to_readers(["dec", None]) == "to dec, the caller"
    assert to_readers([f"heads.{k}" for k in range(5)]) == "to heads.0…4"
    assert to_readers(["a.q", "a.k", "a.v", "b", "c"]) == "to a.q, a.k, a.v (+2 more)"
    assert to_readers(["x.attn.q", "x.attn.k", "x.out"]) == "to x: attn.q, attn.k, out"


class _Cell(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x) + h)  # LINE:cell


class _Unrolled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = _Cell()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(2, 8)
        xs = x.unbind(1)
        for t in range(len(xs)):
            h = self.cell(xs[t], h) * 0.5  # LINE:body
        return h


def test_a_folded_loops_title_names_the_loops_own_lines_not_those_of_the_modules_it_calls():
    torch.manual_seed(0)
    m = _Unrolled()
    g = zoo.record(m, torch.randn(2, 5, 8))
    body, cell = zoo.marked_line(__file__, "body"), zoo.marked_line(__file__, "cell")
    assert {n.source.line for n in g.nodes} >= {body, cell}  # (ops at both lines, one iteration's apart)
    titles = [line for line in torchtrace.render(g, "mermaid").splitlines() if line.startswith("%% folded")]
    assert titles == [f"%% folded loop test_views_limits_fold.py:{body} × 5"]
