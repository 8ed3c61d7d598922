"""What the traced call returned in A and not in B, when every op matches:
``output_attentions=True`` runs the same ops and returns the attention
probabilities too, which only the fingerprints' list of outputs tells apart.

    returned_change(a, b, ops)
    # "B returned 2 more values (4 against 2): `_softmax` f32[1,4,6,6] in
    #  `encoder.layer.0.attention.self` (`modeling_bert.py:210`), ..."
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .textform import plural, type_str, where

if TYPE_CHECKING:  # pragma: no cover
    from .classify import OpPair
    from .ir import Graph

SHOWN = 4  # values named, then "and N more"
Key = Tuple[Optional[str], int, str]  # (the producing op's id on A's side, output index, or the input's own id)


def returned_change(a: "Graph", b: "Graph", ops: Sequence["OpPair"]) -> Optional[str]:
    """One line on how the returned values differ (None when they do not, as
    far as the alignment can tell)."""
    b_to_a = {p.b.id: p.a.id for p in ops if p.a is not None and p.b is not None}
    ka, kb = _keys(a, a.outputs, None), _keys(b, b.outputs, b_to_a)
    if ka == kb:
        return None
    extra_b = [v for v, k in zip(b.outputs, kb) if k not in ka]
    extra_a = [v for v, k in zip(a.outputs, ka) if k not in kb]
    if not extra_a and not extra_b:
        return f"the same {plural(len(ka), 'value')} returned in another order"
    parts = []
    for side, g, extra in (("B", b, extra_b), ("A", a, extra_a)):
        if extra:
            parts.append(f"only {side} returned {_values(g, extra)}")
    counts = f" ({len(a.outputs)} in A, {len(b.outputs)} in B)" if len(a.outputs) != len(b.outputs) else ""
    return "; ".join(parts) + counts


def _keys(g: "Graph", vids: Sequence[str], to_a: Optional[Dict[str, str]]) -> List[Key]:
    """Each value as (its producer, on A's side, and output index); a value no
    op made (an input, a parameter) by its role and name. ``to_a``: B's op ids
    to A's (None: the values are A's)."""
    made = g.producers()
    out: List[Key] = []
    for v in vids:
        nid = made.get(v)
        if nid is not None:
            out.append((nid if to_a is None else to_a.get(nid, f"{nid}?"), g.node(nid).outputs.index(v), ""))
        else:
            val = g.value(v)
            out.append((None, 0, f"{val.role}:{val.name or v}"))
    return out


def _values(g: "Graph", vids: Sequence[str]) -> str:
    made = g.producers()
    names = []
    for v in vids[:SHOWN]:
        val = g.value(v)
        if v not in made:
            names.append(f"{val.role} `{val.name or v}` {type_str(val)}")
            continue
        n = g.node(made[v])
        mod = g.module_path(n.module)
        names.append(f"`{n.short_op}` {type_str(val)}" + (f" in `{mod}`" if mod else "") +
                     (f" ({where(n.source.file, n.source.line)})" if n.source is not None else ""))
    more = f" and {len(vids) - SHOWN} more" if len(vids) > SHOWN else ""
    return f"{plural(len(vids), 'value')}: " + ", ".join(names) + more
