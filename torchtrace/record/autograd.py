"""The autograd graph of a pass: Nodes, edges, saved-tensor bytes, and the
order in which backward ran them.

The graph is walked through ``next_functions`` when backward starts (before
any Node has released its saved tensors) and when the pass is built, from the
pass's outputs (held weakly: a graph whose outputs were dropped is gone) and
the tensors backward was called on. Saved
tensors are read through ``_raw_saved_*`` without unpacking: a saved tensor
that has pack/unpack hooks (activation checkpointing, offloading) is never
unpacked, because unpacking would run the user's hook (e.g. recompute).
Execution order comes from pre-hooks on the walked Nodes, removed when the
pass ends. Node wrappers are held only until the pass is built.
"""
from __future__ import annotations

import os
import sys
import weakref
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, cast

import torch
from torch.utils._python_dispatch import _disable_current_modes, is_traceable_wrapper_subclass

from ..errors import warn
from .gradnorms import grad_infos

_ENGINE = torch.autograd.Variable._execution_engine
_grad_enabled = torch.is_grad_enabled
_task_id = torch._C._current_graph_task_id

_SAVED_ATTRS: Dict[type, Tuple[str, ...]] = {}
# torch without SavedTensor.data (2.4 and 2.6 lack it; 2.13 has it): a saved tensor cannot be read
# without running its unpack hook, so saved_bytes read 0
_OLD_TORCH = not hasattr(getattr(torch._C._autograd, "SavedTensor", None), "data")
_warned_old: List[bool] = []


def warn_if_old_torch() -> None:
    """Say once per process that this torch lacks what the autograd record reads."""
    if _OLD_TORCH and not _warned_old:
        _warned_old.append(True)
        warn(f"torchtrace is verified on torch 2.13 and 2.14; torch {torch.__version__} has no "
             "SavedTensor.data: every autograd node's saved_bytes read 0, and the backward of a custom "
             "autograd.Function under a reentrant checkpoint is linked to no Node. Fix: pip install "
             "'torch>=2.13'")


def _dead() -> None:  # the leaf_ref of an AccumulateGrad Node without a tensor
    return None


def node_key(node: Any) -> tuple:
    """Identity of a C++ Node that survives re-wrapping: (sequence nr, name),
    or the leaf tensor for AccumulateGrad (whose sequence nr is UINT64_MAX)."""
    try:
        name = node.name()
    except RuntimeError:  # a custom Function's Node torch has let go (a reentrant checkpoint's inner
        return ("released", type(node).__name__, id(node))  # backward): torch 2.6 crashed on any more
    if name.endswith("AccumulateGrad"):
        return acc_key(node.variable)
    return (node._sequence_nr(), name)


def acc_key(leaf: Any) -> tuple:
    """The key of the AccumulateGrad Node of ``leaf`` (a parameter)."""
    return ("acc", id(leaf))


def _saved_storages(node: Any) -> List[Tuple[int, int]]:
    """(storage key, nbytes) of each storage the Node holds for backward (the key:
    as ``storage_keys``)."""
    attrs = _SAVED_ATTRS.get(type(node))
    if attrs is None:
        attrs = _SAVED_ATTRS[type(node)] = tuple(a for a in dir(node) if a.startswith("_raw_saved_"))
    out: List[Tuple[int, int]] = []
    for attr in attrs:
        try:
            raw = getattr(node, attr)
        except RuntimeError:  # already released by a backward
            continue
        for saved in raw if isinstance(raw, (list, tuple)) else (raw,):
            if saved is None or getattr(saved, "unpack_hook", True) is not None:
                continue  # hooked (checkpoint/offload) or unknown: its memory is not an activation here
            try:
                data = saved.data
            except RuntimeError:
                continue
            try:
                if isinstance(data, torch.Tensor) and data.layout == torch.strided and data.numel():
                    st = data.untyped_storage()
                    out.append((st._cdata, st.nbytes()))
            except (RuntimeError, NotImplementedError):  # no storage to count (functorch wrappers, meta)
                continue
    return out


