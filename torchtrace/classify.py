"""What changed in each aligned op, and compact summaries of those changes.

An aligned pair of ops is ``same`` or ``changed``; ``what`` names how:
``shape``, ``dtype``, ``args``, ``wiring`` (an input comes from another op),
``value`` (a witness read other data), ``line`` (another call site). The
summaries count args by key (the traced call's named inputs:
``inputchange.py``; tensor types: ``typechange.py``).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .side import Side, call_site, is_bookkeeping
from .explain import ARROW, plural
from .fingerprint import canonical_args, canonical_json
from .textform import op_str
from .typechange import paired_types_differ

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph, Node

STATUSES = ("same", "only_a", "only_b", "changed")
Row = Tuple[Optional[int], Optional[int]]
Made = Tuple[Dict[str, int], Dict[str, int]]  # value id -> merged row of its producer, per side
Shape = Tuple[int, ...]
RECOMPUTED = -2  # producer row of a tensor recomputed (activation checkpointing) on one side only


class _Absent:
    """An argument one side does not pass."""

    def __repr__(self) -> str:
        return "(absent)"

    def __reduce__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class OpPair:
    """One row of the alignment. ``status``: ``same``, ``only_a``, ``only_b``
    or ``changed``; ``what`` (for changed) lists ``shape``, ``dtype``,
    ``args``, ``wiring`` (an input comes from another op), ``value`` (a
    witness read other data) and ``line`` (the same op called from another
    source line: the code was edited between the runs)."""

    a: Optional[Node]
    b: Optional[Node]
    status: str
    what: Tuple[str, ...] = ()
    raised: Optional[Tuple[str, str]] = None  # ("B", its error) when the op raised on that side only

    def mirror(self) -> "OpPair":
        status = {"only_a": "only_b", "only_b": "only_a"}.get(self.status, self.status)
        raised = None if self.raised is None else ({"A": "B", "B": "A"}[self.raised[0]], self.raised[1])
        return OpPair(self.b, self.a, status, self.what, raised)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"a": self.a.id if self.a else None, "b": self.b.id if self.b else None,
                             "status": self.status}
        if self.what:
            d["what"] = list(self.what)
        if self.raised:
            d["raised"] = {"side": self.raised[0], "error": self.raised[1]}
        return d


@dataclass(frozen=True)
class ArgChange:
    """A non-tensor argument of ``op`` that differs on ops whose tensors
    did not change (``is_causal``, a Python scalar...)."""

    op: str
    key: str
    a: Any
    b: Any
    count: int

    def describe(self) -> str:
        change = f"{_arg_str(self.a)} {ARROW} {_arg_str(self.b)}"
        return f"{op_str(self.op)} {self.key}={change} ({plural(self.count, 'op')})"

    def mirror(self) -> "ArgChange":
        return replace(self, a=self.b, b=self.a)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"op": self.op, "key": self.key, "count": self.count}
        if self.a is not ABSENT:
            d["a"] = self.a
        if self.b is not ABSENT:
            d["b"] = self.b
        return d


def _arg_str(v: Any) -> str:
    return repr(v) if v is ABSENT else json.dumps(v, ensure_ascii=False)


ACCUMULATE = "accumulate_grad"  # the tag of AccumulateGrad's add_ into a .grad that existed


def run_key(p: OpPair) -> Tuple[bool, bool]:
    """What ends a run of ops only in A or B where it changes: AccumulateGrad's
    ops into a .grad that existed, and the step from forward ops to backward and
    optimizer ops (a training step's backward against a validation pass's
    metrics: two causes, two hunks)."""
    n = p.a if p.a is not None else p.b
    return n is not None and ACCUMULATE in n.tags, n is not None and n.phase in ("backward", "optimizer")


def a_first(ops: List[OpPair]) -> Tuple[OpPair, ...]:
    """Within each run of ops only in A or B, A's come first (like ``-``
    before ``+`` in a unified diff), whichever orientation aligned them.
    A run ends where ``run_key`` changes (each part is a hunk of its own), so a
    diff and its mirror cut the same runs."""
    out: List[OpPair] = []
    k = 0
    while k < len(ops):
        if ops[k].status not in ("only_a", "only_b"):
            out.append(ops[k])
            k += 1
            continue
        k1 = k
        while k1 < len(ops) and ops[k1].status in ("only_a", "only_b") and run_key(ops[k1]) == run_key(ops[k]):
            k1 += 1
        out.extend(p for p in ops[k:k1] if p.status == "only_a")
        out.extend(p for p in ops[k:k1] if p.status == "only_b")
        k = k1
    return tuple(out)


def significant(p: OpPair) -> bool:
    """A change worth a hunk: not only a witness value or a source line."""
    return p.status == "changed" and not set(p.what) <= {"value", "line"}


def hunk_runs(ops: Sequence[OpPair], context: int) -> Iterator[Tuple[str, int, int]]:
    """Structural hunks: maximal runs of ops only in A or B. Changed hunks:
    runs of changed ops, merged across up to ``2 * context`` unchanged ones."""
    k, n = 0, len(ops)
    while k < n:
        status = ops[k].status
        if status in ("only_a", "only_b"):
            k1 = k  # (AccumulateGrad's ops into a .grad that existed, backward and optimizer ops: hunks of their own)
            while k1 < n and ops[k1].status in ("only_a", "only_b") and run_key(ops[k1]) == run_key(ops[k]):
                k1 += 1
            yield "structural", k, k1
            k = k1
        elif significant(ops[k]):
            last = k
            k1 = k + 1
            while k1 < n and ops[k1].status not in ("only_a", "only_b") and k1 - last <= 2 * context:
                if significant(ops[k1]):
                    last = k1
                k1 += 1
            yield "changed", k, last + 1
            k = last + 1
        else:
            k += 1


def classify(A: Side, B: Side, row: Row, made: Made) -> OpPair:
    i, j = row
    if j is None:
        return OpPair(A.nodes[i], None, "only_a")
    if i is None:
        return OpPair(None, B.nodes[j], "only_b")
    na, nb = A.nodes[i], B.nodes[j]
    what: List[str] = []
    # inputs with inputs, outputs with outputs (an input only one side passes is wiring, not a shape)
    shape_in, dtype_in = paired_types_differ(A, B, na.inputs[:len(nb.inputs)], nb.inputs[:len(na.inputs)])
    ea, eb = A.graph.raised().get(na.id), B.graph.raised().get(nb.id)
    raised = None if (ea is None) == (eb is None) else ("A", ea) if ea is not None else ("B", eb)
    if raised:  # (an op that raised has no outputs: that is not a type change)
        what.append("raised")
    shape_out, dtype_out = (False, False) if raised else paired_types_differ(A, B, na.outputs, nb.outputs)
    if shape_in or shape_out:
        what.append("shape")
    if dtype_in or dtype_out:
        what.append("dtype")
    if na.args != nb.args and canonical_args(na.args) != canonical_args(nb.args):
        what.append("args")
    if _rewired(A, B, made, na, nb):
        what.append("wiring")
    if A.wkeys[i] != B.wkeys[j]:
        what.append("value")
    if A.sigs[i] != B.sigs[j] or call_site(na) != call_site(nb):  # (a helper's read: ``side.one_call_site``)
        what.append("line")
    return OpPair(na, nb, "changed" if what else "same", tuple(what), raised)


def _rewired(A: Side, B: Side, made: Made, na: Node, nb: Node) -> bool:
    """An input whose producers are both aligned, but not with each other
    (or two external tensors of another role/name). Inputs made by ops only
    on one side are the hunk's doing, not a separate change."""
    if len(na.inputs) != len(nb.inputs):
        return True
    pa, pb = made
    for x, y in zip(na.inputs, nb.inputs):
        ra, rb = pa.get(x), pb.get(y)
        if RECOMPUTED in (ra, rb):  # backward reads the checkpoint's recomputed copy: the same tensor
            continue
        if ra is None and rb is None:
            if _external(A.graph, A.sources.get(x, x)) != _external(B.graph, B.sources.get(y, y)):
                return True
        elif ra is not None and rb is not None:
            if ra != rb and ra >= 0 and rb >= 0:
                return True
        else:
            known = ra if ra is not None else rb
            if known is not None and known >= 0:
                return True
    return False


