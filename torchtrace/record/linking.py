"""Join recorded ops to the autograd Nodes they created, and build the
``autograd`` part of the IR.

An op that creates a Node bumps the thread's autograd sequence counter before
it reaches the dispatch mode, so the Node with ``_sequence_nr() == s`` belongs
to the first op whose counter (read in the handler) is past ``s`` -- or to one
of the next few ops, when autograd itself runs an op in between (the
``clone`` of an in-place op's input it must save). An in-place op on a view
is then wrapped in ``CopySlices`` (the number after the op's). Every join is
checked against the Node's name (``AddmmBackward0`` <-> ``aten.addmm``): a
Node whose name matches no candidate stays unlinked instead of being guessed.
"""
from __future__ import annotations

import bisect
import re
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from ..ir import AutogradNode, GradInfo
from .autograd import node_key
from .gradnorms import grad_infos
from .mode import BACKWARD, E_ANODE, E_CODE, E_ICODE, E_INS, E_OUTS, E_PHASE, E_SEQ
from .rebuilt import REBUILT, link_rebuilt

_BACKWARD_SUFFIX = re.compile(r"Backward\d*$")
_SUMS = ("aten.add.Tensor",)  # how the engine sums two gradients for one input (out of place)
_P_FIRST = frozenset({"aten.linalg_lu.default", "aten.lu_unpack.default"})  # (a permutation, then the factors)


def _stem(s: str) -> str:
    return s.replace("_", "").lower()


def names_match(op: str, node_name: str) -> bool:
    """Could a Node named ``node_name`` (``AddmmBackward0``) come from ``op``
    (``aten.addmm.default``)? A pure function of two names: memoised."""
    key = (op, node_name)
    hit = _MATCHES.get(key)
    if hit is None:
        hit = _MATCHES[key] = _names_match(op, node_name)
    return hit


_MATCHES: Dict[Tuple[str, str], bool] = {}  # (op, Node name) pairs: a few hundred in practice


def _names_match(op: str, node_name: str) -> bool:
    parts = op.split(".")
    base = _stem(parts[1] if len(parts) > 1 else parts[0])
    stem = _stem(_BACKWARD_SUFFIX.sub("", node_name.rsplit("::", 1)[-1]))
    return bool(stem) and (base.startswith(stem) or stem.startswith(base))


