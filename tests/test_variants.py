"""torchtrace.variants: many passes grouped by fingerprint, each new variant
explained by the witness that made it."""
from __future__ import annotations

import io

import torch
from rich.console import Console

import torchtrace
from torchtrace.families import Variants
from test_diff import BranchLoop, line_of, record

SIGNS = [1, 1, -1, 1, -1, -1, 1]  # the sign of each step's input


def _steps():
    torch.manual_seed(0)
    m = BranchLoop().eval()
    return [record(m, s * torch.ones(2, 4), torch.tensor(2)) for s in SIGNS]


def test_passes_group_into_variants_with_counts_and_first_last():
    graphs = _steps()
    vs = torchtrace.variants(graphs)
    assert isinstance(vs, Variants) and len(vs) == 2 and vs.total == 7
    pos, neg = vs
    assert (pos.indices, pos.count, pos.first, pos.last) == ((0, 1, 3, 6), 4, 0, 6)
    assert (neg.indices, neg.count, neg.first, neg.last) == ((2, 4, 5), 3, 2, 5)
    assert vs.of == (0, 0, 1, 0, 1, 1, 0) and vs.variant_of(4) is neg
    assert pos.graph is graphs[0] and neg.graph is graphs[2]
    assert pos.structure == graphs[0].fingerprints["structure"] and len(pos.shapes) == 1
    assert pos.previous is None and pos.why is None and pos.witness is None
    # the new variant is explained against the pass just before it (step 1, variant 0)
    assert (neg.previous, neg.against) == (1, 0)
    assert (neg.witness.line, neg.witness.a.value, neg.witness.b.value) == (line_of("branch"), True, False)
    assert neg.why.startswith(f"`test_diff.py:{line_of('branch')}` read True in A, False in B")


def test_decode_steps_form_one_variant_with_one_shape_variant_per_cache_length(gpt2_kv_graphs):
    vs = torchtrace.variants(gpt2_kv_graphs)
    prefill, decode = vs
    assert prefill.indices == (0,) and decode.indices == (1, 2, 3)
    assert [s.indices for s in decode.shapes] == [(1,), (2,), (3,)]
    assert [s.shapes for s in decode.shapes] == [g.fingerprints["shapes"] for g in gpt2_kv_graphs[1:]]
    assert decode.shapes[0].why is None
    assert "size 9 \u2192 10" in decode.shapes[1].why and "size 10 \u2192 11" in decode.shapes[2].why
    assert decode.witness is None and decode.why.startswith("no tensor read differs before it")
    # the same decode step twice is the same shape variant
    again = torchtrace.variants(gpt2_kv_graphs[1:] + gpt2_kv_graphs[1:2])
    assert len(again) == 1 and again[0].shapes[0].indices == (0, 3)


def test_the_summary_prints_as_text_and_as_a_rich_table():
    vs = torchtrace.variants(_steps())
    text = str(vs)
    lines = text.splitlines()
    assert lines[0] == "2 variants in 7 graphs (2 shape variants)"
    assert lines[1].split()[:6] == ["variant", "structure", "graphs", "first", "last", "shapes"]
    assert lines[3].startswith("      1  ") and f"test_diff.py:{line_of('branch')}" in lines[3]
    console = Console(file=io.StringIO(), width=250, record=True, color_system=None)
    console.print(vs.table())
    drawn = console.export_text()
    assert vs[1].structure in drawn and "vs graph 1 (variant 0)" in drawn
    assert "[" not in vs[1].structure and "read True in A, False in B" in drawn


def test_identical_passes_are_one_variant_and_paths_are_accepted(tmp_path):
    graphs = _steps()[:2]
    assert str(torchtrace.variants(graphs)).splitlines()[0] == "1 variant in 2 graphs (1 shape variant)"
    paths = [torchtrace.save(g, tmp_path / f"g{k}.json") for k, g in enumerate(graphs)]
    vs = torchtrace.variants(paths)
    assert len(vs) == 1 and vs[0].count == 2 and len(vs[0].shapes) == 1
    assert torchtrace.variants([]).variants == ()


