"""The line a model was called from, where the diff should not tell passes apart by it.

Ops inside a module of torch's own (``nn.GRU``, ``nn.TransformerEncoder``) have no
frame of the user's below the module call: their source line is the line that
called the model. Two passes of one such model called from two lines (a training
step's ``m(x)`` and an evaluation's) share no loop signature, and a loop inside the
model (a GRU's time steps: 6 in A, 4 in B) read as "6× in A, 0× in B".
``relined`` gives B's forward ops in such calls A's line, for the loop signatures
only (the alignment pairs ops at other lines by itself: ``align.refine``). B is
moved onto A, never both: one side's lines are the ones the diff names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Set, Tuple

from .side import base_name

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph, ModuleCall

Line = Tuple[str, int]  # (file name, line), as a signature holds it


def _tops(g: "Graph") -> Dict[str, "ModuleCall"]:
    """Module-call id -> the top-level call it is in (the last of ``calls_around``)."""
    return {m.id: [*g.calls_around(m.id)][-1] for m in g.modules}


def _call_lines(g: "Graph", top: Dict[str, "ModuleCall"]) -> Dict[str, Set[Optional[Line]]]:
    """Module path -> the lines its top-level calls' forward ops ran at, one per
    call whose every forward op ran at one line (None for a call of the model's own
    code: ops at several lines)."""
    at: Dict[str, Optional[Line]] = {}
    for n in g.nodes:
        if n.module in top and n.phase == "forward":
            here = (base_name(n.source.file), n.source.line) if n.source is not None else None
            if at.setdefault(top[n.module].id, here) != here:
                at[top[n.module].id] = None
    lines: Dict[str, Set[Optional[Line]]] = {}
    for call, line in at.items():
        lines.setdefault(g.module(call).path, set()).add(line)
    return lines


def relined(a: "Graph", b: "Graph") -> Dict[str, Line]:
    """B's forward op id -> A's line, for the top-level calls of a module path that
    ran at one line in A and at another one line in B (several lines on a side: the
    calls cannot be told apart, and none moves)."""
    tb = _tops(b)
    la, lb = _call_lines(a, _tops(a)), _call_lines(b, tb)
    moved = {path: next(iter(la[path])) for path in la.keys() & lb.keys()
             if len(la[path]) == len(lb[path]) == 1 and None not in la[path] | lb[path] and la[path] != lb[path]}
    return {n.id: moved[tb[n.module].path] for n in b.nodes  # type: ignore[misc]
            if n.module in tb and n.phase == "forward" and tb[n.module].path in moved}
