"""Where the per-op µs of a capture go (issue #7 analysis; not a test).

    python bench/hotpath.py                      # all experiments, mlp + gpt2-tiny
    python bench/hotpath.py --only ladder,split --models gpt2-tiny --reps 60

Experiments (``--only``):
  ladder     the handler rebuilt section by section (each level adds one
             section of ``RecordingMode.__torch_dispatch__``); adjacent levels
             give the marginal µs/op of each section. No module hooks here.
  split      the handler instrumented with ``perf_counter_ns`` checkpoints:
             ns per op in each section (kernel excluded), measured in place.
  parts      what a capture costs besides the handler: module hooks, the
             autograd walk at the root's return, start/stop, the cyclic GC.
  walk       the autograd walk at root return, by component, per Node.
  proposals  candidate changes to the hot path, each as a subclass/patch,
             interleaved against the current code (see bench/README.md).

The handler copies below follow torchtrace/record/mode.py as of commit
7247c85; the ``real`` variant runs the actual class, so a drift between the
copy and the real handler shows up as ``full`` != ``real``.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from harness import Empty, Stats, Variant, count_ops, interleave  # noqa: E402

import torchtrace.record.mode as M  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402

_perf = time.perf_counter

# ---------------------------------------------------------------------------------------------
# the handler, as a template: `#<sec>` ... `#</sec>` blocks can be left out, `#@name` lines
# become perf_counter_ns checkpoints in the instrumented build
# ---------------------------------------------------------------------------------------------
TEMPLATE = '''
def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    #@start
    if kwargs is None:
        kwargs = {}
    info = _INFOS.get(func)
    if info is None:
        info = op_info(func)
    if self.off:
        return func(*args, **kwargs)
    if info.decompose:
        with self:
            return func._op_dk(_CIA, *args, **kwargs)
#<defaults>
    f = None; code = None; line = 0; icode = None; ilasti = -1; anode = None; phase = 0
    ins = []; argv = []; kw = None; seq = 0; outs = (); extra = None
#</defaults>
    #@base
#<frame>
    f = _getframe(1)
    icode = f.f_code
    ilasti = f.f_lasti
    cache = self.filter_cache
    while f is not None:
        c = f.f_code
        internal = cache.get(c)
        if internal is None:
            internal = self.classify(c)
        if not internal:
            break
        f = f.f_back
    #@frame_walk
    if f is not None:
        code, line = f.f_code, f.f_lineno
    else:
        code, line = None, 0
    #@f_lineno
#</frame>
#<anode>
    anode = _current_node()
    #@autograd_node
    phase = FORWARD if anode is None else self._backward_phase(anode, icode)
    #@phase_bwd_start_walk
#</anode>
#<inputs>
    vget = self.vmap.get
    ins = []
    argv = []
    for a, k in zip(args, info.kinds):
        if k == NONTENSOR:
            argv.append(a)
            continue
        if k == TENSOR:
            e = vget(id(a))
            if e is not None and e[0]() is a:
                ins.append(e[1])
                argv.append(None)
            elif isinstance(a, _Tensor):
                ins.append(self._external(a, f, info))
                argv.append(None)
            else:
                argv.append(a)
        else:
            argv.append(None)
            for t in (a if k == TENSOR_LIST else [x for sub in a for x in sub]):
                if t is not None:
                    e = vget(id(t))
                    ins.append(e[1] if e is not None and e[0]() is t else self._external(t, f, info))
    kw = None
    if kwargs:
        kw = {}
        kw_kinds = info.kw_kinds
        for name, a in kwargs.items():
            if kw_kinds.get(name, NONTENSOR) == NONTENSOR:
                kw[name] = a
            elif isinstance(a, _Tensor):
                e = vget(id(a))
                ins.append(e[1] if e is not None and e[0]() is a else self._external(a, f, info))
    #@inputs
    if info.is_seed and phase == FORWARD and is_autograd_engine(icode):
        phase = BACKWARD
        capture = self.capture
        capture.seeds.append(_ref(args[0]))
        capture.autograd.on_backward_start(None, capture.backward_roots())
    #@seed_walk
#</inputs>
#<seq>
    seq = _get_seq()
    #@seq
#</seq>
    out = func(*args, **kwargs)
    #@kernel
#<outputs>
    extra = None
    vmeta = self.vmeta
    vmap = self.vmap
    if not info.mutates and isinstance(out, _Tensor):
        vid = len(vmeta)
        vmeta.append((tuple(out.shape), out.dtype, out.device, None))
        #@out_meta
        vmap[id(out)] = (_ref(out), vid)
        outs = (vid,)
        #@out_weakref_map
    else:
        outs = self._outputs(info, args, kwargs, out)
        if info.witness is not None and not isinstance(out, (_Tensor, tuple, list)):
            extra = out
        #@out_slow
#</outputs>
#<append>
    stack = self.stack
    events = self.events
    events.append((info.index, tuple(ins), tuple(argv), kw, outs, seq, code, line, icode, ilasti,
                   stack[-1][0] if stack else None, anode, phase, extra))
    if len(events) >= self.max_ops:
        self._truncate()
    #@append
#</append>
    return out
'''

SECTIONS = ("frame", "anode", "seq", "outputs", "inputs", "append")
CHECKPOINTS = ["base", "frame_walk", "f_lineno", "autograd_node", "phase_bwd_start_walk", "inputs", "seed_walk",
               "seq", "kernel", "out_meta", "out_weakref_map", "out_slow", "append"]
ACC: List[int] = [0] * len(CHECKPOINTS)
ACC_N = [0]


def build_handler(enabled: Sequence[str], instrument: bool = False, source: str = TEMPLATE,
                  extra_ns: Optional[Dict[str, Any]] = None) -> Callable:
    out_lines: List[str] = []
    skipping: Optional[str] = None
    for ln in source.splitlines():
        s = ln.strip()
        if s.startswith("#</"):
            skipping = None if s[3:-1] == skipping else skipping
            continue
        if s.startswith("#<"):
            name = s[2:-1]
            if name != "defaults" and name not in enabled and skipping is None:
                skipping = name
            elif name == "defaults" and set(SECTIONS) <= set(enabled) and skipping is None:
                skipping = name  # the full handler needs no defaults
            continue
        if skipping is not None:
            continue
        if s.startswith("#@"):
            if instrument:
                ind = ln[: len(ln) - len(ln.lstrip())]
                cp = s[2:]
                if cp == "start":
                    out_lines.append(f"{ind}_t0 = _ns(); _ACC_N[0] += 1")
                else:
                    i = CHECKPOINTS.index(cp)
                    out_lines.append(f"{ind}_t1 = _ns(); _ACC[{i}] += _t1 - _t0; _t0 = _t1")
            continue
        out_lines.append(ln)
    ns = dict(vars(M))
    ns.update(_ns=time.perf_counter_ns, _ACC=ACC, _ACC_N=ACC_N)
    if extra_ns:
        ns.update(extra_ns)
    exec(compile("\n".join(out_lines), f"<handler {'+'.join(enabled)}>", "exec"), ns)
    fn = ns["__torch_dispatch__"]
    M._mark_dynamo_skip(fn.__code__)
    return fn


def mode_class(name: str, handler: Callable, base: type = M.RecordingMode) -> type:
    return type(name, (base,), {"__torch_dispatch__": handler})


class EmptySkip(torch.utils._python_dispatch.TorchDispatchMode):
    """The empty mode without torch's _disable_dynamo wrapper (code marked skip,
    as RecordingMode does): the floor for a handler that uses the same trick."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


