"""The names a running frame's local variables give an object, read without
``frame.f_locals``.

Before Python 3.13 (PEP 667) ``frame.f_locals`` of a function's frame copies
its locals into a dict the frame keeps until its locals are read again or it
returns: a tensor the user deletes after a trace (``del big``) stayed alive
until then, because naming an outside tensor had read that frame. Here a
function's locals are compared by address, read from the interpreter's frame
record without making a reference (no snapshot, no reference held), once its
layout has been checked on a probe frame; where it does not check out, locals
go unnamed. Python 3.13+ reads ``f_locals`` (a view of the frame, no copy); a
module's or a class body's frame reads its namespace dict, which is no copy.
"""
from __future__ import annotations

import array
import ctypes
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

from .._memo import remember

_CO_OPTIMIZED = 0x1  # a function's frame: its locals live in the frame record, not a dict
_PTR = ctypes.sizeof(ctypes.c_void_p)
# The interpreter frame record behind a frame object (``struct _frame.f_frame``, after
# PyObject_HEAD and f_back) and, in it, the offsets of f_code, frame_obj and localsplus:
# Include/internal/pycore_frame.h of 3.11 and 3.12.
_LAYOUTS = {(3, 11): (3 * _PTR, 4 * _PTR, 5 * _PTR, 9 * _PTR), (3, 12): (3 * _PTR, 0, 6 * _PTR, 9 * _PTR)}


_WORD = "Q" if _PTR == 8 else "L"


def _words(addr: int, n: int) -> "array.array[int]":
    """``n`` pointer-sized words at ``addr``: one copy of the bytes (a ctypes
    array type per length costs ten times as much)."""
    out = array.array(_WORD)
    out.frombytes(ctypes.string_at(addr, _PTR * n))
    return out


def _record(frame: Any, layout: Tuple[int, int, int, int]) -> int:
    """The address of ``frame``'s locals, or 0 where the record does not name
    this frame and its code (then nothing is read)."""
    f_frame, code_at, frame_at, locals_at = layout
    rec = _words(id(frame) + f_frame, 1)[0]
    if not rec:
        return 0
    head = _words(rec, locals_at // _PTR)
    return rec + locals_at if head[code_at // _PTR] == id(frame.f_code) and head[frame_at // _PTR] == id(
        frame) else 0


def _probe_layout() -> Optional[Tuple[int, int, int, int]]:
    layout = _LAYOUTS.get(sys.version_info[:2])
    if layout is None or sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None  # another layout (not CPython, a debug build): no names
    marks = (object(), object(), object())

    def probe(a: Any, b: Any, c: Any) -> Tuple[int, ...]:
        frame = sys._getframe()
        at = _record(frame, layout)
        return tuple(_words(at, 3)) if at else ()

    try:
        return layout if probe(*marks) == tuple(id(m) for m in marks) else None
    except Exception:  # pragma: no cover - a runtime without ctypes' pythonapi
        return None


_LAYOUT = _probe_layout() if sys.version_info < (3, 13) else None


def local_name(obj: Any, frame: Any) -> Optional[str]:
    """The name of a local variable of ``frame`` that holds ``obj``, if any."""
    target = id(obj)
    for name, addr, _ in _slots(frame):
        if addr == target:
            return name
    return None


def local_value(frame: Any, name: str) -> Any:
    """The value of ``frame``'s local variable ``name`` (None if unbound or unread)."""
    for k, addr, value in _slots(frame):
        if k == name:
            if value is not None or not addr:
                return value
            # a slot of the running frame (we run inside it): its value is alive; a new reference to it
            return ctypes.cast(addr, ctypes.py_object).value
    return None


_CELL = id(types.CellType)
_NAMES: Dict[int, Tuple[Any, Tuple[str, ...], Tuple[int, ...]]] = {}  # id(code) -> (code, names, cell slots)


def _names(code: Any) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    """The names of ``code``'s localsplus slots: the locals (args first), the cells
    that are no argument, the free variables; and which slots hold cells."""
    hit = _NAMES.get(id(code))  # (by id: a code object's hash reads all of it, every time)
    if hit is None or hit[0] is not code:
        local = code.co_varnames
        cells = set(code.co_cellvars) | set(code.co_freevars)
        names = local + tuple(c for c in code.co_cellvars if c not in local) + code.co_freevars
        hit = remember(_NAMES, id(code), (code, names, tuple(k for k, n in enumerate(names) if n in cells)))
    return hit[1], hit[2]


def _slots(frame: Any) -> List[Tuple[str, int, Any]]:
    """(name, address of the value, the value or None) of the frame's locals,
    address 0 where unbound; a cell variable's (a closure's, or one a closure
    uses) is the address of what its cell holds."""
    if frame is None:
        return []
    try:
        code = frame.f_code
        if not code.co_flags & _CO_OPTIMIZED or sys.version_info >= (3, 13):
            # a namespace dict, or (3.13+) a view of the frame: the values themselves, held by the list
            return [(k, id(v), v) for k, v in frame.f_locals.items()]
        at = _record(frame, _LAYOUT) if _LAYOUT is not None else 0
        if not at:
            return []
        names, cells = _names(code)
        addrs = _words(at, len(names)) if names else array.array(_WORD)
        for k in cells:  # (ob_type, then a cell's ob_ref after its header; before MAKE_CELL ran: the value)
            if addrs[k] and _words(addrs[k] + _PTR, 1)[0] == _CELL:
                addrs[k] = _words(addrs[k] + 2 * _PTR, 1)[0]
        return [(name, addr, None) for name, addr in zip(names, addrs)]
    except Exception:  # pragma: no cover - exotic frames
        return []
