"""Timing machinery shared by the bench scripts.

Rules (see bench/README.md): one process, ``torch.set_num_threads(1)``,
warm-up first, then the variants interleaved within each repetition (the
order rotates every repetition so no variant always runs first), one sample
per call, ``gc.collect()`` before every sample after ``gc.freeze()`` of the
setup heap (so garbage left by one variant is never collected on another's
clock, while the collections a variant triggers by itself still count).
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_perf = time.perf_counter


class Empty(TorchDispatchMode):
    """The floor: an empty Python dispatch mode (exactly as in issue #7).
    torch wraps its handler in ``torch._disable_dynamo`` (the default)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class Count(TorchDispatchMode):
    """Counts the aten ops a callable runs (what every mode sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> int:
    c = Count()
    with c:
        fn()
    return c.n


@dataclass
class Stats:
    samples: List[float] = field(default_factory=list)  # seconds

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        if not s:
            return float("nan")
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def iqr(self) -> float:
        return self.quantile(0.75) - self.quantile(0.25)

    def as_dict(self) -> Dict[str, float]:
        return {"median_s": self.median, "q1_s": self.quantile(0.25), "q3_s": self.quantile(0.75),
                "iqr_s": self.iqr, "n": len(self.samples)}


class Variant:
    """One way of running the workload. ``run()`` returns the seconds of the
    timed region; ``before()``/``after()`` run untimed around it."""

    name = "?"

    def before(self) -> None:
        pass

    def run(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def after(self) -> None:
        pass


class Timed(Variant):
    def __init__(self, name: str, fn: Callable[[], object], before: Optional[Callable[[], None]] = None) -> None:
        self.name, self.fn, self._before = name, fn, before

    def before(self) -> None:
        if self._before is not None:
            self._before()

    def run(self) -> float:
        fn = self.fn
        t0 = _perf()
        self.out = fn()  # freed after the clock stops, in every variant (see interleave)
        return _perf() - t0

    def after(self) -> None:
        self.out = None


def interleave(variants: Sequence[Variant], reps: int, warmup: int = 3, collect: bool = True,
               deadline: Optional[float] = None, prepare: Optional[Callable[[], None]] = None) -> Dict[str, Stats]:
    """Run every variant ``warmup`` times, then ``reps`` rounds with one
    sample of each variant per round, in a rotating order.

    ``prepare`` (see ``start_state``) runs untimed before every sample of
    every variant, so each sample starts from the same cache state whatever
    the variant's own untimed work (an IR build, making a Capture) left.

    A variant whose pass returns something (a forward's output) keeps it until
    the clock has stopped and frees it in ``after()``: freeing an output frees
    its autograd graph, and every variant must count that the same way (the
    capture keeps its output alive for the IR build)."""
    for v in variants:
        for _ in range(warmup):
            v.before()
            v.run()
            v.after()
    stats = {v.name: Stats() for v in variants}
    n = len(variants)
    for r in range(reps):
        for k in range(n):
            v = variants[(r + k) % n]
            if prepare is not None:
                prepare()
            v.before()
            if collect:
                gc.collect()
            stats[v.name].samples.append(v.run())
            v.after()
        if deadline is not None and _perf() > deadline and r >= 2:
            break
    return stats


def plan_reps(variants: Sequence[Variant], budget_s: float, lo: int, hi: int,
              prepare: Optional[Callable[[], None]] = None) -> int:
    """Repetitions that fit ``budget_s`` (one untimed probe of each variant)."""
    total = 0.0
    for v in variants:
        if prepare is not None:
            prepare()
        v.before()
        t0 = _perf()
        v.run()
        v.after()
        total += _perf() - t0
    return max(lo, min(hi, int(budget_s / max(total, 1e-9))))


START_STATES = ("warm", "cold", "as-left")
_FLUSH_BYTES = 64 << 20  # twice this machine's L3 (32 MiB)


def start_state(kind: str, workload: Callable[[], object]) -> Optional[Callable[[], None]]:
    """What runs untimed before every sample (``interleave``'s ``prepare``):

    * ``warm``: one plain run of the workload, its result freed -- the state of
      a training loop, where the model has just run;
    * ``cold``: a 64 MiB copy, which evicts L2 and L3;
    * ``as-left``: nothing: each sample starts from whatever the variant's own
      untimed work left, which differs between variants (a Capture made just
      before warms the model's modules and parameters, an IR build evicts them).
    """
    if kind == "warm":
        def warm() -> None:
            workload()
        return warm
    if kind == "cold":
        dst, src = bytearray(_FLUSH_BYTES), bytes(_FLUSH_BYTES)

        def cold() -> None:
            dst[:] = src
        return cold
    if kind == "as-left":
        return None
    raise ValueError(f"start state {kind!r}: choose from {', '.join(START_STATES)}")


def setup_process(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def freeze_heap() -> None:
    """Move everything built so far (torch, transformers, models) out of the
    collector's reach, so per-sample ``gc.collect()`` costs microseconds."""
    gc.collect()
    gc.freeze()
