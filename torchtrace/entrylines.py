"""The line a model was called from, where the diff should not tell passes apart by it.

Ops inside a module of torch's own (``nn.GRU``, ``nn.TransformerEncoder``) have no
frame of the user's below the module call: their source line is the line that
called the model. Two passes of one such model called from two lines (a training
step's ``m(x)`` and an evaluation's) would share no op signature, and a loop inside
the model (a GRU's time steps: 6 in A, 4 in B) would read as "6× in A, 0× in B".
``relined`` gives B's ops in such a call A's line, for the loop signatures only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph

Line = Tuple[str, int]
Call = Tuple[str, int]  # (module path, k): the k-th top-level call of that path in the pass


def _top_calls(g: "Graph") -> Dict[str, Call]:
    """Module-call id -> the top-level call it is in."""
    top: Dict[str, Call] = {}
    seen: Dict[str, int] = {}
    for m in g.modules:  # (in entry order: a parent before its children)
        if m.parent is None or m.parent not in top:
            k = seen[m.path] = seen.get(m.path, -1) + 1
            top[m.id] = (m.path, k)
        else:
            top[m.id] = top[m.parent]
    return top


def one_line_calls(g: "Graph") -> Dict[Call, Optional[Line]]:
    """Each top-level call -> the (file, line) every op in it ran at (None: ops
    at several lines, the model's own code)."""
    top = _top_calls(g)
    lines: Dict[Call, Optional[Line]] = {}
    for n in g.nodes:
        if n.module in top:
            here = (n.source.file, n.source.line) if n.source is not None else None
            if lines.setdefault(top[n.module], here) != here:
                lines[top[n.module]] = None
    return lines


def relined(a: "Graph", b: "Graph") -> Dict[str, Line]:
    """B's op id -> A's line, for the ops of a top-level call that ran at one line
    on both sides, another line on each (the line that called the model)."""
    la, lb = one_line_calls(a), one_line_calls(b)
    moved = {c: la[c] for c in la.keys() & lb.keys() if la[c] is not None and lb[c] is not None and la[c] != lb[c]}
    if not moved:
        return {}
    top = _top_calls(b)
    return {n.id: moved[top[n.module]] for n in b.nodes  # type: ignore[misc]
            if n.module in top and top[n.module] in moved}