class AutogradPart:
    """Result of the join; read by build.py."""

    def __init__(self, tracker: Any) -> None:
        self._key = tracker.key_of  # a Node wrapper -> its key (cached by the Entries that hold them)
        self._entries = tracker.entries
        self.created_by_op: Set[int] = set()
        self.grad_fn_of: Dict[int, str] = {}
        self.nodes: Tuple[AutogradNode, ...] = ()
        self.executed: Tuple[str, ...] = ()
        self.grads: Tuple[GradInfo, ...] = ()
        self.no_grad_params: Tuple[str, ...] = ()
        self._op_of_key: Dict[tuple, int] = {}
        self._key_of_op: Optional[Dict[int, tuple]] = None
        self._param_of_key: Dict[tuple, str] = {}

    def aid_of(self, anode: Any) -> Optional[str]:
        """The IR id of the Node a backward op ran in (None: no Node, or one not walked)."""
        e = None if anode is None else self._entries.get(self._key(anode))
        return e.aid if e is not None and e.aid else None

    def forward_op_of(self, anode: Any) -> Optional[int]:
        return None if anode is None else self._op_of_key.get(self._key(anode))

    def engine_sums(self, events: List[tuple], infos: List[Any]) -> Set[int]:
        """The backward ``add`` events no Node ran: the engine sums two gradients
        for one input of a Node (``a`` read twice: ``a*2 + a*3``) into that Node's
        input buffer between Nodes, while the Node that made the second is still
        the current one. Such an add reads a gradient another Node made that is no
        input of the current Node: its maker reaches the current Node through no
        Node, or only through Nodes that pass a gradient on without an op of their
        own (a same-shape ``AddBackward0``). Nodes by key (a reentrant checkpoint's
        inner backward lets the Node objects go); AccumulateGrad's own work is not
        one, nor an add in or after a custom Function's backward."""
        key = self._key
        ran = {key(ev[E_ANODE]) for ev in events if ev[E_PHASE] == BACKWARD and ev[E_ANODE] is not None}
        # (a custom Function's backward is the user's code, and may run a backward of its own inside:
        # reentrant checkpoint; neither its ops nor what it hands on are told apart here)
        custom = {k for k, e in self._entries.items() if e.custom}
        made: Dict[int, tuple] = {}  # value -> the key of the Node whose backward op made it
        out: Set[int] = set()
        kids: Dict[tuple, Optional[Tuple[Set[tuple], List[tuple]]]] = {}  # (a cat's Node: N kids, N sums)
        for i, ev in enumerate(events):
            if ev[E_PHASE] != BACKWARD or ev[E_ANODE] is None:
                continue
            k = key(ev[E_ANODE])
            if infos[i].name in _SUMS and k[0] != "acc" and k not in custom and any(
                    m is not None and m != k and m not in custom and not self._feeds(m, k, ran, kids)
                    for m in (made.get(v) for v in ev[E_INS])):
                out.add(i)
            for v in ev[E_OUTS]:
                made[v] = k
        return out

    def _feeds(self, parent: tuple, child: tuple, ran: Set[tuple],
               kids: Dict[tuple, Optional[Tuple[Set[tuple], List[tuple]]]], depth: int = 4) -> bool:
        """Does the Node ``parent`` reach ``child``, directly or through Nodes that ran no op?
        (``kids``: per Node, its children's keys and those of the ones that ran none.)"""
        if parent not in kids:
            e = self._entries.get(parent)
            keys = None if e is None else [self._key(kid) for kid in e.kids]
            kids[parent] = None if keys is None else (set(keys), [kk for kk in keys if kk not in ran])
        found = kids[parent]
        if found is None:
            return True  # (not walked: say nothing)
        return child in found[0] or bool(depth) and any(self._feeds(kk, child, ran, kids, depth - 1)
                                                        for kk in found[1])

    def differentiable(self, op: int, name: str, outs: tuple, vid: int) -> bool:
        """Is output ``vid`` of op ``op`` (which made a Node) one autograd gives a
        gradient, for a tensor gone by the build, whose flag cannot be read? The
        Node takes a gradient for each differentiable output, and torch lists those
        first (``native_layer_norm``'s mean and rstd, ``nll_loss_forward``'s total
        weight, ``_linalg_slogdet``'s LU are not), but for ``linalg_lu`` and
        ``lu_unpack``, whose P comes first."""
        if len(outs) < 2:
            return True
        if self._key_of_op is None:
            self._key_of_op = {i: k for k, i in self._op_of_key.items()}
        e = self._entries.get(self._key_of_op.get(op))
        try:
            n = len(e.node._input_metadata) if e is not None and e.node is not None else len(outs)
            k = outs.index(vid)
        except Exception:  # (no such field before torch 2.1, or an odd Node): as before
            return True
        return k >= len(outs) - n if name in _P_FIRST else k < n

    def is_custom(self, anode: Any) -> bool:
        """Is ``anode`` a custom autograd.Function's Node (its backward: the user's code)?"""
        e = None if anode is None else self._entries.get(self._key(anode))
        return e is not None and e.custom

    def is_accumulate(self, anode: Any) -> bool:
        return anode is not None and self._key(anode)[0] == "acc"

    def param_of(self, anode: Any) -> Optional[str]:
        """The name of the parameter an AccumulateGrad Node accumulates into."""
        return self._param_of_key.get(self._key(anode))


def _created(mode: Any, events: List[tuple]) -> Tuple[Set[int], Dict[int, int]]:
    """Ops after which their thread's sequence counter moved (they, or autograd
    work just before them, made a Node); the in-place-on-view ops by the sequence
    number of the CopySlices autograd wraps them in (made after the op). Events
    from another thread (the engine's device thread: CUDA's backward) hold ``~seq``
    of that thread's counter."""
    created: Set[int] = set()
    copy_slices: Dict[int, int] = {}
    prev = mode.start_seq
    prev_other = None
    for i, ev in enumerate(events):
        s = ev[E_SEQ]
        if s < 0:
            s = ~s
            if prev_other is not None and s != prev_other:
                created.add(i)
            prev_other = s
            continue
        if s != prev:
            created.add(i)
            if i in mode.inplace_on_view:
                copy_slices[s] = i
                s += 1
        prev = s
    return created, copy_slices


_WINDOW = 4  # ops to look at after the counter passed a Node's number


class _Counter:
    """One thread's events in order, with the sequence number each read."""

    def __init__(self, pairs: List[Tuple[int, int]]) -> None:
        self.seqs = [s for s, _ in pairs]
        self.index = [i for _, i in pairs]


def _counters(events: List[tuple]) -> Tuple[_Counter, _Counter]:
    """The recording thread's events, and those of the engine's device thread."""
    mine: List[Tuple[int, int]] = []
    other: List[Tuple[int, int]] = []
    for i, ev in enumerate(events):
        s = ev[E_SEQ]
        if s >= 0:
            mine.append((s, i))
        else:
            other.append((~s, i))
    other.sort()
    return _Counter(mine), _Counter(other)


