"""The per-op hot path: a TorchDispatchMode that appends one tuple per op.

Nothing is formatted or resolved here. Each op costs: one cached OpInfo
lookup, a frame walk to the first user frame (cached per code object), one
identity-checked lookup per input tensor, and a weak reference plus
shape/dtype/device per output. Names, args, links and JSON happen after the
pass (``build.py``).

Tensor identity: ``vmap`` maps ``id(t)`` to a value id, ``vrefs[vid]`` holds a
weak reference to that value's tensor, and every hit is confirmed with
``vrefs[vid]() is t`` -- the semantics of
``torch.utils.weak.WeakIdKeyDictionary`` (which also hashes by ``id``), without
its Python-level key objects (~1 µs per access, measured in
bench/README.md). A recycled ``id`` can therefore never produce a false edge:
a dead or different object fails the identity check and is treated as new.
"""
from __future__ import annotations

import sys
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .compiled import mark_dynamo_skip
from .enginephase import BACKWARD, FORWARD, EnginePhase
from .composite import NOT_WHOLE, call_under_autocast, run_composite, run_whole
from .extras import Raised, Read
from .frames import callers_of, engine_under_modes
from .opinfo import _CACHE as _INFOS
from .opinfo import NONTENSOR, TENSOR, TENSOR_LIST, describe_objects, op_info
from .writes import Writes

if TYPE_CHECKING:  # pragma: no cover
    from .capture import Capture


_get_seq = torch._C._autograd._get_sequence_nr
_current_node = torch._C._current_autograd_node
_PIECES = run_composite.__code__
_AUTOCAST_CALL = call_under_autocast.__code__
_getframe = sys._getframe
_ref = weakref.ref
_Tensor = torch.Tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# torch.autograd's Python frames that call into the engine: alive for a whole graph task
_ENGINE_ENTRIES = frozenset({"_engine_run_backward", "backward", "grad"})
# Value record fields: (dtype, device, origin, *shape) -- flat, one tuple per value
V_DTYPE, V_DEVICE, V_ORIGIN, V_SHAPE = range(4)  # shape = record[V_SHAPE:]
# Event tuple fields (see build.py); E_LINE holds the user frame's f_lasti, not a line
(E_INFO, E_INS, E_ARGS, E_KW, E_OUTS, E_SEQ, E_CODE, E_LINE, E_ICODE, E_ILASTI, E_MOD, E_ANODE, E_PHASE,
 E_EXTRA) = range(14)


def _odd_shape(t: Any) -> Tuple[int, ...]:
    """The shape of a tensor whose ``.shape`` raises: a strided NestedTensor's
    (its components' number, then each dim's size, -1 where they differ), a
    lazy module's UninitializedParameter's (the empty tensor it holds)."""
    if t.is_nested:
        sizes = t._nested_tensor_size().tolist()  # (an op the handler issues: not recorded)
        return (len(sizes), *(col[0] if len(set(col)) == 1 else -1 for col in zip(*sizes)))
    return tuple(t.size())