M._mark_dynamo_skip(EmptySkip.__torch_dispatch__.__code__)


# ---------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------
class Plain(Variant):
    name = "plain"

    def __init__(self, fn: Callable, zero: Callable) -> None:
        self.fn, self.zero = fn, zero

    def before(self) -> None:
        self.zero()

    def run(self) -> float:
        t0 = _perf()
        self.fn()
        return _perf() - t0


class InMode(Plain):
    def __init__(self, name: str, mode_factory: Callable, fn: Callable, zero: Callable) -> None:
        super().__init__(fn, zero)
        self.name, self.factory = name, mode_factory

    def run(self) -> float:
        m = self.factory()
        t0 = _perf()
        with m:
            self.fn()
        return _perf() - t0


class Cap(Variant):
    """A capture with a chosen mode class and options; nothing is built."""

    def __init__(self, name: str, w: models.Workload, fn: Callable, zero: Callable, *,
                 mode_cls: Optional[type] = None, hooks: bool = True, root_walk: bool = True,
                 gc_off: bool = False, patch: Optional[Callable[[Capture], None]] = None) -> None:
        self.name, self.w, self.fn, self.zero = name, w, fn, zero
        self.mode_cls, self.hooks, self.root_walk, self.gc_off, self.patch = mode_cls, hooks, root_walk, gc_off, patch
        self.c: Optional[Capture] = None

    def before(self) -> None:
        self.zero()
        c = Capture(self.w.model)
        if self.mode_cls is not None:
            c.mode = self.mode_cls(c)
        if not self.root_walk:
            orig = c.autograd.walk
            c.autograd.walk = lambda roots, hook: orig(roots, hook) if hook else None
        if self.patch is not None:
            self.patch(c)
        self.c = c

    def run(self) -> float:
        c, fn = self.c, self.fn
        if self.gc_off:
            gc.disable()
        t0 = _perf()
        if self.hooks:
            c.start()
        else:
            c.push_mode()
        try:
            out = fn()
        finally:
            c.stop()
        dt = _perf() - t0
        if self.gc_off:
            gc.enable()
        del out
        return dt

    def after(self) -> None:
        if self.c is not None:
            self.c.new_pass()
        self.c = None


