"""A hunk of backward ops takes the cause of the forward hunk whose ops it
differentiates (a backward op carries its forward op's module and line): the
branch that chose ``self.a`` over ``self.b`` decided their backward too, not
the read nearest before the backward hunk.

Backward runs in reverse, so the backward of forward hunks side by side, some
only in A and some only in B (a mixture of experts' experts {0, 1} against
{0, 2}), can be one hunk: A's ops of one forward hunk, then B's of another.
``cut_diff`` cuts it into pieces, each the backward of its own forward hunk.

Ops that read what a one-sided hunk's ops made take its cause too
(``fed_by_one_sided``: ``torch.stack(outs)`` after a loop that ran once more).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .classify import OpPair
from .explain import WitnessChange
from .hunk import Hunk
from .ir import Graph, Node
from .paramcause import gradient_sum, reader_hunk
from .textform import common_module

if TYPE_CHECKING:  # pragma: no cover
    from .compare import GraphDiff
    from .side import Side


def _sites(g: Graph, side: str, nodes: Sequence[Node]) -> set:
    """(side, module path, file, line) of each of ``nodes``."""
    return {(side, g.module_path(n.module), n.source.file if n.source else "", n.source.line if n.source else 0)
            for n in nodes}


class _Owners:
    """The forward hunks with a read for their cause, and which one backward ops
    differentiate: the hunk that holds the forward op of the autograd Node that ran
    them, else (no such link) the first whose one-sided ops ran at their module and line."""

    def __init__(self, a: Graph, b: Graph, hunks: Sequence[Hunk], loops: bool = False) -> None:
        """``loops``: the forward hunks with a loop count for their cause instead."""
        self.a, self.b = a, b
        self.forward = [(self.sites(h), h) for h in hunks if h.kind == "structural" and (
            h.loop is not None and h.witness is None if loops else h.witness is not None)
            and all(n.phase == "forward" for n in (*h.only_a, *h.only_b))]
        self._holder: Dict[Tuple[str, str], Hunk] = {}  # (side, forward op id) -> its hunk
        for _, f in self.forward:
            self._holder.update({**{("A", n.id): f for n in f.only_a}, **{("B", n.id): f for n in f.only_b}})

    def sites(self, h: Hunk) -> set:
        return _sites(self.a, "A", h.only_a) | _sites(self.b, "B", h.only_b)

    def _site(self, side: str, n: Node) -> set:
        return _sites(self.a if side == "A" else self.b, side, [n])

    def of(self, h: Hunk) -> Optional[Hunk]:
        """The one forward hunk before ``h`` that every op of ``h`` differentiates: the
        hunk of their Nodes' forward ops, when they have one, that also holds the sites of
        the others; else the first whose sites hold all of ``h``'s."""
        links = [(side, n, self._linked(side, n)) for side, ops in (("A", h.only_a), ("B", h.only_b)) for n in ops]
        linked = {id(f): f for _, _, f in links if f is not None}
        if len(linked) == 1:
            [f] = linked.values()
            loose = set().union(*(self._site(side, n) for side, n, g in links if g is None))
            return f if f.index < h.index and loose <= self.sites(f) else None
        mine = self.sites(h)
        return None if linked else next((f for keys, f in self.forward if f.index < h.index and mine <= keys), None)

    def of_op(self, side: str, n: Node, before: int) -> Optional[Hunk]:
        """The forward hunk before hunk ``before`` whose op ``n`` differentiates."""
        f = self._linked(side, n)
        if f is None:
            mine = self._site(side, n)
            f = next((f for keys, f in self.forward if mine <= keys), None)
        return f if f is not None and f.index < before else None

    def _linked(self, side: str, n: Node) -> Optional[Hunk]:
        """The forward hunk that holds the forward op of the Node that ran ``n``."""
        if n.autograd_node is None:
            return None
        g = self.a if side == "A" else self.b
        return self._holder.get((side, g.autograd_node(n.autograd_node).op))


def _is_backward(h: Hunk) -> bool:
    nodes = (*h.only_a, *h.only_b)
    return h.kind == "structural" and bool(nodes) and all(n.phase == "backward" for n in nodes) and not h.own_cause


def _caused(h: Hunk, f: Hunk) -> Hunk:
    return replace(h, witness=f.witness, loop=f.loop, inputs=(), casts=(), backward_of=f.index)


def backward_like_forward(a: Graph, b: Graph, hunks: Sequence[Hunk],
                          witnesses: Sequence[WitnessChange]) -> List[Hunk]:
    """Each backward hunk with the cause of the forward hunk whose ops it
    differentiates. With no such hunk (the forward op ran once on both sides:
    `pack_padded_sequence`, whose backward loops over the time steps), a read that
    differs at the one line its ops come from; with no read, the forward hunk with a
    loop count for its cause (the engine's gradient sums of a tensor each extra
    iteration read), else the parameter whose readers' gradients they sum."""
    owners, loops = _Owners(a, b, hunks), _Owners(a, b, hunks, loops=True)
    out = []
    for h in hunks:
        if _is_backward(h):
            f = owners.of(h) or (loops.of(h) if h.witness is None and h.loop is None else None)
            if f is not None:
                h = _caused(h, f)
            else:
                lines = {site[2:] for site in owners.sites(h)}
                at = next((w for w in witnesses if len(lines) == 1 and (w.file, w.line) in lines), None)
                h = replace(h, witness=at, inputs=(), casts=()) if at is not None else _summed(a, b, h, out)
        out.append(h)
    return out


