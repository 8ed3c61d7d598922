"""The tensors from outside a pass that two passes were given with other types:
the traced call's named inputs (one only one pass passed, one a pass made inside
the block), then the unnamed ones (params, buffers, constants) aligned ops read."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Sequence, Tuple

from .explain import ARROW, plural
from .side import Side
from .textform import type_str, type_text

if TYPE_CHECKING:  # pragma: no cover
    from .classify import OpPair


@dataclass(frozen=True)
class InputChange:
    """A tensor from outside the pass whose type differs: a named input of
    the traced call (``None``: absent on that side), or -- ``name`` empty --
    ``count`` unnamed tensors of ``role`` (a KV cache passed in an object
    shows as constants)."""

    name: str
    a: Optional[str]
    b: Optional[str]
    role: str = "input"
    count: int = 1
    at: int = field(default=-1, compare=False)  # the first row that reads one with its other type (-1: a named input)
    made: Optional[str] = None  # the op that made it inside the other pass (`m(x, mask=torch.ones(2, 4))`)
    makers: Tuple[str, ...] = field(default=(), compare=False)  # that op and the views and writes after it: ids

    def describe(self) -> str:
        if not self.name:
            return f"{plural(self.count, self.role)} {self.a} {ARROW} {self.b}"
        if self.role != "input":
            return f"{self.role} `{self.name}` {self.a} {ARROW} {self.b}"
        if self.made is not None:
            given, made = ("A", "B") if self.b is None else ("B", "A")
            return f"input `{self.name}` passed in to {given}'s pass ({self.a or self.b}), made inside " \
                   f"{made}'s by `{self.made}`"
        if self.a is None:
            return f"input `{self.name}` only in B ({self.b})"
        if self.b is None:
            return f"input `{self.name}` only in A ({self.a})"
        return f"input `{self.name}` {self.a} {ARROW} {self.b}"

    def mirror(self) -> "InputChange":
        return replace(self, a=self.b, b=self.a)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "a": self.a, "b": self.b, "role": self.role, "count": self.count,
                "made": self.made}


def unread_inputs(meta: Dict[str, Any]) -> Dict[str, str]:
    """``meta.unread_inputs`` (inputs passed, read by no op: ``if self.use_mask:``
    skipped the mask) by name: their types; entries not of that form are left out."""
    found = meta.get("unread_inputs")
    return {u["name"]: type_text(u["dtype"], u["shape"]) for u in found
            if isinstance(u, dict) and isinstance(u.get("name"), str) and isinstance(u.get("dtype"), str)
            and isinstance(u.get("shape"), list) and all(type(d) is int for d in u["shape"])} \
        if isinstance(found, list) else {}


def _made(A: Side, B: Side, rows: Iterable[OpPair], name: str) -> Tuple[Optional[str], Tuple[str, ...]]:
    """The op that made, inside the other pass, what it passed where one pass read
    input ``name`` (the first aligned op that reads it, at the same place), when
    that op ran outside any module call (``m(x, attention_mask=torch.ones(2, 4))``;
    back through the views and in-place writes after it: ``a = torch.ones(2, 4);
    a[1, :2] = 0``), and the ids of those ops."""
    for x, side in ((0, A), (1, B)):
        v = side.named.get(name)
        if v is None:
            continue
        other = (B, A)[x].graph
        for p in rows:
            mine, theirs = (p.a, p.b) if x == 0 else (p.b, p.a)
            if mine is None or theirs is None or v.id not in mine.inputs:
                continue
            k = mine.inputs.index(v.id)
            chain = []
            made = other.producers().get(theirs.inputs[k]) if k < len(theirs.inputs) else None
            while made is not None and other.node(made).module is None and other.node(made).phase == "forward":
                n = other.node(made)
                chain.append(n)
                made = other.producers().get(n.inputs[0]) if n.inputs and {"view", "inplace"} & set(n.tags) \
                    else None
            return (chain[-1].short_op, tuple(n.id for n in chain)) if chain else (None, ())
    return None, ()


def input_changes(A: Side, B: Side, rows: Iterable[OpPair]) -> Tuple[InputChange, ...]:
    """Named inputs of the traced call whose type differs, then the unnamed
    tensors from outside the pass that aligned ops read with other types,
    counted by role and types, with the first row (of ``rows``) that reads one."""
    def named(s: "Side") -> Dict[str, str]:
        out = unread_inputs(s.graph.meta)
        out.update((name, type_str(v)) for name, v in s.named.items() if v.role == "input")
        out.update((alias, out[name]) for alias, name in s.aliases.items() if name in out)  # (`labels=input_ids`)
        return out

    ta, tb = named(A), named(B)
    out = [InputChange(k, ta.get(k), tb.get(k), made=made, makers=makers)
           for k in list(ta) + [k for k in tb if k not in ta] if ta.get(k) != tb.get(k)
           for made, makers in [_made(A, B, rows, k) if None in (ta.get(k), tb.get(k)) else (None, ())]]
    counts: Counter = Counter()
    names: Dict[Tuple[str, str, str], str] = {}
    first: Dict[Tuple[str, str, str], int] = {}
    seen = set()
    for k, p in enumerate(rows):
        if p.a is None or p.b is None:
            continue
        for x, y in zip(p.a.inputs, p.b.inputs):
            va, vb = A.graph.value(x), B.graph.value(y)
            if x in seen or va.role in ("activation", "input") or va.role != vb.role:
                continue
            seen.add(x)
            if type_str(va) != type_str(vb):
                counts[(va.role, type_str(va), type_str(vb))] += 1
                first.setdefault((va.role, type_str(va), type_str(vb)), k)
                names[(va.role, type_str(va), type_str(vb))] = va.name if va.name == vb.name else ""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    # (one param or buffer of its kind is named: "buffer `cache` f32[1,4] → f32[3,4]")
    out += [InputChange(names[key] or "" if c == 1 else "", key[1], key[2], key[0], c, first[key])
            for key, c in ranked]
    return tuple(out)


def read_after(A: Side, B: Side, rows: Sequence["OpPair"], inputs: Sequence[InputChange], end: int) -> bool:
    """Are ``inputs`` all tensors from outside the pass (params, buffers, constants)
    that aligned ops read with their other types only from row ``end`` on, and that
    no op only one side ran in ``rows`` reads (a strategy's own state tensor, read
    after the branch a Python argument chose)? Then they are no cause of ``rows``."""
    if not inputs or any(i.role == "input" or i.at < end for i in inputs):
        return False
    for x, side in ((0, A), (1, B)):
        types = {(i.role, (i.a, i.b)[x]) for i in inputs}
        for p in rows:
            n = (p.a, p.b)[x]
            if n is not None and (p.a is None or p.b is None) and any(
                    (v.role, type_str(v)) in types for v in map(side.graph.value, n.inputs)):
                return False
    return True
