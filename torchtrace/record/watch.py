"""How a Recorder sees model calls while a pass is not sampled: no global
module hooks (such a step keeps torch's hook-free fast path), a pre-hook on each
model seen as a root so far, a one-shot global pre-hook armed at ``step()``
(a model built anew each step) and at the end of some unsampled root calls (a
model called only then: an EMA teacher after a step's second micro-batch)."""
from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import Any, Callable, Dict, Tuple

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.utils.parametrize import ParametrizationList

from .compiled import COMPILED_WRAPPER
from .inert import ForwardHook, PreHook

_task_id = torch._C._current_graph_task_id
_GOLDEN, _PROBED = 0.6180339887498949, 0.0625  # (Watcher._probe_end)


def is_model_call(module: torch.nn.Module) -> bool:
    """Can a call of ``module`` outside any other start a pass? It must hold
    weights, and not be a ``ParametrizationList`` (reading a parametrized
    ``weight`` -- weight_norm, an init, logging its norm -- calls one)."""
    return not isinstance(module, ParametrizationList) and next(module.parameters(), None) is not None


class Watcher:
    """The Recorder's part for passes that are not sampled (a mixin: it reads
    the Recorder's ``capture``, ``_roots`` and ``_sampled``)."""

    capture: Any
    _sampled: bool
    _unsampled_again: Callable[[torch.nn.Module], bool]
    _roots: Dict[int, Tuple[Any, bool, Any]]

    def _init_watcher(self) -> None:
        self._root_handles: Dict[int, Tuple[Any, Any]] = {}  # id -> (weakref, its pre-hook's handle)
        self._armed: Any = None  # the one-shot global pre-hook (_first_call), while armed
        self._probe, self._probing = 0.0, None  # unsampled root calls whose end arms it too (_probe_end)
        self._mortal = False  # a model seen as a root has died (models built anew each step): step() arms

    def _watch(self) -> None:
        cap = self.capture
        assert cap is not None
        watched = self._root_handles
        alive = [r() for r, has, _ in self._roots.values() if has]
        if None in alive:  # (dropped: a model built anew each step leaves one a step)
            self._drop_dead_roots()
            for k in [k for k, e in watched.items() if e[0]() is None]:
                watched.pop(k)[1].remove()
        roots = [m for m in alive if m is not None and not (id(m) in watched and watched[id(m)][0]() is m)]
        if not roots and not watched:  # nothing known to watch (yet, or any more): the global hooks
            self._global_hooks()
            return
        if any(isinstance(m, torch.jit.ScriptModule) for m in roots):  # (refuses hooks of its own: the global ones)
            self._unwatch()
            return
        if cap.scope.handles:
            cap.scope.remove()
        for m in roots:
            watched[id(m)] = (weakref.ref(m), m.register_forward_pre_hook(PreHook(self._root_pre)))

    def _drop_dead_roots(self) -> None:
        """Let go of the roots that died; a model among them (one built anew each step)
        makes ``step()`` arm the first-call hook from here on (``_mortal``)."""
        dead = [k for k, e in self._roots.items() if e[0]() is None]
        self._mortal = self._mortal or any(self._roots[k][1] for k in dead)
        for k in dead:
            del self._roots[k]

    def _unwatch(self) -> None:
        self._unhook()
        self._global_hooks()

    def _global_hooks(self) -> None:
        """The global module hooks back, where a Capture is started without them
        (they see every call: a first-call hook armed before is disarmed)."""
        cap = self.capture
        if cap is not None and cap._installed and not cap.scope.handles:
            self._disarm()
            cap.scope.install()

    def _unhook(self) -> None:
        for _, h in self._root_handles.values():
            h.remove()
        self._root_handles = {}
        self._disarm()

    def _probe_end(self, module: torch.nn.Module) -> None:
        """While unsampled, no hook sees a model that is not a watched root (an EMA
        teacher called only after a step's second, unsampled, micro-batch): at the
        end of some unsampled root calls, the next model call starts a pass too
        (``_root_post``). Which ones: a fraction, equidistributed over any loop's
        period (every position in a step is probed, in turn), so that the hooks'
        cost is a fraction of a step's."""
        self._probe = (self._probe + _GOLDEN) % 1.0
        if self._probe < _PROBED and self._probing is None and self._armed is None:
            self._probing = module.register_forward_hook(ForwardHook(self._root_post), always_call=True)

    def _root_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """The end of a probed root call (``_probe_end``): arms ``_first_call``. Not
        after a forward that returned a generator: its submodules run as the caller
        iterates it."""
        self._stop_probing()
        cap = self.capture
        if cap is not None and not self._sampled and self._armed is None and threading.get_ident() == cap.tid \
                and _task_id() == -1 and type(output) is not types.GeneratorType and not cap.scope.handles:
            self._armed = register_module_forward_pre_hook(self._first_call)

    def _stop_probing(self) -> None:
        if self._probing is not None:
            self._probing.remove()
            self._probing = None

    def _first_call(self, module: torch.nn.Module, args: Any) -> None:
        """Armed by ``step()`` and at the end of a watched root's call while
        unsampled: the next model call starts a pass even when the model is new
        (built anew each step, or first called then), then disarms."""
        cap = self.capture
        if cap is None or threading.get_ident() != cap.tid:
            return None
        if type(module).__name__ == COMPILED_WRAPPER:  # (torch.compile(model) built anew: the model inside is
            self._uncompiled.add(module)               # the call to watch; its next calls skip Dynamo's wrapper)
            return None
        e = self._root_handles.get(id(module))
        if e is None or e[0]() is not module:
            if not is_model_call(module):
                return None  # a loss or a transform before the model: wait for it
            self._disarm()
            return self._root_pre(module, args, sys._getframe(1))
        self._disarm()  # a watched root: its own pre-hook sees this call
        return None

    def _disarm(self) -> None:
        self._stop_probing()
        if self._armed is not None:
            self._armed.remove()
            self._armed = None

    def _root_pre(self, module: torch.nn.Module, args: Any, frame: Any = None) -> None:
        cap = self.capture
        if cap is None or threading.get_ident() != cap.tid:
            return None
        if not self._sampled and self._unsampled_again(module):  # (the common case: recorder.py)
            return None
        scope = cap.scope
        scope.depth = 0
        scope._pre(module, args, frame or sys._getframe(1))  # a pass boundary; opens the call if now sampled
        if not self._sampled:
            scope.depth = 0  # no global post-hook will close it
        return None