def _grad_inputs() -> List[Any]:
    """The tensors the ``torch.autograd.grad`` call running this backward returns
    the gradients of (its ``inputs``, read from its frame on this thread's stack:
    no AccumulateGrad runs for them); [] under ``backward()``."""
    f = sys._getframe(1)
    while f is not None:
        code = f.f_code
        if code.co_name == "grad" and code.co_filename.endswith(_GRAD_FILE):
            got = f.f_locals.get("t_inputs")
            return list(got) if isinstance(got, tuple) else []
        f = f.f_back
    return []


_GRAD_FILE = os.path.join("torch", "autograd", "__init__.py")


def grad_fns(refs: List[Any]) -> List[Any]:
    """The distinct grad_fns of the tensors still alive behind ``refs``."""
    roots, seen = [], set()
    for r in refs:
        t = r()
        fn = getattr(t, "grad_fn", None) if t is not None else None
        if fn is not None and id(fn) not in seen:
            seen.add(id(fn))
            roots.append(fn)
    return roots


def storage_keys(t: Any, depth: int = 0) -> List[int]:
    """Keys of the storages behind ``t``: its own, or for a wrapper subclass with
    no storage of its own (DTensor, quantized wrappers) those of the tensors it
    wraps (``__tensor_flatten__``). A storage's key is its C++ object (views
    share it), not its data pointer: every storage on the meta device, or under
    FakeTensorMode, has data pointer 0."""
    if not isinstance(t, torch.Tensor):
        return []
    try:
        return [t.untyped_storage()._cdata]
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    try:
        inner: List[Any] = ([getattr(t, name) for name in cast(Any, t).__tensor_flatten__()[0]]
                            if is_traceable_wrapper_subclass(t) else [])
    except Exception:  # a subclass whose flatten fails: its storage is unknown
        return []
    return [p for x in inner for p in storage_keys(x, depth + 1)] if depth < 4 else []


_CUSTOM = torch.autograd.function.BackwardCFunction  # the Node class of every custom autograd.Function


class Entry:
    __slots__ = ("node", "key", "name", "seq", "kids", "storages", "variable", "hooked", "order", "aid", "leaf_ref",
                 "custom", "made")

    def __init__(self, node: Any, key: tuple, order: int) -> None:
        self.node = node  # held: while it lives, torch hands out this same wrapper for the Node
        self.key = key
        acc = key[0] == "acc"
        self.name = "torch::autograd::AccumulateGrad" if acc else key[1]
        self.seq: Optional[int] = None if acc else key[0]
        self.kids: List[Any] = [n for n, _ in node.next_functions if n is not None]  # held too
        self.storages = _saved_storages(node)
        self.variable = getattr(node, "variable", None) if acc else None
        self.hooked = False
        self.order = order
        self.aid = ""  # its IR id, given when the pass is built
        self.leaf_ref: Any = None  # the leaf, weakly, once the Node is let go (``release``)
        self.custom = isinstance(node, _CUSTOM)  # a custom autograd.Function's (held past ``release``)
        self.made: Any = None  # a custom Function's: where its op was found when backward began (linking.py)

    def leaf(self) -> Any:
        """The tensor an AccumulateGrad Node accumulates into (None: another Node, or gone)."""
        return self.variable if self.leaf_ref is None else self.leaf_ref()


