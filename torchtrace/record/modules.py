"""Module scope: our own stack of module *calls* on global forward hooks.

Each pre-hook pushes ``(call id, module, path)``; the post-hook
(``always_call=True``, so exceptions pop too) pops back to that module.
Paths are real paths in this call: a module is named by the attribute under
which its *calling* parent holds it, falling back to the ``named_modules``
path closest to the caller. ``ModuleTracker``/``ModTracker`` are not used: they
keep a set of class-derived names and lose call multiplicity.
"""
from __future__ import annotations

import sys
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from .._memo import remember
from .compiled import COMPILED_WRAPPER as _COMPILED
from .compiled import is_compiled_in_place
from .composite import see_autocast
from .inert import ForwardHook

if TYPE_CHECKING:  # pragma: no cover
    from .capture import Capture

_task_id = torch._C._current_graph_task_id
_get_ident = threading.get_ident


# Shared by every trace (a fresh trace would otherwise pay ~0.1 ms to name a GPT-2's
# modules, bench/): id-keyed, each entry confirms its modules through weak references
# (a recycled id never hits, no module is kept alive), cleared when large:
# (id(parent), parent path, id(module)) -> (ref, parent ref, path, attribute name)
_CHILD_PATHS: Dict[tuple, tuple] = {}
_MAX_ENTRIES = 50000  # above any model's module count: a bound, not an eviction policy


_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)


def _inner_prefixes(path: str, n: int) -> List[str]:
    """The paths between the first ``n`` parts of ``path`` and ``path`` itself."""
    parts = path.split(".")
    return [".".join(parts[:k]) for k in range(max(n, 1), len(parts))]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


