"""What torchtrace changes in torch while any capture is started: seven class
attributes and one module attribute, one warning filter, and (until Dynamo is loaded) an import finder.

* ``torch.inference_mode.__exit__``: the block puts back, on exit, the thread's
  dispatch keys as they were on entry, and those say whether a dispatch mode
  is on (the Python keys). A Recorder that takes its mode off or puts it on
  inside such a block (a pass boundary at an evaluation's model call, with
  ``every=K``) would leave the keys out of step with the mode stack: the next
  op then fails in torch ("Hit Python dispatch key but no arguments had
  PyInterpreter") or skips the mode. Each exit sets the Python keys from the
  mode stack again (what pushing and popping a mode set them to).
* ``torch.Tensor.data``: ``t.data = other`` swaps a tensor's data with no op a
  dispatch mode sees. ``Module.to()``/``.double()``/``.half()`` do it to every
  parameter, a lazy module's first call to its own, and older pruning and
  weight-drop code in forward pre-hooks. A pass would keep reading the tensor
  as the value it was (its old shape and dtype). On set, every started capture
  forgets the tensor: its next read is a new value, as it is now.
* ``torch.Tensor.as_subclass``: ``Tensor.__torch_function__`` returns each
  result of an op on a ``torch.Tensor`` subclass re-wrapped as the subclass,
  a new tensor over the same data that no op the mode sees makes. Every started
  capture takes the re-wrap for the value it wraps (read as a new constant, the
  dataflow fell apart).
* ``torch.autocast.__enter__``: autocast entered inside a pass, where no module
  pre-hook runs after it (functional code, a forward's own ``with``), is noted
  by every started capture (``composite.see_autocast``): a dispatch mode's
  handler runs with autocast's keys off and cannot tell. Unnoted, ops that
  autocast passes through (``affine_grid``, ``einsum`` under inference_mode)
  ran their pieces in float32 where eager gives bfloat16.
* ``torch.Tensor.tolist`` and ``torch.Tensor.numpy``: reads of tensor data that
  reach no dispatcher; each call is recorded as a witness (``dataread``). So is
  the text of a tensor, through ``torch._tensor_str._str`` (a module attribute).
* ``torch.optim.Optimizer.zero_grad``: the norms of the gradients the pass's
  backward left on its parameters are read first (``AutogradTracker.read_norms``):
  ``set_to_none=False`` zeroes them in place, and with the default cut the next
  step's ``zero_grad()`` at the top of a loop is still in the pass. Not
  ``nn.Module.zero_grad``: setting an attribute of ``nn.Module`` drops the
  interpreter's caches for every module class, and the forward after each
  start and stop paid for it (+30-90 µs per capture of the MLP, measured).

* The warning ``torch.compile(module)``'s wrapper gives at each call while any
  global module hook is on: torchtrace's are (module scope), and they take the
  wrapper for its module. The script's own ``warnings.simplefilter("error")``
  (pytest's ``-W error``) made its compiled model fail under ``torchtrace run``.
  The filter goes in front while held and is taken out after; it matches only while held (a
  `catch_warnings()` left after the release puts an inert copy back, taken out at the next hold).

* A finder first on ``sys.meta_path`` while Dynamo is not loaded: when its
  ``eval_frame`` module is imported (``torch.compile`` or ``torch.cond`` first called
  inside a pass, after the model call), every started capture sets its stance and
  watch at once (``DynamoImport``), as it does at a root call.

Counted: traces that end out of order, or in other threads, keep a patch until
the last one stops; then the class is as it was.
"""
from __future__ import annotations

import re
import sys
import threading
import warnings
from typing import Any, Callable, Optional

import torch

from .compiled import EVAL_FRAME
from .composite import see_autocast
from .dataread import noting_reads, noting_text
from .fork import STARTED
from .setdata import note_data

_C = torch._C
_KEYS = tuple(getattr(_C.DispatchKey, k) for k in ("Python", "PythonTLSSnapshot") if hasattr(_C.DispatchKey, k))
_MISSING = object()


def sync_python_keys() -> None:
    """The Python dispatch keys on exactly when a dispatch mode is on the stack."""
    on = _C._len_torch_dispatch_stack() > 0
    for k in _KEYS:
        _C._dispatch_tls_set_dispatch_key_included(k, on)


class Held:
    """Something put in place while any capture is started: ``_put()`` when the
    first one starts (False: nothing to put), ``_take()`` when the last one stops
    (``Patches``, which counts the captures under one lock)."""

    def _put(self) -> bool:
        raise NotImplementedError

    def _take(self) -> None:
        raise NotImplementedError


