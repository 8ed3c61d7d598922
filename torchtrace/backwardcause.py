"""A hunk of backward ops takes the cause of the forward hunk whose ops it
differentiates (a backward op carries its forward op's module and line): the
branch that chose ``self.a`` over ``self.b`` decided their backward too, not
the read nearest before the backward hunk.

Backward runs in reverse, so the backward of two forward hunks side by side,
one only in A and one only in B (a mixture of experts' experts {0, 1} against
{0, 2}), can be one hunk: A's ops of one forward hunk, then B's of the other.
``cut_backward`` cuts it in two, each half the backward of its own forward hunk.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .classify import OpPair
from .explain import WitnessChange
from .hunk import Hunk
from .ir import Graph, Node
from .textform import common_module


def _sites(g: Graph, side: str, nodes: Sequence[Node]) -> set:
    """(side, module path, file, line) of each of ``nodes``."""
    return {(side, g.module_path(n.module), n.source.file if n.source else "", n.source.line if n.source else 0)
            for n in nodes}


class _Owners:
    """The forward hunks with a read for their cause, and which one a backward hunk differentiates."""

    def __init__(self, a: Graph, b: Graph, hunks: Sequence[Hunk]) -> None:
        self.a, self.b = a, b
        self.forward = [(self.sites(h), h) for h in hunks if h.kind == "structural" and h.witness is not None
                        and all(n.phase == "forward" for n in (*h.only_a, *h.only_b))]

    def sites(self, h: Hunk) -> set:
        return _sites(self.a, "A", h.only_a) | _sites(self.b, "B", h.only_b)

    def of(self, h: Hunk) -> Optional[Hunk]:
        """The forward hunk before ``h`` whose one-sided ops hold every site of ``h``'s."""
        mine = self.sites(h)
        return next((f for keys, f in self.forward if f.index < h.index and mine <= keys), None)


def _is_backward(h: Hunk) -> bool:
    nodes = (*h.only_a, *h.only_b)
    return h.kind == "structural" and bool(nodes) and all(n.phase == "backward" for n in nodes) and not h.own_cause


def _caused(h: Hunk, f: Hunk) -> Hunk:
    return replace(h, witness=f.witness, loop=f.loop, inputs=(), casts=(), backward_of=f.index)


def backward_like_forward(A_graph: Graph, B_graph: Graph, hunks: Sequence[Hunk],
                          witnesses: Sequence[WitnessChange]) -> List[Hunk]:
    """Each backward hunk with the cause of the forward hunk whose ops it
    differentiates. With no such hunk (the forward op ran once on both sides:
    `pack_padded_sequence`, whose backward loops over the time steps), a read that
    differs at the one line its ops come from."""
    owners = _Owners(A_graph, B_graph, hunks)
    out = []
    for h in hunks:
        if _is_backward(h):
            f = owners.of(h)
            if f is not None:
                h = _caused(h, f)
            else:
                lines = {site[2:] for site in owners.sites(h)}
                at = next((w for w in witnesses if len(lines) == 1 and (w.file, w.line) in lines), None)
                h = h if at is None else replace(h, witness=at, inputs=(), casts=())
        out.append(h)
    return out


def cut_backward(a: Graph, b: Graph, ops: Sequence[OpPair], hunks: Sequence[Hunk]) -> List[Hunk]:
    """The hunks, each backward hunk of A's ops then B's that no forward hunk
    holds whole cut in two when each half is the backward of a forward hunk;
    numbered again. ``ops`` in their final order (A's first in a run)."""
    owners = _Owners(a, b, hunks)
    out: List[Tuple[int, Hunk]] = []  # (the index it had, the hunk)
    for h in hunks:
        halves = _halves(h, ops, a, b) if _is_backward(h) and h.backward_of is None else None
        found = [owners.of(x) for x in halves] if halves else []
        if halves and all(found):
            out += [(h.index, replace(_caused(x, f), cut=True)) for x, f in zip(halves, found)]  # type: ignore
        else:
            out.append((h.index, h))
    return _numbered(out) if len(out) != len(hunks) else list(hunks)


def cut_diff(d: Any) -> Any:
    """A ``GraphDiff`` with its backward hunks cut (``cut_backward``), its rows in their final order."""
    hunks = cut_backward(d.a, d.b, d.ops, d.hunks)
    return d if len(hunks) == len(d.hunks) else replace(d, hunks=tuple(hunks))


def uncut(hunks: Sequence[Hunk]) -> List[Hunk]:
    """The halves ``cut_backward`` made, one hunk again (to be mirrored, then cut
    in the other side's row order: ``diff(b, a)`` is ``diff(a, b).mirror()``)."""
    out: List[Tuple[int, Hunk]] = []
    for h in hunks:
        if h.cut and out and out[-1][1].cut and out[-1][1].span[1] == h.span[0] and not out[-1][1].only_b:
            first = out[-1][1]
            whole = replace(first, only_b=h.only_b, span=(first.span[0], h.span[1]), cut=False, backward_of=None,
                            module=common_module([first.module, h.module]))
            out[-1] = (out[-1][0], whole)
        else:
            out.append((h.index, h))
    return _numbered(out) if len(out) != len(hunks) else list(hunks)


def _numbered(out: Sequence[Tuple[int, Hunk]]) -> List[Hunk]:
    """The hunks numbered in order, ``backward_of`` following its hunk's new number."""
    new: Dict[int, int] = {}
    for k, (old, _) in enumerate(out):
        new.setdefault(old, k)
    return [replace(h, index=k, backward_of=None if h.backward_of is None else new[h.backward_of])
            for k, (_, h) in enumerate(out)]


def _halves(h: Hunk, ops: Sequence[OpPair], a: Graph, b: Graph) -> Optional[Tuple[Hunk, Hunk]]:
    """``h`` cut where its rows of A end and B's begin."""
    if not h.only_a or not h.only_b:
        return None
    k0, k1 = h.span
    cut = k0 + len(h.only_a)
    if any(p.status != "only_a" for p in ops[k0:cut]) or any(p.status != "only_b" for p in ops[cut:k1]):
        return None
    first = replace(h, span=(k0, cut), only_b=(), module=common_module(a.module_path(n.module) for n in h.only_a))
    second = replace(h, span=(cut, k1), only_a=(), module=common_module(b.module_path(n.module) for n in h.only_b))
    return first, second