def workload(name: str, phase: str):
    w = models.MODELS[name]()
    if phase == "fwd":
        fn, zero = w.forward, (lambda: None)
    else:
        def fn() -> None:
            w.loss().backward()
        zero = lambda: w.model.zero_grad(set_to_none=True)  # noqa: E731
    zero()
    n = count_ops(fn)
    zero()
    return w, fn, zero, n


def table(title: str, stats: Dict[str, Stats], n_ops: int, ref: str, rows: Optional[List[str]] = None) -> None:
    r = stats[ref].median
    print(f"\n{title}  ({n_ops} ops/pass, {len(stats[ref].samples)} rounds; µs/op relative to '{ref}')")
    print(f"  {'variant':34s} {'ms':>9s} {'IQR':>7s} {'x ' + ref:>10s} {'µs/op':>8s} {'step µs/op':>10s}")
    prev = None
    for k in rows or list(stats):
        s = stats[k]
        d = (s.median - r) / n_ops * 1e6
        step = "" if prev is None else f"{(s.median - stats[prev].median) / n_ops * 1e6:+10.2f}"
        print(f"  {k:34s} {s.median * 1e3:9.3f} {s.iqr * 1e3:7.3f} {s.median / r:10.3f} {d:+8.2f} {step:>10s}")
        prev = k


# ---------------------------------------------------------------------------------------------
# experiments
# ---------------------------------------------------------------------------------------------
def exp_ladder(name: str, phase: str, reps: int) -> None:
    w, fn, zero, n = workload(name, phase)
    variants: List[Variant] = [Plain(fn, zero), InMode("empty (torch wrapper)", Empty, fn, zero),
                               InMode("empty-skip (no wrapper)", EmptySkip, fn, zero)]
    enabled: List[str] = []
    names = []
    for sec in ("base",) + SECTIONS:
        if sec != "base":
            enabled.append(sec)
        cls = mode_class(f"L_{sec}", build_handler(tuple(enabled)))
        label = "L " + ("base: info/kwargs/func" if sec == "base" else "+ " + sec)
        variants.append(Cap(label, w, fn, zero, mode_cls=cls, hooks=False))
        names.append(label)
    variants.append(Cap("real RecordingMode (no hooks)", w, fn, zero, hooks=False))
    harness.freeze_heap()
    stats = interleave(variants, reps, warmup=3)
    table(f"[ladder] {name} {phase}: mode pushed, no module hooks", stats, n, "empty-skip (no wrapper)",
          [v.name for v in variants])


def exp_split(name: str, phase: str, reps: int) -> None:
    w, fn, zero, n = workload(name, phase)
    cls = mode_class("Instrumented", build_handler(SECTIONS, instrument=True))
    v_inst = Cap("instrumented", w, fn, zero, mode_cls=cls, hooks=False)
    v_full = Cap("full copy", w, fn, zero, mode_cls=mode_class("Full", build_handler(SECTIONS)), hooks=False)
    harness.freeze_heap()
    for _ in range(3):
        for v in (v_inst, v_full):
            v.before(); v.run(); v.after()
    ACC[:] = [0] * len(ACC)
    ACC_N[0] = 0
    stats = interleave([v_full, v_inst], reps, warmup=0)
    ops = ACC_N[0]
    print(f"\n[split] {name} {phase}: ns per op inside the handler ({ops} ops instrumented; "
          f"instrumented pass costs {(stats['instrumented'].median - stats['full copy'].median) / n * 1e6:+.2f} "
          "µs/op more than the copy, i.e. ~the checkpoints' own cost)")
    tot = 0
    for k, v in zip(CHECKPOINTS, ACC):
        per = v / max(ops, 1)
        if k != "kernel":
            tot += per
        print(f"  {k:18s} {per:8.0f} ns/op" + ("   (the aten kernel itself; not overhead)" if k == "kernel" else ""))
    print(f"  {'total (no kernel)':18s} {tot:8.0f} ns/op")


