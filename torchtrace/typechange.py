"""How the tensors of aligned ops differ in type: each dimension change
("size 8 -> 9 in 40 values"), rank and dtype changes, and a tensor one side
passes or returns that the other does not ("B passes one more input,
f32[2,1,8,8]": SDPA given a padding mask).

Inputs are paired with inputs and outputs with outputs, by position; an op
with more inputs on one side has that many extra values, not shifted pairs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from itertools import zip_longest
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .explain import ARROW, plural
from .textform import dtype_short, shape_str

if TYPE_CHECKING:  # pragma: no cover
    from .side import Side
    from .classify import OpPair

Shape = Tuple[int, ...]
# (dtype, dtype, shape, shape, "input"/"output") of a value pair; None on the side that lacks the value
ValuePair = Tuple[Optional[str], Optional[str], Optional[Shape], Optional[Shape], str]
EXTRA = ("input", "output")  # kinds of a value only one side has


@dataclass(frozen=True)
class TypeChange:
    """``kind`` "size": one dimension ``a`` became ``b``; "rank": the number of
    dimensions; "dtype": the element type; "input"/"output": a tensor only
    one side passes to (returns from) an aligned op, ``a`` or ``b`` its type
    (``f32[2,1,8,8]``) and the other ``None``. ``count`` values changed so
    (for "input"/"output": the values only one side has, over all ops)."""

    kind: str
    a: Any
    b: Any
    count: int

    def describe(self) -> str:
        if self.kind in EXTRA:
            side, t = ("B", self.b) if self.a is None else ("A", self.a)
            verb = "passes" if self.kind == "input" else "returns"
            if self.count == 1:
                return f"{side} {verb} one more {self.kind}, {t}"
            return f"{side} {verb} {self.count} more {self.kind}s, {t} each"
        a, b = (dtype_short(self.a), dtype_short(self.b)) if self.kind == "dtype" else (self.a, self.b)
        what = "" if self.kind == "dtype" else f"{self.kind} "
        return f"{what}{a} {ARROW} {b} in {plural(self.count, 'value')}"

    def mirror(self) -> "TypeChange":
        return replace(self, a=self.b, b=self.a)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "a": self.a, "b": self.b, "count": self.count}


def outputs_paired(A: "Side", B: "Side", xs: Sequence[str], ys: Sequence[str]) -> List[Tuple[Any, Any]]:
    """An op's outputs paired by position, or, when one side has fewer and they
    are, in order, of the types of some of the other's, with those: an output
    torch did not compute is absent (``native_batch_norm_backward`` with
    ``output_mask=[False, True, True]`` returns no grad_input)."""
    if len(xs) != len(ys):
        short, long_, flip = (xs, ys, False) if len(xs) < len(ys) else (ys, xs, True)
        types = [((A, B)[flip].graph.value(v).shape, (A, B)[flip].graph.value(v).dtype) for v in short]
        other = (B, A)[flip].graph
        out: List[Tuple[Any, Any]] = []
        k = 0
        for v in long_:
            w = other.value(v)
            if k < len(types) and (w.shape, w.dtype) == types[k]:
                out.append((short[k], v))
                k += 1
            else:
                out.append((None, v))
        if k == len(short):
            return [(y, x) for x, y in out] if flip else out
    return list(zip_longest(xs, ys))


def value_pairs(A: "Side", B: "Side", rows: Iterable["OpPair"]) -> Iterator[ValuePair]:
    """Each aligned tensor once: inputs with inputs, outputs with outputs
    (``outputs_paired``); a tensor only one side has is yielded with ``None``
    for the other side (once per op)."""
    seen = set()
    for p in rows:
        if p.a is None or p.b is None:
            continue
        for role, pairs in (("input", zip_longest(p.a.inputs, p.b.inputs)),  # (an op that raised has no outputs)
                            ("output", () if p.raised else outputs_paired(A, B, p.a.outputs, p.b.outputs))):
            for x, y in pairs:
                if x is not None and y is not None:
                    if x in seen:
                        continue
                    seen.add(x)
                va = A.graph.value(x) if x is not None else None
                vb = B.graph.value(y) if y is not None else None
                yield (va.dtype if va else None, vb.dtype if vb else None,
                       va.shape if va else None, vb.shape if vb else None, role)


def paired_types_differ(A: "Side", B: "Side", xs: Sequence[str], ys: Sequence[str]) -> Tuple[bool, bool]:
    """(shape differs, dtype differs) over the values ``xs``/``ys`` paired by
    position (a count mismatch is a shape difference)."""
    va, vb = [A.graph.value(v) for v in xs], [B.graph.value(v) for v in ys]
    shape = len(va) != len(vb) or any(x.shape != y.shape for x, y in zip(va, vb))
    return shape, any(x.dtype != y.dtype for x, y in zip(va, vb))


def type_changes(pairs: Iterable[ValuePair]) -> Tuple[TypeChange, ...]:
    """Summarise the ``value_pairs`` of aligned ops."""
    counts: Counter = Counter()
    for da, db, sa, sb, role in pairs:
        if sa is None or sb is None:
            counts[(role,) + _extra(da, sa, db, sb)] += 1
            continue
        if da != db:
            counts[("dtype", da, db)] += 1
        if len(sa) != len(sb):
            counts[("rank", len(sa), len(sb))] += 1
        else:
            for key in sorted({(x, y) for x, y in zip(sa, sb) if x != y}):
                counts[("size",) + key] += 1
    return tuple(TypeChange(k, a, b, c) for (k, a, b), c in
                 sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0], repr(kv[0][1:]))))


def _extra(da: Optional[str], sa: Optional[Shape], db: Optional[str], sb: Optional[Shape]) -> Tuple[Any, Any]:
    a = None if sa is None else f"{dtype_short(da or '?')}{shape_str(sa)}"
    b = None if sb is None else f"{dtype_short(db or '?')}{shape_str(sb)}"
    return a, b


def changed_what(types: Sequence[TypeChange], inputs: Sequence[Any] = ()) -> str:
    """"shapes", "dtypes" or "shapes and dtypes": what ``types`` say changed (or,
    with none, the ``inputs``' changes: ``f32[3]`` against ``f64[3]`` is a dtype's)."""
    if not types and inputs:
        pairs = [(i.a.partition("["), i.b.partition("[")) for i in inputs if i.a and i.b]
        dtypes = any(a[0] != b[0] for a, b in pairs)
        shapes = any(a[1:] != b[1:] for a, b in pairs) or len(pairs) < len(inputs)
    else:
        dtypes = any(t.kind == "dtype" for t in types)
        shapes = any(t.kind != "dtype" for t in types)
    return "shapes and dtypes" if dtypes and shapes else "dtypes" if dtypes else "shapes"
