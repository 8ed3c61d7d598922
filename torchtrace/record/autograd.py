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

from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, cast

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

_ENGINE = torch.autograd.Variable._execution_engine

_SAVED_ATTRS: Dict[type, Tuple[str, ...]] = {}


def node_key(node: Any) -> tuple:
    """Identity of a C++ Node that survives re-wrapping: (sequence nr, name),
    or the leaf tensor for AccumulateGrad (whose sequence nr is UINT64_MAX)."""
    name = node.name()
    if name.endswith("AccumulateGrad"):
        return ("acc", id(node.variable))
    return (node._sequence_nr(), name)


def _saved_storages(node: Any) -> List[Tuple[int, int]]:
    """(data_ptr, nbytes) of each storage the Node holds for backward."""
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
                    out.append((st.data_ptr(), st.nbytes()))
            except (RuntimeError, NotImplementedError):  # no storage to count (functorch wrappers, meta)
                continue
    return out


def storage_ptrs(t: Any, depth: int = 0) -> List[int]:
    """Data pointers of the storages behind ``t``: its own, or for a wrapper
    subclass with no storage of its own (DTensor, quantized wrappers) those of
    the tensors it wraps (``__tensor_flatten__``)."""
    if not isinstance(t, torch.Tensor):
        return []
    try:
        return [t.untyped_storage().data_ptr()]
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    try:
        inner: List[Any] = ([getattr(t, name) for name in cast(Any, t).__tensor_flatten__()[0]]
                            if is_traceable_wrapper_subclass(t) else [])
    except Exception:  # a subclass whose flatten fails: its storage is unknown
        return []
    return [p for x in inner for p in storage_ptrs(x, depth + 1)] if depth < 4 else []


class Entry:
    __slots__ = ("node", "key", "name", "seq", "kids", "storages", "variable", "hooked", "order", "aid")

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


class AutogradTracker:
    """Collects the Nodes reachable from a pass's outputs and backward roots."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.entries: Dict[tuple, Entry] = {}
        # id(wrapper) -> its Entry, for the wrappers the Entries hold (torch keeps one
        # Python wrapper per Node while it is alive): no key is computed for a Node twice
        self.by_obj: Dict[int, Entry] = {}
        self.executed: List[tuple] = []
        self.handles: List[Any] = []
        self.backward_ran = False
        self.grads: Dict[tuple, Any] = {}  # AccumulateGrad key -> the .grad backward left (until the build)

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
        if e is None:
            e = self.entries[key] = Entry(node, key, len(self.entries))
            self.by_obj[id(node)] = e
        return e  # (a second wrapper of a walked Node is not cached: nothing holds it)

    def key_of(self, node: Any) -> tuple:
        e = self._held(node)
        return e.key if e is not None else node_key(node)

    def next_aids(self, e: Entry) -> Tuple[str, ...]:
        """The IR ids of ``e``'s children that have an Entry, in edge order."""
        by_obj, out = self.by_obj, []
        for k in e.kids:  # (``_held`` inlined: two kids per Node, every Node of the pass)
            c = by_obj.get(id(k))
            if c is None or c.node is not k:
                c = self.entries.get(node_key(k))
                if c is None:
                    continue
            out.append(c.aid)
        return tuple(out)

    def walk(self, roots: Iterable[Any], hook: bool) -> None:
        entry = self.entry
        stack = [r for r in roots if r is not None]
        seen: Set[int] = set()  # Entry orders visited by this walk
        while stack:
            e = entry(stack.pop())
            if e.order in seen:
                continue
            seen.add(e.order)
            stack.extend(reversed(e.kids))
            if hook and not e.hooked:
                e.hooked = True
                self.handles.append(e.node.register_prehook(self._make_prehook(e.key)))

    def _make_prehook(self, key: tuple) -> Any:
        executed = self.executed

        def prehook(grad_outputs: Any) -> None:
            executed.append(key)
            return None

        return prehook

    def on_backward_start(self, current: Any, roots: List[Any]) -> None:
        """Called at the gradient seed (``current`` is None) and at the first
        backward op of each graph task (``current`` is the Node running): no
        Node has released its saved tensors yet, so saved bytes are exact."""
        self.backward_ran = True
        if current is None:  # called at the gradient seed, before the engine starts
            self.walk(roots, hook=True)
            return
        key = self.key_of(current)
        was_hooked = key in self.entries and self.entries[key].hooked
        self.walk([current, *roots], hook=True)
        if not was_hooked:  # its pre-hook time has passed: it is running now
            self.executed.append(key)
        try:  # (inside the graph task: the engine runs it when the task ends)
            _ENGINE.queue_callback(self._at_backward_end)
        except RuntimeError:  # not inside one after all: the gradients are read when the pass is built
            pass

    def _at_backward_end(self) -> None:
        """The gradient tensors this backward left (``gradnorms``): references only,
        no op (their norms are taken when the pass is built). It runs inside the
        user's backward: nothing may escape it (the build then reads ``.grad``)."""
        for k in dict.fromkeys(self.executed):
            if k[0] == "acc" and k in self.entries:
                try:
                    g = getattr(self.entries[k].variable, "grad", None)
                except Exception:  # an exotic leaf
                    continue
                if isinstance(g, torch.Tensor):
                    self.grads[k] = g

    def close(self) -> None:
        """Remove every pre-hook; nothing of ours stays on the user's graph."""
        for h in self.handles:
            h.remove()
        self.handles = []