def _op_of(seq: int, name: str, threads: Tuple[_Counter, ...], events: List[tuple], infos: List[Any],
           copy_slices: Dict[int, int]) -> Optional[int]:
    """The op that made Node ``seq`` (a forward op; a backward op under
    ``create_graph``): the first op its thread's counter
    reached after the Node, or one of the next few (autograd may run a ``clone``
    of an in-place op's input in between), whose name matches the Node's. A Node
    does not say which thread made it: the recording thread's ops are tried first
    (only checkpoint's recompute on a device thread makes Nodes elsewhere)."""
    if name.rsplit("::", 1)[-1] == "CopySlices":
        return copy_slices.get(seq)
    for th in threads:
        seqs = th.seqs
        i = bisect.bisect_right(seqs, seq)
        for j in range(i, min(i + _WINDOW, len(seqs))):
            if seqs[j] - seq > _WINDOW:
                break
            k = th.index[j]
            if names_match(infos[k].name, name):  # (a backward op makes Nodes under create_graph)
                return k
    return None


def _custom_op(node: Any, seq: int, threads: Tuple[_Counter, ...], events: List[tuple], mode: Any,
               made: Any = None) -> Optional[int]:
    """The op that made the output of a custom ``autograd.Function`` whose Node
    is ``node``: its forward runs under no_grad, so its ops read the counter
    its Node moved, and none moves it; of them, the last whose output still has
    this Node as grad_fn, or the one found so when backward began (``made``:
    ``custom_run_at``; the output is often gone since, a saved input freed), or
    else the last that the Function's ``forward`` issued."""
    code = getattr(getattr(getattr(type(node), "_forward_cls", None), "forward", None), "__code__", None)
    for t, th in enumerate(threads):
        run = _run_after(th, seq)
        alive = [k for k in run if _made(mode, events[k], node)]
        if alive:
            return alive[-1]
        if made and made[0] == t and made[1] < len(run) and events[run[made[1]]][E_SEQ] == made[2]:
            return run[made[1]]
        mine = [k for k in run if code is not None and code in (events[k][E_CODE], events[k][E_ICODE])]
        if mine:
            return mine[-1]
    return None


def _run_after(th: _Counter, seq: int) -> List[int]:
    """The events of one thread that read the first sequence number after ``seq``."""
    seqs = th.seqs
    i = bisect.bisect_right(seqs, seq)
    run: List[int] = []
    for j in range(i, len(seqs)):
        if seqs[j] != seqs[i]:
            break
        run.append(th.index[j])
    return run


def custom_runs_at(mode: Any, nodes: List[Tuple[Any, int]]) -> List[Optional[Tuple[int, int, int]]]:
    """For each (Node, sequence nr) of a custom Function: (thread, place in its
    run, sequence number read) of the op whose output the Node is the grad_fn
    of, while that output lives."""
    events = mode.events
    threads = _counters(events)  # (once for all of them: each is a walk of every event)
    out: List[Optional[Tuple[int, int, int]]] = []
    for node, seq in nodes:
        found = None
        for t, th in enumerate(threads):
            run = _run_after(th, seq)
            alive = [k for k, i in enumerate(run) if _made(mode, events[i], node)]
            if alive:
                found = (t, alive[-1], events[run[alive[-1]]][E_SEQ])
                break
        out.append(found)
    return out


def _made(mode: Any, ev: tuple, node: Any) -> bool:
    """Is ``node`` the grad_fn of one of the op's outputs that are still alive
    (the one way to tell which of two Nodes of the same number made it)?"""
    refs = mode.vrefs
    return node is not None and any(getattr(refs[v](), "grad_fn", None) is node for v in ev[E_OUTS])


def _outside(tracker: Any, mode: Any) -> Set[tuple]:
    """Keys of the Nodes reachable from the grad_fn an outside tensor had when the
    pass first read it: made before the pass (or by another thread, whose sequence
    numbers may be the pass's: ``AutogradTracker.twins``), by no op of it."""
    stack: List[Any] = list(mode.ext_fns)
    seen: Set[tuple] = set()
    while stack:
        x = stack.pop()
        e = tracker.entries.get(x) if type(x) is tuple else tracker.by_obj.get(id(x))
        if e is None or e.key in seen or (type(x) is not tuple and e.node is not x):
            continue
        seen.add(e.key)
        stack.extend(e.kids)
    return seen


