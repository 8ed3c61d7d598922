"""GPU checks of what a trace leaves behind and of the other ways in: device
memory after the block, a ``Recorder``'s unsampled steps, a user's dispatch
mode above ours, ``torchtrace run`` on a CUDA script, and a CPU pass against a
GPU pass of one model (the diff finds nothing). Registered by ``cuda_check.py`` (run that)."""
from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import tempfile
import textwrap
from typing import List, Optional

import cudakit as kit  # (first: it sets the environment and sys.path)
import torch  # noqa: E402

import torchtrace  # noqa: E402
import zoo  # noqa: E402
from torchtrace.store import Store  # noqa: E402


def _allocated() -> int:
    kit.sync()
    return torch.cuda.memory_allocated() if kit.DEV.type == "cuda" else 0


@kit.check("no_device_memory_retained_after_the_block")
def _() -> str:
    if kit.DEV.type != "cuda":
        return "skipped on CPU (tests/test_recorder.py checks with weak references)"
    m = zoo.gpt2().to(kit.DEV).train()
    x = kit.ids()

    def held(traced: bool, collect: bool) -> int:
        """Device bytes a training step leaves allocated once its loss and
        gradients are dropped (the model's own are there before and after)."""
        m.zero_grad(set_to_none=True)
        gc.collect()
        before = _allocated()
        ctx = torchtrace.trace(m) if traced else contextlib.nullcontext()
        with ctx as t:
            m(x).logits.float().square().mean().backward()
        m.zero_grad(set_to_none=True)
        if collect:
            gc.collect()
        after = _allocated()
        assert not traced or t.graph.nodes  # the graph is alive while we measure
        return after - before

    held(False, True), held(True, True)  # (warm-up: cuBLAS workspaces, the caching allocator)
    plain, traced = held(False, False), held(True, False)
    assert traced == plain, f"a traced step left {traced - plain} more bytes on the device (no gc.collect)"
    return f"bytes left after a step, no gc.collect: {plain} untraced, {traced} traced (graph alive)"


@kit.check("recorder_every_3_unsampled_steps_bitwise")
def _() -> str:
    def train(rec: Optional[torchtrace.Recorder]) -> List[torch.Tensor]:
        torch.manual_seed(0)
        m = zoo.gpt2().to(kit.DEV).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x = kit.ids()
        for _ in range(7):
            m(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in m.parameters()]

    base = train(None)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.db")
        with torchtrace.Recorder(path, every=3) as rec:
            got = train(rec)
        with Store(path) as st:
            passes = st.passes()
            g = st.graph(passes[1].idx)
    assert kit.same(base, got), "parameters after 7 AdamW steps, every=3, differ from untraced"
    assert len(passes) == 3, [p.idx for p in passes]
    phases = sorted({n.phase for n in g.nodes})
    assert phases == ["backward", "forward", "optimizer"], phases
    return f"{len(passes)} passes of 7 steps; a sampled step's phases {phases}"


@kit.check("user_dispatch_mode_or_recorder_above_ours")
def _() -> str:
    from torch.utils.flop_counter import FlopCounterMode

    m = zoo.gpt2().to(kit.DEV).train()
    x = kit.ids()

    def record(above: str, d: str) -> torchtrace.Graph:
        with contextlib.ExitStack() as stack:
            if above == "Recorder":  # trace() hands its ops on to the Recorder's mode
                stack.enter_context(torchtrace.Recorder(os.path.join(d, "t.db")))
            t = stack.enter_context(torchtrace.trace(m))
            if above == "FlopCounterMode":
                fc = stack.enter_context(FlopCounterMode(display=False))
            kit.step(m, lambda: m(x).logits)
            if above == "FlopCounterMode":
                assert fc.get_total_flops() > 0
        return t.graph

    def ops(g: torchtrace.Graph) -> list:
        return [(n.op, n.phase, g.module_path(n.module), n.source) for n in g.nodes]

    with tempfile.TemporaryDirectory() as d:
        want = ops(record("", d))
        lost = [n for n in want if n[1] == "backward" and n[3] is None]
        assert not lost, f"{len(lost)} backward ops have no source line, the first {lost[0]}"
        for above in ("FlopCounterMode", "Recorder"):
            got = ops(record(above, d))
            bad = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
            assert len(got) == len(want) and not bad, f"under {above}: {len(want)} ops, {len(got)}; {bad[:1]}"
    return f"{len(want)} ops with the same op, phase, module and source line under FlopCounterMode and a Recorder"


SCRIPT = """
import sys
import torch
dev = sys.argv[1]
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).to(dev)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
x = torch.randn(8, 16, device=dev)
for _ in range(3):
    loss = m(x).square().mean()
    if loss.item() > 100:
        raise SystemExit("diverged")
    loss.backward()
    opt.step()
    opt.zero_grad()
print("result", repr(m(x).sum().item()))
"""


@kit.check("cli_run_of_a_cuda_script")
def _() -> str:
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "train.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(SCRIPT))
        dev = str(kit.DEV)
        plain = subprocess.run([sys.executable, script, dev], capture_output=True, text=True, timeout=300)
        out = os.path.join(d, "out")
        traced = subprocess.run([sys.executable, "-m", "torchtrace", "run", "--out", out, script, dev],
                                capture_output=True, text=True, timeout=300, cwd=d)
        assert plain.returncode == 0 and traced.returncode == 0, (plain.stderr[-2000:], traced.stderr[-2000:])
        result = [ln for ln in traced.stdout.splitlines() if ln.startswith("result")]
        assert result == [ln for ln in plain.stdout.splitlines() if ln.startswith("result")], (
            plain.stdout, traced.stdout)
        with Store(os.path.join(out, "trace.db")) as st:
            passes = st.passes()
            g = st.graph(passes[0].idx)
    want = f"{kit.DEV.type}:0" if kit.DEV.type == "cuda" else "cpu"
    devices = {v.device for v in g.values if v.role in ("param", "input", "activation")}
    assert devices == {want}, devices
    reads = [n for n in g.witnesses()]
    assert len(passes) == 4 and reads, (len(passes), len(reads))
    return f"{len(passes)} passes, values on {sorted(devices)}, {len(reads)} tensor read(s) in pass 0; " \
           f"script output equal: {result[0]}"


@kit.check("a_cpu_pass_against_a_gpu_pass_is_identical")
def _() -> str:
    if kit.DEV.type != "cuda":
        return "skipped on CPU"

    def record(dev: torch.device) -> torchtrace.Graph:
        torch.manual_seed(0)
        m = zoo.MLP(64, 128).to(dev)
        x = torch.full((8, 64), 0.5, device=dev)
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
        return t.graph

    d = torchtrace.diff(record(torch.device("cpu")), record(kit.DEV))
    assert d.kind == "identical", (d.kind, d.why())
    return f"diff kind {d.kind!r}; fingerprints equal"
