"""Where a capture's cost goes, measured on the real recorder (not a test).

    python bench/parts.py [--models mlp,gpt2-tiny] [--reps 40]

Variants of one forward pass (train mode, grad on), interleaved:

  plain        the pass
  empty        an empty TorchDispatchMode (torch wraps it in _disable_dynamo)
  empty-skip   the same without that wrapper (the trick RecordingMode uses)
  hooks        torchtrace's global module hooks only (no dispatch mode)
  mode         torchtrace's dispatch mode only (no module hooks)
  capture      both: Capture.start() .. stop(), no IR build
  capture-nogc the same with the cyclic GC off (for scale only: torchtrace
               never turns the GC off)

and micro-benchmarks (ns) of the per-op building blocks that decided the
design (identity maps, tensor metadata, sequence numbers, line numbers).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import timeit
import weakref
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from harness import Empty, Timed, count_ops, interleave  # noqa: E402

from torchtrace.record.capture import Capture  # noqa: E402
from torchtrace.record.mode import _mark_dynamo_skip  # noqa: E402


class EmptySkip(TorchDispatchMode):
    """The empty mode without torch's _disable_dynamo wrapper."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


_mark_dynamo_skip(EmptySkip.__torch_dispatch__.__code__)


def variants(fwd: Callable[[], object], model: torch.nn.Module) -> List[Timed]:
    c = Capture(model)

    def in_mode(mode_cls: type) -> Callable[[], None]:
        def run() -> None:
            with mode_cls():
                fwd()
        return run

    def hooks() -> None:
        c.scope.install()
        c.mode.off = True
        try:
            fwd()
        finally:
            c.scope.remove()
            c.mode.off = False

    def mode_only() -> None:
        c.push_mode()
        try:
            fwd()
        finally:
            c.pop_mode()

    def capture() -> None:
        c.start()
        try:
            fwd()
        finally:
            c.stop()

    def capture_nogc() -> None:
        gc.disable()
        try:
            capture()
        finally:
            gc.enable()

    reset = c.new_pass
    return [Timed("plain", fwd), Timed("empty", in_mode(Empty)), Timed("empty-skip", in_mode(EmptySkip)),
            Timed("hooks", hooks), Timed("mode", mode_only, before=reset), Timed("capture", capture, before=reset),
            Timed("capture-nogc", capture_nogc, before=reset)]


def parts(name: str, reps: int) -> None:
    w = getattr(models, name.replace("-", "_"))()
    fwd = w.forward
    n = count_ops(fwd)
    harness.freeze_heap()
    stats = interleave(variants(fwd, w.model), reps)
    med: Dict[str, float] = {k: s.median for k, s in stats.items()}
    print(f"\n[{name}] forward, {n} ops, {reps} rounds; median ms, µs/op over plain, ratio to the empty mode")
    for k, m in med.items():
        print(f"  {k:<13} {m * 1e3:8.3f} ms  {(m - med['plain']) / n * 1e6:+7.2f} µs/op  "
              f"x{m / med['empty']:.3f} empty")


def micro() -> None:
    from torch.utils.weak import WeakIdKeyDictionary

    t = torch.randn(2)
    wk = WeakIdKeyDictionary({t: 1})
    idmap = {id(t): (weakref.ref(t), 1)}
    frame = sys._getframe()
    cases = {
        "WeakIdKeyDictionary.get": lambda: wk.get(t),
        "id map + identity check": lambda: (lambda e: e is not None and e[0]() is t)(idmap.get(id(t))),
        "tuple(t.shape)": lambda: tuple(t.shape),
        "t.dtype": lambda: t.dtype,
        "t.device": lambda: t.device,
        "weakref.ref(t)": lambda: weakref.ref(t),
        "_get_sequence_nr()": torch._C._autograd._get_sequence_nr,
        "_current_autograd_node()": torch._C._current_autograd_node,
        "frame.f_lasti": lambda: frame.f_lasti,
        "frame.f_lineno": lambda: frame.f_lineno,
    }
    print("\n[micro] ns per call (minimum of 5 x 100k)")
    for label, fn in cases.items():
        ns = min(timeit.repeat(fn, number=100_000, repeat=5)) / 100_000 * 1e9
        print(f"  {label:<26} {ns:7.0f}")


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,gpt2-tiny")
    ap.add_argument("--reps", type=int, default=40)
    opts = ap.parse_args(argv)
    harness.setup_process()
    for name in opts.models.split(","):
        parts(name, opts.reps)
    micro()
    return 0


if __name__ == "__main__":
    sys.exit(main())
