"""The tree of module-call groups the shown ops fall into.

A group is one module call in one phase: backward ops are attributed to the
forward module call that created their grad_fn, and drawing them inside the
forward frame would tangle both passes, so ``(call, "backward")`` is a group
of its own with the same nesting. ``items`` interleave direct ops and child
groups in execution order (by their first shown op).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

from ..ir import ModuleCall, Node
from .select import Selection


class Group:
    __slots__ = ("key", "call", "phase", "parent", "depth", "items", "nodes")

    def __init__(self, key: str, call: Optional[ModuleCall], phase: str, parent: Optional["Group"]) -> None:
        self.key = key
        self.call = call
        self.phase = phase
        self.parent = parent
        self.depth = -1 if parent is None else parent.depth + 1
        self.items: List[Union[Node, "Group"]] = []
        self.nodes: List[Node] = []  # every shown op below, in execution order

    @property
    def path(self) -> str:
        return self.call.path if self.call is not None else ""

    @property
    def type(self) -> str:
        return self.call.type if self.call is not None else ""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Group {self.key} {self.path!r} {len(self.nodes)} ops>"


def group_key(mid: str, phase: str) -> str:
    return mid if phase == "forward" else f"{mid}.{phase}"


def build_groups(sel: Selection) -> Group:
    """The top (virtual) group; its items are ops outside any module call and
    the outermost module-call groups (the focus calls when focused)."""
    g = sel.graph
    top = Group("", None, "", None)
    groups: Dict[str, Group] = {}
    stop = set(sel.focus_calls)

    def get(mid: str, phase: str) -> Group:
        chain = []  # the calls up to the first with a group (a loop: files may nest ~1,000 deep)
        while group_key(mid, phase) not in groups:
            if mid in chain:  # (a hand-built Graph never validated: validate() says where)
                g.validate()
            chain.append(mid)
            parent = g.module(mid).parent
            if parent is None or mid in stop:
                break
            mid = parent
        for m in reversed(chain):
            call = g.module(m)
            parent_grp = top if (call.parent is None or m in stop) else groups[group_key(call.parent, phase)]
            grp = groups[group_key(m, phase)] = Group(group_key(m, phase), call, phase, parent_grp)
            parent_grp.items.append(grp)
        return groups[group_key(chain[0] if chain else mid, phase)]

    for n in sel.nodes:
        grp = get(n.module, n.phase) if n.module is not None else top
        grp.items.append(n)
        while grp is not None:
            grp.nodes.append(n)
            grp = grp.parent
    return top


def iter_groups(top: Group) -> List[Group]:
    """Every group below ``top`` (pre-order)."""
    out: List[Group] = []
    stack = [top]
    while stack:
        grp = stack.pop()
        out.append(grp)
        stack.extend(reversed([i for i in grp.items if isinstance(i, Group)]))
    return out[1:]