def _summed(a: Graph, b: Graph, h: Hunk, before: Sequence[Hunk]) -> Hunk:
    """``h`` when it is the engine's sums of a parameter's gradients: with the cause of
    the forward hunk whose ops, only on that side, read the parameter once more (an `if`
    that adds a penalty on it), else said to be those sums (tied weights)."""
    summed = gradient_sum(a, b, h.only_a, h.only_b)
    if summed is None:
        return h
    more = 0 if summed[1] > summed[2] else 1
    f = reader_hunk((a, b)[more], summed[0], more, [f for f in before if f.kind == "structural"])
    if f is None:
        return replace(h, summed=summed)
    return _caused(h, f) if f.witness is not None or f.loop is not None else h


def cut_diff(d: "GraphDiff") -> "GraphDiff":
    """``d`` with each backward hunk that no forward hunk holds whole cut into
    pieces, one per forward hunk its ops differentiate, when every op has one
    (A's rows, then B's, in their final order); hunks numbered again."""
    owners = _Owners(d.a, d.b, d.hunks)
    out: List[Tuple[int, Hunk]] = []  # (the index it had, the hunk)
    for h in d.hunks:
        pieces = _pieces(h, d.ops, owners) if _is_backward(h) and h.backward_of is None else None
        out += [(h.index, p) for p in pieces] if pieces else [(h.index, h)]
    return d if len(out) == len(d.hunks) else replace(d, hunks=_numbered(out))


def _pieces(h: Hunk, ops: Sequence[OpPair], owners: _Owners) -> Optional[List[Hunk]]:
    """``h`` cut where the forward hunk its rows differentiate changes (None: a
    row with none, or rows of A and B mixed)."""
    k0, k1 = h.span
    rows = ops[k0:k1]
    if not h.only_a or not h.only_b or [p.status for p in rows] != ["only_a"] * len(h.only_a) + [
            "only_b"] * len(h.only_b):
        return None
    found = []
    for p in rows:
        f = owners.of_op("A", p.a, h.index) if p.status == "only_a" else owners.of_op("B", p.b, h.index)
        if f is None:
            return None
        found.append(f)
    pieces, lo = [], 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or found[k] is not found[lo] or rows[k].status != rows[lo].status:
            nodes = tuple(p.a if p.status == "only_a" else p.b for p in rows[lo:k])
            g, side_a = (owners.a, True) if rows[lo].status == "only_a" else (owners.b, False)
            pieces.append(_caused(replace(h, span=(k0 + lo, k0 + k), only_a=nodes if side_a else (),
                                          only_b=() if side_a else nodes, whole=h,
                                          module=common_module(g.module_path(n.module) for n in nodes)), found[lo]))
            lo = k
    return pieces


def uncut(hunks: Sequence[Hunk]) -> List[Hunk]:
    """The pieces ``cut_diff`` made, their hunk again (to be mirrored, then cut in
    the other side's row order: ``diff(b, a)`` is ``diff(a, b).mirror()``)."""
    out: List[Tuple[int, Hunk]] = []
    for h in hunks:
        if h.whole is not None and out and (out[-1][1] is h.whole or out[-1][1] == h.whole):
            continue
        out.append((h.index, h.whole if h.whole is not None else h))
    return _numbered(out) if len(out) != len(hunks) else list(hunks)


def _numbered(out: Sequence[Tuple[int, Hunk]]) -> Tuple[Hunk, ...]:
    """The hunks numbered in order, ``backward_of`` following its hunk's new number."""
    new: Dict[int, int] = {}
    for k, (old, _) in enumerate(out):
        new.setdefault(old, k)
    return tuple(replace(h, index=k, backward_of=new[h.backward_of] if h.backward_of is not None else None)
                 for k, (_, h) in enumerate(out))


def fed_by_one_sided(A: Side, B: Side, hunks: Sequence[Hunk]) -> List[Hunk]:
    """A hunk of changed ops that read a tensor an op only on that side made
    (``torch.stack(outs)`` after a loop that ran once more in A) follows from
    the structural hunk of that op: its cause, not the nearest shape read. So
    do ops only on one side that read such a tensor, when nothing else
    explains them (the ``+`` that joins two recursive calls a split read started)."""
    made: Dict[Tuple[int, str], Hunk] = {}  # (side, value id) -> the structural hunk whose op made it
    out = []
    for h in hunks:
        if h.kind == "changed":
            owner = next((made[(x, v)] for p in h.changed for x, n in ((0, p.a), (1, p.b)) if n is not None
                          for v in n.inputs if (x, v) in made), None)
            mine = h.witness is not None and h.witness.passed is not None  # (its read is its arguments' values)
        else:
            owner = next((made[(x, v)] for x, ops in ((0, h.only_a), (1, h.only_b)) for n in ops
                          for v in n.inputs if (x, v) in made), None)
            # (a block that repeats with no read or input change to explain it is no cause of its own: the `+`
            # joining two recursive calls looks like one, when only one side split)
            mine = (h.loop is not None and (h.loop.via != "repeat" or h.witness is not None or bool(h.inputs))) or \
                (h.witness is not None and not h.witness.weak) or h.own_cause or \
                h.caught is not None or h.backward_of is not None
        if owner is not None and not mine:
            h = replace(h, witness=owner.witness, loop=owner.loop, inputs=(), casts=())
        out.append(h)
        if h.kind == "structural" and (h.witness is not None or h.loop is not None):
            for x, ops in ((0, h.only_a), (1, h.only_b)):
                made.update(((x, v), h) for n in ops for v in n.outputs)
    return out