def exp_parts(name: str, phase: str, reps: int) -> None:
    w, fn, zero, n = workload(name, phase)
    variants: List[Variant] = [
        Plain(fn, zero),
        InMode("empty (torch wrapper)", Empty, fn, zero),
        InMode("empty-skip (no wrapper)", EmptySkip, fn, zero),
        Cap("mode only (no hooks)", w, fn, zero, hooks=False),
        Cap("+ hooks, no root walk", w, fn, zero, root_walk=False),
        Cap("full capture", w, fn, zero),
        Cap("full capture, gc disabled", w, fn, zero, gc_off=True),
    ]
    harness.freeze_heap()
    stats = interleave(variants, reps, warmup=3)
    table(f"[parts] {name} {phase}", stats, n, "empty (torch wrapper)", [v.name for v in variants])
    # direct timers on the parts that run outside the handler
    c = Capture(w.model)
    acc: Dict[str, List[float]] = {"pre-hook": [], "post-hook": [], "root walk (hook=False)": [],
                                   "backward-start walk": [], "start()": [], "stop()": []}

    def timed(key: str, f: Callable) -> Callable:
        def g(*a: Any, **k: Any) -> Any:
            t0 = _perf()
            try:
                return f(*a, **k)
            finally:
                acc[key].append(_perf() - t0)
        return g

    c.scope._pre = timed("pre-hook", c.scope._pre)
    c.scope._post = timed("post-hook", c.scope._post)
    walk = c.autograd.walk
    c.autograd.walk = lambda roots, hook: (timed("backward-start walk", walk) if hook else
                                           timed("root walk (hook=False)", walk))(roots, hook)
    k = 20
    for _ in range(k):
        zero()
        t0 = _perf(); c.start(); acc["start()"].append(_perf() - t0)
        out = fn()
        t0 = _perf(); c.stop(); acc["stop()"].append(_perf() - t0)
        del out
        c.new_pass()
    print(f"  direct timers over {k} passes (inclusive; µs per pass and per op):")
    for key, v in acc.items():
        tot = sum(v) / k
        print(f"    {key:24s} {len(v) // k:5d} calls/pass {tot * 1e6:9.1f} µs/pass {tot / n * 1e6:7.2f} µs/op")


def exp_walk(name: str, reps: int) -> None:
    """The root-return walk, by component, on the graph of one forward."""
    from torchtrace.record import autograd as A
    w = models.MODELS[name]()
    out = w.forward()
    t = out if isinstance(out, torch.Tensor) else out.logits
    roots = [t.grad_fn]
    nodes = []
    seen = set()
    stack = list(roots)
    while stack:
        nd = stack.pop()
        if nd is None or id(nd) in seen:
            continue
        seen.add(id(nd))
        nodes.append(nd)
        stack.extend(x for x, _ in nd.next_functions)
    k = len(nodes)
    types_ = {type(nd) for nd in nodes}

    def bench(f: Callable[[], Any], r: int = reps) -> float:
        f()
        ts = []
        for _ in range(r):
            gc.collect()
            t0 = _perf(); f(); ts.append(_perf() - t0)
        return statistics.median(ts) / k * 1e6

    def full() -> None:
        tr = A.AutogradTracker(); tr.walk(roots, hook=False)

    Fast = fast_tracker_class()

    def fast() -> None:
        tr = Fast(); tr.walk(roots, hook=False)

    def twice(cls: type) -> Callable[[], None]:
        def f() -> None:  # root-return walk, then the backward-start walk (prehooks), then close
            tr = cls(); tr.walk(roots, hook=False); tr.walk(roots, hook=True); tr.close()
        return f
    print(f"\n[walk] {name}: {k} Nodes ({len(types_)} types) reachable from the forward output; µs per Node")
    rows = [
        ("AutogradTracker.walk(hook=False)", full),
        ("P7 FastTracker.walk(hook=False)", fast),
        ("current: walk(False) + walk(True) + close", twice(A.AutogradTracker)),
        ("P7: walk(False) + walk(True) + close", twice(Fast)),
        ("  node_key (name() + _sequence_nr())", lambda: [A.node_key(nd) for nd in nodes]),
        ("  node.name() alone", lambda: [nd.name() for nd in nodes]),
        ("  type(node) -> name, cached", lambda: [_NAMECACHE.get(type(nd)) for nd in nodes]),
        ("  _saved_storages", lambda: [A._saved_storages(nd) for nd in nodes]),
        ("  next_functions + keys", lambda: [[A.node_key(x) for x, _ in nd.next_functions if x is not None]
                                             for nd in nodes]),
        ("  Entry(...) objects", lambda: [A.Entry(nd, ("x", 1), 0) for nd in nodes]),
    ]
    for nd in nodes:
        _NAMECACHE.setdefault(type(nd), nd.name())
    for label, f in rows:
        print(f"  {label:40s} {bench(f):7.2f}")