def test_a_store_is_grouped_by_its_fingerprints_and_reads_only_what_it_explains(tmp_path):
    """Adam gives every step its own shape variant (its floats). `torchtrace variants`
    read and diffed every pass of a store: 35 s for 1,000 tiny GPT-2 steps. It now
    groups by the fingerprints the store keeps and reads graphs when asked."""
    from typer.testing import CliRunner

    from torchtrace.cli import app
    from torchtrace.families import store_variants
    from torchtrace.store import Store

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(12):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    loads = []
    with Store(tmp_path / "t.db", readonly=True) as st:
        graph = st.graph
        st.graph = lambda idx, rank=0: loads.append(idx) or graph(idx, rank)
        records, vs = store_variants(st, 0)
        assert len(records) == 12 and len(vs) == 2  # the first step makes Adam's state
        assert [len(v.shapes) for v in vs] == [1, 11]
        assert sorted(set(loads)) == [0, 1]  # the second variant's first pass and the one before it
        assert "args differ" in vs[1].shapes[3].why  # read when asked
        assert sorted(set(loads)) == [0, 1, 3, 4]
        expected = torchtrace.variants([graph(p.idx) for p in records])
    assert [(v.structure, v.indices, v.why) for v in vs] == [(v.structure, v.indices, v.why) for v in expected]
    res = CliRunner().invoke(app, ["variants", str(tmp_path / "t.db")])
    assert res.exit_code == 0 and "2 variants in 12 passes" in res.output


def test_a_new_variant_is_explained_against_the_same_models_last_pass(tmp_path):
    """Two models whose steps alternate (a GAN): each one's first pass is said
    to be that, not diffed against the other model's pass; a later variant of
    one model is diffed against that model's own last pass."""
    import torch.nn as nn

    from torchtrace.families import store_variants
    from torchtrace.store import Store

    torch.manual_seed(0)
    gen, disc = nn.Sequential(nn.Linear(2, 4)), nn.Sequential(nn.Linear(4, 1))
    z, real = torch.randn(3, 2), torch.randn(3, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for i in range(3):
            gen(z).pow(2).mean().backward()
            out = disc(real)
            if i == 2:
                out = out.relu()  # the discriminator's last step runs one op more
            out.mean().backward()
    with Store(tmp_path / "t.db", readonly=True) as store:
        records, vs = store_variants(store)
        assert [r.label.split(" (")[0] for r in records] == ["gen", "disc"] * 3
        whys = [(v.previous, v.why) for v in vs]
    assert whys[0] == (None, None)
    assert whys[1] == (0, "the first pass of `disc (Sequential)` (the one before ran `gen (Sequential)`)")
    later = [w for w in whys[2:]]
    assert any(prev == 3 and "1 op only in B" in why for prev, why in later), whys  # pass 5 against pass 3
    assert all("first pass of" not in why for _, why in later)


def test_one_model_called_through_two_names_is_one_model(tmp_path):
    """`model` in the loop, `net` in an evaluate() helper: the same parameters,
    so the eval pass is explained against the training pass."""
    import torch.nn as nn
    import torch.nn.functional as F

    from torchtrace.families import store_variants
    from torchtrace.store import Store

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def evaluate(net):
        net.eval()
        with torch.no_grad():
            F.mse_loss(net(x), y)
        net.train()

    with torchtrace.Recorder(tmp_path / "t.db") as rec:
        for i in range(2):
            rec.step(i)
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        evaluate(model)
    with Store(tmp_path / "t.db", readonly=True) as store:
        records, vs = store_variants(store)
        assert [r.label.split(" (")[0] for r in records] == ["model", "model", "net"]
        last = vs.variant_of(2)
        assert last.previous == 1 and "first pass of" not in last.why
        assert "modules in training mode in A, eval mode in B" in last.why
