"""Which ops a view shows: phase filter, focus on a module path, hidden tags,
and where each tensor an op reads really comes from once hidden ops are
bypassed."""
from __future__ import annotations

import difflib
from typing import Dict, List, Optional, Set, Tuple

from ..errors import UsageError
from ..ir import PHASES, Graph, Node
from .options import ViewOptions

PHASE_SETS = {
    "forward": ("forward",),
    "backward": ("backward", "recompute"),
    "optimizer": ("optimizer",),
    "both": PHASES,
}

# (producing node id or None, value id): None means the value enters the view
# from outside (an input, a parameter, or an op the view does not show).
Origin = Tuple[Optional[str], str]


class Selection:
    """The shown ops of one graph under one set of options.

    ``nodes``: shown ops in execution order. ``hidden``: ops inside the phase
    and focus whose tag is hidden; dataflow passes through them.
    ``focus_calls``: the module-call ids the focus selected (empty: no focus).
    """

    def __init__(self, graph: Graph, opts: ViewOptions) -> None:
        self.graph = graph
        self.phase = opts.phase or ("forward" if any(n.phase == "forward" for n in graph.nodes) else "both")
        phases = PHASE_SETS[self.phase]
        self.focus_calls: Tuple[str, ...] = ()
        in_focus: Optional[Set[str]] = None
        if opts.focus is not None:
            self.focus_calls, in_focus = _focus(graph, opts.focus)
        hide = set(opts.hide)
        self.pos: Dict[str, int] = {}
        self.nodes: List[Node] = []
        self.hidden: Dict[str, Node] = {}
        self.out_of_phase = 0
        for k, n in enumerate(graph.nodes):
            self.pos[n.id] = k
            if n.phase not in phases:
                self.out_of_phase += 1
                continue
            if in_focus is not None and n.module not in in_focus:
                continue
            if hide.intersection(n.tags):
                self.hidden[n.id] = n
            else:
                self.nodes.append(n)
        self.shown = {n.id for n in self.nodes}
        self._producers = graph.producers()
        self._phases = phases
        self._origins: Dict[str, Tuple[Origin, ...]] = {}
        self._readers: Optional[Dict[str, List[Tuple[str, str]]]] = None

    def origins(self, vid: str) -> Tuple[Origin, ...]:
        """Where value ``vid`` comes from, seen through hidden ops."""
        got = self._origins.get(vid)
        if got is not None:
            return got
        stack = [vid]  # iterative: chains of hidden ops can be long
        while stack:
            v = stack[-1]
            if v in self._origins:
                stack.pop()
                continue
            p = self._producers.get(v)
            hidden = self.hidden.get(p) if p is not None else None
            if hidden is None:
                self._origins[v] = ((p, v),) if p in self.shown else ((None, v),)
                stack.pop()
                continue
            todo = [u for u in hidden.inputs if u not in self._origins]
            if todo:
                stack.extend(todo)
                continue
            seen: Dict[Origin, None] = {}
            for u in hidden.inputs:
                for o in self._origins[u]:
                    seen.setdefault(o, None)
            self._origins[v] = tuple(seen)
            stack.pop()
        return self._origins[vid]

    def readers(self, nid: str) -> List[Tuple[str, str]]:
        """(shown node id, value id) for every shown op reading what ``nid`` made."""
        if self._readers is None:
            self._readers = {}
            for n in self.nodes:
                for src, vid in self.inputs(n):
                    if src is not None:
                        self._readers.setdefault(src, []).append((n.id, vid))
        return self._readers.get(nid, [])

    def producer(self, vid: str) -> str:
        return self._producers[vid]

    def shows(self, phase: str) -> bool:
        return phase in self._phases

    def leaving(self) -> List[Tuple[str, Node]]:
        """(value id, the first op outside the view that reads it) for what the
        shown ops made and an op of their phase outside the focus reads."""
        made = {v: n.phase for n in self.nodes for v in n.outputs}
        first: Dict[str, Node] = {}
        for n in self.graph.nodes:
            if n.id in self.shown or n.id in self.hidden:
                continue
            for v in n.inputs:
                if made.get(v) == n.phase and v not in first:
                    first[v] = n
        return sorted(first.items(), key=lambda vn: self.pos[self._producers[vn[0]]])

    def other_phase(self, vid: str) -> Optional[str]:
        """The phase of the op that made ``vid`` when the view filters that phase out."""
        p = self._producers.get(vid)
        if p is None:
            return None
        phase = self.graph.node(p).phase
        return phase if phase not in self._phases else None

    def inputs(self, n: Node) -> List[Origin]:
        """The origins of everything ``n`` reads, in order, without repeats."""
        seen: Dict[Origin, None] = {}
        for v in n.inputs:
            for o in self.origins(v):
                seen.setdefault(o, None)
        return list(seen)


def _focus(graph: Graph, path: str) -> Tuple[Tuple[str, ...], Set[str]]:
    roots = tuple(m.id for m in graph.modules if m.path == path)
    if not roots:
        paths = sorted({m.path for m in graph.modules})
        near = difflib.get_close_matches(path, paths, n=3)
        shown = ", ".join(repr(p) for p in (near or paths[:8])) or "none (the graph has no module calls)"
        raise UsageError("focus names no module call of this graph", expected="a recorded module path",
                         found=repr(path), fix=f"use one of: {shown}")
    inside: Set[str] = set(roots)
    for m in graph.modules:  # parents come before children in entry order
        if m.parent in inside:
            inside.add(m.id)
    return roots, inside
