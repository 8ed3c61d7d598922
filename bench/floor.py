"""What any Python dispatch-mode recorder of this IR pays, measured against
torchtrace's own mode (not a test; issue #7's "capture <= 1.3x the empty mode").

    python bench/floor.py [--models mlp,gpt2-tiny] [--reps 100] [--start-state warm|cold|as-left]

Forward pass (train mode, grad on), interleaved as in bench.py, ratios to the
empty mode from the same run. The cores are recorders cut down to what every
event of the IR needs, each one step more than the one before, all with the
trick torchtrace's mode uses to skip torch's ``_disable_dynamo`` wrapper and
all appending one event tuple per op:

  empty        an empty TorchDispatchMode (torch wraps it in _disable_dynamo)
  empty-skip   the same without that wrapper
  core-event   + the op's cached info, the calling frame, the autograd Node
               and the sequence number, one tuple appended
  core-line    + the walk out of torch's frames to the user's line
  core-outs    + each output's value: dtype, device, shape, a weak reference,
               the identity map entry
  core-flow    + each input resolved to the value that made it (torchtrace's
               generated readers, its identity map): the dataflow, nothing else
  flow+hooks   core-flow with torch's global module hooks on, doing nothing:
               the floor of a recorder with module scope (DESIGN.md: the
               scope comes from global forward pre/post hooks)
  mode         torchtrace's dispatch mode (everything an op needs: the above,
               kwargs, in-place versions, witnesses, faults, max_ops, ...)
  capture      Capture.start(); pass; Capture.stop() (mode, module scope,
               patches, compile guard), as bench.py's "capture" row

The cores are torchtrace's own hot path with pieces left out (the handler's
text is put together per core, so no core pays a flag test for a piece it
lacks); they record nothing a build could use and exist only to be timed.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import harness  # noqa: E402
import models  # noqa: E402
from harness import Empty, Timed, count_ops, interleave  # noqa: E402
from parts import EmptySkip, _between, _global_noop_hooks  # noqa: E402

from torchtrace.record import mode as recording  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402
from torchtrace.record.compiled import mark_dynamo_skip  # noqa: E402
from torchtrace.record.opinfo import op_info  # noqa: E402

_HEAD = """\
def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    if kwargs is None:
        kwargs = {}
    info = _INFOS.get(id(func))
    if info is None:
        info = op_info(func)
    f = _getframe(1)
    anode = _current_node()
    code = icode = f.f_code
    line = ilasti = f.f_lasti
    ins, argv, outs = (), (), ()
"""
_LINE = """\
    cache = self.filter_cache
    if cache.get(id(icode)) is not False:
        while f is not None:
            c = f.f_code
            internal = cache.get(id(c))
            if internal is None:
                internal = self.classify(c)
            if not internal:
                break
            f = f.f_back
        if f is not None:
            code, line = f.f_code, f.f_lasti
"""
_FLOW = """\
    read = info.readers.get(len(args))
    if read is None:
        read = info.reader(len(args))
    r = read(args, self.vmap.get, self.vrefs, self.external, f, info) if read else None
    ins, argv = r if r is not None else self._read_args(info, args, f)
"""
_CALL = """\
    seq = _get_seq()
    out = info.call(*args, **kwargs)
"""
_OUTS = """\
    vmeta = self.vmeta
    n = len(vmeta)
    if not info.mutates and isinstance(out, _Tensor):
        vmeta.append((out.dtype, out.device, None, *out.shape))
        self.vrefs.append(_ref(out))
        self.vmap[id(out)] = n
        outs = (n,)
    else:
        outs = self._outputs(info, args, kwargs, out, f)
"""
_TAIL = """\
    self.events.append((info.index, ins, argv, None, outs, seq, code, line, icode, ilasti, None, anode, 0, None))
    return out
"""
# each core: the pieces of its handler, in order
CORES = {"core-event": (_HEAD, _CALL, _TAIL), "core-line": (_HEAD, _LINE, _CALL, _TAIL),
         "core-outs": (_HEAD, _LINE, _CALL, _OUTS, _TAIL), "core-flow": (_HEAD, _LINE, _FLOW, _CALL, _OUTS, _TAIL)}


def core_mode(name: str) -> type:
    """A RecordingMode subclass whose handler is the core ``name``."""
    ns: Dict[str, object] = {}
    env = {"_INFOS": recording._INFOS, "op_info": op_info, "_getframe": sys._getframe, "_ref": recording._ref,
           "_current_node": recording._current_node, "_get_seq": recording._get_seq, "_Tensor": torch.Tensor}
    exec(compile("".join(CORES[name]), f"<floor {name}>", "exec"), env, ns)
    handler = ns["__torch_dispatch__"]
    return type(name, (recording.RecordingMode,), {"__slots__": (), "__torch_dispatch__": handler,
                                                    "_dynamo_skip_marked": mark_dynamo_skip(handler.__code__)})


def variants(fwd: Callable[[], object], model: torch.nn.Module) -> List[Timed]:
    c = Capture(model)

    def under(make: Callable[[], object], hooks: bool = False) -> Callable[[], object]:
        def run() -> object:
            mode = make()
            handles = _global_noop_hooks() if hooks else []
            try:
                with mode:
                    return fwd()
            finally:
                for h in handles:
                    h.remove()
        return run

    def fresh(cls: type) -> Callable[[], object]:
        mode = cls(c)

        def make() -> object:
            mode.reset()
            return mode
        return make

    out = [Timed("plain", fwd), Timed("empty", under(Empty)), Timed("empty-skip", under(EmptySkip))]
    out += [Timed(name, under(fresh(core_mode(name)))) for name in CORES]
    out += [Timed("flow+hooks", under(fresh(core_mode("core-flow")), hooks=True)),
            Timed("mode", _between(c.push_mode, fwd, lambda _: c.pop_mode()), before=c.finish_pass),
            Timed("capture", _between(c.start, fwd, lambda _: c.stop()), before=c.finish_pass)]
    return out


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,gpt2-tiny")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--start-state", choices=harness.START_STATES, default="warm")
    opts = ap.parse_args(argv)
    harness.setup_process()
    built = {name: getattr(models, name.replace("-", "_"))() for name in opts.models.split(",")}
    harness.freeze_heap()
    for name, w in built.items():
        stats = interleave(variants(w.forward, w.model), opts.reps,
                           prepare=harness.start_state(opts.start_state, w.forward))
        med = {k: s.median for k, s in stats.items()}
        n = count_ops(w.forward)
        print(f"\n[{name}] forward, {n} ops, {opts.reps} rounds: median ms, x the empty mode, µs/op over it")
        for k, m in med.items():
            print(f"  {k:<11} {m * 1e3:8.3f} ms  x{m / med['empty']:.3f}  {(m - med['empty']) / n * 1e6:+7.2f} µs/op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