class ClassPatch(Held):
    """``owner.name`` set to ``make(the attribute it replaces)`` while held at
    least once (``make`` returns None: nothing to patch)."""

    def __init__(self, owner: type, name: str, make: Callable[[Any], Optional[Any]]) -> None:
        self.owner, self.name, self.make = owner, name, make
        self._orig: Any = _MISSING  # what owner.__dict__ held (_MISSING: inherited or absent)
        self._made: Any = (_MISSING, None)  # (the attribute replaced last, what make() made of it)

    def _put(self) -> bool:
        self._orig = old = self.owner.__dict__.get(self.name, _MISSING)
        if old is _MISSING:  # inherited (torch.Tensor's `data`), or absent (None: nothing to wrap)
            old = next((d[self.name] for d in map(vars, self.owner.__mro__[1:]) if self.name in d), None)
        if self._made[0] is not old:  # (a trace per step puts the same patch back each time: made once)
            self._made = (old, self.make(old))
        new = self._made[1]
        if new is None:
            return False
        setattr(self.owner, self.name, new)
        return True

    def _take(self) -> None:
        if self._orig is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self._orig)


def _synced_exit(orig: Any) -> Optional[Callable[..., Any]]:
    if orig is None:
        return None

    def __exit__(self_: Any, *exc: Any) -> Any:
        try:
            return orig(self_, *exc)
        finally:
            sync_python_keys()
    return __exit__


def _forgetting_data(orig: Any) -> Optional[property]:
    if orig is None or not hasattr(orig, "__set__"):
        return None
    get, put, drop = orig.__get__, orig.__set__, getattr(orig, "__delete__", None)

    def data(self: torch.Tensor) -> torch.Tensor:
        return get(self, type(self))

    inner = threading.local()  # (a subclass's __torch_function__ runs this setter again inside torch's)

    def set_data(self: torch.Tensor, new: torch.Tensor) -> None:
        if getattr(inner, "on", False):
            return put(self, new)
        inner.on = True
        try:
            put(self, new)
        finally:
            inner.on = False
        if STARTED:
            frame = sys._getframe(1)
            for cap in list(STARTED):
                note_data(cap, self, new, frame)

    def del_data(self: torch.Tensor) -> None:  # (torch's own error, as without the patch)
        if drop is None:
            raise AttributeError("can't delete attribute 'data'")
        drop(self)
    return property(data, set_data, del_data, doc=getattr(orig, "__doc__", None))


def _noting_rewraps(orig: Any) -> Optional[Callable[..., Any]]:
    if orig is None:
        return None

    def as_subclass(self: torch.Tensor, cls: type) -> torch.Tensor:
        out = orig(self, cls)
        for cap in list(STARTED):
            cap.mode.note_rewrap(out, self)
        return out
    return as_subclass


def _noting_autocast(orig: Any) -> Optional[Callable[..., Any]]:
    if orig is None:
        return None

    def __enter__(self_: Any) -> Any:
        out = orig(self_)
        for cap in list(STARTED):
            see_autocast(cap.mode)
        return out
    return __enter__


def _reading_norms_first(orig: Any) -> Optional[Callable[..., Any]]:
    if orig is None:
        return None

    def zero_grad(self_: Any, *args: Any, **kwargs: Any) -> Any:
        holding = [cap for cap in list(STARTED) if cap.autograd.grads] if STARTED else ()  # (an unsampled step: none)
        if holding:
            try:  # (the parameters it zeroes)
                params = [p for group in self_.param_groups for p in group["params"]]
            except Exception:  # (an odd optimizer: its norms are read at the build, as before)
                params = []
            for cap in holding:
                cap.autograd.read_norms(params)
        return orig(self_, *args, **kwargs)
    zero_grad.__doc__ = getattr(orig, "__doc__", None)
    return zero_grad


PATCHES = (ClassPatch(torch.autograd.grad_mode.inference_mode, "__exit__", _synced_exit),
           ClassPatch(torch.Tensor, "data", _forgetting_data),
           ClassPatch(torch.Tensor, "as_subclass", _noting_rewraps),
           ClassPatch(torch.amp.autocast_mode.autocast, "__enter__", _noting_autocast),
           ClassPatch(torch.Tensor, "tolist", noting_reads("tolist")),
           ClassPatch(torch.Tensor, "numpy", noting_reads("numpy")),
           ClassPatch(torch._tensor_str, "_str", noting_text),  # (a module's attribute: no type cache to drop)
           ClassPatch(torch.optim.Optimizer, "zero_grad", _reading_norms_first))


