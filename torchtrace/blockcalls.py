"""The module call a block of ops is: the innermost call around some ops, the
call that is a block exactly (a ModuleList's block: ``encoder.layer.*``), and
how many blocks of its list a call of their parent ran. ``loops.py`` names a
repeated block by them."""
from __future__ import annotations

import re
from typing import Iterable, List, Optional, Set, Tuple

from .side import Side


def call_scope(side: Side, ops: Iterable[int]) -> Optional[Tuple[str, int]]:
    """(path, call) of the innermost module call around all of ``ops``."""
    g = side.graph
    common: Optional[List[str]] = None
    for i in ops:
        chain: List[str] = []
        mid = side.nodes[i].module
        while mid is not None:
            chain.append(mid)
            mid = g.module(mid).parent
        chain.reverse()
        if common is None:
            common = chain
        else:
            k = 0
            while k < min(len(common), len(chain)) and common[k] == chain[k]:
                k += 1
            common = common[:k]
    if not common:
        return None
    m = g.module(common[-1])
    return m.path, m.call


def one_call(side: Side, scope: Optional[Tuple[str, int]], first: int, n: int) -> Optional[Tuple[str, str]]:
    """(path, type) of the module call that is the block ``first``..``first + n``
    exactly (no op of it before or after), its path's last index as ``*``
    (``encoder.layer.*``: a ModuleList's blocks); None when there is none."""
    inside = calls_under(side, scope)
    if not inside or not scope or not scope[0]:  # (the root's own ops: no call to name)
        return None
    if any(0 <= i < len(side.nodes) and side.nodes[i].module in inside for i in (first - 1, first + n)):
        return None
    m = next(m for m in side.graph.modules if (m.path, m.call) == scope)
    head = re.sub(r"\.\d+$", ".*", m.path)  # (a module called again keeps its own path)
    return (head if any(c.path != m.path and re.sub(r"\.\d+$", ".*", c.path) == head and c.parent == m.parent
                        for c in side.graph.modules) else m.path), m.type


def starred(side: Side, name: str, typ: str) -> str:
    """``name`` (a block's path, maybe with its last index starred) with a ``*``
    for each index in which the calls of its type differ, their paths otherwise
    the same: the layers of a list of groups (ALBERT's
    ``albert_layer_groups.*.albert_layers.0``, groups of two: ``groups.*.layers.*``)."""
    parts = name.split(".")
    others = [q for q in (c.path.split(".") for c in side.graph.modules if c.type == typ)
              if len(q) == len(parts) and all(a == b or a == "*" or a.isdigit() and b.isdigit()
                                               for a, b in zip(parts, q))]
    return ".".join("*" if a == "*" or any(q[k] != a for q in others) else a for k, a in enumerate(parts))


def parent_call_on(side: Side, scope: Tuple[str, int], other: Side) -> bool:
    """Does ``side`` hold the call that made the module call ``scope`` of ``other``
    (the root's calls: always)?"""
    g = other.graph
    m = next(m for m in g.modules if (m.path, m.call) == scope)
    if m.parent is None:
        return True
    parent = g.module(m.parent)
    return any((p.path, p.call) == (parent.path, parent.call) for p in side.graph.modules)


def calls_under(side: Side, scope: Optional[Tuple[str, int]]) -> Optional[Set[str]]:
    """The ids of the module call ``scope`` and the calls inside it (``None``:
    no scope; empty: no such call on this side)."""
    if scope is None:
        return None
    g = side.graph
    return next((g.calls_under(m.id) for m in g.modules if (m.path, m.call) == scope), set())


def list_calls(side: Side, scope: Optional[Tuple[str, int]], other: Optional[Side] = None,
               own: bool = False) -> int:
    """How many blocks of the list whose block is the call ``scope`` on ``other``
    (default ``side``) ``side``'s call of their parent made: the calls with the
    same parent and type, of the same module or a path that differs in its
    last index only (``encoder.block.0..2``); with ``own``, of the same module only."""
    g = (other or side).graph
    m = next(m for m in g.modules if (m.path, m.call) == scope)
    parent = g.module(m.parent) if m.parent is not None else None
    where_ = (parent.path, parent.call) if parent is not None else None
    head = m.path.rpartition(".")[0]
    ids = {p.id for p in side.graph.modules if (p.path, p.call) == where_}
    return sum(1 for c in side.graph.modules if c.type == m.type and (c.parent in ids if where_ else c.parent is None)
               and (c.path == m.path or not own and c.path.rpartition(".")[0] == head
                    and c.path.rpartition(".")[2].isdigit()))


def block_counts(X: Side, Y: Side, scope: Tuple[str, int], calls: Tuple[str, str], cx: int,
                 cy: int) -> Tuple[int, int, Tuple[str, str]]:
    """The counts on ``X`` and ``Y`` of the block that is the call ``scope`` of
    ``X`` (``cx``/``cy``: the copies of its ops that repeat), and its name: a
    block called again on both sides (`blocks[0]` in a loop) by its own calls (one
    the other side never called ran in another loop); one whose copies each have
    a parent call of their own (ALBERT calls one group again, or groups of layers)
    by the copies, every index they differ in starred; else a list's by every
    block of it (the first blocks may differ from the rest: T5's first holds the bias)."""
    ox, oy = list_calls(X, scope, own=True), list_calls(Y, scope, X, own=True)
    if min(ox, oy) and max(ox, oy) > 1 and ox - oy == cx - cy:
        return ox, oy, (scope[0], calls[1])
    if not parent_call_on(Y, scope, X):
        return cx, cy, (starred(X, *calls), calls[1])
    nx, ny = list_calls(X, scope), list_calls(Y, scope, X)
    return (nx, ny, calls) if nx - ny == cx - cy else (cx, cy, calls)
