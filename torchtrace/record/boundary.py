"""Where one recorded pass ends and the next begins.

A Recorder pass runs from a root module call to the next one. The ops just
before the next call that only build that call's inputs (``x =
torch.randn(...)``, ``ids = logits.argmax(-1)``, a collate's ``stack``) are
the next step's input preparation, not this step's work: left in, they make
the last pass of every run look different from the others. ``input_prep``
finds them (and ``repeated_prep`` the same preparation at the end of a run,
where no next call exists); ``drop_events`` removes them from the pass's
buffers (the next pass then sees those tensors as its named inputs).
"""
from __future__ import annotations

import itertools
import os
from typing import AbstractSet, Any, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import torch
import torch.utils.data

from .frames import is_torch_internal, line_of
from .mode import (E_ARGS, E_CODE, E_ICODE, E_ILASTI, E_INFO, E_INS, E_LINE, E_MOD, E_OUTS, E_PHASE, FORWARD, V_DTYPE,
                   V_ORIGIN)
from .opinfo import BY_INDEX


def _tail(events: List[tuple]) -> int:
    """Index after the last op inside a module call or outside the forward phase."""
    tail = len(events)
    while tail > 0:
        ev = events[tail - 1]
        if ev[E_MOD] is not None or ev[E_PHASE] != FORWARD:
            break
        tail -= 1
    return tail


def _consumers(events: List[tuple], start: int) -> Dict[int, List[int]]:
    consumers: Dict[int, List[int]] = {}
    for i in range(start, len(events)):
        for v in events[i][E_INS]:
            consumers.setdefault(v, []).append(i)
    return consumers


def _site(ev: tuple) -> Tuple[Any, int]:
    """(code, instruction) of the innermost frame outside torch that ran the op, not
    its attributed line: with `--skip transformers/` all of generate() is one line
    of the user's, and every op of it would look alike."""
    inner = ev[E_ICODE] is not None and not is_torch_internal(ev[E_ICODE])
    return (ev[E_ICODE], ev[E_ILASTI]) if inner else (ev[E_CODE], ev[E_LINE])


def signature(mode: Any, events: Iterable[int]) -> FrozenSet[Tuple[int, Any, int]]:
    """What the preparation ops were: (op, code, instruction) of each (``_site``)."""
    return frozenset((mode.events[i][E_INFO], *_site(mode.events[i])) for i in events)


def repeated_prep(mode: Any, sig: FrozenSet[Tuple[int, Any, int]]) -> Set[int]:
    """At the end of a run there is no next call to read inputs from: the tail
    ops that repeat ops of the previous step's input preparation (same op, same
    line, feeding nothing else) are dropped the same way."""
    events = mode.events
    tail = _tail(events)
    outputs = set(mode.outputs)
    made = _made(events)
    own_reads = _fresh_reads(mode, tail, made)  # (as ``input_prep`` takes them)
    cands = {i for i in range(tail, len(events))
             if (events[i][E_INFO], *_site(events[i])) in sig and not any(v in outputs for v in events[i][E_OUTS])
             and (i in own_reads or not _kept(events[i], mode, made))}
    consumers = _consumers(events, tail)
    # (all of the preparation or part of it: generate()'s last step updates position ids only)
    return _read_only_within(events, cands, consumers) | _loader_ops(mode, tail, made, consumers, outputs)


def _read_only_within(events: List[tuple], ops: Set[int], consumers: Dict[int, List[int]],
                      also: AbstractSet[int] = frozenset()) -> Set[int]:
    """The largest part of ``ops`` whose outputs only it (or ``also``) reads."""
    size = -1
    while len(ops) != size:
        size = len(ops)
        ops = {i for i in ops if all(c in ops or c in also for v in events[i][E_OUTS] for c in consumers.get(v, ()))}
    return ops