_NAMECACHE: Dict[type, str] = {}


# -- proposals -----------------------------------------------------------------------------------
# Each proposal is a source replacement on the handler copy and/or a patch of the Capture.
# They are timing emulations: the build-side half of each change (see bench/README.md)
# is not needed to time the capture, so the graph is not built here.

# P1: the user frame's line from f_lasti (a field read) instead of f_lineno (a scan of the
#     code's line table: O(offset), ~4 µs at the end of a 300-line function); the build maps
#     (code, lasti) -> line once per distinct pair.
P1 = [("code, line = f.f_code, f.f_lineno", "code, line = f.f_code, f.f_lasti")]

# P2: inputs: visit only the Tensor-kind positions (per op and arg count, cached); argv is
#     list(args) with the tensors blanked, so the builder sees the same layout as today.
P2 = [("""    vget = self.vmap.get
    ins = []
    argv = []
    for a, k in zip(args, info.kinds):
        if k == NONTENSOR:
            argv.append(a)
            continue
        if k == TENSOR:
            e = vget(id(a))
            if e is not None and e[0]() is a:
                ins.append(e[1])
                argv.append(None)
            elif isinstance(a, _Tensor):
                ins.append(self._external(a, f, info))
                argv.append(None)
            else:
                argv.append(a)
        else:
            argv.append(None)
            for t in (a if k == TENSOR_LIST else [x for sub in a for x in sub]):""",
"""    vget = self.vmap.get
    ins = []
    byn = _TPOS[info.index]
    tpos = byn.get(len(args))
    if tpos is None:
        tpos = byn[len(args)] = _tensor_positions(info.kinds, len(args))
    argv = list(args)
    for i, k in tpos:
        a = args[i]
        if k == TENSOR:
            e = vget(id(a))
            if e is not None and e[0]() is a:
                ins.append(e[1])
                argv[i] = None
            elif isinstance(a, _Tensor):
                ins.append(self._external(a, f, info))
                argv[i] = None
        else:
            argv[i] = None
            for t in (a if k == TENSOR_LIST else [x for sub in a for x in sub]):""")]


class _TposTable(dict):
    def __missing__(self, key: int) -> dict:
        v = self[key] = {}
        return v


_TPOS = _TposTable()


def _tensor_positions(kinds: tuple, n: int) -> tuple:
    return tuple((i, k) for i, k in enumerate(kinds[:n]) if k != M.NONTENSOR)


def patch_defer_root_walk(c: Capture) -> None:
    """P3: at the root's return keep the root grad_fns (strong refs, as the
    walk's Entries do today) and walk them when backward starts or the pass
    is built -- never inside the forward."""
    orig = c.autograd.walk
    pending: List[Any] = []

    def walk(roots: Any, hook: bool) -> None:
        if not hook:
            pending.extend(roots)
            return
        roots = list(roots) + pending
        pending.clear()
        orig(roots, hook)

    c.autograd.walk = walk
    c._pending_roots = pending  # the build would walk(pending, hook=False) first


_SCOPE_SRC = """
def lean_pre(module, args):
    if _get_ident() != tid:
        return None
    tp = type(module)
    if tp in opt_types:
        cap.compiled = True
        return None
    if scope.depth == 0:
        cap.on_root_call(module, args, _getframe(1))
    scope.depth += 1
    if mode.off:
        return None
    stack = mode.stack
    k = counts.get(id(module), 0)
    counts[id(module)] = k + 1
    mid = len(mode.mcalls)
    mode.mcalls.append((module, k, stack[-1][0] if stack else None, _task_id()))
    stack.append((mid, module, None))
    return None

def __call__(self, *args, **kwargs):
    pre(self, args)
    try:
        result = orig(self, *args, **kwargs)
    except BaseException:
        post(self, args, None)
        raise
    post(self, args, result)
    return result
"""
# compiled under torchtrace/ so the frame filter skips these frames like the real ones
_FAKE_FILE = os.path.join(os.path.dirname(M.__file__), "_bench_scope_emulation.py")
_SCOPE_CODE = compile(_SCOPE_SRC, _FAKE_FILE, "exec")


def _scope_ns(c: Capture) -> Dict[str, Any]:
    import threading
    ns: Dict[str, Any] = dict(_get_ident=threading.get_ident, tid=c.tid, opt_types=set(), cap=c, scope=c.scope,
                              mode=None, counts=None, _getframe=sys._getframe,
                              _task_id=torch._C._current_graph_task_id)
    exec(_SCOPE_CODE, ns)
    return ns


