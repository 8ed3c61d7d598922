"""Distributed runs: every rank records into one store; the rank report names
the first pass and collective where ranks part ways, and why."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchtrace.cli import app
from torchtrace.ir import Graph
from torchtrace.ranks import rank_report
from torchtrace.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXE = shutil.which("torchtrace") or str(Path(sys.executable).parent / "torchtrace")


def test_two_ranks_diverge_and_the_report_says_where_and_why(tmp_path):
    script = ROOT / "examples" / "ranks_diverge.py"
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), "--nproc-per-node", "2", str(script)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # rank 1 ends up waiting in an all_reduce rank 0 never joins: gloo reports the lost peer
    assert res.returncode == 1, res.stderr[-3000:]
    assert "called different collectives in pass 2" in res.stderr, res.stderr[-6000:]
    assert "2 ranks of ranks_diverge.py" in res.stderr and "trace.db --rank 1" in res.stderr  # (the next: hint)
    db = tmp_path / "o" / "trace.db"
    with Store(db, readonly=True) as store:
        assert store.ranks() == [0, 1]
        passes = {r: [(p.idx, p.error) for p in store.passes(r)] for r in (0, 1)}
        assert [len(p) for p in passes.values()] == [4, 4], (passes, res.stderr[-6000:])  # (diagnosable if not)
        g = store.graph(0, 1)
        assert g.meta["rank"] == 1 and g.meta["world_size"] == 2
        assert sum("collective" in n.tags for n in g.nodes) == 1  # one all_reduce per step
        assert store.passes(1)[-1].error == "RuntimeError"
        report = rank_report(store)
    first = report.divergences[0]
    assert (first.idx, first.ref, first.other, first.kind) == (2, 0, 1, "collectives")
    assert "#2: rank 0 calls nothing more; rank 1 calls c10d.allreduce_(float32[49], group of 2, reduce_op=SUM)" in first.collective
    src = script.read_text().splitlines()
    line = next(i for i, x in enumerate(src, 1) if "if x.max() > 2.5" in x)
    assert any(f"`ranks_diverge.py:{line}` read False on rank 0, True on rank 1" in w for w in first.why)
    out = CliRunner().invoke(app, ["ranks", str(db)])
    assert out.exit_code == 0 and "called different collectives in pass 2" in out.output


def _as_rank(g, rank):
    from torchtrace.ir import Graph

    return Graph(meta=dict(g.meta, rank=rank, world_size=2), modules=g.modules, values=g.values, nodes=g.nodes,
                 outputs=g.outputs, autograd=g.autograd)


def test_ranks_that_agree_and_a_rank_that_stopped(tmp_path):
    import torch
    import torchtrace

    m, x = torch.nn.Linear(3, 3), torch.randn(2, 3)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    with Store(tmp_path / "t.db") as store:
        for idx in range(3):
            store.add(_as_rank(t.graph, 0), idx=idx)
            if idx < 2:
                store.add(_as_rank(t.graph, 1), idx=idx)
        report = rank_report(store)
    assert report.passes == {0: 3, 1: 2}
    [d] = report.divergences
    assert (d.kind, d.idx, d.other) == ("missing", 2, 1)
    assert "rank 1 has no pass 2: it stopped (crashed or hung)" in str(report)
    assert d.errors == []
    with Store(tmp_path / "r.db") as store:  # its last pass ended with an exception: said with it
        store.add(_as_rank(t.graph, 0), idx=0)
        store.add(_as_rank(t.graph, 0), idx=1)
        store.add(Graph(meta=dict(_as_rank(t.graph, 1).meta, error="ValueError"), modules=t.graph.modules,
                        values=t.graph.values, nodes=t.graph.nodes, outputs=t.graph.outputs,
                        autograd=t.graph.autograd), idx=0)
        [d] = rank_report(store).divergences
    assert (d.kind, d.idx, d.other) == ("missing", 1, 1) and d.errors == ["rank 1's pass 0 ended with ValueError"]
    assert "  rank 1's pass 0 ended with ValueError" in d.lines()
    with Store(tmp_path / "u.db") as store:
        for r in (0, 1):
            store.add(_as_rank(t.graph, r), idx=0)
        assert rank_report(store).agree


def test_a_rank_that_raised_is_named_and_an_empty_store_is_an_error(tmp_path):
    import torch
    import torchtrace

    m, x = torch.nn.Linear(3, 3), torch.randn(2, 3)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    full = t.graph
    try:  # rank 1 raised before its backward
        with torchtrace.trace(m) as t1:
            m(x).sum()
            raise ValueError("bad batch")
    except ValueError:
        pass
    cut = t1.graph
    assert cut.meta["error"] == "ValueError"
    with Store(tmp_path / "t.db") as store:
        store.add(_as_rank(full, 0), idx=0)
        store.add(_as_rank(cut, 1), idx=0)
        report = rank_report(store)
    [d] = report.divergences
    assert any(w.startswith("rank 1's pass ended with ValueError before them") for w in d.why), d.why
    assert not any("A's" in w or "B's" in w for w in d.why)
    Store(tmp_path / "empty.db").close()
    out = CliRunner().invoke(app, ["ranks", str(tmp_path / "empty.db")])
    assert out.exit_code == 2 and out.output.startswith("error: ") and "holds no pass" in out.output


def test_collectives_on_fresh_tensors_stay_in_their_step(tmp_path):
    """A vote (`all_reduce` of a fresh flag) and a `barrier()` after backward
    depend on nothing the step computed, so they were taken for the next step's
    input preparation and dropped: every pass but the last lost them."""
    import torch
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = torch.nn.Linear(4, 2)
        with torchtrace.Recorder(tmp_path / "t.db") as rec:
            for step in range(3):
                rec.step(step)
                m.zero_grad()
                x = torch.ones(8, 4) * (step + 1)
                m(x).sum().backward()
                flag = torch.zeros(3)
                dist.all_reduce(flag)  # "should we stop?"
                dist.barrier()
    finally:
        dist.destroy_process_group()
    with Store(tmp_path / "t.db", readonly=True) as store:
        counts = [sum("collective" in n.tags for n in store.graph(p.idx).nodes) for p in store.passes()]
        fps = {store.graph(p.idx).fingerprints["structure"] for p in store.passes()}
    assert counts == [2, 2, 2] and len(fps) == 1, counts


def test_ranks_that_reduce_otherwise_differ_and_a_rank_without_passes_is_named(tmp_path):
    """SUM on one rank and MAX on the other hangs or corrupts a job: every
    reduce op was recorded as `<...ReduceOp>` and the report said the ranks
    agree. A rank that died before its first forward was not in the report."""
    import torch
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        graphs = {}
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX):
            with torchtrace.trace() as t:
                dist.all_reduce(torch.ones(3), op=op)
            graphs[op] = t.graph
    finally:
        dist.destroy_process_group()
    [n] = [n for n in graphs[dist.ReduceOp.MAX].nodes if "collective" in n.tags]
    assert n.args["reduce_op"] == "MAX"
    with Store(tmp_path / "t.db") as store:
        store.add(_as_rank(graphs[dist.ReduceOp.SUM], 0), idx=0)
        store.add(_as_rank(graphs[dist.ReduceOp.MAX], 1), idx=0)
        [d] = rank_report(store).divergences
    assert d.kind == "collectives" and "reduce_op=SUM" in d.collective and "reduce_op=MAX" in d.collective
    with Store(tmp_path / "u.db") as store:
        store.add(_as_rank(graphs[dist.ReduceOp.SUM], 0), idx=0)  # world size 2, rank 1 recorded nothing
        report = rank_report(store)
    assert report.ranks == [0, 1] and report.passes == {0: 1, 1: 0}
    assert "rank 1 has no pass 0: it stopped (crashed or hung)" in str(report)
    with Store(tmp_path / "v.db") as store:
        store.add(graphs[dist.ReduceOp.SUM], idx=0)  # one process, no world size
        report = rank_report(store)
    assert report.agree and "one rank only" in str(report)


def test_render_with_nproc_is_refused_not_ignored(tmp_path):
    """`--render` with `--nproc-per-node` wrote nothing and said nothing."""
    script = tmp_path / "s.py"
    script.write_text("print('ran')\n")
    res = CliRunner().invoke(app, ["run", "--nproc-per-node", "2", "--render", "text", "--out", str(tmp_path / "o"),
                                   str(script)])
    assert res.exit_code == 2 and "--render with --nproc-per-node" in res.output and "ran" not in res.output


def test_per_rank_arguments_of_a_collective_are_not_a_divergence(tmp_path):
    """`barrier(device_ids=[local_rank])` differs on every rank by design: it was
    reported as "called different collectives ... where a job hangs"."""
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        graphs = []
        for local in (0, 1):
            with torchtrace.trace() as t:
                dist.barrier(device_ids=[local])
            graphs.append(t.graph)
    finally:
        dist.destroy_process_group()
    with Store(tmp_path / "t.db") as store:
        for r, g in enumerate(graphs):
            store.add(_as_rank(g, r), idx=0)
        report = rank_report(store)
    assert not [d for d in report.divergences if d.kind == "collectives"], str(report)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_to_a_distributed_run_stops_its_ranks(tmp_path, sig):
    """`torchtrace run --nproc-per-node` waited on torchrun without passing a
    SIGTERM on: it died, torchrun and the ranks ran on without the folder's lock."""
    import os
    import signal
    import textwrap
    import time

    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""
        import os, time, torch, torch.distributed as dist
        dist.init_process_group("gloo")
        open(os.path.join({str(tmp_path)!r}, f"pid{{dist.get_rank()}}"), "w").write(str(os.getpid()))
        m = torch.nn.Linear(2, 2)
        for _ in range(120):
            m(torch.ones(1, 2)).sum().backward()
            dist.barrier()
            time.sleep(0.5)
        print("finished")
    """))
    proc = subprocess.Popen([EXE, "run", "--out", str(tmp_path / "o"), "--nproc-per-node", "2", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while not all((tmp_path / f"pid{r}").exists() for r in (0, 1)) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert "finished" not in out
    ended = (-signal.SIGINT, "(interrupted)") if sig == "SIGINT" else (-signal.SIGTERM, "(terminated)")
    assert (proc.returncode, ended[1] in err) == (ended[0], True), err[-2000:]  # it dies by it, as python

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert not any(alive(p) for p in pids), err[-2000:]
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.ranks()) == 2  # what the ranks recorded before the signal is kept
        errors = {p.error for r in (0, 1) for p in store.passes(r)[-1:]}  # the pass in flight is stored too
    # (a rank the signal reached while it stored a finished pass, before the next began, has no pass in
    # flight: its last pass ended well -- seen once in a loaded full run)
    said = "KeyboardInterrupt" if sig == "SIGINT" else "SIGTERM"
    assert said in errors and errors <= {said, None}, errors


def test_a_send_and_its_recv_are_no_divergence(tmp_path):
    """Point-to-point ops pair a send on one rank with a recv on another: they
    were reported as different collectives, 'where a job hangs'."""
    import textwrap

    script = tmp_path / "p2p.py"
    script.write_text(textwrap.dedent("""
        import torch, torch.distributed as dist
        dist.init_process_group("gloo")
        m = torch.nn.Linear(3, 3)
        for step in range(2):
            m(torch.ones(2, 3)).sum().backward()
            buf = m.weight.grad.clone()
            if dist.get_rank() == 0:
                dist.send(buf, dst=1)
            else:
                dist.recv(buf, src=0)
            dist.all_reduce(buf)
            m.zero_grad()
        dist.destroy_process_group()
    """))
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), "--nproc-per-node", "2", str(script)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        report = rank_report(store)
        ops = {n.short_op for n in store.graph(0, 1).nodes}
    assert "recv_" in ops and not any(d.kind == "collectives" for d in report.divergences), str(report)
    assert "where a job hangs" not in res.stderr


def test_a_pass_only_one_rank_runs_that_calls_no_collective_is_no_divergence(tmp_path):
    """Rank 0 alone evaluates every second step (`if rank == 0:` under `no_grad`): it
    has more passes, and the ranks were paired pass by pass, so a job that finished
    was reported as "called different collectives: this is where a job hangs" (a
    2026-11-28 audit). The passes that call collectives are paired in order."""
    import torch
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = torch.nn.Linear(3, 3)
        with torchtrace.trace(m) as t:
            y = m(torch.randn(2, 3))
            dist.all_reduce(y)
            y.sum().backward()
        train = t.graph
    finally:
        dist.destroy_process_group()
    with torchtrace.trace(m) as t, torch.no_grad():
        m(torch.ones(2, 3))
    evaluate = t.graph
    with Store(tmp_path / "t.db") as store:
        rank0 = [train, train, evaluate, train, train, evaluate]
        for idx, g in enumerate(rank0):
            store.add(_as_rank(g, 0), idx=idx)
        for idx in range(4):
            store.add(_as_rank(train, 1), idx=idx)
        report = rank_report(store)
    assert report.agree and report.passes == {0: 6, 1: 4}, str(report)
    assert "the passes that call collectives agree on every rank" in str(report)
    with Store(tmp_path / "s.db") as store:  # rank 1 stopped after its third training pass: still said
        for idx, g in enumerate(rank0):
            store.add(_as_rank(g, 0), idx=idx)
        for idx in range(3):
            store.add(_as_rank(train, 1), idx=idx)
        [d] = rank_report(store).divergences
    assert (d.kind, d.idx, d.other) == ("missing", 4, 1)


def test_collectives_in_groups_of_their_own_are_no_divergence(tmp_path):
    """Tensor-parallel ranks all-reduce in their own groups (`new_group([0, 1])` and
    `new_group([2, 3])`, or a group of one rank): the groups' names differ across
    ranks, and each rank's call in its own group was reported as "where a job hangs"
    (a 2026-11-28 audit). Names are said, not compared."""
    import dataclasses

    import torch
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with torchtrace.trace() as t:
            y = torch.ones(3)
            dist.all_reduce(y)
        g = t.graph
    finally:
        dist.destroy_process_group()

    def in_group(graph, size, name):
        nodes = [dataclasses.replace(n, args={k: dict(v, group_size=size, group_name=name)
                                              if isinstance(v, dict) and "group_size" in v else v
                                              for k, v in n.args.items()}) for n in graph.nodes]
        return dataclasses.replace(graph, nodes=nodes)

    with Store(tmp_path / "t.db") as store:
        store.add(_as_rank(in_group(g, 2, "1"), 0), idx=0)
        store.add(_as_rank(in_group(g, 2, "2"), 1), idx=0)
        assert rank_report(store).agree
    with Store(tmp_path / "u.db") as store:  # (another group size is a divergence, named with each group)
        store.add(_as_rank(in_group(g, 2, "1"), 0), idx=0)
        store.add(_as_rank(in_group(g, 4, "2"), 1), idx=0)
        [d] = rank_report(store).divergences
    assert d.kind == "collectives" and "group '1' of 2" in d.collective and "group '2' of 4" in d.collective


def test_a_rank_stopped_mid_run_is_set_against_what_the_other_rank_called_instead(tmp_path):
    """(A 2026-11-28 audit.) Rank 1 skips the loss all_reduce of step 1; its next
    gradient all_reduce meets rank 0's pending one of another size, and gloo aborts
    rank 0 inside that pass, which is lost. The report said only that rank 0 had
    stopped; it now says what rank 1 called in that pass against rank 0's last one."""
    import torch
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        graphs = []
        for skip in (False, True):
            with torchtrace.trace() as t:
                flat, loss = torch.ones(49), torch.tensor(2.0)
                dist.all_reduce(flat)
                if not skip:
                    dist.all_reduce(loss)
            graphs.append(t.graph)
    finally:
        dist.destroy_process_group()
    full, skipped = graphs
    with Store(tmp_path / "t.db") as store:
        store.add(_as_rank(full, 0), idx=0)  # (rank 0's pass 1 was lost with it)
        for idx, g in enumerate((full, skipped, full)):
            store.add(_as_rank(g, 1), idx=idx)
        report = rank_report(store)
    [d] = report.divergences
    assert (d.kind, d.idx, d.ref, d.other) == ("missing", 1, 1, 0)
    assert "rank 0 has no pass 1: it stopped (crashed or hung) before rank 1" in str(report)
    [why] = d.why
    assert why.startswith("rank 1's pass 1 called other collectives than rank 0's last pass, 0: #2: rank 0 calls "
                          "c10d.allreduce_(float32[], group of") and "; rank 1 calls nothing more" in why, why


def test_a_rank_with_fewer_passes_is_not_set_against_another_kind_of_pass(tmp_path):
    """(Review.) An evaluation that reduces its metric on rank 0 only, after the
    training steps both ranks ran: no line saying a collective was skipped."""
    import torch
    import torch.distributed as dist

    import torchtrace

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        graphs = []
        for size in (49, 3):
            with torchtrace.trace() as t:
                dist.all_reduce(torch.ones(size))
            graphs.append(t.graph)
    finally:
        dist.destroy_process_group()
    train, evaluate = graphs
    with Store(tmp_path / "t.db") as store:
        for idx, g in enumerate((train, train, evaluate)):
            store.add(_as_rank(g, 0), idx=idx)
        for idx in range(2):
            store.add(_as_rank(train, 1), idx=idx)
        [d] = rank_report(store).divergences
    assert (d.kind, d.idx, d.other) == ("missing", 2, 1) and d.why == []