def _from_outside(events: List[tuple], tail: int, made: Dict[int, int], admit: Any,
                  base: AbstractSet[int] = frozenset()) -> Set[int]:
    """The tail ops ``admit(i)`` takes whose inputs depend on nothing this pass
    computed: tensors from outside the pass, ``base``'s results and each other's."""
    out: Set[int] = set()
    for i in range(tail, len(events)):
        if admit(i) and all(made.get(v) is None or made[v] in out or made[v] in base
                            for v in events[i][E_INS] if v >= 0):
            out.add(i)
    return out


_DATA = os.path.dirname(os.path.abspath(torch.utils.data.__file__)) + os.sep


def _loader_ops(mode: Any, tail: int, made: Dict[int, int], consumers: Dict[int, List[int]],
                outputs: Set[int]) -> Set[int]:
    """Tail ops a DataLoader's own code ran (``torch/utils/data``: ``iter(loader)``
    drawing the workers' seed, a sampler's ``randperm``, a collate) that depend on
    nothing this pass computed and that nothing else of it reads: data loading,
    wherever the loop put the ``iter()`` or ``next()`` (its own line, a generator,
    a framework's loader wrapper)."""
    events = mode.events
    markers = _loader_markers(events, tail)

    def loader(i: int) -> bool:
        ev = events[i]
        code = ev[E_ICODE]
        return i in markers or (
            code is not None and code.co_filename.startswith(_DATA) and not any(v in outputs for v in ev[E_OUTS])
            and "collective" not in BY_INDEX[ev[E_INFO]].tags and not _writes_state(ev, mode, made))

    # (what else of the pass reads is not the loader's alone)
    return _read_only_within(events, _from_outside(events, tail, made, loader), consumers)


def loader_fetch(mode: Any) -> List[int]:
    """The one DataLoader fetch of a pass cut by hand (its ``__next__`` markers and
    what the loader's own code issued, from tensors the pass did not compute, with no
    collective and no write to state), wherever it runs: a cut at the end of each step
    leaves the next batch's loading at the start of the next pass, or after an
    evaluation there. None where the pass fetches more than once (gradient
    accumulation's micro-batches: all kept alike)."""
    events = mode.events
    loading = [i for i, ev in enumerate(events) if _from_loader(ev)]
    if not loading:
        return []
    markers = _loader_markers(events, 0)
    lo, hi = loading[0], loading[-1]
    while lo > 0 and lo - 1 in markers:
        lo -= 1
    while hi + 1 < len(events) and hi + 1 in markers:
        hi += 1
    run = range(lo, hi + 1)
    made = _made(events)
    for i in run:
        ev = events[i]
        if (i not in markers and not _from_loader(ev)) or "collective" in BY_INDEX[ev[E_INFO]].tags or \
                _writes_state(ev, mode, made) or any(v >= 0 and made.get(v, lo) < lo for v in ev[E_INS]):
            return []
    return list(run)


def _from_loader(ev: tuple) -> bool:
    code = ev[E_ICODE]
    return code is not None and code.co_filename.startswith(_DATA)


def _loader_markers(events: List[tuple], tail: int) -> Set[int]:
    """The tail's ``record_function`` markers of a DataLoader's ``__next__``
    (``enumerate(DataLoader)#...``), enter and exit (paired by nesting): torch's
    profiler code issues them, for the loader. (An epoch's end adds the
    exhausted iterator's and the new one's first ``__next__``.)"""
    out: Set[int] = set()
    open_: List[Tuple[int, bool]] = []
    for i in range(tail, len(events)):
        info = BY_INDEX[events[i][E_INFO]]
        if not info.annotation:
            continue
        argv = events[i][E_ARGS]
        if info.name.startswith("profiler._record_function_enter"):
            name = argv[0] if argv else None
            open_.append((i, isinstance(name, str) and name.startswith(_LOADER_MARK)))
        elif open_:
            j, mine = open_.pop()
            if mine:
                out.update((i, j))
    return out


_LOADER_MARK = "enumerate(DataLoader)#"
_MASKS = (torch.bool, torch.uint8)