def patch_lean_pre_hook(c: Capture) -> None:
    """P4: the pre-hook appends (module, call index, parent, task) and leaves
    the path and type name to the build (no f-string, no name lookups per call)."""
    ns = _scope_ns(c)
    ns["mode"], ns["counts"] = c.mode, c.mode.call_counts
    c.scope._pre = ns["lean_pre"]


def patch_module_call(c: Capture) -> None:
    """P5: module scope by wrapping nn.Module.__call__ for the pass instead of
    global forward hooks, so torch keeps its hook-free fast path in _call_impl."""
    scope = c.scope

    ns = _scope_ns(c)  # made before start(): start() only swaps the class attribute

    def install() -> None:
        ns.update(pre=scope._pre, post=scope._post, orig=torch.nn.Module.__call__)
        scope._saved_call = ns["orig"]
        torch.nn.Module.__call__ = ns["__call__"]

    def remove() -> None:
        torch.nn.Module.__call__ = scope._saved_call

    scope.install, scope.remove = install, remove


def patch_gc_off(c: Capture) -> None:
    """P6 (for scale only, not proposed as is): the cyclic GC off during the pass."""
    start, stop = c.start, c.stop

    def s(**kw: Any) -> None:
        gc.disable()
        start(**kw)

    def e() -> None:
        try:
            stop()
        finally:
            gc.enable()

    c.start, c.stop = s, e


def fast_tracker_class() -> type:
    """P7: the same walk with each Node's key computed once (children are
    pushed with their keys) and, on a revisit (the backward-start walk after
    the root-return walk), children taken from the Entry table instead of
    next_functions + node_key again."""
    from torchtrace.record import autograd as A

    class FastTracker(A.AutogradTracker):
        def walk(self, roots: Any, hook: bool) -> None:
            nk = A.node_key
            entries = self.entries
            stack = [(r, nk(r)) for r in roots if r is not None]
            seen: set = set()
            while stack:
                node, key = stack.pop()
                if key in seen:
                    continue
                seen.add(key)
                e = entries.get(key)
                if e is None:
                    e = entries[key] = A.Entry(node, key, len(entries))
                    e.storages = A._saved_storages(node)
                    nexts = [(n, nk(n)) for n, _ in node.next_functions if n is not None]
                    e.next = [k for _, k in nexts]
                    stack.extend([p for p in reversed(nexts) if p[1] not in seen])
                else:
                    for k in reversed(e.next):
                        if k not in seen:
                            c = entries.get(k)
                            if c is not None:
                                stack.append((c.node, k))
                            else:  # not walked before (cannot happen after a full walk): fall back
                                stack.extend((n, nk(n)) for n, _ in node.next_functions
                                             if n is not None and nk(n) == k)
                if hook and not e.hooked:
                    e.hooked = True
                    self.handles.append(node.register_prehook(self._make_prehook(key)))

    return FastTracker


def patch_fast_walk(c: Capture) -> None:
    c.autograd = fast_tracker_class()()


def _chain(*patches: Callable[[Capture], None]) -> Callable[[Capture], None]:
    def p(c: Capture) -> None:
        for f in patches:
            f(c)
    return p


PROPOSALS: Dict[str, Dict[str, Any]] = {
    "P1 f_lasti, line resolved in build": {"replace": P1},
    "P2 inputs: tensor positions only": {"replace": P2},
    "P3 defer the root-return autograd walk": {"patch": patch_defer_root_walk},
    "P4 lean pre-hook (paths at build)": {"patch": patch_lean_pre_hook},
    "P7 walk: keys once, revisits from the table": {"patch": patch_fast_walk},
    "P1+P2+P3+P4": {"replace": P1 + P2, "patch": _chain(patch_defer_root_walk, patch_lean_pre_hook)},
    "P1+P2+P3+P4+P7": {"replace": P1 + P2,
                       "patch": _chain(patch_fast_walk, patch_defer_root_walk, patch_lean_pre_hook)},
    "P6 (scale only) gc off during capture": {"patch": patch_gc_off},
    # rejected, run only on request (--proposals P5): assigning nn.Module.__call__ bumps the type
    # version of every Module subclass, so the interpreter's specialised attribute/call caches miss
    # on the next pass -- it would also slow the variant that runs after it in an interleaved round
    "P5 wrap Module.__call__, no global hooks": {"patch": patch_module_call, "on_request": True},
}


