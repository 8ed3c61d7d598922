"""Longest common subsequences of two op sequences (integer codes).

``lcs`` is the plain one, bit-parallel; ``iterations`` prefers, among the
longest, the one that pairs each loop iteration of A with the same iteration
of B (see its docstring). ``align.py`` builds the diff's alignment on them.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Dict, List, Sequence, Tuple


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
    twice, become anchors, each with all of its occurrences or none, so that
    the anchors stay in order; the stretches between anchors are aligned by
    ``lcs``. Which ops anchor first: those that occur first in A (a loop's head
    before its body), or those that occur fewest times (an outer loop's ops
    before the inner loop's, where the outer one has no op of its own at its
    head): the order that pairs more ops, then the one that leaves fewer gaps
    with ops of both A and B (``_replaced``), then the first. Used unless that
    loses more than one match in ``SLACK`` (of the whole alignment) against
    the plain LCS."""
    n, m = len(a) - suf, len(b) - suf
    plain = lcs(a[pre:n], b[pre:m])
    where_a: Dict[int, List[int]] = {}
    where_b: Dict[int, List[int]] = {}
    for i, c in enumerate(a):
        where_a.setdefault(c, []).append(i)
    for j, c in enumerate(b):
        where_b.setdefault(c, []).append(j)
    repeated = [(occ, where_b[c]) for c, occ in where_a.items()  # in order of first occurrence in A
                if len(occ) >= 2 and len(occ) == len(where_b.get(c, ()))]
    if not repeated:
        return plain
    best = max((_anchored(a, b, pre, n, m, order) for order in
                (repeated, sorted(repeated, key=lambda r: len(r[0])))),
               key=lambda pairs: (len(pairs), -_replaced(pairs, n - pre, m - pre)))  # (max: the first on a tie)
    # (a plain LCS that crosses from one iteration into another can be a few matches longer: runs of
    # a `while` inside a `for` that ran 2, 3 times in A and 3, 2 in B)
    return best if len(plain) - len(best) <= (pre + suf + len(plain)) // SLACK else plain


def _replaced(pairs: Sequence[Tuple[int, int]], n: int, m: int) -> int:
    """How many gaps between the matches ``pairs`` (of sequences of ``n`` and
    ``m`` ops) hold ops of both A and B: a pairing that leaves one iteration
    only in A and another only in B has none, one that crosses iterations has
    some (A's ops after a loop against B's extra iteration)."""
    count, i0, j0 = 0, -1, -1
    for i, j in [*pairs, (n, m)]:
        count += i - i0 > 1 and j - j0 > 1
        i0, j0 = i, j
    return count


def _anchored(a: Sequence[int], b: Sequence[int], pre: int, n: int, m: int,
              repeated: Sequence[Tuple[List[int], List[int]]]) -> List[Tuple[int, int]]:
    """The alignment of ``a[pre:n]`` with ``b[pre:m]`` through the anchors that
    ``repeated`` (each op's positions in A and in B), taken in order, allow."""
    ai: List[int] = []  # anchors in order, positions in A and in B
    bj: List[int] = []
    for occ, other in repeated:
        mine = [(i, j) for i, j in zip(occ, other) if pre <= i < n]  # the prefix and suffix pair k-th with k-th
        slots = [bisect_left(ai, i) for i, _ in mine]
        if all((s == 0 or bj[s - 1] < j) and (s == len(ai) or j < bj[s]) for s, (_, j) in zip(slots, mine)):
            for s, (i, j) in sorted(zip(slots, mine), reverse=True):
                ai.insert(s, i)
                bj.insert(s, j)
    out: List[Tuple[int, int]] = []
    i0, j0 = pre, pre
    for i1, j1 in zip(ai + [n], bj + [m]):
        out.extend((i0 + x - pre, j0 + y - pre) for x, y in lcs(a[i0:i1], b[j0:j1]))
        if i1 < n:
            out.append((i1 - pre, j1 - pre))
        i0, j0 = i1 + 1, j1 + 1
    return out


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