def producers(side: Side, pairs: Sequence[Row], k: int) -> Dict[str, int]:
    """value id -> merged row of the op that made it (-1: an op only on this
    side; -2: a recompute op only on this side, whose outputs stand for the
    forward's: reading them is no rewiring); bookkeeping ops pass their input through."""
    row_of = {x[k]: e for e, x in enumerate(pairs) if x[k] is not None}
    pos = {n.id: i for i, n in enumerate(side.nodes)}
    table: Dict[str, int] = {}
    for n in side.graph.nodes:
        if is_bookkeeping(n):
            src = table.get(n.inputs[0]) if n.inputs else None
            if src is not None:
                table.update((v, src) for v in n.outputs)
            continue
        e = row_of[pos[n.id]]
        lone = RECOMPUTED if n.phase == "recompute" else -1
        table.update((v, e if pairs[e][1 - k] is not None else lone) for v in n.outputs)
    return table


def _external(g: Graph, vid: str) -> Tuple[str, Optional[str]]:
    v = g.value(vid)
    return (v.role, v.name if v.role in ("param", "buffer", "input") else None)


def args_only(rows: Iterable[OpPair]) -> Iterator[Tuple[Node, Node]]:
    """Ops whose args differ; ``arg_changes`` leaves out the integer args of
    ops whose shapes changed too (a ``view``'s size just follows its input)."""
    for p in rows:
        if p.a is not None and p.b is not None and "args" in p.what:
            yield p.a, p.b