class _WhileHeld:
    """A filter's message pattern that matches only while its ``QuietWarning`` is
    held: a ``warnings.catch_warnings()`` entered after the hold and left after the
    release puts back the list it saved, our entry in it; that entry is inert."""

    def __init__(self, owner: "QuietWarning", pattern: str) -> None:
        self.owner, self.pattern = owner, re.compile(pattern, re.I)

    def match(self, text: str) -> Any:
        return self.owner._filter is not None and self.pattern.match(text)


class QuietWarning(Held):
    """A ``warnings`` filter that ignores ``message`` (a regex) while held at least once."""

    def __init__(self, message: str, category: type) -> None:
        self.category = category
        self._matcher = _WhileHeld(self, message)
        self._filter: Any = None

    def _put(self) -> bool:  # (in place, not by filterwarnings(): that resets every "once" memory)
        self._sweep()
        self._filter = ("ignore", self._matcher, self.category, None, 0)
        warnings.filters.insert(0, self._filter)
        return True

    def _take(self) -> None:
        for k, f in enumerate(warnings.filters):
            if f is self._filter:  # (the script may have put filters in front of ours since)
                del warnings.filters[k]  # (an ignored warning left no registry entry to reset)
                break
        self._filter = None  # (a copy a catch_warnings() puts back is inert: swept at the next hold)

    @staticmethod
    def _sweep() -> None:
        """Take out the inert copies a ``catch_warnings`` put back."""
        warnings.filters[:] = [f for f in warnings.filters
                               if not (isinstance(f[1], _WhileHeld) and f is not f[1].owner._filter)]


class _ThenGuard:
    """A loader that runs Dynamo's ``eval_frame`` module, then sets every started
    capture's stance and watch (``CompileGuard.again``); the rest is its own loader's."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # (get_source, get_code, is_package: inspect and linecache)
        if name == "_loader" or name.startswith("__"):  # (copy and pickle make one without __init__)
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        for cap in list(STARTED):
            cap.compile_guard.again()


class DynamoImport(Held):
    """Dynamo loaded inside a pass where no root call follows (``torch.compile(f)``
    after the model call, ``torch.cond``, which compiles its branches) ran its
    compiled code under the mode with no stance: Dynamo skipped those frames for
    good (pytorch#190286), and the pass said no compiled code ran. While held and
    Dynamo is not loaded, a finder first on ``sys.meta_path`` hands its
    ``eval_frame`` module a loader that guards every started capture (``_ThenGuard``)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != EVAL_FRAME:
            return None
        # the finders after this one, as the import system asks them (no import of the package here: the
        # import lock is held, and another thread may hold the package's)
        finders = sys.meta_path[sys.meta_path.index(self) + 1:] if self in sys.meta_path else []
        for finder in finders:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenGuard(spec.loader)
                return spec
        return None

    def _put(self) -> bool:
        if EVAL_FRAME in sys.modules:
            return False
        sys.meta_path.insert(0, self)
        return True

    def _take(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


HOOKED_COMPILE = QuietWarning(r"Using `torch\.compile\(module\)` when there are global hooks", UserWarning)
DYNAMO_IMPORT = DynamoImport()


_HOLDERS: set = set()  # the started captures' Patches: the first puts them in place, the last takes them out
_PUT: list = []  # what the first one put in place
_HOLD_LOCK = threading.Lock()


class Patches:
    """One capture's hold on :data:`PATCHES` and :data:`HOOKED_COMPILE`, from
    start() to stop(): the first capture to start puts them in place, the last
    one to stop takes them out."""

    def start(self) -> None:
        with _HOLD_LOCK:
            if self in _HOLDERS:
                return
            if not _HOLDERS:
                try:
                    _PUT.extend(p for p in (*PATCHES, HOOKED_COMPILE, DYNAMO_IMPORT) if p._put())
                except BaseException:  # (none half in place: take back what went in)
                    _take_all()
                    raise
            _HOLDERS.add(self)

    def stop(self) -> None:
        with _HOLD_LOCK:
            if self not in _HOLDERS:
                return
            _HOLDERS.discard(self)
            if not _HOLDERS:
                _take_all()


def _take_all() -> None:
    while _PUT:
        _PUT.pop()._take()
