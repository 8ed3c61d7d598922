"""One recording session: the dispatch mode, the module hooks, the names of
params/buffers/inputs, and the turn of raw buffers into a Graph per pass.

``start()`` installs the hooks (and the mode, unless told not to); ``stop()``
removes everything it installed, whatever happened in between.
"""
from __future__ import annotations

import datetime as _dt
import platform
import sys
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import (_disable_current_modes, _get_current_dispatch_mode,
                                          _get_current_dispatch_mode_stack, _pop_mode, _push_mode)

from ..errors import warn
from ..ir import Graph
from .autograd import AutogradTracker, grad_fns, storage_keys, warn_if_old_torch
from .build import build_graph, open_annotations
from .calls import bind_args, call_kwargs, name_inputs, physical, tensors_in, unread_inputs
from .compiled import CompileGuard, after_compiled_call
from .patches import Patches, sync_python_keys
from .composite import see_autocast
from .fork import STARTED
from .interrupts import Uninterrupted, every as _every
from .framelocals import local_name
from .frames import called_by_torch, frame_filter
from .linking import custom_runs_at, hold_by_key
from .mode import E_MOD, E_OUTS, V_ORIGIN, RecordingMode
from .modules import ModuleScope
from .process import grad_mode, process_rank


class Capture:
    def __init__(self, model: Optional[torch.nn.Module] = None, *, skip: Iterable[str] = (),
                 max_ops: Optional[int] = None) -> None:
        warn_if_old_torch()
        self.frames = frame_filter(skip)
        self.skip = tuple(str(s) for s in skip)
        self.max_ops = max_ops if max_ops is not None and max_ops > 0 else sys.maxsize
        self._said_truncated = False
        self.tid = threading.get_ident()
        self.names: Dict[int, Tuple[Any, str, str]] = {}      # id -> (tensor, qualified name, role)
        self.input_names: Dict[int, Tuple[Any, str]] = {}     # id -> (weakref, name)
        self.module_paths: Dict[int, List[str]] = {}
        self.root_paths: Dict[int, str] = {}
        self._held: List[Any] = []  # modules whose ids key the tables above
        self._roots_seen: Dict[int, Any] = {}  # id -> weakref of every root module named so far
        self._fixed_root = model is not None  # trace(model): names relative to it in every pass
        self.open_annotations: Tuple[str, ...] = ()  # record_function markers open when a pass starts
        self.mode = RecordingMode(self)
        self.scope = ModuleScope(self)
        self.autograd = AutogradTracker()
        self.autograd.on_release = lambda keys: hold_by_key(self.mode.events, keys)
        self.autograd.find_custom = lambda nodes: custom_runs_at(self.mode, nodes)
        # pass boundaries (Recorder): (root module, args, the frame holding its kwargs: see call_kwargs)
        self.on_root: Optional[Callable[[torch.nn.Module, tuple, Any], None]] = None
        self.after_root: Optional[Callable[[], None]] = None
        self.after_fork: Optional[Callable[[], None]] = None  # in a forked child, after stop()
        self.on_compiled: Optional[Callable[[torch.nn.Module], None]] = None  # a compiled module's call
        self._compiled_root = False  # a compiled wrapper called at top level: its module's call starts a pass
        self._mode_pushed = False
        self._below: Any = None  # the mode under ours when it was pushed (pop_mode)
        self.compile_guard = CompileGuard(self._saw_compiled_code)  # while started (compiled.py)
        self.patches = Patches()  # while started (patches.py)
        self._installed = False
        self.new_pass()
        if model is not None:
            self.register_root(model, "")

    # -- lifecycle ---------------------------------------------------------------
    def start(self, *, with_mode: bool = True) -> None:
        with Uninterrupted():  # (a Ctrl-C between two steps: stop() undoes what is marked done)
            STARTED.add(self)
            self.compile_guard.start()  # until stop(), sampled pass or not
            self.patches.start()
            self._installed = True  # (before: an interrupt between the two hooks' registrations leaves neither)
            self.scope.install()
            if with_mode:
                self.push_mode()

    def push_mode(self) -> None:
        if not self._mode_pushed:
            see_autocast(self.mode)
            stack = _get_current_dispatch_mode_stack()
            self._below = stack[-1] if stack else None
            self.mode.__enter__()
            self._mode_pushed = True
            after_compiled_call(sync_python_keys)

    def pop_mode(self, *, force: bool = False) -> None:
        if not self._mode_pushed:
            return
        above = []
        if _get_current_dispatch_mode() is not self.mode:
            if not any(m is self.mode for m in _get_current_dispatch_mode_stack()):
                # gone already: the mode below ours was exited inside the block, and torch pops
                # the top mode (ours) whichever exits; its exit is done here, as without us
                self._mode_pushed = False
                self.mode.off = True
                if self._below is not None and _get_current_dispatch_mode() is self._below:
                    _pop_mode()
                return
            # someone entered a mode inside ours and is still in it
            if not force:  # stay on the stack, recording nothing, until a pass boundary
                self.mode.off = True
                return
            while _get_current_dispatch_mode() is not self.mode:  # take theirs off, ours out, theirs back
                above.append(_pop_mode())
        self._mode_pushed = False
        try:
            self.mode.__exit__(None, None, None)
        finally:
            for m in reversed(above):
                _push_mode(m)
            after_compiled_call(sync_python_keys)

    def stop(self) -> None:
        """Remove the mode, the module hooks and any autograd pre-hooks."""
        with Uninterrupted():
            STARTED.discard(self)
            # each step runs even when one before it raised (a KeyboardInterrupt landing in one of them)
            _every(lambda: self.pop_mode(force=True), self._remove_hooks, self.autograd.close,
                   self.compile_guard.stop, self.patches.stop)

    def _remove_hooks(self) -> None:
        if self._installed:
            self.scope.remove()
            self._installed = False

    def dispose(self) -> None:
        """Let go of the model once recording is over: the capture sits in a cycle
        with its mode, which only the cyclic GC frees (``del model`` freed nothing)."""
        self.forget_names()
        self.input_names.clear()
        self._roots_seen.clear()
        self.mode.reset()

    def new_pass(self, *, built: bool = False) -> None:
        """Start a fresh pass; the records so far are dropped unless ``built``."""
        if not built and self.mode.events:  # record_function markers still open carry over
            self.open_annotations = open_annotations(self.mode.events, self.open_annotations)
        self.mode.reset()
        self.input_names.clear()  # (a tensor is named by the root call it is passed to in this pass)
        self.input_aliases: Dict[str, str] = {}  # an input's other name -> its name (one tensor passed twice)
        self.scope.new_pass()
        self.autograd.close()
        self.autograd.reset()
        self.seeds: List[Any] = []
        self.truncated = False
        self.faults = 0
        self.first_fault: Optional[str] = None
        self.compiled = False
        self.had_root_call = False
        self.root_raised = False  # the last root call raised (its post-hook ran with a new exception in flight)
        self._exc_at_root: Any = None  # the exception being handled when it began (called inside an `except`)
        self._rename_at_root = not self._fixed_root  # names relative to this pass's first root
        self.pass_grad_mode = grad_mode()
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def finish_pass(self, **meta: Any) -> Graph:
        """Build the pass recorded so far into a Graph and start a fresh one."""
        full = self.meta()
        full.update(meta)
        if self.truncated and not self._said_truncated:  # (once: a Recorder's every pass may be cut)
            self._said_truncated = True
            warn(f"torchtrace: stopped recording after max_ops={self.max_ops} ops; the graph is marked truncated "
                 "(meta.truncated), as is each later pass cut there. Raise max_ops to record the whole pass.")
        # building issues no op of the user's program, and no call a TorchFunctionMode of theirs sees
        with _disable_current_modes(), torch._C.DisableTorchFunction():
            graph = build_graph(self, self.mode, full)
        self.new_pass(built=True)
        return graph

    def meta(self) -> Dict[str, Any]:
        from .. import __version__

        rank, world = process_rank()
        meta = {"torch": torch.__version__, "torchtrace": __version__, "python": platform.python_version(),
                "created": self.created, "label": None, "step": None, "rank": rank, "world_size": world,
                "grad_mode": self.pass_grad_mode, "compiled_regions_ran_eager": self.compiled,
                "truncated": self.truncated, "skip": list(self.skip), "input_aliases": dict(self.input_aliases),
                **self.fault_meta()}
        unread = unread_inputs(self.input_names, self.mode)
        if unread:
            meta["unread_inputs"] = unread
        return meta

    def saw_compiled(self, module: torch.nn.Module, at_top: bool = False) -> None:
        """A torch.compile'd module was called (it runs eagerly while recorded);
        ``at_top``: outside any module call, so the call it wraps, next, may start
        a pass (``on_root_call`` marks that pass)."""
        if at_top:
            self._compiled_root = True
        else:
            self.compiled = True
        if self.on_compiled is not None:
            self.on_compiled(module)

    def _saw_compiled_code(self) -> None:
        # (not for a Recorder's unsampled pass, nor for the pass that a compiled wrapper's
        # module call is about to end: the pass it starts is marked in on_root_call)
        if not self.mode.off and not self._compiled_root:
            self.compiled = True

    def note_fault(self, what: str, error: BaseException, stacklevel: int = 2) -> None:
        """Something torchtrace could not read (an exotic tensor, a private API that
        changed): count it for ``meta.record_errors``, warn once, go on."""
        self.faults += 1
        if self.faults == 1:
            self.first_fault = f"{what}: {type(error).__name__}: {error}"
            warn(f"torchtrace: could not record all of {self.first_fault}; the graph misses "
                 "that part (meta.record_errors)", stacklevel=stacklevel + 1)

    def fault_meta(self) -> Dict[str, Any]:
        return {"record_errors": {"count": self.faults, "first": self.first_fault}} if self.faults else {}

    # -- module roots and names ------------------------------------------------------
    def register_root(self, module: torch.nn.Module, path: Optional[str] = None) -> str:
        """Name ``module`` and everything under it; returns its path."""
        known = self.root_paths.get(id(module))  # every root call after the first (the modules are held)
        if known is None or self._rename_at_root:
            orig = getattr(module, "_orig_mod", None)  # a torch.compile wrapper names nothing itself
            if isinstance(orig, torch.nn.Module):
                module = orig
                known = self.root_paths.get(id(module))
        if self._rename_at_root:
            self._rename_at_root = False
            if known != "" or len(self.root_paths) > 1:  # another root named the modules: start over
                self.forget_names()
                known = None
        if known is not None:
            return known
        if path is None:
            if not self.root_paths:
                path = ""
            else:
                base = type(module).__name__  # (not a path of the modules named: the root's `self.LayerNorm`)
                taken = set(self.root_paths.values()).union(*self.module_paths.values())
                path = base if base not in taken else next(
                    f"{base}#{k}" for k in range(1, 10**6) if f"{base}#{k}" not in taken)
        self.root_paths[id(module)] = path
        seen = self._roots_seen
        if len(seen) % 64 == 63:  # (a model built anew each step: let the dead ones go)
            for k in [k for k, r in seen.items() if r() is None]:
                del seen[k]
        seen[id(module)] = weakref.ref(module)
        prefix = f"{path}." if path else ""
        for name, m in module.named_modules(remove_duplicate=False):
            full = f"{prefix}{name}" if name else path
            self.module_paths.setdefault(id(m), []).append(full)
            self._held.append(m)
        for name, p in module.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), (p, prefix + name, "param"))
        for name, b in module.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(b), (b, prefix + name, "buffer"))
        return path

    def _adopt_root_of(self, t: torch.Tensor) -> Optional[str]:
        """The name of a parameter of a root seen in an earlier pass, named now as a
        further root of this one (``Linear.weight``): ``loss = B(A(x))`` runs A's
        backward in B's pass."""
        for ref in list(self._roots_seen.values()):
            m = ref()
            if m is not None and id(m) not in self.root_paths and any(p is t for p in m.parameters()):
                self.register_root(m)
                e = self.names.get(id(t))
                return e[1] if e is not None and e[0] is t else None
        return None

    def forget_names(self) -> None:
        """Drop every root's names: a pass's paths and parameter names are relative
        to its own first root (a Recorder's pass of a model whose encoder was called
        first as a pass of its own, as ``generate()`` does)."""
        self.root_paths.clear()
        self.module_paths.clear()
        self.names.clear()  # in place: the mode holds this dict
        self._held.clear()
        self.scope.other_paths.clear()

    def on_root_call(self, module: torch.nn.Module, args: Tuple[Any, ...], frame: Any) -> None:
        self.compile_guard.again()
        if torch._C._current_graph_task_id() == -1:  # (not checkpoint's recompute, which may stop by raising)
            self._exc_at_root = sys.exc_info()[1]
        if self.on_root is not None:
            self.on_root(module, args, frame)
        if self._compiled_root:  # (after the pass boundary: the pass this call is in)
            self._compiled_root = False
            self.compiled = True
        if self.mode.off:
            return
        kwargs = call_kwargs(frame)
        self.register_root(module)
        if not self.had_root_call:
            self.had_root_call = True
            if not called_by_torch(frame):  # (checkpoint's no_grad forward: the pass's mode stays)
                self.pass_grad_mode = grad_mode()
        if torch._C._current_graph_task_id() != -1 and called_by_torch(frame):  # checkpoint's recompute in
            return                                                                # backward: named by the forward
        name_inputs(bind_args(module.forward, args, kwargs), self.input_names, self.input_aliases, self.mode)

    def on_root_return(self, output: Any) -> None:
        outside = torch._C._current_graph_task_id() == -1  # (not checkpoint's recompute inside a backward)
        if outside:
            exc = sys.exc_info()[1]
            self.root_raised = output is None and exc is not None and exc is not self._exc_at_root
        if self.mode.off:
            return
        try:
            if outside:
                self._root_outputs(output)
        finally:
            if self.after_root is not None:
                self.after_root()

    def _root_outputs(self, output: Any) -> None:
        mode = self.mode
        for t in tensors_in(output):
            try:
                vid = mode._vid(t, None, None)  # (one returned untouched, `if skip: return x`, is a value too)
            except Exception as e:  # (a strided NestedTensor has no sizes): the call returns it all the same
                self.note_fault("the root call's output", e, stacklevel=4)
                continue
            if vid >= 0:
                mode.outputs.append(vid)
                # (the tensor returned, whose grad_fn a subclass's re-wrap makes its own: AliasBackward0)
                mode.output_refs.append(weakref.ref(t) if mode.vrefs[vid]() is not t else mode.vrefs[vid])

    # -- lookups used by the mode and the builder ------------------------------------------
    def classify_external(self, t: torch.Tensor, frame: Any, info: Any) -> Tuple[str, Optional[str]]:
        """(role, name) of an outside tensor that is not a registered param or
        buffer (``RecordingMode._external`` looks those up in ``names`` first)."""
        e2 = self.input_names.get(id(t))
        if e2 is not None and e2[0]() is t:
            return "input", e2[1]
        held = self._held_by_module(t)
        if held is not None and held[0] != "constant":
            return held
        if isinstance(t, torch.nn.Parameter):
            return "param", self._adopt_root_of(t) or local_name(t, frame)
        if info is not None and info.name.startswith("aten.lift_fresh"):  # torch.tensor(...)'s data: no local
            return "constant", held[1] if held is not None else None
        if self.had_root_call:
            return "constant", held[1] if held is not None else local_name(t, frame)
        name = local_name(t, frame)
        if name is None:
            if t.device.type == "meta":  # torch's own (the dummy NestedTensor it makes once per process)
                return "constant", None
            name = self.mode.next_input_name()
        return "input", name

    def _held_by_module(self, t: torch.Tensor) -> Optional[Tuple[str, str]]:
        """(role, qualified name) of a tensor the module being called holds: in a
        parameter or buffer slot though not registered ("param"/"buffer":
        ``torch.func.functional_call`` swaps the module's tensors for the call),
        or as a plain attribute ("constant")."""
        stack = self.mode.stack
        if not stack:
            return None
        _, module, path = stack[-1]
        for role, slots in (("param", module._parameters), ("buffer", module._buffers), ("constant", vars(module))):
            for k, v in slots.items():  # (under torch.func.grad the slots hold wrappers of what the mode sees)
                if v is t or isinstance(v, torch.Tensor) and physical(v) is t:
                    return role, f"{path}.{k}" if path else k
        return None

    def backward_roots(self) -> List[Any]:
        """grad_fns of the tensors backward was called on, of the root modules'
        outputs, and of the results of ops run outside any module call that are
        still alive: `loss = model(x).sum()` drops the model's output, and the graph
        is reached from `loss`. (Not every live result: a module's internal results
        can be alive only as saved tensors, on a branch no output leads to.)"""
        mode = self.mode
        vrefs = mode.vrefs
        refs = list(self.seeds) + list(mode.output_refs)
        refs += [vrefs[v] for ev in mode.events if ev[E_MOD] is None for v in ev[E_OUTS]]
        roots = grad_fns(refs)
        # nothing returned a tensor the pass saw (under torch.func.vmap the caller holds the
        # batched results of the tensors recorded): every result still alive is a root
        return roots or grad_fns([vrefs[v] for ev in mode.events for v in ev[E_OUTS]])

    def name_of(self, t: Any) -> Optional[str]:
        e = self.names.get(id(t))
        if e is not None and e[0] is t:
            return e[1]
        if isinstance(t, torch.nn.Parameter):
            adopted = self._adopt_root_of(t)
            if adopted is not None:
                return adopted
        vid = self.mode.vid_of(t)
        origin = None if vid is None else self.mode.vmeta[vid][V_ORIGIN]
        while origin is not None and origin[0] == "ver" and origin[1] >= 0:  # (written in the pass: opt.step())
            origin = self.mode.vmeta[origin[1]][V_ORIGIN]
        return origin[2] if origin is not None and origin[0] == "ext" else None

    def param_storages(self) -> set:
        """The storages of the parameters and buffers: state that lives whether or not
        backward runs (a causal-mask buffer or BatchNorm's running stats that a Node
        saves are not activation memory), those of the roots' modules and those the
        pass read from outside them (an ``nn.Parameter`` no module holds)."""
        state = [p for p, _, role in self.names.values() if role in ("param", "buffer")]
        mode = self.mode
        state += [mode.vrefs[v]() for v, rec in enumerate(mode.vmeta) if rec[V_ORIGIN] is not None
                  and rec[V_ORIGIN][0] == "ext" and rec[V_ORIGIN][1] in ("param", "buffer")]
        return {ptr for p in state if p is not None for ptr in storage_keys(p)}

    def trainable_params(self) -> List[Tuple[Any, str]]:
        seen, out = set(), []
        for p, name, role in self.names.values():
            if role == "param" and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((p, name))
        return out
