"""Where a capture's cost goes, measured on the real recorder (not a test).

    python bench/parts.py [--models mlp,gpt2-tiny] [--reps 40] [--sections fwd,bwd,ir,micro]
                           [--start-state warm|cold|as-left]   (before every fwd/bwd sample, as bench.py)

fwd -- variants of one forward pass (train mode, grad on), interleaved:

  plain        the pass
  empty        an empty TorchDispatchMode (torch wraps it in _disable_dynamo)
  empty-skip   the same without that wrapper (the trick RecordingMode uses)
  torch-hooks  global module pre/post hooks that do nothing: what torch's
               hook dispatch costs by itself (module scope needs these hooks)
  hooks        torchtrace's global module hooks only (no dispatch mode)
  mode         torchtrace's dispatch mode only (no module hooks)
  capture      both: Capture.start() .. stop(); the IR of the previous sample
               is built untimed before it (as trace() and Recorder always do)
  capture-nogc the same with the cyclic GC off (for scale only: torchtrace
               never turns the GC off while user code runs)

bwd -- forward + loss + backward: plain, empty, capture, and capture without
  the execution-order pre-hooks (one per autograd Node) or without the
  autograd graph walk (Nodes, edges, saved bytes) altogether.

ir -- µs per op of the IR build and of the JSON encoder, next to floors:
  ``json.dumps`` of the graph's already built dict (the C encoder, the dict
  construction not counted), ``orjson.dumps`` of it when orjson is installed,
  the IR's objects made again from their ready fields (what any builder of them
  pays), and what torch itself charges for the data the build reads (forward: a
  first walk of the autograd Nodes with their edges and saved tensors, no
  torchtrace code; forward+backward: a norm of every gradient); bytes per op,
  of which field names and punctuation alone (every string emptied, every
  number 0) and the source records' text.

micro -- ns per call of the per-op building blocks that decided the design
  (identity maps, tensor metadata, sequence numbers, line numbers).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import timeit
import weakref
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from harness import Empty, Timed, count_ops, interleave  # noqa: E402

from torchtrace import serialize  # noqa: E402
from torchtrace.record import autograd as tracker  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402
from torchtrace.record.compiled import mark_dynamo_skip  # noqa: E402


class EmptySkip(TorchDispatchMode):
    """The empty mode without torch's _disable_dynamo wrapper."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


mark_dynamo_skip(EmptySkip.__torch_dispatch__.__code__)


def _between(setup: Callable[[], object], body: Callable[[], object],
             teardown: Callable[[object], None]) -> Callable[[], object]:
    """``setup(); body(); teardown(setup's result)``, teardown even if body raises;
    returns what body returned (``Timed`` frees it after the clock stops)."""
    def run() -> object:
        state = setup()
        try:
            return body()
        finally:
            teardown(state)
    return run


def _global_noop_hooks() -> list:
    return [register_module_forward_pre_hook(lambda m, a: None),
            register_module_forward_hook(lambda m, a, o: None, always_call=True)]


def _our_hooks_alone(c: Capture) -> None:
    c.scope.install()
    c.mode.off = True


def _remove_our_hooks(c: Capture) -> None:
    c.scope.remove()
    c.mode.off = False


def variants(fwd: Callable[[], object], model: torch.nn.Module) -> List[Timed]:
    c = Capture(model)

    def in_mode(mode_cls: type) -> Callable[[], object]:
        def run() -> object:
            with mode_cls():
                return fwd()
        return run

    capture = _between(c.start, fwd, lambda _: c.stop())
    reset = c.finish_pass  # builds the previous sample's records, as trace() and Recorder do
    return [Timed("plain", fwd), Timed("empty", in_mode(Empty)), Timed("empty-skip", in_mode(EmptySkip)),
            Timed("torch-hooks", _between(_global_noop_hooks, fwd, lambda hs: [h.remove() for h in hs])),
            Timed("hooks", _between(lambda: _our_hooks_alone(c), fwd, lambda _: _remove_our_hooks(c))),
            Timed("mode", _between(c.push_mode, fwd, lambda _: c.pop_mode()), before=reset),
            Timed("capture", capture, before=reset),
            Timed("capture-nogc", _between(gc.disable, capture, lambda _: gc.enable()), before=reset)]


