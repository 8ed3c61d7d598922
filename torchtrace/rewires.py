"""Aligned ops that read other named inputs of the traced call: ``m(x, y)``
against ``m(y, x)``, or one tensor passed as two inputs (``m(x, x)`` against
``m(x, y)``, known from the pass's ``meta.input_aliases``)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .classify import OpPair
    from .ir import Graph
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

    def describe(self) -> str:
        reads = f"`{self.op}` reads {_names(self.a)} in A, {_names(self.b)} in B"
        if self.shared is None:
            return reads
        one, two = (self.a[0], self.b[0]) if self.shared == "A" else (self.b[0], self.a[0])
        return f"{self.shared} passed one tensor as both `{one}` and `{two}`, " \
               f"{'B' if self.shared == 'A' else 'A'} passed two: {reads}"

    def mirror(self) -> "Rewire":
        return replace(self, a=self.b, b=self.a, shared={"A": "B", "B": "A"}.get(self.shared or ""))

    def to_dict(self) -> Dict[str, Any]:
        return {"op": self.op, "a": list(self.a), "b": list(self.b), "shared": self.shared}


def _names(names: Tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def rewires(A: Side, B: Side, rows: Iterable[OpPair]) -> Tuple[Rewire, ...]:
    """The rewired ops of ``rows`` that read other named inputs of the traced call."""
    na, nb = _input_names(A.graph), _input_names(B.graph)
    out = []
    for p in rows:
        if p.a is None or p.b is None or "wiring" not in p.what:
            continue
        xs = [(A.graph.value(x), B.graph.value(y)) for x, y in zip(p.a.inputs, p.b.inputs)]
        diff = [(va.name, vb.name) for va, vb in xs if va.role == vb.role == "input" and va.name != vb.name]
        if not diff or not all(a and b for a, b in diff):
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