def reshaped(rows: Iterable[OpPair]) -> set:
    return {p.a.id for p in rows if p.a is not None and "shape" in p.what}


def arg_changes(nodes: Iterable[Tuple["Node", "Node"]], resized: Any = None) -> Tuple[ArgChange, ...]:
    """Summarise differing args of aligned ops. Integer args of ops in
    ``resized`` (a set of A node ids whose tensors changed shape) are left
    out: they are sizes that follow the shapes; flags, floats and args that
    one side lacks are kept (``is_causal=True`` in prefill, absent in decode)."""
    counts: Counter = Counter()
    for na, nb in nodes:
        for key in sorted(set(na.args) | set(nb.args)):
            va, vb = na.args.get(key, ABSENT), nb.args.get(key, ABSENT)
            if resized and na.id in resized and _sizes(va) and _sizes(vb):
                continue
            if _canon(va) != _canon(vb):
                counts[(na.op, key, _canon(va), _canon(vb))] += 1
    out = []
    for (op, key, ca, cb), c in sorted(counts.items(), key=lambda kv: -kv[1]):  # (ties in the order they ran)
        out.append(ArgChange(op, key, _uncanon(ca), _uncanon(cb), c))
    return tuple(out)


def _sizes(v: Any) -> bool:
    ints = v if isinstance(v, list) else [v]
    return all(isinstance(x, int) and not isinstance(x, bool) for x in ints)


def _canon(v: Any) -> str:
    return "\0absent" if v is ABSENT else canonical_json(v)


def _uncanon(s: str) -> Any:
    return ABSENT if s == "\0absent" else json.loads(s)


def moved(A: "Side", B: "Side", hunks: Sequence[Any]) -> List[Any]:
    """Structural hunks that no read or own cause explains, whose every op only on
    one side is matched, signature for signature, by an op only on the other side
    elsewhere in the diff (the same op at the same line in both passes, in another
    order: a gradient sum that a cast now precedes under autocast, a loop over a
    reordered list) get ``moved``: the names of those ops."""
    sig = (dict(zip((n.id for n in A.nodes), A.sigs)), dict(zip((n.id for n in B.nodes), B.sigs)))
    seen: Tuple[Counter, Counter] = (Counter(), Counter())
    for h in hunks:
        if h.kind == "structural":
            seen[0].update(sig[0][n.id] for n in h.only_a)
            seen[1].update(sig[1][n.id] for n in h.only_b)
    both = seen[0] & seen[1]
    if not both:
        return list(hunks)
    out = []
    for h in hunks:
        keys = [sig[0][n.id] for n in h.only_a] + [sig[1][n.id] for n in h.only_b]
        if h.kind == "structural" and keys and all(k in both for k in keys) and h.witness is None \
                and h.loop is None and not h.own_cause:  # (a read that differs says more: which branch)
            h = replace(h, moved=tuple(dict.fromkeys(n.short_op for n in (*h.only_a, *h.only_b))))
        out.append(h)
    return out

