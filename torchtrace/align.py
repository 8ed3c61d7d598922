"""Sequence alignment of two graphs' ops in execution order, by op signature.

An op's signature is ``(phase, module path, op, source file name, line)``:
never ids, never shapes. Two passes of the same program have the same
signature sequence; an ``if`` that took the other branch shows as a run of
ops only in A or only in B.

The alignment is a longest common subsequence of the signatures (after the
common prefix and suffix), computed bit-parallel (``lcs``). It is symmetric
by construction (``align(b, a)`` is the mirror of ``align(a, b)``):
signatures are numbered in sorted order and the pair is always aligned in
one canonical orientation, then swapped back. Pure
insertions or deletions inside a repeated region (a loop that ran 3x in A and
5x in B) can sit at several equally long positions; we pick the one that
pairs the most witness reads with equal values (the loop's exit read in A
with the exit read in B), then the latest.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from functools import cached_property
from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph, Node, Value

Pair = Tuple[Optional[int], Optional[int]]
Sig = Tuple[Any, ...]  # (phase, module path, op, file, line[, a helper read's caller file, line][, params read])

BOOKKEEPING = "autograd_internal"


def is_bookkeeping(n: "Node") -> bool:
    """Autograd bookkeeping (detach of saved outputs) and profiler markers
    (``record_function``, e.g. ``Optimizer.zero_grad#SGD.zero_grad``): they
    compute nothing, so they are left out of diffs and fingerprints."""
    return BOOKKEEPING in n.tags or "annotation" in n.tags


def _base(file: str) -> str:
    return file.replace("\\", "/").rsplit("/", 1)[-1]


STATE = ("param", "buffer")


def signature(g: "Graph", n: "Node") -> Sig:
    src = n.source
    sig: Sig = (n.phase, g.module_path(n.module), n.op, _base(src.file) if src is not None else "",
                src.line if src is not None else 0)
    w = n.witness
    if w is not None and w.called_from:
        caller = w.called_from[0]  # a helper's read: one per call site (not a loop)
        sig += (_base(caller.file), caller.line)
    # the parameters it reads: a Linear's backward computes the grad of its input from its weight,
    # the grad of its weight from activations, with the same ops at the same line
    state = tuple(v.name for v in map(lambda vid: _base_value(g, vid), n.inputs) if v.role in STATE)
    return sig + (state,) if state else sig


def _base_value(g: "Graph", vid: str) -> "Value":
    """The value ``vid`` is a view of (``W.t()`` saved for backward: ``W``), or itself."""
    v = g.value(vid)
    for _ in range(8):
        if v.alias_of is None:
            break
        v = g.value(v.alias_of)
    return v


_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a path component that is a number: a ModuleList item


def loop_signature(sig: Sig) -> Sig:
    """``sig`` with the ModuleList indices of its module path made one (``h.0.attn``
    and ``h.1.attn`` -> ``h.#.attn``): the ops of ``for block in self.h`` repeat
    under this signature from one block to the next."""
    if not any(c.isdigit() for c in sig[1]):
        return sig
    return (sig[0], _INDEX.sub("#", sig[1]), *sig[2:5],
            *(tuple(_INDEX.sub("#", x or "") for x in e) if isinstance(e, tuple) else e for e in sig[5:]))


def witness_key(n: "Node") -> Any:
    """What a witness read, as a comparable key; ``None`` for other ops."""
    w = n.witness
    if w is None:
        return None
    if w.shape is not None:
        return ("shape", tuple(w.shape))
    v = w.value
    if isinstance(v, float) and v != v:  # NaN reads equal NaN
        return ("nan",)
    return (type(v).__name__, v)


class Side:
    """One graph as the diff sees it: its ops in order without bookkeeping
    ops, their signatures and witness keys."""

    def __init__(self, g: "Graph") -> None:
        self.graph = g
        self.nodes: List["Node"] = [n for n in g.nodes if not is_bookkeeping(n)]
        self.sigs: List[Sig] = [signature(g, n) for n in self.nodes]
        self.wkeys: List[Any] = [witness_key(n) for n in self.nodes]
        self.ignored = len(g.nodes) - len(self.nodes)
        self.reads: Dict[Sig, List[int]] = {}
        for i, k in enumerate(self.wkeys):
            if k is not None:
                self.reads.setdefault(self.sigs[i], []).append(i)

    @cached_property
    def call_sites(self) -> Dict[Tuple[str, int], int]:
        """(file, line) of a read -> how many lines called the helper it is in."""
        sites: Dict[Tuple[str, int], set] = {}
        for reads in self.reads.values():
            for i in reads:
                n = self.nodes[i]
                if n.source is not None and n.witness.called_from:
                    c = n.witness.called_from[0]
                    sites.setdefault((n.source.file, n.source.line), set()).add((c.file, c.line))
        return {k: len(v) for k, v in sites.items()}

    @cached_property
    def trainable(self) -> Dict[str, bool]:
        """Parameter name -> whether it required grad in the pass."""
        return {v.name: v.requires_grad for v in self.graph.values if v.role == "param" and v.name}

    @cached_property
    def training(self) -> Dict[Tuple[str, int], Optional[bool]]:
        """(module path, call index) -> ``module.training`` at that call."""
        return {(m.path, m.call): m.training for m in self.graph.modules}

    @cached_property
    def calls(self) -> Dict[str, int]:
        """How many times the pass called each module path."""
        out: Dict[str, int] = {}
        for m in self.graph.modules:
            out[m.path] = out.get(m.path, 0) + 1
        return out

    @cached_property
    def sources(self) -> Dict[str, str]:
        """value id -> the value bookkeeping ops (a chain of detaches) passed
        through to it: checkpoint's recompute reads ``detach(weight)``."""
        out: Dict[str, str] = {}
        for n in self.graph.nodes:
            if is_bookkeeping(n) and n.inputs:
                src = out.get(n.inputs[0], n.inputs[0])
                out.update((v, src) for v in n.outputs)
        return out

    @cached_property
    def weaker(self) -> Tuple[List[Sig], List[Sig]]:
        """Weaker signatures, for ops the alignment left unpaired (``refine``):
        without a helper read's call site, then without the source line too."""
        return [s[:5] for s in self.sigs], [s[:3] for s in self.sigs]

    @cached_property
    def loop_sigs(self) -> List[Sig]:
        """The signatures as loops repeat them (``loop_signature``), made on first use."""
        return [loop_signature(s) for s in self.sigs]


def align(sa: Sequence[Hashable], sb: Sequence[Hashable],
          wa: Sequence[Any] = (), wb: Sequence[Any] = (),
          weaker: Sequence[Tuple[Sequence[Hashable], Sequence[Hashable]]] = ()) -> List[Pair]:
    """Align two signature sequences; ``wa``/``wb`` are the witness keys
    (``None`` for ops that read nothing), used to place insertions in loops.
    ``weaker``: pairs of key sequences (A's, B's), weakest last, that pair the
    ops still left unpaired between two aligned ones (``refine``).

    Returns ``(i, j)`` pairs in merged order: ``(i, None)`` only in A,
    ``(None, j)`` only in B, ``(i, j)`` aligned.
    """
    wa = list(wa) or [None] * len(sa)
    wb = list(wb) or [None] * len(sb)
    order = {s: k for k, s in enumerate(sorted(set(sa) | set(sb), key=repr))}
    ca = [order[s] for s in sa]
    cb = [order[s] for s in sb]
    if ca <= cb:
        pairs = _align(ca, cb, wa, wb)
        for ka, kb in weaker:
            refine(pairs, ka, kb)
        return pairs
    pairs = _align(cb, ca, wb, wa)
    for ka, kb in weaker:
        refine(pairs, kb, ka)
    return [(i, j) for j, i in pairs]


def refine(pairs: List[Pair], ka: Sequence[Hashable], kb: Sequence[Hashable]) -> None:
    """Pair, in each run of ops only in A or B, the ops whose weaker keys
    ``ka``/``kb`` match (their longest common subsequence): the same op of the
    same module called from another line (a validation step's forward against a
    training step's, the same function traced from two lines) ran in both passes.
    Such a pair is "changed" by its line alone; what stays unpaired is the hunk."""
    k = 0
    while k < len(pairs):
        if pairs[k][0] is not None and pairs[k][1] is not None:
            k += 1
            continue
        k1 = k
        while k1 < len(pairs) and (pairs[k1][0] is None or pairs[k1][1] is None):
            k1 += 1
        xs = [i for i, j in pairs[k:k1] if j is None]
        ys = [j for i, j in pairs[k:k1] if i is None]
        order: Dict[Hashable, int] = {}
        matches = lcs([order.setdefault(ka[i], len(order)) for i in xs],
                      [order.setdefault(kb[j], len(order)) for j in ys]) if xs and ys else []
        if matches:
            run: List[Pair] = []
            p0 = q0 = 0
            for p, q in matches + [(len(xs), len(ys))]:
                run += [(x, None) for x in xs[p0:p]] + [(None, y) for y in ys[q0:q]]
                if p < len(xs):
                    run.append((xs[p], ys[q]))
                p0, q0 = p + 1, q + 1
            pairs[k:k1] = run
            k1 = k + len(run)
        k = k1


def _align(a: List[int], b: List[int], wa: List[Any], wb: List[Any]) -> List[Pair]:
    n, m = len(a), len(b)
    pre = 0
    while pre < n and pre < m and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < n - pre and suf < m - pre and a[n - 1 - suf] == b[m - 1 - suf]:
        suf += 1
    pairs: List[Pair] = [(k, k) for k in range(pre)]
    ia = jb = pre
    for i, j in iterations(a, b, pre, suf):
        i, j = i + pre, j + pre
        pairs.extend((x, None) for x in range(ia, i))
        pairs.extend((None, y) for y in range(jb, j))
        pairs.append((i, j))
        ia, jb = i + 1, j + 1
    pairs.extend((x, None) for x in range(ia, n - suf))
    pairs.extend((None, y) for y in range(jb, m - suf))
    pairs.extend((n - suf + k, m - suf + k) for k in range(suf))
    for side, seq, w_other, w_self in ((1, b, wa, wb), (0, a, wb, wa)):
        for down in (True, False):
            _group(pairs, side, last=down)
            _slide(pairs, seq, w_other, w_self, side, down)
    _group(pairs, 0, last=False)
    return pairs


SLACK = 10


def iterations(a: Sequence[int], b: Sequence[int], pre: int, suf: int) -> List[Tuple[int, int]]:
    """A longest common subsequence of ``a`` and ``b`` between their common
    prefix (``pre`` ops) and suffix (``suf``), as ``(i, j)`` pairs counted
    from the prefix's end: ``lcs``'s, or, among the longest, one that pairs
    the k-th occurrence of each repeated op in A with its k-th in B.

    A Python loop over items repeats its body's ops once per item: when A and
    B ran it as often, iteration k of A is iteration k of B (the same item),
    even where another pairing is as long. With experts {0, 1} run in A and
    {0, 2} in B, the plain LCS may pair expert 1's ops with expert 2's and
    iteration 1's routing read with iteration 2's; this pairs each
    iteration's reads with its own and leaves expert 1's ops only in A and
    expert 2's only in B. Ops that occur as often in A as in B, at least
    twice, become anchors, the op that occurs first in A first, each with
    all of its occurrences or none, so that the anchors stay in order; the
    stretches between anchors are aligned by ``lcs``. Used unless that loses
    more than one match in ``SLACK`` (of the whole alignment) against the plain LCS."""
    n, m = len(a) - suf, len(b) - suf
    plain = lcs(a[pre:n], b[pre:m])
    where_a: Dict[int, List[int]] = {}
    where_b: Dict[int, List[int]] = {}
    for i, c in enumerate(a):
        where_a.setdefault(c, []).append(i)
    for j, c in enumerate(b):
        where_b.setdefault(c, []).append(j)
    ai: List[int] = []  # anchors in order, positions in A and in B
    bj: List[int] = []
    for c, occ in where_a.items():  # in order of first occurrence in A
        other = where_b.get(c, ())
        if len(occ) < 2 or len(occ) != len(other):
            continue
        mine = [(i, j) for i, j in zip(occ, other) if pre <= i < n]  # the prefix and suffix pair k-th with k-th
        slots = [bisect_left(ai, i) for i, _ in mine]
        if all((s == 0 or bj[s - 1] < j) and (s == len(ai) or j < bj[s]) for s, (_, j) in zip(slots, mine)):
            for s, (i, j) in sorted(zip(slots, mine), reverse=True):
                ai.insert(s, i)
                bj.insert(s, j)
    if not ai:
        return plain
    out: List[Tuple[int, int]] = []
    i0, j0 = pre, pre
    for i1, j1 in zip(ai + [n], bj + [m]):
        out.extend((i0 + x - pre, j0 + y - pre) for x, y in lcs(a[i0:i1], b[j0:j1]))
        if i1 < n:
            out.append((i1 - pre, j1 - pre))
        i0, j0 = i1 + 1, j1 + 1
    # (a plain LCS that crosses from one iteration into another can be a few matches longer: runs of
    # a `while` inside a `for` that ran 2, 3 times in A and 3, 2 in B)
    return out if len(plain) - len(out) <= (pre + suf + len(plain)) // SLACK else plain


CHECKPOINT = 64  # LCS rows kept: every 64th, the others recomputed a block at a time


def lcs(a: Sequence[int], b: Sequence[int]) -> List[Tuple[int, int]]:
    """A longest common subsequence of ``a`` and ``b`` as ``(i, j)`` pairs.

    Bit-parallel (Hyyro 2004): one row of the LCS table is an ``len(b)``-bit
    integer whose zero bits mark where the row steps up, so a row costs a
    few big-integer operations, and ``L[i][j]`` is the number of zero bits
    below ``j`` in row ``i``. Loops that differ in every iteration make
    ``difflib`` quadratic in Python; this stays at ``len(a) * len(b) / 64``
    machine words. Every ``CHECKPOINT``-th row is kept; the traceback
    recomputes the rows of one block at a time. Ties prefer a match, then
    leaving an op of ``a`` unmatched (deletions before insertions)."""
    n, m = len(a), len(b)
    if not n or not m:
        return []
    masks: Dict[int, int] = {}
    for j, c in enumerate(b):
        masks[c] = masks.get(c, 0) | (1 << j)
    full = (1 << m) - 1

    def step(v: int, c: int) -> int:
        u = v & masks.get(c, 0)
        return ((v + u) | (v - u)) & full

    saved = [full]  # row i * CHECKPOINT
    v = full
    for i, c in enumerate(a, 1):
        v = step(v, c)
        if i % CHECKPOINT == 0:
            saved.append(v)
    block: Dict[int, int] = {}

    def row(i: int) -> int:
        if i not in block:
            block.clear()
            base = (i // CHECKPOINT) * CHECKPOINT
            v = saved[i // CHECKPOINT]
            block[base] = v
            for k in range(base, min(base + CHECKPOINT, n)):
                v = step(v, a[k])
                block[k + 1] = v
        return block[i]

    def length(i: int, j: int) -> int:
        return (~row(i) & ((1 << j) - 1)).bit_count()

    out: List[Tuple[int, int]] = []
    i, j = n, m
    here = length(i, j)
    while i and j and here:
        if a[i - 1] == b[j - 1] and length(i - 1, j - 1) == here - 1:
            out.append((i - 1, j - 1))
            i, j, here = i - 1, j - 1, here - 1
        elif length(i, j - 1) == here:
            j -= 1
        else:
            i -= 1
    out.reverse()
    return out


def _group(pairs: List[Pair], side: int, last: bool) -> None:
    """Within each run of one-sided entries, put ``side``'s entries last
    (or first), keeping their order: the tail (head) of a one-sided run
    then touches the aligned block below (above) it."""
    k = 0
    while k < len(pairs):
        if pairs[k][0] is not None and pairs[k][1] is not None:
            k += 1
            continue
        k1 = k
        while k1 < len(pairs) and (pairs[k1][0] is None or pairs[k1][1] is None):
            k1 += 1
        mine = [p for p in pairs[k:k1] if p[side] is not None]
        theirs = [p for p in pairs[k:k1] if p[side] is None]
        pairs[k:k1] = theirs + mine if last else mine + theirs
        k = k1


def _slide(pairs: List[Pair], seq: List[int], w_other: List[Any], w_self: List[Any], side: int,
           down: bool) -> None:
    """Move runs of ops only on ``side`` (1: only in B, 0: only in A) to the
    best of their equally long positions (see the module docstring). A run
    that touches the other side's run is split: its longest tail (``down``)
    or head that repeats the aligned ops next to it may move on its own, as
    the extra iterations of a loop that follows (or precedes) a branch."""
    other = 1 - side

    def only(e: int) -> bool:
        return 0 <= e < len(pairs) and pairs[e][other] is None and pairs[e][side] is not None

    def matched(e: int) -> bool:
        return 0 <= e < len(pairs) and pairs[e][0] is not None and pairs[e][1] is not None

    k = 0
    while k < len(pairs):
        if not only(k):
            k += 1
            continue
        k1 = k
        while only(k1):
            k1 += 1
        end = k1
        if down and not matched(k - 1) and matched(k1):  # a tail may move down
            nxt = seq[pairs[k1][side]]
            k = next((e for e in range(k, k1) if seq[pairs[e][side]] == nxt), k1)
        elif not down and matched(k - 1) and not matched(k1):  # a head may move up
            prev = seq[pairs[k - 1][side]]
            k1 = next((e + 1 for e in range(k1 - 1, k - 1, -1) if seq[pairs[e][side]] == prev), k)
        if k < k1:
            k1 = _move(pairs, seq, w_other, w_self, side, k, k1)
        k = max(k1, end)


def _move(pairs: List[Pair], seq: List[int], w_other: List[Any], w_self: List[Any], side: int,
          k: int, k1: int) -> int:
    """Place the one-sided run ``pairs[k:k1]``; returns the entry after it."""
    other = 1 - side

    def matched(e: int) -> bool:
        return 0 <= e < len(pairs) and pairs[e][0] is not None and pairs[e][1] is not None

    j0 = pairs[k][side]
    j1 = j0 + (k1 - k)
    length = j1 - j0
    up = 0
    while matched(k - 1 - up) and pairs[k - 1 - up][side] == j0 - 1 - up and seq[j0 - 1 - up] == seq[j1 - 1 - up]:
        up += 1
    down = 0
    while matched(k1 + down) and pairs[k1 + down][side] == j1 + down and seq[j0 + down] == seq[j1 + down]:
        down += 1
    if not up and not down:
        return k1
    start = k - up
    o_idx = [pairs[start + t][other] for t in range(up)] + [pairs[k1 + t][other] for t in range(down)]
    s0 = j0 - up  # first self index of the region

    def cost(o_i: Any, s_i: int) -> int:
        x, y = w_other[o_i], w_self[s_i]
        return int(x is not None and y is not None and x != y)

    n_m = up + down
    # aligned entry t pairs with s0 + t before the run, with s0 + t + length after it
    before = [0] * (n_m + 1)
    for t in range(n_m):
        before[t + 1] = before[t] + cost(o_idx[t], s0 + t)
    after = [0] * (n_m + 1)
    for t in range(n_m - 1, -1, -1):
        after[t] = after[t + 1] + cost(o_idx[t], s0 + t + length)
    best = min(range(n_m + 1), key=lambda c: (before[c] + after[c], -c))
    region: List[Pair] = [_pair(o_idx[t], s0 + t, side) for t in range(best)]
    region += [_pair(None, s0 + best + t, side) for t in range(length)]
    region += [_pair(o_idx[t], s0 + t + length, side) for t in range(best, n_m)]
    pairs[start:k1 + down] = region
    return start + best + length


def _pair(o: Optional[int], s: int, side: int) -> Pair:
    return (o, s) if side == 1 else (s, o)
