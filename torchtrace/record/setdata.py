"""Tensors pointed at other data: ``t.data = new`` and ``Tensor.set_``.

``t.data = new`` (``vector_to_parameters``, ``Module.to()``, pruning hooks) is
no op a dispatch mode sees: ``t`` now shows ``new``'s storage, shape and
values. ``note_data`` (called by the ``Tensor.data`` patch, patches.py) gives
``t`` a new value there, as one more output of the op that made ``new``: a
later read of ``t`` depends on that op. The value keeps ``t``'s identity (a
parameter stays ``fc.weight``) and says where ``new`` sits among that op's
outputs (a position, not a value id: ``boundary.drop_events`` renumbers values).

``a.set_(src)`` is recorded as a write of ``a`` (a new version, made by
``set_``, that reads ``src``), but it writes no bytes: from then on ``a``
shares ``src``'s storage. ``rebound_values`` finds both kinds after the pass,
and build.py / aliases.py take such a value for an alias of ``src`` (a write
through one is seen by a read of the other) and never for a write of a
storage (the views of ``a`` taken before it keep ``a``'s old storage).
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from .mode import E_INS, E_OUTS, V_ORIGIN


def note_data(capture: Any, t: Any, new: Any, frame: Any = None) -> None:
    """``t.data = new`` just ran (in ``frame``): ``t``'s next read is a new value,
    made by the op that made ``new`` when this pass recorded one (else read from
    outside, as a tensor first seen)."""
    mode = capture.mode
    prev = mode.vid_of(t)
    mode.forget(t)
    if mode.off or threading.get_ident() != capture.tid:  # (ops of other threads are not recorded)
        return
    try:
        src = mode.seen_as(new)
        j = None if src is None else _maker(mode.events, src)
        if j is None:  # (made before the pass, or by no op of it)
            return
        k = mode.events[j][E_OUTS].index(src)
        vmeta = mode.vmeta
        if prev is None:  # first seen now: named as a read would name it (a parameter by its name)
            while frame is not None and mode.classify(frame.f_code):  # (the user's line: not torch's helper)
                frame = frame.f_back
            vid = mode._external(t, frame, None)
            if vid != len(vmeta) - 1 or mode.vrefs[vid]() is not t:  # (a subclass's re-wrap: no value of its own)
                return
            rec = vmeta[vid]
            vmeta[vid] = (*rec[:V_ORIGIN], (*rec[V_ORIGIN][:4], ("data", k)), *rec[V_ORIGIN + 1:])
        else:
            origin = _identity(vmeta, prev)
            vid = mode._add_value(t, ("data", k) if origin is None else (*origin[:4], ("data", k)))
        ev = mode.events[j]
        mode.events[j] = (*ev[:E_OUTS], (*ev[E_OUTS], vid), *ev[E_OUTS + 1:])
    except Exception as e:  # (the assignment ran; the pass misses the link)
        capture.note_fault("t.data = ...", e, stacklevel=3)


def _identity(vmeta: List[tuple], v: int) -> Optional[tuple]:
    """The outside origin (``("ext", role, name, requires_grad)``) of the first
    version of value ``v``; None for a value the pass made."""
    origin = vmeta[v][V_ORIGIN]
    while origin is not None and origin[0] == "ver" and origin[1] >= 0:
        origin = vmeta[origin[1]][V_ORIGIN]
    return origin if origin is not None and origin[0] == "ext" else None


def _maker(events: List[tuple], v: int) -> Optional[int]:
    """The event that output value ``v``; None for a value no op made. Backwards
    from the last: an event's first output was made with it, so once that is
    older than ``v`` no earlier event made ``v``."""
    for j in range(len(events) - 1, -1, -1):
        outs = events[j][E_OUTS]
        if v in outs:
            return j
        if outs and outs[0] < v:
            return None
    return None


def data_position(origin: Any) -> Optional[int]:
    """Where the data of a value ``note_data`` made sits among its maker's
    outputs (None: no such value)."""
    if origin is None:
        return None
    if origin[0] == "data":
        return origin[1]
    if origin[0] == "ext" and len(origin) > 4 and type(origin[4]) is tuple:
        return origin[4][1]
    return None


def rebound_values(events: List[tuple], infos: List[Any], vmeta: List[tuple],
                   producer: Dict[int, int]) -> Dict[int, Optional[int]]:
    """value -> the value whose storage it shares from then on (None: a storage
    of its own, ``set_(storage)``): what ``set_`` made of its tensor and what
    ``note_data`` made."""
    out: Dict[int, Optional[int]] = {}
    for i, ev in enumerate(events):
        info = infos[i]
        if info.mutates and info.name.startswith("aten.set_.") and ev[E_OUTS]:
            ins = ev[E_INS]
            out[ev[E_OUTS][0]] = ins[1] if len(ins) > 1 and ins[1] >= 0 else None
    for v, rec in enumerate(vmeta):
        k = data_position(rec[V_ORIGIN])
        if k is not None and v in producer:
            outs = events[producer[v]][E_OUTS]
            out[v] = outs[k] if k < len(outs) else None
    return out