class RecordingMode(EnginePhase, Writes, TorchDispatchMode):
    """Appends ``(op info index, ins, args, kwargs, outs, seq, code, line, icode,
    ilasti, module_call, autograd_node, phase, extra)`` per op to ``self.events``."""

    supports_higher_order_operators = True  # torch.cond & co. reach the handler (see composite.py)

    # Slots, not the instance dict: TorchDispatchMode.__exit__ reads ``self.__dict__``,
    # and on Python 3.11 an object whose dict was once read that way loads every
    # attribute slower from then on (~17 ns each, measured; the handler loads ~15
    # per op), which a mode reused for pass after pass (Recorder's) would pay.
    __slots__ = ("capture", "names", "filter_cache", "classify", "off", "autocast", "autocast_on", "max_ops",
                 "engine_codes", "external", "events", "vmeta", "vmap", "vrefs", "stack", "mcalls", "call_counts",
                 "outputs", "output_refs", "inplace_on_view", "n_inputs", "task", "engine_frame", "engine_user",
                 "start_seq", "foreign", "full", "rewraps", "ext_fns")

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # By default torch wraps __torch_dispatch__ in torch._disable_dynamo (~1 µs
        # per op, measured in bench/). Marking the handler's code object "skip,
        # recursively" in Dynamo's eval-frame hook gives the same protection for
        # free; fall back to the wrapper where that private API is missing.
        return not cls._dynamo_skip_marked

    def __init__(self, capture: "Capture") -> None:
        super().__init__()
        self.capture = capture
        self.names = capture.names  # id -> (tensor, qualified name, role) of registered params and buffers
        self.filter_cache = capture.frames.cache
        self.classify = capture.frames.internal
        self.off = False
        self.autocast = False  # autocast seen on during this capture (see composite.call_under_autocast)
        self.autocast_on: Optional[tuple] = None  # inside run_composite: the autocast keys on for its pieces
        self.max_ops = capture.max_ops
        self.engine_codes: Dict[int, Tuple[Any, bool]] = {}  # id(code) -> (code, is it torch.autograd's)
        self.external = self._external  # bound once: the generated readers call it for unseen tensors
        self.reset()

    def reset(self) -> None:
        """Start empty buffers for a new pass (old ones belong to the builder)."""
        self.events: List[tuple] = []
        self.vmeta: List[tuple] = []   # per value id: (dtype, device, origin, *shape), see V_*
        self.vmap: Dict[int, int] = {}  # id(tensor) -> value id (of its latest version)
        self.vrefs: List[Any] = []  # per value id: weakref to its tensor (plain ints in vmap: fewer GC-tracked objects)
        self.rewraps: Dict[int, tuple] = {}  # id(subclass tensor) -> (weakref, value id it re-wraps): note_rewrap
        self.ext_fns: List[Any] = []  # grad_fns of the outside tensors the pass read (held until it is built)
        self.stack: List[tuple] = []   # open module calls: (call id, module, path)
        self.mcalls: List[tuple] = []  # (path, type, call index, parent call id, phase, training)
        self.call_counts: Dict[int, int] = {}
        self.outputs: List[int] = []   # value ids returned by root module calls
        self.output_refs: List[Any] = []
        self.inplace_on_view: set = set()  # events that wrote a view (autograd wraps them in CopySlices)
        self.n_inputs = 0
        self.task = -1
        self.engine_frame: Optional[tuple] = None  # (id, f_lasti) of the engine's frame in this graph task
        self.engine_user: tuple = (None, -1)     # ... and the user frame it was called from
        self.start_seq = _get_seq()
        self.foreign = False  # is the op in flight inside a graph task run by another thread?
        self.full = False  # max_ops recorded: the next op cuts the pass off (truncated)

    # -- the hot path ------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        info = _INFOS.get(id(func))
        if info is None:
            info = op_info(func)
        if info.whole:  # a composite or higher-order op: see composite.run_whole
            out = run_whole(self, info, func, args, kwargs)
            if out is not NOT_WHOLE:
                return out
        if self.off:  # (on the stack, recording nothing: the op still runs as in eager, below)
            if self.full:
                self._truncate()
            return call_under_autocast(self, info, args, kwargs) if self.autocast else info.call(*args, **kwargs)

        try:  # nothing torchtrace does may break the user's op: on error record less, run it anyway
            try:
                f = _getframe(1)
                code = f.f_code
                # a piece of a composite op: issued where that op was (run_composite <- run_whole <- the
                # handler <- its caller); an op a nested trace's mode hands on: issued where it was issued
                while code is _PIECES or code is _HANDLER or code is _AUTOCAST_CALL:
                    f = f.f_back.f_back.f_back if code is _PIECES else f.f_back
                    code = f.f_code
            except (ValueError, AttributeError):  # no Python frame below the handler: see _frameless
                f = None
            anode = _current_node()
            if f is None:
                code, line, phase = self._frameless(anode)
                icode, ilasti = None, -1
            else:
                code = icode = f.f_code
                line = ilasti = f.f_lasti
                phase = FORWARD if anode is None else self._backward_phase(anode, f)
            cache = self.filter_cache
            if f is not None and cache.get(id(icode)) is not False:  # not issued by user code itself: walk out
                key = (id(f), ilasti)
                if anode is not None and key == self.engine_frame:
                    # issued by the autograd engine for this graph task (its frame is alive until
                    # the task ends, so its id cannot be reused meanwhile): the same user line
                    code, line = self.engine_user
                else:
                    while f is not None:
                        c = f.f_code
                        internal = cache.get(id(c))
                        if internal is None:
                            internal = self.classify(c)
                        if not internal:
                            break
                        f = f.f_back
                    if f is not None:  # f_lineno scans the line table (O(offset)); build.py maps f_lasti to a line
                        code, line = f.f_code, f.f_lasti
                    elif anode is not None and self.foreign:  # a device thread: only modes' frames below ours
                        code, line = self._task_user()
                    else:
                        code, line = None, -1
                    if anode is not None and icode.co_name in _ENGINE_ENTRIES and self._is_engine(icode):
                        self.engine_frame, self.engine_user = key, (code, line)

            vget = self.vmap.get
            vrefs = self.vrefs
            read = info.readers.get(len(args))
            if read is None:
                read = info.reader(len(args))
            r = read(args, vget, vrefs, self.external, f, info) if read else None
            ins, argv = r if r is not None else self._read_args(info, args, f)
            kw = None
            if kwargs:
                kw = {}
                kw_kinds = info.kw_kinds
                for name, a in kwargs.items():
                    if kw_kinds.get(name, NONTENSOR) == NONTENSOR:
                        kw[name] = a
                    elif isinstance(a, _Tensor):
                        ins += (self._vid(a, f, info),)
                if info.objects:  # a process group: its description, not the object (see _read_args)
                    kw = describe_objects(kw)
            if info.is_seed and phase == FORWARD and f is not None and engine_under_modes(_getframe(1)):
                # ones_like(loss) from torch.autograd: backward starts now; walk the
                # graph before any Node runs (and releases its saved tensors)
                phase = BACKWARD
                self.foreign = False
                capture = self.capture
                capture.seeds.append(_ref(args[0]))
                capture.autograd.on_backward_start(None, capture.backward_roots())
        except Exception as e:
            self._fault(info, e)
            return info.call(*args, **kwargs)

        seq = _get_seq()
        if phase and self.foreign:  # another thread's sequence counter: kept apart (linking.py)
            seq = ~seq
        try:
            if self.autocast:  # the ops this op's kernel calls get the user's autocast, as in eager
                out = call_under_autocast(self, info, args, kwargs)
            else:
                out = info.call(*args, **kwargs)
        except Exception as e:  # the op failed: it ran, with these inputs; kept, then raised as it was
            stack = self.stack
            self.events.append((info.index, ins, argv, kw, (), seq, code, line, icode, ilasti,
                                stack[-1][0] if stack else None, anode, phase, Raised(e)))
            raise

        extra = None
        vmeta = self.vmeta
        n_values = len(vmeta)
        try:
            if not info.mutates and isinstance(out, _Tensor):  # the common case: one fresh tensor
                vmeta.append((out.dtype, out.device, None, *out.shape))
                vrefs.append(_ref(out))
                self.vmap[id(out)] = n_values
                outs = (n_values,)
            else:
                outs = self._outputs(info, args, kwargs, out, f)
                if info.witness is not None and not isinstance(out, (_Tensor, tuple, list)):
                    extra = out
        except Exception:  # an odd tensor (a strided NestedTensor has no sizes): the slow path reads it
            try:
                outs = self._outputs(info, args, kwargs, out, f)
            except Exception as e:  # the op is kept, its outputs are not
                self._fault(info, e, n_values)
                outs = ()

        if info.witness is not None:  # rare: who called the helper that read the data
            if info.handed is not None:  # (a tolist()/numpy() read: what it handed Python, issued where it was)
                extra, caller, lasti = info.handed()
                if caller is not None:
                    icode, ilasti = caller, lasti
            extra = Read(extra, callers_of(f, self.classify) if f is not None else ())
        stack = self.stack
        events = self.events
        events.append((info.index, ins, argv, kw, outs, seq, code, line, icode, ilasti,
                       stack[-1][0] if stack else None, anode, phase, extra))
        if len(events) >= self.max_ops:  # no more room: off, and cut off if another op comes
            self.off = self.full = True
        return out

    def _read_args(self, info: Any, args: tuple, frame: Any) -> tuple:
        """(input value ids, args with None in tensor slots -- or () when every
        slot holds tensors): the general case of the generated readers
        (``OpInfo.reader``), for None or numbers in Tensor slots and tensor lists."""
        vget = self.vmap.get
        vrefs = self.vrefs
        ins: List[int] = []
        argv: List[Any] = []
        scalars = False  # any non-tensor argument? (else the event stores the shared empty tuple)
        for a, k in zip(args, info.kinds):
            if k == TENSOR:
                v = vget(id(a))
                if v is not None and vrefs[v]() is a:
                    ins.append(v)
                    argv.append(None)
                elif isinstance(a, _Tensor):
                    ins.append(self._external(a, frame, info))
                    argv.append(None)
                else:  # None, or a Python number in a Tensor slot (mul(x, 2))
                    argv.append(a)
                    scalars = True
            elif k == NONTENSOR:  # a list (int[] sizes) as a tuple: events of atomic values leave the GC's scans
                argv.append(tuple(a) if type(a) is list else a)
                scalars = True
            else:
                argv.append(None)
                for t in (a if k == TENSOR_LIST else [x for sub in a for x in sub]):
                    if t is not None:
                        ins.append(self._vid(t, frame, info))
        if info.objects:  # a collective's process group: keep its description, never the object
            argv = describe_objects(argv)  # (freeing a ProcessGroupGloo late, under the GIL, deadlocks)
        return tuple(ins), tuple(argv) if scalars else ()

    _dynamo_skip_marked = mark_dynamo_skip(__torch_dispatch__.__code__)

    # -- slow paths ----------------------------------------------------------
    def _external(self, t: Any, frame: Any, info: Any) -> int:
        """First sight of a tensor no op of this pass produced."""
        if not isinstance(t, _Tensor):
            return -1
        v = self._rewrap_of(t)
        if v is not None:
            return v
        known = self.names.get(id(t))  # params and buffers: most outside tensors
        if known is not None and known[0] is t:
            return self._add_value(t, ("ext", known[2], known[1], t.requires_grad))
        role, name = self.capture.classify_external(t, frame, info)
        rg = t.requires_grad
        if rg and type(t) in _PLAIN:  # (its Nodes are older than the pass: linking.py links none to its
            fn = t.grad_fn             # ops; a wrapper subclass's grad_fn is not read here)
            if fn is not None:
                self.ext_fns.append(fn)
        return self._add_value(t, ("ext", role, name, rg))

    def _add_value(self, t: Any, origin: Any, ref: Any = None) -> int:
        """A new value for tensor ``t`` (the hot path inlines this for fresh outputs)."""
        vid = len(self.vmeta)
        try:
            shape = t.shape
        except RuntimeError:
            shape = _odd_shape(t)
        self.vmeta.append((t.dtype, t.device, origin, *shape))
        self.vrefs.append(ref if ref is not None else _ref(t))
        self.vmap[id(t)] = vid
        return vid

    def next_input_name(self) -> str:
        """``input0``, ``input1``, ...: an input no local variable names."""
        self.n_inputs += 1
        return f"input{self.n_inputs - 1}"

    def add_param(self, t: Any, name: str) -> int:
        """A value for parameter ``t`` that no op of the pass read (its gradient was
        computed: a block that ran only backward)."""
        return self._add_value(t, ("ext", "param", name, t.requires_grad))

    def forget(self, t: Any) -> None:
        """``t.data = other`` (patches.py): its next read is a new value."""
        if self.vid_of(t) is not None:
            del self.vmap[id(t)]

    def vid_of(self, t: Any) -> Optional[int]:
        """The value id of tensor ``t`` if this pass has seen it, else None
        (the hot path inlines this for plain args)."""
        v = self.vmap.get(id(t))
        return v if v is not None and self.vrefs[v]() is t else None

    def _vid(self, t: Any, frame: Any, info: Any) -> int:
        """The value id of tensor ``t``, a new external value if unseen."""
        v = self.vid_of(t)
        return v if v is not None else self._external(t, frame, info)

    def live(self) -> Dict[int, Any]:
        """value id -> its tensor (None if dead), for the latest version of every tensor seen."""
        vrefs = self.vrefs
        return {v: vrefs[v]() for v in self.vmap.values()}

    def _fault(self, info: Any, error: Exception, n_values: Optional[int] = None) -> None:
        """Something torchtrace could not read (an exotic tensor, a private API
        that changed): drop what this op half-recorded, say so once, go on."""
        if n_values is not None and len(self.vmeta) > n_values:
            del self.vmeta[n_values:]
            del self.vrefs[n_values:]
            for key in [k for k, v in self.vmap.items() if v >= n_values]:
                del self.vmap[key]
        self.capture.note_fault(info.name, error, stacklevel=4)

    def _truncate(self) -> None:
        self.full = False
        self.capture.truncated = True  # (said when the pass is built: setup ops cut off here are no pass)


_HANDLER = RecordingMode.__torch_dispatch__.__code__  # (a nested trace's mode hands its ops on to ours from it)