def apply_replacements(src: str, repl: List[tuple]) -> str:
    for a, b in repl:
        if a not in src:
            raise ValueError(f"proposal does not apply: {a[:60]!r}")
        src = src.replace(a, b)
    return src


def exp_proposals(name: str, phase: str, reps: int, only: Optional[List[str]] = None) -> None:
    w, fn, zero, n = workload(name, phase)
    variants: List[Variant] = [InMode("empty (torch wrapper)", Empty, fn, zero),
                               Cap("current (full capture)", w, fn, zero)]
    for pname, spec in PROPOSALS.items():
        if only and not any(pname.startswith(o) for o in only):
            continue
        if spec.get("on_request") and not (only and any(pname.startswith(o) for o in only)):
            continue
        kw: Dict[str, Any] = {}
        if "replace" in spec:
            src = apply_replacements(TEMPLATE, spec["replace"])
            kw["mode_cls"] = mode_class(pname.split()[0], build_handler(SECTIONS, source=src,
                                                                        extra_ns={"_TPOS": _TPOS,
                                                                                  "_tensor_positions": _tensor_positions}))
        if "patch" in spec:
            kw["patch"] = spec["patch"]
        variants.append(Cap(pname, w, fn, zero, **kw))
    harness.freeze_heap()
    stats = interleave(variants, reps, warmup=3)
    r = stats["current (full capture)"].median
    e = stats["empty (torch wrapper)"].median
    print(f"\n[proposals] {name} {phase} ({n} ops; {len(stats[variants[0].name].samples)} rounds)")
    print(f"  {'variant':44s} {'ms':>8s} {'IQR':>7s} {'x empty':>8s} {'gain µs/op':>11s}")
    for v in variants:
        s = stats[v.name]
        print(f"  {v.name:44s} {s.median * 1e3:8.3f} {s.iqr * 1e3:7.3f} {s.median / e:8.3f} "
              f"{(r - s.median) / n * 1e6:+11.2f}")


# -- Recorder: non-sampled passes ------------------------------------------------------------------
def lean_recorder_class() -> type:
    """R1: on non-sampled passes take the global module hooks off (torch then
    keeps the hook-free fast path of Module._call_impl for every module) and
    watch only the root modules seen so far with a module-local forward
    pre-hook, which is all a pass boundary needs. ``_has_params`` is cached."""
    import threading
    from torchtrace.record.recorder import Recorder

    class LeanRecorder(Recorder):
        def __enter__(self) -> "LeanRecorder":
            self._root_handles: List[Any] = []
            self._param_cache: Dict[int, bool] = {}
            self._roots: Dict[int, Any] = {}
            return super().__enter__()

        def __exit__(self, *exc: Any) -> bool:
            self._unwatch()
            return super().__exit__(*exc)

        def _on_root(self, module: torch.nn.Module) -> None:
            has = self._param_cache.get(id(module))
            if has is None:
                has = self._param_cache[id(module)] = next(module.parameters(), None) is not None
                if has:
                    self._roots[id(module)] = module
            if has:
                self._on_root_body(module)

        def _on_root_body(self, module: torch.nn.Module) -> None:
            if self._prelude:
                self._prelude = False
                self._begin(root=type(module).__name__)
                return
            self._boundary(root=type(module).__name__)

        def _begin(self, root: Optional[str]) -> None:
            cap = self.capture
            assert cap is not None
            self._sampled = (self.index % self.every == 0
                             and (self.max_passes is None or self.recorded < self.max_passes))
            if self._sampled:  # a non-sampled pass records nothing: no buffers to reset
                cap.new_pass()
            self._root = root
            self._pass_step = self._step
            self._t_start = time.perf_counter()
            cap.mode.off = not self._sampled
            if cap._installed:
                if self._sampled:
                    cap.push_mode()
                else:
                    cap.pop_mode()
            if not cap._installed or not hasattr(self, "_root_handles"):
                return
            if self._sampled:
                if not cap.scope.handles:
                    cap.scope.install()
                self._unwatch()
            elif self._roots:
                if cap.scope.handles:
                    cap.scope.remove()
                self._watch()

        def _watch(self) -> None:
            if self._root_handles:
                return
            tid, scope = self.capture.tid, self.capture.scope

            def root_pre(module: Any, args: Any) -> None:
                if threading.get_ident() != tid:
                    return None
                scope.depth = 0
                scope._pre(module, args)   # boundary; opens the call when the new pass is sampled
                if not self._sampled:
                    scope.depth = 0        # no post-hook will close it
                return None

            self._root_handles = [m.register_forward_pre_hook(root_pre) for m in self._roots.values()]

        def _unwatch(self) -> None:
            for h in getattr(self, "_root_handles", ()):
                h.remove()
            self._root_handles = []

    return LeanRecorder