class AutogradTracker:
    """Collects the Nodes reachable from a pass's outputs and backward roots."""

    def __init__(self) -> None:
        self.on_release: Any = None  # called with {id(Node): key} of the Nodes let go (see release)
        # [(Node, sequence nr)] -> where the ops that made custom Functions' outputs are, read when backward
        # starts, while those outputs are alive (linking.custom_runs_at)
        self.find_custom: Any = None
        self.reset()

    def reset(self) -> None:
        self.entries: Dict[tuple, Entry] = {}
        # id(wrapper) -> its Entry, for the wrappers the Entries hold (torch keeps one
        # Python wrapper per Node while it is alive): no key is computed for a Node twice
        self.by_obj: Dict[int, Entry] = {}
        self.executed: List[tuple] = []
        self.handles: List[Any] = []
        self.backward_ran = False
        # graph task -> the grad mode the engine ran its last hooked Node in (on under create_graph=True):
        # code of the user's in a Node that turns grad on itself (a checkpoint Function's re-run) is
        # recompute, also after a backward that Node ran inside (a reversible layer's, per block)
        self.engine_grad: Dict[int, bool] = {}
        self.grads: Dict[tuple, Any] = {}  # AccumulateGrad key -> the .grad backward left (until the build)
        self.norms: Dict[tuple, tuple] = {}  # key -> (shape, dtype, norm) of grads[key], read before a zero_grad()
        self.open_tasks: Dict[int, bool] = {}  # graph tasks whose end callback is queued -> nested?
        # graph task -> len(executed) when the last task before it ended: its Nodes (and those of tasks
        # nested in it) are the ones executed from there on
        self.task_start: Dict[int, int] = {}
        self.last_end = 0
        self.grad_inputs: Dict[int, Any] = {}  # id -> parameter torch.autograd.grad was asked the gradient of
        # (sequence nr, name) of Nodes that another Node had too: sequence numbers count per thread
        self.twins: Set[tuple] = set()
        self.customs: List[Entry] = []  # custom Functions' Entries made since the last ``_find_custom``

    def _held(self, node: Any) -> Optional[Entry]:
        """The Entry that holds this very wrapper, if any (no key computed)."""
        e = self.by_obj.get(id(node))
        return e if e is not None and e.node is node else None

    def entry(self, node: Any) -> Entry:
        """The Entry of ``node``, made (and its edges and saved tensors read) on first sight."""
        e = self._held(node)
        if e is not None:
            return e
        key = node_key(node)
        e = self.entries.get(key)
        if e is not None and e.node is not None and e.node is not node:  # a held Node is its own wrapper: not it
            self.twins.add(key)  # (made by another thread: a feature extractor run in a worker, a device thread)
            key, e = (*key, len(self.entries)), None
        if e is None:
            e = self.entries[key] = Entry(node, key, len(self.entries))
            self.by_obj[id(node)] = e
            if e.custom:
                self.customs.append(e)
        return e  # (a second wrapper of a walked Node is not cached: nothing holds it)

    def key_of(self, node: Any) -> tuple:
        if type(node) is tuple:  # a released leaf's Node, by its key
            return node
        e = self._held(node)
        return e.key if e is not None else node_key(node)

    def next_aids(self, e: Entry) -> Tuple[str, ...]:
        """The IR ids of ``e``'s children that have an Entry, in edge order."""
        by_obj, out = self.by_obj, []
        for k in e.kids:  # (``_held`` inlined: two kids per Node, every Node of the pass)
            c = by_obj.get(id(k))
            if c is None or c.node is not k:
                c = self.entries.get(k if type(k) is tuple else node_key(k))  # (a key: a released leaf)
                if c is None:
                    continue
            out.append(c.aid)
        return tuple(out)

    def walk(self, roots: Iterable[Any], hook: bool) -> None:
        with torch._C.DisableTorchFunction():  # (reads no TorchFunctionMode of the user's should see)
            self._walk(roots, hook)

    def _walk(self, roots: Iterable[Any], hook: bool) -> None:
        entry = self.entry
        stack = [r for r in roots if r is not None]
        seen: Set[int] = set()  # Entry orders visited by this walk
        while stack:
            x = stack.pop()
            e = self.entries.get(x) if type(x) is tuple else entry(x)  # (a key: a released Node)
            if e is None or e.order in seen:
                continue
            seen.add(e.order)
            stack.extend(reversed(e.kids))
            if hook and not e.hooked and e.node is not None:
                e.hooked = True
                self.handles.append(e.node.register_prehook(self._make_prehook(e.key)))

    def _find_custom(self) -> None:
        """Note where each custom Function's op is while its output lives (see ``find_custom``)."""
        pending = [e for e in self.customs if e.made is None and e.node is not None]
        self.customs = []
        if pending and self.find_custom is not None:
            for e, made in zip(pending, self.find_custom([(e.node, e.seq) for e in pending])):
                e.made = made or False

    def _make_prehook(self, key: tuple) -> Any:
        executed, engine_grad = self.executed, self.engine_grad

        def prehook(grad_outputs: Any) -> None:
            executed.append(key)
            engine_grad[_task_id()] = _grad_enabled()
            return None

        return prehook

    def on_backward_start(self, current: Any, roots: List[Any]) -> None:
        """Called at the gradient seed (``current`` is None) and at the first
        backward op of each graph task (``current`` is the Node running): no
        Node has released its saved tensors yet, so saved bytes are exact."""
        self.backward_ran = True
        self.grad_inputs.update((id(p), p) for p in _grad_inputs() if isinstance(p, torch.nn.Parameter))
        if current is None:  # called at the gradient seed, before the engine starts
            self.walk(roots, hook=True)
            self._find_custom()
            return
        key = self.key_of(current)
        was_hooked = key in self.entries and self.entries[key].hooked
        self.walk([current, *roots], hook=True)
        self._find_custom()
        if not was_hooked:  # its pre-hook time has passed: it is running now
            self.executed.append(key)
        task = _task_id()
        if task in self.open_tasks:  # (back in a task after a nested one: its callback is queued)
            return
        self.open_tasks[task] = bool(self.open_tasks)  # nested in another graph task?
        self.task_start[task] = self.last_end
        try:  # (inside the graph task: the engine runs it when the task ends)
            _ENGINE.queue_callback(lambda: self._at_backward_end(task))
        except RuntimeError:  # not inside one after all: the gradients are read when the pass is built
            del self.open_tasks[task]

    def _at_backward_end(self, task: int) -> None:
        """The gradient tensors this backward left on parameters (``gradnorms``):
        references only, no op (their norms are taken when the pass is built). It
        runs inside the user's backward: nothing may escape it (the build then reads
        ``.grad``). At the end of a graph task nested in another (reentrant
        checkpoint's backward, ``autograd.grad`` inside a backward) the Nodes are let
        go (``release``)."""
        ran = set(self.executed[self.task_start.pop(task, 0):])
        self.last_end = len(self.executed)
        for k in dict.fromkeys(self.executed):
            if k[0] == "acc" and k in self.entries:
                v = self.entries[k].variable
                if not isinstance(v, torch.nn.Parameter):  # (see release: another leaf's .grad may flow on)
                    continue
                try:
                    g = getattr(v, "grad", None)
                except Exception:  # an exotic leaf
                    continue
                if isinstance(g, torch.Tensor):
                    self.grads[k] = g
                    if k in ran:  # (read again: at the build, or before a zero_grad() zeroes it)
                        self.norms.pop(k, None)
        if self.open_tasks.pop(task, False):
            self.release()

    def read_norms(self, params: Iterable[Any]) -> None:
        """Read the norms of the gradients backward left on ``params`` now, before a
        ``zero_grad()`` of theirs runs (patches.py): with ``set_to_none=False`` it zeroes
        them in place, and the next step's, at the top of its loop, is still in this pass
        under the default cut. Each is read once, until a backward adds to it again."""
        if not self.grads:
            return
        keys = [k for k in map(acc_key, params) if k in self.grads and k not in self.norms]
        if keys:
            with _disable_current_modes(), torch._C.DisableTorchFunction():  # (no op of it is recorded)
                self.norms.update(zip(keys, grad_infos([self.grads[k] for k in keys])))

    def norm_of(self, key: tuple, grad: Any) -> Optional[tuple]:
        """(shape, dtype, norm) read before a ``zero_grad()``, if ``grad`` is what it read."""
        got = self.norms.get(key)
        return got if got is not None and self.grads.get(key) is grad else None

    def release(self) -> None:
        """Hold the walked Nodes by their keys from here on (and leaves other than
        parameters weakly). A held Node holds the graph below it, down to its leaves,
        and a leaf its ``.grad``: when that gradient flows on into the enclosing
        backward (reentrant checkpoint returns its detached inputs' ``.grad``),
        AccumulateGrad copies it instead of taking it, as it does for any gradient
        something else still holds."""
        keys: Dict[int, tuple] = {id(e.node): e.key for e in self.entries.values() if e.node is not None}
        for e in self.entries.values():
            e.kids = [k if type(k) is tuple else keys.get(id(k)) or node_key(k) for k in e.kids]
            e.node = None
            if e.seq is None and e.leaf_ref is None and not isinstance(e.variable, torch.nn.Parameter):
                try:
                    e.leaf_ref = weakref.ref(e.variable) if e.variable is not None else _dead
                    e.variable = None
                except TypeError:  # not weakly referable: it stays held
                    pass
        self.by_obj.clear()
        if self.on_release is not None:  # the recorded events that hold Nodes too
            self.on_release(keys)

    def close(self) -> None:
        """Remove every pre-hook; nothing of ours stays on the user's graph."""
        for h in self.handles:
            h.remove()
        self.handles = []