def _report(title: str, n: int, reps: int, med: Dict[str, float]) -> None:
    print(f"\n{title}, {n} ops, {reps} rounds; median ms, µs/op over plain, ratio to the empty mode")
    for k, m in med.items():
        print(f"  {k:<13} {m * 1e3:8.3f} ms  {(m - med['plain']) / n * 1e6:+7.2f} µs/op  "
              f"x{m / med['empty']:.3f} empty")


def forward_parts(name: str, w: models.Workload, reps: int, state: str = "warm") -> None:
    stats = interleave(variants(w.forward, w.model), reps, prepare=harness.start_state(state, w.forward))
    _report(f"[{name}] forward", count_ops(w.forward), reps, {k: s.median for k, s in stats.items()})


def backward_parts(name: str, w: models.Workload, reps: int, state: str = "warm") -> None:
    """What the autograd half costs: the walk (Nodes, edges, saved bytes) and
    the pre-hooks that record the order backward ran the Nodes in."""
    def step() -> None:
        w.loss().backward()

    c = Capture(w.model)
    walk = tracker.AutogradTracker.walk

    def patch(walk_: Callable) -> None:
        tracker.AutogradTracker.walk = walk_
        c.start()

    def unpatch(_: object) -> None:
        c.stop()
        tracker.AutogradTracker.walk = walk

    def capture(patched: Callable) -> Callable[[], None]:
        return _between(lambda: patch(patched), step, unpatch)

    def reset() -> None:
        c.finish_pass()  # build the previous sample's records (see ``capture`` in the docstring)
        w.model.zero_grad(set_to_none=True)

    def empty() -> None:
        with Empty():
            step()

    variants_ = [Timed("plain", step, before=reset), Timed("empty", empty, before=reset),
                 Timed("capture", capture(walk), before=reset),
                 Timed("no-prehooks", capture(lambda self, roots, hook: walk(self, roots, False)), before=reset),
                 Timed("no-walk", capture(lambda self, roots, hook: None), before=reset)]
    stats = interleave(variants_, reps, prepare=harness.start_state(state, step))
    _report(f"[{name}] forward+backward", count_ops(step), reps, {k: s.median for k, s in stats.items()})


def _object_floor(graphs: List[object]) -> float:
    """Seconds to make every graph's Values, Nodes and autograd Nodes again from
    their already computed fields: what any builder of these objects pays."""
    import dataclasses

    def fields(objs: object) -> List[tuple]:
        return [tuple(getattr(o, f.name) for f in dataclasses.fields(o)) for o in objs]

    ready = [[(type(xs[0]), fields(xs)) for xs in (g.values, g.nodes, g.autograd.nodes) if xs] for g in graphs]
    t0 = timeit.default_timer()
    for parts_ in ready:
        for cls, rows in parts_:
            [cls(*row) for row in rows]
    return timeit.default_timer() - t0


def _skeleton(x: object) -> object:
    if isinstance(x, dict):
        return {k: _skeleton(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_skeleton(v) for v in x]
    return "" if isinstance(x, str) else x if x is None or isinstance(x, bool) else 0


def _first_walk(roots: List[object]) -> None:
    """What any recorder of the autograd graph pays torch: a Node's name,
    sequence number, edges and saved tensors, read for the first time
    (torch makes a Python wrapper for each Node and tensor then), and no
    torchtrace bookkeeping."""
    stack, seen = [r for r in roots if r is not None], set()
    while stack:
        node = stack.pop()
        key = (node._sequence_nr(), node.name())
        if key in seen:
            continue
        seen.add(key)
        tracker._saved_storages(node)
        stack.extend([n for n, _ in node.next_functions if n is not None])


def _grad_norms(model: torch.nn.Module) -> None:
    for p in model.parameters():
        if p.grad is not None:
            float(torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32))