def exp_recorder(name: str, reps: int) -> None:
    import tempfile
    import bench as B
    w = models.MODELS[name]()
    opts = argparse.Namespace(budget=max(3.0, reps / 10), min_reps=5, max_reps=max(reps * 4, 64), warmup=3,
                              collect=True, step_block=16)
    harness.freeze_heap()
    with tempfile.TemporaryDirectory() as tmp:
        r = B.bench_steps(w, opts, tmp, recorders={"R1": lean_recorder_class()})
    print(f"\n[recorder] {name}: training step (zero_grad, fwd, loss, bwd, SGD), {r['nonsampled']['n']} "
          f"non-sampled steps each; plain {r['plain']['median_s'] * 1e3:.3f} ms")
    for k, label in (("", "Recorder (current)"), ("R1_", "R1 lean non-sampled passes")):
        print(f"  {label:30s} non-sampled x{r[k + 'nonsampled_x_plain']:.3f}   sampled x{r[k + 'sampled_x_plain']:.2f}"
              f"   storing x{r[k + 'storing_x_plain']:.2f}")


# -- micro-benchmarks behind statements in mode.py / frames.py ---------------------------------
def exp_micro() -> None:
    import timeit
    import weakref
    from torch.utils.weak import WeakIdKeyDictionary

    t = torch.ones(3)
    wd = WeakIdKeyDictionary()
    wd[t] = 1
    d = {id(t): (weakref.ref(t), 1)}
    g = {"t": t, "wd": wd, "d": d, "weakref": weakref}

    def ns(stmt: str, n: int = 200_000) -> float:
        return min(timeit.repeat(stmt, globals=g, number=n, repeat=5)) / n * 1e9

    print("\n[micro] ns per call (best of 5)")
    rows = [
        ("WeakIdKeyDictionary.get(t)", "wd.get(t)"),
        ("id map: e = d.get(id(t)); e[0]() is t", "e = d.get(id(t)); e is not None and e[0]() is t"),
        ("WeakIdKeyDictionary[t] = v (insert)", "wd[t] = 1"),
        ("id map insert: d[id(t)] = (weakref.ref(t), 1)", "d[id(t)] = (weakref.ref(t), 1)"),
        ("tuple(t.shape)", "tuple(t.shape)"), ("t.dtype", "t.dtype"), ("t.device", "t.device"),
        ("weakref.ref(t)", "weakref.ref(t)"),
        ("torch._C._autograd._get_sequence_nr()", "torch._C._autograd._get_sequence_nr()"),
        ("torch._C._current_autograd_node()", "torch._C._current_autograd_node()"),
    ]
    g["torch"] = torch
    for label, stmt in rows:
        print(f"  {label:50s} {ns(stmt):7.0f}")
    # f_lineno scans the code's line table up to f_lasti: its cost grows with the position in the function
    src = "def big():\n" + "".join(f"    x{i} = {i}\n" for i in range(400)) + "    return sys._getframe()\n"
    src += "def small():\n    return sys._getframe()\n"
    fns: Dict[str, Any] = {"sys": sys}
    exec(src, fns)
    for name in ("small", "big"):
        g["f"] = fns[name]()
        print(f"  {'f_lineno, ' + ('line 2 of a 2-line function' if name == 'small' else 'line 402 of a 402-line function'):50s}"
              f" {ns('f.f_lineno', 20_000):7.0f}   (f_lasti: {ns('f.f_lasti'):.0f})")


# ---------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,gpt2-tiny")
    ap.add_argument("--phases", default="fwd,fwdbwd")
    ap.add_argument("--only", default="micro,ladder,split,parts,walk,proposals,recorder")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--proposals", help="comma list of proposal prefixes (P1,P3,...)")
    opts = ap.parse_args(argv)
    harness.setup_process(1)
    print(f"torch {torch.__version__}, threads=1, gc.collect() before each sample; medians")
    only = opts.only.split(",")
    if "micro" in only:
        exp_micro()
    for name in opts.models.split(","):
        for phase in opts.phases.split(","):
            if "ladder" in only:
                exp_ladder(name, phase, opts.reps)
            if "split" in only:
                exp_split(name, phase, opts.reps)
            if "parts" in only:
                exp_parts(name, phase, opts.reps)
            if "proposals" in only:
                exp_proposals(name, phase, opts.reps, opts.proposals.split(',') if opts.proposals else None)
        if "walk" in only:
            exp_walk(name, opts.reps)
        if "recorder" in only:
            exp_recorder(name, opts.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
