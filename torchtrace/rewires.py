"""Aligned ops that read other named inputs of the traced call: ``m(x, y)``
against ``m(y, x)``, or one tensor passed as two inputs (``m(x, x)`` against
``m(x, y)``, known from the pass's ``meta.input_aliases``)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Tuple

from .textform import where

if TYPE_CHECKING:  # pragma: no cover
    from .classify import OpPair
    from .ir import Graph, Value
    from .side import Side


@dataclass(frozen=True)
class Rewire:
    """An aligned op that reads other named inputs of the traced call:
    ``a`` in A, ``b`` in B (the names at the positions that differ).
    ``shared``: the side that passed one tensor for two arguments (``m(x, x)``:
    it has no input named as the other side's, which has both names)."""

    op: str
    a: Tuple[str, ...]
    b: Tuple[str, ...]
    shared: Optional[str] = None
    made: bool = False  # ``a``/``b`` say where the tensors read came from ("what `c.2`'s `addmm` made"), not names

    def describe(self) -> str:
        if self.made:
            return f"`{self.op}` reads {', '.join(self.a)} in A, {', '.join(self.b)} in B"
        reads = f"`{self.op}` reads {_names(self.a)} in A, {_names(self.b)} in B"
        if self.shared is None:
            return reads
        one, two = (self.a[0], self.b[0]) if self.shared == "A" else (self.b[0], self.a[0])
        return f"{self.shared} passed one tensor as both `{one}` and `{two}`, " \
               f"{'B' if self.shared == 'A' else 'A'} passed two: {reads}"

    def mirror(self) -> "Rewire":
        return replace(self, a=self.b, b=self.a, shared={"A": "B", "B": "A"}.get(self.shared or ""))

    def to_dict(self) -> Dict[str, Any]:
        return {"op": self.op, "a": list(self.a), "b": list(self.b), "shared": self.shared, "made": self.made}


MADE = 2  # rewired ops said by what made their inputs, per hunk


def _maker(g: "Graph", v: "Value") -> str:
    """"what `c.2`'s `addmm` made", "what `mul` at `m.py:9` made" (the root's own
    code), "param `p`" (a named input, parameter or buffer): where ``v`` came from."""
    if v.role != "activation" and v.name:
        return f"{v.role} `{v.name}`"
    nid = g.producers().get(v.id)
    if nid is None:
        return f"a {v.role}"
    n = g.node(nid)
    path = g.module_path(n.module)
    if path:
        return f"what `{path}`'s `{n.short_op}` made"
    return f"what `{n.short_op}`" + (f" at {where(n.source.file, n.source.line)}" if n.source is not None else "") \
        + " made"


def _names(names: Tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def rewires(A: Side, B: Side, rows: Iterable[OpPair]) -> Tuple[Rewire, ...]:
    """The rewired ops of ``rows`` that read other named inputs of the traced call;
    of the others, the first ``MADE`` whose inputs other ops made (``h = h1 if ...
    else h2``: "`mul` reads what `a`'s `addmm` made in A, `b`'s `addmm` in B")."""
    na, nb = _input_names(A.graph), _input_names(B.graph)
    out = []
    made = 0
    for p in rows:
        if p.a is None or p.b is None or "wiring" not in p.what:
            continue
        xs = [(A.graph.value(x), B.graph.value(y)) for x, y in zip(p.a.inputs, p.b.inputs)]
        diff = [(va.name, vb.name) for va, vb in xs if va.role == vb.role == "input" and va.name != vb.name]
        if not diff or not all(a and b for a, b in diff):
            texts = [(_maker(A.graph, va), _maker(B.graph, vb)) for va, vb in xs]
            texts = [(a, b) for a, b in texts if a != b]
            if texts and made < MADE and len(p.a.inputs) == len(p.b.inputs):
                made += 1
                out.append(Rewire(p.a.short_op, tuple(a for a, _ in texts), tuple(b for _, b in texts), made=True))
            continue
        a, b = tuple(x for x, _ in diff), tuple(y for _, y in diff)
        shared = None
        if len(diff) == 1:
            shared = "A" if _passed_twice(A.graph, a[0], b[0], na, nb) else \
                "B" if _passed_twice(B.graph, b[0], a[0], nb, na) else None
        out.append(Rewire(p.a.short_op, a, b, shared))
    return tuple(out)


def _passed_twice(g: "Graph", mine: str, theirs: str, names: set, other: set) -> bool:
    """Did ``g``'s pass get one tensor as its input ``mine`` and as ``theirs``?
    Its ``meta.input_aliases`` says so; in a file without them, when it has no
    input ``theirs`` and all of its names are the other pass's (a longer list of
    inputs looks the same: ``flags[2]`` against ``flags[3]``)."""
    aliases = g.meta.get("input_aliases")
    if isinstance(aliases, dict):
        return aliases.get(theirs) == mine
    return theirs not in names and mine in other and names <= other


def _input_names(g: "Graph") -> set:
    return {v.name for v in g.values if v.role == "input" and v.name}
