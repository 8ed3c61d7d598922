"""The frame of the GPU checks (``cuda_check.py``): the registry of checks, the
device they run on (``DEV``, set by ``cuda_check.main``), and the bitwise
comparison of a traced training step with an untraced one."""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import torchtrace  # noqa: E402
import zoo  # noqa: E402

RESULTS: Dict[str, Any] = {"checks": {}, "timings": {}}
DEV = torch.device("cpu")


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        def run() -> str:
            if ONLY and not any(k in name for k in ONLY):
                return ""
            t0 = time.perf_counter()
            try:
                detail, ok = fn(), True
            except Exception as e:  # a check that raises is a failure, reported with its traceback
                detail, ok = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}", False
            dt = time.perf_counter() - t0
            RESULTS["checks"][name] = {"ok": ok, "detail": detail, "s": round(dt, 2)}
            print(f"{'PASS' if ok else 'FAIL'} {name} ({dt:.1f} s): {detail}", flush=True)
            return detail
        CHECKS.append(run)
        return run
    return wrap


CHECKS: List[Callable[[], str]] = []
ONLY: List[str] = []


def step(model: nn.Module, run: Callable[[], torch.Tensor]) -> List[torch.Tensor]:
    """One forward + backward: the output and every gradient (cloned)."""
    model.zero_grad(set_to_none=True)
    out = run()
    loss = out.float().square().mean()
    loss.backward()
    return [out.detach().clone()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def bitwise(model: nn.Module, run: Callable[[], torch.Tensor], what: str) -> torchtrace.Graph:
    torch.manual_seed(0)
    base = step(model, run)
    torch.manual_seed(0)
    again = step(model, run)
    assert same(base, again), f"{what}: two untraced runs differ (nondeterministic baseline)"
    torch.manual_seed(0)
    with torchtrace.trace(model) as t:
        traced = step(model, run)
    assert same(base, traced), f"{what}: traced output/gradients differ from untraced"
    g = t.graph.validate()
    assert "record_errors" not in g.meta, g.meta["record_errors"]
    want = f"{DEV.type}:0" if DEV.type == "cuda" else "cpu"
    held = [v for v in g.values if v.role in ("param", "input")]
    assert held and all(v.device == want for v in held), {(v.name, v.device) for v in held}
    made = g.producers()
    elsewhere = sorted({g.node(made[v.id]).short_op for v in g.values if v.device != want and v.id in made})
    assert g.autograd.grads and all(isinstance(gi.norm, float) for gi in g.autograd.grads), "grad norms"
    assert any(n.phase == "backward" for n in g.nodes), "no backward op recorded"
    RESULTS.setdefault("not_on_device", {})[what] = elsewhere
    return g


def ids(n: int = 16, batch: int = 2) -> torch.Tensor:
    return zoo.token_ids(n, batch).to(DEV)


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()