def build_autograd(capture: Any, mode: Any, events: List[tuple], infos: List[Any]) -> AutogradPart:
    tracker = capture.autograd
    part = AutogradPart(tracker)
    tracker.walk(capture.backward_roots(), hook=False)
    part.created_by_op, copy_slices = _created(mode, events)
    threads = _counters(events)

    entries = list(tracker.entries.values())
    linked: Dict[tuple, int] = {}
    outside = _outside(tracker, mode)  # (older than the pass: no op of it made them)
    outside_twins = {k[:2] for k in outside}
    for e in entries:
        if e.seq is not None and e.key not in outside:
            i = _op_of(e.seq, e.name, threads, events, infos, copy_slices) if not e.custom else _custom_op(
                e.node, e.seq, threads, events, mode, e.made)
            if i is not None and (e.key[:2] not in tracker.twins or _made(mode, events[i], e.node)
                                  or e.key[:2] in outside_twins):
                linked[e.key] = i
    rebuilt = [e for e in entries if e.name == REBUILT and e.key not in linked and e.seq is not None
               and e.key not in outside]  # (torch's Node for a view read after an in-place write to its base)
    if rebuilt:
        linked.update(link_rebuilt(rebuilt, threads[0], events, infos, mode.vmeta))
    entries.sort(key=lambda e: (0, linked[e.key], e.order) if e.key in linked else (1, 0, e.order))
    for k, e in enumerate(entries):
        e.aid = f"a{k}"
    part._op_of_key = linked

    params = capture.param_storages()
    owner: Dict[int, str] = {}
    saved: Dict[str, int] = {}
    for e in entries:
        aid = e.aid
        for ptr, nbytes in e.storages:
            if ptr not in params and ptr not in owner:
                owner[ptr] = aid
                saved[aid] = saved.get(aid, 0) + nbytes

    vid_of = mode.vid_of
    nodes: List[AutogradNode] = []
    with_grad: List[Tuple[int, str, Any, tuple]] = []  # (value, parameter name, gradient, Node key)
    executed_keys = set(tracker.executed)
    for e in entries:
        aid = e.aid
        op = linked.get(e.key)
        if op is not None:
            part.grad_fn_of.setdefault(op, aid)
        param = value = None
        leaf = e.leaf()
        if leaf is not None:
            vid = vid_of(leaf)
            param = capture.name_of(leaf)
            if vid is None and param is not None and tracker.backward_ran and e.key in executed_keys:
                # a block that ran only backward: no op read the parameter, its gradient is still this pass's
                vid = mode.add_param(leaf, param)
            value = None if vid is None else f"v{vid}"
            if param is not None:
                part._param_of_key[e.key] = param
            # (not for leaves nothing names: reentrant checkpoint's detached copies of its inputs)
            if tracker.backward_ran and e.key in executed_keys and vid is not None and param is not None:
                g = tracker.grads.get(e.key)  # the tensor backward left; zero_grad() may have dropped .grad
                if g is None:
                    g = getattr(leaf, "grad", None)
                if isinstance(g, torch.Tensor):
                    with_grad.append((vid, param, g, e.key))
        nodes.append(AutogradNode(aid, e.name, None if op is None else f"n{op}",
                                  tracker.next_aids(e), saved.get(aid, 0), param, value))
    part.nodes = tuple(nodes)
    by_key = tracker.entries
    part.executed = tuple(by_key[k].aid for k in tracker.executed if k in by_key)
    read = [tracker.norm_of(key, g) for _, _, g, key in with_grad]  # (read before a zero_grad(), or now)
    now = iter(grad_infos([g for (_, _, g, _), r in zip(with_grad, read) if r is None]))
    part.grads = tuple(GradInfo(f"v{vid}", name, *(r if r is not None else next(now)))
                       for (vid, name, _, _), r in zip(with_grad, read))
    tracker.grads.clear()  # (the references end with the build)
    tracker.norms = {}
    if tracker.backward_ran:
        # (torch.autograd.grad returns the gradients of its inputs and runs no AccumulateGrad for them)
        got = {id(leaf) for e in entries for leaf in (e.leaf(),)
               if leaf is not None and (e.key in executed_keys or id(leaf) in tracker.grad_inputs)}
        named = {gi.name for gi in part.grads}  # (a swapped-in tensor of that name: functional_call)
        part.no_grad_params = tuple(name for p, name in capture.trainable_params()
                                    if id(p) not in got and name not in named)
    return part


def hold_by_key(events: List[tuple], keys: Dict[int, tuple]) -> None:
    """Events hold the autograd Node that ran them: once the tracker lets go of
    the Nodes (``AutogradTracker.release``), they hold its key instead."""
    for i, ev in enumerate(events):
        node = ev[E_ANODE]
        if ev[E_PHASE] == BACKWARD and node is not None and type(node) is not tuple:
            events[i] = (*ev[:E_ANODE], keys.get(id(node)) or node_key(node), *ev[E_ANODE + 1:])