def reads_data(info: Any, ev: tuple, vmeta: List[tuple]) -> bool:
    """Is event ``ev`` a read of tensor data (a witness)? torch tags ``index.Tensor``
    "dynamic output shape" whatever its indices: only a boolean (or uint8) index
    makes its shape data-dependent, not an int one (an embedding table's rows,
    ``cos[position_ids]``, a batch gathered by ``X[idx]``)."""
    if info.witness is None:
        return False
    if info.name == "aten.index.Tensor":
        return any(v >= 0 and vmeta[v][V_DTYPE] in _MASKS for v in ev[E_INS][1:])
    return True


def call_site(frame: Any) -> Optional[Tuple[Any, int]]:
    """(code, f_lasti) of the innermost frame outside torch above ``frame``: where
    the next root call is made."""
    for _ in range(64):
        if frame is None or not is_torch_internal(frame.f_code):
            break
        frame = frame.f_back
    return None if frame is None else (frame.f_code, frame.f_lasti)


def _lines_of(code: Any, lasti: int) -> Tuple[int, int]:
    """The first and last line of the expression of instruction ``lasti`` (a call
    written over several lines), or its one line where positions are unknown."""
    line = line_of(code, lasti)
    try:
        start, end = next(itertools.islice(code.co_positions(), lasti // 2, None))[:2]
    except (AttributeError, StopIteration, TypeError):  # (no co_positions before Python 3.11)
        return line, line
    return (start, end) if start is not None and end is not None and start <= line <= end else (line, line)


def input_prep(mode: Any, tensors: Iterable[Any], site: Optional[Tuple[Any, int]] = None) -> Set[int]:
    """Indices of the tail events whose outputs serve only to build ``tensors``
    (the next root call's arguments): after the last op inside a module call
    or outside the forward phase, outside any module, never one ``_kept``, every
    output consumed only by other such events (or being one of ``tensors``).
    ``site``: the call's (code, f_lasti); on its line, what ran after the call
    (`loss = model(x.float()).sum()`: the last step's ``sum``) is not preparation."""
    events = mode.events
    needed: Set[int] = set()
    for t in tensors:
        vid = mode.vid_of(t)
        if vid is not None:
            needed.add(vid)
    wanted = set(needed)
    tail = _tail(events)
    consumers = _consumers(events, tail)
    made = _made(events)
    outputs = set(mode.outputs)
    if not needed:  # (the inputs come from before the pass: a worker's batch a pass before rebuilt)
        return _loader_ops(mode, tail, made, consumers, outputs)
    prep: Set[int] = set()

    glue = _step_glue(mode, tail, made)

    def feeds_only_prep(ev: tuple) -> bool:  # a result, not kept (_kept), not returned, read only by prep
        outs = ev[E_OUTS]
        return (bool(outs) and not _kept(ev, mode, made) and not any(v in outputs for v in outs)
                and all(c in prep for v in outs for c in consumers.get(v, ())) and not any(v in glue for v in outs))

    # the ops that made the inputs, and the other ops of those statements that feed nothing
    # else (`for x, y in loader` collates the labels y with x: the loss reads y in the next
    # step, outside the call), until none is added (`idx = perm[a:b]` feeds both X[idx] and
    # Y[idx]); a statement is a code object's line (`xb, yb = X[i], Y[i]` is two instructions)
    lines: Dict[Tuple[int, int], Tuple[int, int]] = {}  # (code, f_lasti) -> (code, line): backward's ops share one
    span = _lines_of(*site) if site is not None else (0, -1)

    def statement(ev: tuple) -> Tuple[int, int]:
        code, at = _site(ev)
        key = (id(code), at)
        hit = lines.get(key)
        if hit is None:
            hit = lines[key] = (key[0], line_of(code, at) if code is not None else -1)
            if site is not None and code is site[0] and at > site[1] and span[0] <= hit[1] <= span[1]:
                hit = lines[key] = (key[0], -2 - at)  # (after the call, on its lines: the step before's, each alone)
        return hit

    # reads of data that depends on nothing this pass computed (`iter(loader)` draws the workers'
    # seed: `torch.empty((), dtype=torch.int64).random_().item()`): on a preparing statement, prep too
    own_reads = _fresh_reads(mode, tail, made)
    size = -1
    while len(prep) != size:
        size = len(prep)
        for i in range(len(events) - 1, tail - 1, -1):
            ev = events[i]
            if i not in prep and any(v in needed for v in ev[E_OUTS]) and feeds_only_prep(ev):
                prep.add(i)
                needed.update(ev[E_INS])
        stmts = {statement(events[i]) for i in prep}
        for i in range(len(events) - 1, tail - 1, -1):
            ev = events[i]
            if i not in prep and statement(ev) in stmts and (feeds_only_prep(ev) or i in own_reads):
                prep.add(i)
                needed.update(ev[E_INS])
    prep |= _loader_ops(mode, tail, made, consumers, outputs)
    if prep:
        return prep | _unrelated(mode, tail, prep, outputs, consumers, made)
    # the next call's inputs also feed the next step's other data (a second view, `x + noise`, for a
    # later call): when every op that made them depends on nothing this pass computed, they go with it
    free = _unrelated(mode, tail, set(), outputs, consumers, made)
    makers = {i for i in range(tail, len(events)) if any(v in wanted for v in events[i][E_OUTS])}
    return free if makers and makers <= free else set()


def _unrelated(mode: Any, tail: int, prep: Set[int], outputs: Set[int],
               consumers: Dict[int, List[int]], made: Dict[int, int]) -> Set[int]:
    """With the next call's inputs found, the other tail ops that depend on
    nothing this pass computed (only on outside tensors, the preparation and
    each other) and that nothing of this pass reads: the next step's other data
    (``yb = Y[idx]`` on a line of its own, the ``randint`` it shares with
    ``X[idx]``). Only ops with a result: never one ``_kept``, a profiler marker,
    or a returned value."""
    events = mode.events

    def result(i: int) -> bool:  # (a record_function marker: what a later op ran inside)
        ev = events[i]
        return (i not in prep and bool(ev[E_OUTS]) and not BY_INDEX[ev[E_INFO]].annotation
                and not _kept(ev, mode, made) and not any(v in outputs for v in ev[E_OUTS]))

    # (read by this pass outside them: not the next step's)
    return _read_only_within(events, _from_outside(events, tail, made, result, prep), consumers, prep)


def _fresh_reads(mode: Any, tail: int, made: Dict[int, int]) -> Set[int]:
    """The tail's reads of tensor data (no collective, no write to state) whose
    inputs depend on nothing this pass computed: made by tail ops that read only
    tensors from outside the pass, and each other."""
    events = mode.events

    def fresh(i: int) -> bool:
        info = BY_INDEX[events[i][E_INFO]]
        return not info.annotation and not reads_data(info, events[i], mode.vmeta)

    def read(i: int) -> bool:
        ev, info = events[i], BY_INDEX[events[i][E_INFO]]
        return (reads_data(info, ev, mode.vmeta) and not ev[E_OUTS] and "collective" not in info.tags
                and not _writes_state(ev, mode, made))

    return _from_outside(events, tail, made, read, _from_outside(events, tail, made, fresh))


def _kept(ev: tuple, mode: Any, made: Dict[int, int]) -> bool:
    """An op that is part of the step wherever it runs: a read of tensor data (a
    witness), a collective (a vote, a barrier, a broadcast of a fresh tensor: what
    the other ranks wait for), or a write to state (``_writes_state``)."""
    info = BY_INDEX[ev[E_INFO]]
    return reads_data(info, ev, mode.vmeta) or "collective" in info.tags or _writes_state(ev, mode, made)


def _step_glue(mode: Any, tail: int, made: Dict[int, int]) -> Set[int]:
    """Values of tail ops that require grad and come from what the step computed
    before the tail (a VAE's `z = mu + eps * std` between its encoder and
    decoder, a gradient penalty's interpolation of a fake): the step's own work,
    which its backward goes through, never the next call's data. (An embedding
    table's `emb[ids]` for the next batch reads only outside tensors: data.)"""
    events, refs = mode.events, mode.vrefs
    ours = {v for v, i in made.items() if i < tail and events[i][E_PHASE] == FORWARD  # (forward results: not
            and not BY_INDEX[events[i][E_INFO]].mutates}                          # the optimizer's updates)
    glue: Set[int] = set()
    for i in range(tail, len(events)):
        ev = events[i]
        if any(v in ours for v in ev[E_INS]):
            ours.update(ev[E_OUTS])
            for v in ev[E_OUTS]:
                t = refs[v]()
                if t is not None and t.requires_grad:
                    glue.add(v)
    return glue


def _writes_state(ev: tuple, mode: Any, made: Dict[int, int]) -> bool:
    """Does the op write in place to a tensor the pass did not make (a parameter
    in ``opt.step()``, a buffer, an input), directly or through a view of it
    (``p.data.mul_()``, a ``state_dict()`` value, ``p.detach().copy_()``: a target
    network's or an EMA's update)? Such a write is never input preparation, even
    on the line that also builds the next batch (``opt.step(); x = next(it)``)."""
    if not BY_INDEX[ev[E_INFO]].mutates:
        return False
    vmeta, events = mode.vmeta, mode.events
    for v in ev[E_OUTS]:
        for _ in range(64):
            origin = vmeta[v][V_ORIGIN]
            if origin is not None and origin[0] == "ext":
                return True
            if origin is not None and origin[0] == "ver" and origin[1] >= 0:
                v = origin[1]
                continue
            i = made.get(v)
            if i is None or not BY_INDEX[events[i][E_INFO]].view or not events[i][E_INS] or events[i][E_INS][0] < 0:
                break
            v = events[i][E_INS][0]  # a view: the tensor it views
    return False


def _made(events: List[tuple]) -> Dict[int, int]:
    """value id -> the event that made it."""
    return {v: i for i, ev in enumerate(events) for v in ev[E_OUTS]}


def drop_events(mode: Any, drop: Set[int]) -> None:
    """Remove events from the pass buffers, with the values only they used;
    ids are renumbered so they stay in order of first appearance."""
    if not drop:
        return
    events = [ev for i, ev in enumerate(mode.events) if i not in drop]
    used: Set[int] = {v for ev in events for v in (*ev[E_INS], *ev[E_OUTS])} | set(mode.outputs)
    for v in list(used):
        origin = mode.vmeta[v][V_ORIGIN]
        while origin is not None and origin[0] == "ver" and origin[1] >= 0 and origin[1] not in used:
            used.add(origin[1])
            origin = mode.vmeta[origin[1]][V_ORIGIN]
    new_vid = {old: new for new, old in enumerate(sorted(used))}
    new_event = {old: new for new, old in enumerate(i for i in range(len(mode.events)) if i not in drop)}

    def remap(vs: tuple) -> tuple:
        return tuple(new_vid[v] for v in vs if v in new_vid)

    mode.events = [(ev[0], remap(ev[E_INS]), *ev[2:E_OUTS], remap(ev[E_OUTS]), *ev[E_OUTS + 1:]) for ev in events]
    vmeta = []
    for old in sorted(used):
        rec = mode.vmeta[old]
        origin = rec[V_ORIGIN]
        if origin is not None and origin[0] == "ver" and origin[1] >= 0:
            rec = (*rec[:V_ORIGIN], ("ver", new_vid[origin[1]]), *rec[V_ORIGIN + 1:])
        vmeta.append(rec)
    mode.vmeta = vmeta
    mode.vrefs = [mode.vrefs[old] for old in sorted(used)]
    mode.vmap = {k: new_vid[v] for k, v in mode.vmap.items() if v in new_vid}
    mode.outputs = [new_vid[v] for v in mode.outputs]
    mode.inplace_on_view = {new_event[i] for i in mode.inplace_on_view if i in new_event}
