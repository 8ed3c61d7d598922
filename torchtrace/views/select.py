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
        hide = self.hide = set(opts.hide)
        self.pos: Dict[str, int] = {}
        self.nodes: List[Node] = []
        self.hidden: Dict[str, Node] = {}
        self.out_of_phase = 0
        # a focus's optimizer ops: those that update its parameters (they run in no module call); the
        # root's: all of them (a foreach op or a clipping of all gradients updates no one module's)
        updates = self._updates(None) if in_focus is not None and "optimizer" in phases else {}
        under = f"{opts.focus}." if opts.focus else ""
        mine = self._read_by(in_focus) if updates and under else set()  # (a tied weight: `lm_head` reads `wte`'s)
        for k, n in enumerate(graph.nodes):
            self.pos[n.id] = k
            if n.phase not in phases:
                self.out_of_phase += 1
                continue
            if in_focus is not None and n.module not in in_focus and not (
                    n.id in updates and (updates[n.id].startswith(under) or updates[n.id] in mine)
                    or not under and n.phase == "optimizer" and n.module is None):
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
        self._outside_readers: Optional[Dict[str, List[Node]]] = None
        self._updated: Optional[Dict[str, str]] = None

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

    def leaving(self) -> List[Tuple[str, List[str], List[Optional[str]]]]:
        """(value id, the parameters whose ``.grad`` AccumulateGrad makes of it, the module
        paths of the other ops that read it, None for those outside any module) for what
        the shown ops made and an op of their phase outside the focus reads. A reader the
        view's ``hide`` tags cover is seen through to the ops that read what it made."""
        out = []
        for n in self.nodes:
            for v in n.outputs:
                readers = self._seen_through(self._outside(v, n.phase))
                if readers:
                    params = [self.grad_of(r) for r in readers]
                    paths = [None if r.module is None else self.graph.module(r.module).path
                             for r, p in zip(readers, params) if p is None]
                    out.append((v, [p for p in params if p is not None], paths))
        return out

    def _outside(self, vid: str, phase: str) -> List[Node]:
        """The ops of ``phase`` outside the view (not hidden in it) that read ``vid``."""
        if self._outside_readers is None:
            self._outside_readers = {}
            for n in self.graph.nodes:
                if n.id not in self.shown and n.id not in self.hidden:
                    for v in dict.fromkeys(n.inputs):
                        self._outside_readers.setdefault(v, []).append(n)
        return [r for r in self._outside_readers.get(vid, ()) if r.phase == phase]

    def _seen_through(self, readers: List[Node]) -> List[Node]:
        """``readers``, each hidden one (not AccumulateGrad's) replaced by the readers of
        what it made, where it has some."""
        out: Dict[str, Node] = {}
        todo, seen = readers[::-1], set()
        while todo:
            n = todo.pop()
            if n.id in seen:
                continue
            seen.add(n.id)
            nxt = [r for v in n.outputs for r in self._outside(v, n.phase)] if self.hide.intersection(n.tags) else []
            if nxt and self.grad_of(n) is None:
                todo.extend(nxt[::-1])
            else:
                out.setdefault(n.id, n)
        return list(out.values())

    def grad_of(self, n: Node) -> Optional[str]:
        """The parameter whose ``.grad`` AccumulateGrad's op ``n`` fills, else None."""
        if n.autograd_node is None or n.phase != "backward":
            return None
        a = self.graph.autograd_node(n.autograd_node)
        return a.param if a.name.endswith("AccumulateGrad") else None

    def updated_param(self, node: Node) -> Optional[str]:
        """The parameter whose update shown optimizer op ``node`` is part of: the one parameter
        its inputs come from (the parameter, its ``.grad``, the state made from it, `exp_avg`).
        An op that reads none (`state["step"] += 1`) goes with the next op that has one; an op
        that reads several (clip_grad_norm_'s norm of every gradient) with none."""
        if node.phase != "optimizer":
            return None
        if self._updated is None:
            self._updated = self._updates(self.shown)
        return self._updated.get(node.id)

    def _updates(self, among: Optional[Set[str]]) -> Dict[str, str]:
        """optimizer op id -> the parameter it updates (``updated_param``), for the ops
        ``among`` (None: every optimizer op outside a module call)."""
        updated: Dict[str, str] = {}
        param_of: Dict[str, str] = {}  # value id -> parameter name
        waiting: List[str] = []
        for n in self.graph.nodes:
            grad_of = self.grad_of(n)
            if grad_of is not None:
                param_of.update(dict.fromkeys(n.outputs, grad_of))
            if n.phase != "optimizer" or n.module is not None or (among is not None and n.id not in among):
                continue
            names = {p for p in (self._param_of(v, param_of) for v in n.inputs) if p is not None}
            if not names:
                waiting.append(n.id)
                continue
            if len(names) == 1:
                [name] = names
                param_of.update(dict.fromkeys(n.outputs, name))
                updated.update(dict.fromkeys([*waiting, n.id], name))
            waiting = []
        return updated

    def _read_by(self, calls: Set[str]) -> Set[str]:
        """The names of the parameters that ops in the module calls ``calls`` read
        (or a view of: ``head(h, emb.weight.t())``)."""
        names = {self._param_of(v, {}) for n in self.graph.nodes if n.module in calls for v in n.inputs}
        names.discard(None)
        return names  # type: ignore[return-value]

    def _param_of(self, vid: Optional[str], known: Dict[str, str]) -> Optional[str]:
        """The parameter ``vid`` is, or is a new version or a view of (``known``: of other values)."""
        while vid is not None and vid not in known:
            val = self.graph.value(vid)
            if val.role == "param" and val.name:
                return val.name
            vid = val.version_of or val.alias_of  # (a new version of a .grad, a view of a state)
        return None if vid is None else known[vid]

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