class ModuleScope:
    def __init__(self, capture: "Capture") -> None:
        self.capture = capture
        self.depth = 0  # open module calls, kept even while not recording
        self.handles: List[Any] = []
        # paths of calls whose parent does not hold the module (a ModuleList's items called
        # by the list's owner): they depend on this trace's roots, so they are kept here
        self.other_paths: Dict[tuple, tuple] = {}
        # calls whose forward returned a generator: id(its code) -> [(generator ref, the call's
        # stack entry)]; the modules its body calls as the caller iterates belong under it
        self.generators: Dict[int, List[Tuple[Any, tuple]]] = {}
        self.generator_children: set = set()  # call ids made under such a call
        # id(stack entry) -> (entry, the hook that ends that call after the module's own; see _pre)
        self.late: Dict[int, Tuple[tuple, Any]] = {}
        self.spent: Dict[int, List[Any]] = {}  # id(module) -> such hooks that ran: removed at its next call
        self.nth: Dict[Tuple[int, int], int] = {}  # (Sequential's call id, id(module)) -> its calls of it so far

    def install(self) -> None:
        self.depth = 0  # (no call is open to these hooks yet)
        self.handles = []  # (filled one by one: remove() takes out what an interrupt left half done)
        self.handles.append(register_module_forward_pre_hook(self._pre))
        self.handles.append(register_module_forward_hook(self._post, always_call=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.depth = 0  # (no post-hook will close the calls open now)
        self._drop_late()

    def _drop_late(self) -> None:
        """Remove every hook that ends a call after the module's own (``_pre``)."""
        for h in (*(h for _, h in self.late.values()), *(h for hs in self.spent.values() for h in hs)):
            h.remove()
        self.late.clear()
        self.spent.clear()

    # -- hooks -----------------------------------------------------------------
    def _pre(self, module: torch.nn.Module, args: Tuple[Any, ...], frame: Any = None) -> None:
        cap = self.capture
        if _get_ident() != cap.tid and not self._carried():
            return None
        typ = type(module).__name__  # (a read per call: cheaper than any cache of it)
        if typ == _COMPILED:  # torch.compile wrapper: transparent
            cap.compile_guard.again()
            cap.saw_compiled(module, at_top=self.depth == 0)
            return None
        if is_compiled_in_place(module):  # nn.Module.compile(): runs eagerly under the mode too
            cap.saw_compiled(module)
        owner = None
        if self.depth == 0:
            if frame is None:
                frame = sys._getframe(1)
            owner = self._generator_owner(frame) if self.generators else None
            if owner is None:
                cap.on_root_call(module, args, frame)
        self.depth += 1
        mode = cap.mode
        if mode.off:
            return None
        if not mode.autocast:  # read here: a mode's handler cannot see it
            see_autocast(mode)
        stack = mode.stack
        if stack:
            parent = stack[-1]
            key = (id(parent[1]), parent[2], id(module))
            e = _CHILD_PATHS.get(key)  # hit: still the same two modules, still under that attribute
            path = (e[2] if e is not None and e[0]() is module and e[1]() is parent[1]
                    and parent[1]._modules.get(e[3]) is module else self._path(key, module, parent))
        elif owner is not None:  # the body of a generator forward, run as its caller iterates
            parent = owner
            path = self._path((id(owner[1]), owner[2], id(module)), module, owner)
            self.generator_children.add(len(mode.mcalls))
        else:
            parent = None
            path = self.path_of(module, None)
        counts = mode.call_counts
        k = counts.get(id(module), 0)
        counts[id(module)] = k + 1
        mode.mcalls.append((path, typ, k, parent[0] if parent else None,  # (a frozen ScriptModule has no `training`)
                            "forward" if _task_id() == -1 else "recompute", getattr(module, "training", None)))
        stack.append((len(mode.mcalls) - 1, module, path))
        if module._forward_hooks:  # its own forward hooks run after ours: the call ends after them
            self._end_after_own_hooks(module, stack[-1])
        return None

    def _end_after_own_hooks(self, module: torch.nn.Module, entry: tuple) -> None:
        """torch runs global forward hooks (ours) before a module's own: a hook of
        the user's that replaces the output, or runs ops, would come after the
        call ended. Such a call ends in a forward hook of its own, added last
        (``always_call``: also when the forward raised). It is removed at the
        module's next call or when recording stops, not while it runs: when the
        forward raised, torch loops over the module's hooks dict itself."""
        for h in self.spent.pop(id(module), ()):
            h.remove()

        def end(mod: torch.nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            stack = self.capture.mode.stack
            if not stack or stack[-1] is not entry or (_get_ident() != self.capture.tid and not self._carried()):
                return None  # (a nested call of the same module, another thread's, or one spent)
            self.spent.setdefault(id(module), []).append(self.late.pop(id(entry))[1])
            self._end(module, output)
            return None

        self.late[id(entry)] = (entry, module.register_forward_hook(ForwardHook(end), always_call=True))

    def _post(self, module: torch.nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        cap = self.capture
        if _get_ident() != cap.tid and not self._carried():
            return None
        stack = cap.mode.stack
        if stack and stack[-1][1] is module:  # the usual case: the innermost call returns
            if self.late and self.late.get(id(stack[-1]), (None,))[0] is stack[-1]:
                return None  # it ends after the module's own forward hooks
            self._end(module, output)
            return None
        if type(module).__name__ == _COMPILED:  # a torch.compile wrapper was never pushed
            return None
        self.depth = max(0, self.depth - 1)
        for j in range(len(stack) - 1, -1, -1):  # an exception skipped some post-hooks
            if stack[j][1] is module:
                del stack[j:]
                if j == 0:
                    cap.on_root_return(output)
                break
        return None

    def _end(self, module: torch.nn.Module, output: Any) -> None:
        """The innermost call, of ``module``, returned ``output``."""
        stack = self.capture.mode.stack
        self.depth -= 1
        entry = stack.pop()
        if type(output) is types.GeneratorType:
            self.generators.setdefault(id(output.gi_code), []).append((weakref.ref(output), entry))
        if not stack and entry[0] not in self.generator_children:
            self.capture.on_root_return(output)

    def _generator_owner(self, frame: Any) -> Optional[tuple]:
        """The stack entry of the call whose generator is running, if one is:
        its frame is on the stack above ``frame`` (directly, or through a helper
        function or a ``yield from`` it delegates to)."""
        for _ in range(64):
            if frame is None:
                return None
            for ref, entry in self.generators.get(id(frame.f_code), ()):
                gen = ref()
                if gen is not None and gen.gi_frame is frame:
                    return entry
            frame = frame.f_back
        return None

    def generator_calls(self) -> Dict[int, int]:
        """id(code) -> the call id of the one call whose forward is that generator
        code (its own ops run outside the call; with two such calls they are not told apart)."""
        return {code: calls[0][1][0] for code, calls in self.generators.items() if len(calls) == 1}

    def new_pass(self) -> None:
        self._drop_late()  # (a pass boundary inside a call: the calls it ends belong to the old stack)
        self.generators.clear()
        self.generator_children.clear()
        self.nth.clear()

    def _carried(self) -> bool:
        """Does this other thread run our recording? The autograd engine's device
        threads (where CUDA runs backward) carry the recording thread's mode stack,
        and checkpoint's recompute calls modules there; other threads are not ours."""
        return self.capture.mode in _get_current_dispatch_mode_stack()

    # -- names -----------------------------------------------------------------
    def _path(self, key: tuple, module: torch.nn.Module, parent: tuple) -> str:
        """The path of a call under ``parent``: the attribute under which the parent
        holds the module, remembered by every trace (a pure function of the two
        modules, the attribute and the parent's path); else ``path_of``, which
        depends on this trace's roots and is remembered by this trace only."""
        pmod, ppath = parent[1], parent[2]
        e = self.other_paths.get(key)  # a call seen before in this trace (a ModuleList item: every pass)
        if e is not None and e[0]() is module and e[1]() is pmod:
            return e[2]
        names = [n for n, c in pmod._modules.items() if c is module]
        if len(names) > 1 and isinstance(pmod, torch.nn.Sequential):  # one module at two positions (`act`
            k = self.nth.get((parent[0], id(module)), 0)  # twice): a Sequential calls them in order (not cached)
            self.nth[(parent[0], id(module))] = k + 1
            name = names[k % len(names)]
            return f"{ppath}.{name}" if ppath else name
        name = names[0] if names else None
        if name is not None:
            path = f"{ppath}.{name}" if ppath else name
            remember(_CHILD_PATHS, key, (weakref.ref(module), weakref.ref(pmod), path, name), _MAX_ENTRIES)
            return path
        path = self.path_of(module, parent)
        remember(self.other_paths, key, (weakref.ref(module), weakref.ref(pmod), path), _MAX_ENTRIES)
        return path

    def path_of(self, module: torch.nn.Module, parent: Optional[tuple]) -> str:
        """A root call's path, or that of a call whose caller does not hold the
        module: the ``named_modules`` path closest to the caller's (registering
        an unknown root)."""
        paths = self.capture.module_paths.get(id(module))
        if paths is None:
            return self.capture.register_root(module)
        if parent is None or len(paths) == 1:
            return paths[0]
        best = max(_common_prefix(p, parent[2]) for p in paths)
        near = [p for p in paths if _common_prefix(p, parent[2]) == best]
        if len(near) == 1:
            return near[0]
        # as near: the path through the fewest modules the caller did not call, containers aside (the
        # caller's `self.ml[0](x)` names `ml.0`, not `a.sub` of a submodule `a` that holds it too)
        cap = self.capture
        kinds = {q: type(m) for m in cap._held for q in cap.module_paths.get(id(m), ())}
        return min(near, key=lambda p: sum(not issubclass(kinds.get(q, _CONTAINERS[0]), _CONTAINERS)
                                           for q in _inner_prefixes(p, best)))