def ir_parts(name: str, w: models.Workload, reps: int) -> None:
    """The IR build and the JSON next to their floors in this Python."""
    for label, step in (("forward", w.forward), ("forward+backward", lambda: w.loss().backward())):
        caps, outs = [], []
        for _ in range(reps):
            c = Capture(w.model)
            c.start()
            outs.append(step())  # alive during the build, as in `with trace(m): out = m(x)`
            c.stop()
            caps.append(c)
        t0 = timeit.default_timer()
        graphs = [c.finish_pass() for c in caps]
        build = timeit.default_timer() - t0
        n = len(graphs[0].nodes)
        t0 = timeit.default_timer()
        texts = [serialize.dumps(g) for g in graphs]
        encode = timeit.default_timer() - t0
        dicts = [g.to_dict() for g in graphs]
        t0 = timeit.default_timer()
        for d in dicts:
            json.dumps(d, separators=(",", ":"), ensure_ascii=False)
        c_json = timeit.default_timer() - t0
        floors = {}
        try:
            import orjson
        except ImportError:
            orjson = None
        if orjson is not None:
            t0 = timeit.default_timer()
            for d in dicts:
                orjson.dumps(d)
            floors["orjson.dumps of the built dict"] = timeit.default_timer() - t0
        floors["the IR's objects made from ready fields (Value, Node, autograd Node)"] = _object_floor(graphs)
        if label == "forward":
            fresh = [w.forward() for _ in range(reps)]
            roots = [[o.grad_fn] if isinstance(o, torch.Tensor) else [o.logits.grad_fn] for o in fresh]
            t0 = timeit.default_timer()
            for r in roots:
                _first_walk(r)
            floors["torch: first read of the autograd Nodes, edges, saved tensors"] = timeit.default_timer() - t0
            del fresh, roots
        else:
            t0 = timeit.default_timer()
            for _ in range(reps):
                _grad_norms(w.model)
            floors["torch: a norm of every gradient"] = timeit.default_timer() - t0
        del outs
        skeleton = len(json.dumps(_skeleton(dicts[0]), separators=(",", ":")))
        sources = sum(len(json.dumps(d["source"], ensure_ascii=False)) - len('{"file":"","line":0,"function":""}')
                      for d in dicts[0]["nodes"] if d["source"])
        us = 1e6 / (reps * n)
        print(f"\n[{name}] IR, {label}: {n} ops, {reps} graphs")
        print(f"  build {build * us:6.1f} µs/op   encoder {encode * us:5.1f} µs/op   "
              f"json.dumps of the built dict {c_json * us:5.1f} µs/op")
        for what, t in floors.items():
            print(f"  {what}: {t * us:5.1f} µs/op")
        print(f"  JSON {len(texts[0].encode()) / n:5.0f} B/op, of which field names and punctuation "
              f"{skeleton / n:5.0f} B/op and the source records' file/function text {sources / n:5.0f} B/op; "
              f"{len(graphs[0].values) / n:.2f} values per op")


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
    ap.add_argument("--sections", default="fwd,bwd,ir,micro")
    ap.add_argument("--start-state", choices=harness.START_STATES, default="warm",
                    help="what runs untimed before every fwd/bwd sample (as in bench.py)")
    opts = ap.parse_args(argv)
    sections = set(opts.sections.split(","))
    harness.setup_process()
    for name in opts.models.split(","):
        w = getattr(models, name.replace("-", "_"))()
        harness.freeze_heap()
        if "fwd" in sections:
            forward_parts(name, w, opts.reps, opts.start_state)
        if "bwd" in sections:
            backward_parts(name, w, opts.reps, opts.start_state)
        if "ir" in sections:
            ir_parts(name, w, min(opts.reps, 20))
    if "micro" in sections:
        micro()
    return 0


if __name__ == "__main__":
    sys.exit(main())
