"""Sequence alignment of two graphs' ops in execution order, by op signature.

An op's signature is ``(phase, module path, op, source file name, line)``,
plus the call site of a helper that read tensor data and the parameters the
op reads: never ids, never shapes. Two passes of the same program have the
same signature sequence; an ``if`` that took the other branch shows as a run
of ops only in A or only in B.

The alignment is a longest common subsequence of the signatures (after the
common prefix and suffix), computed bit-parallel, iteration by iteration
where a loop ran as often on both sides (``lcs.iterations``); ops left
unpaired are then paired by weaker signatures (``refine``). It is symmetric
by construction (``align(b, a)`` is the mirror of ``align(a, b)``):
signatures are numbered in sorted order and the pair is always aligned in
one canonical orientation, then swapped back. Pure
insertions or deletions inside a repeated region (a loop that ran 3x in A and
5x in B) can sit at several equally long positions; we pick the one that
pairs the most witness reads with equal values (the loop's exit read in A
with the exit read in B), then the latest.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from .lcs import iterations, lcs
from .side import CASTS, Side, Sig, is_bookkeeping, one_call_site

__all__ = ["CASTS", "Pair", "Side", "Sig", "align", "is_bookkeeping", "lcs", "one_call_site", "refine"]

Pair = Tuple[Optional[int], Optional[int]]

def align(sa: Sequence[Hashable], sb: Sequence[Hashable],
          wa: Sequence[Any] = (), wb: Sequence[Any] = (),
          weaker: Sequence[Tuple[Sequence[Hashable], Sequence[Hashable]]] = (),
          looped: Tuple[Sequence[bool], Sequence[bool]] = ((), ())) -> List[Pair]:
    """Align two signature sequences; ``wa``/``wb`` are the witness keys
    (``None`` for ops that read nothing), used to place insertions in loops.
    ``weaker``: pairs of key sequences (A's, B's), weakest last, that pair the
    ops still left unpaired between two aligned ones (``refine``). ``looped``:
    per op, is its line inside a ``for``/``while`` (A's, B's; see ``_two_loops``).

    Returns ``(i, j)`` pairs in merged order: ``(i, None)`` only in A,
    ``(None, j)`` only in B, ``(i, j)`` aligned.
    """
    wa = list(wa) or [None] * len(sa)
    wb = list(wb) or [None] * len(sb)
    order = {s: k for k, s in enumerate(sorted(set(sa) | set(sb), key=repr))}
    ca = [order[s] for s in sa]
    cb = [order[s] for s in sb]
    flip = not ca <= cb
    la, lb = looped
    pairs = _align(cb, ca, wb, wa, lb, la) if flip else _align(ca, cb, wa, wb, la, lb)
    for ka, kb in weaker:
        refine(pairs, *((kb, ka) if flip else (ka, kb)))
    return [(i, j) for j, i in pairs] if flip else pairs


def refine(pairs: List[Pair], ka: Sequence[Hashable], kb: Sequence[Hashable]) -> None:
    """Pair, in each run of ops only in A or B, the ops whose weaker keys
    ``ka``/``kb`` match (their longest common subsequence): the same op of the
    same module called from another line (a validation step's forward against a
    training step's, the same function traced from two lines) ran in both passes.
    Such a pair is "changed" by its line alone; what stays unpaired is the hunk.
    Used only where most ops of the side with fewer in the run pair up."""
    def paired(run: List[Pair]) -> List[Pair]:
        xs = [i for i, j in run if j is None]
        ys = [j for i, j in run if i is None]
        order: Dict[Hashable, int] = {}
        matches = lcs([order.setdefault(ka[i], len(order)) for i in xs],
                      [order.setdefault(kb[j], len(order)) for j in ys]) if xs and ys else []
        # only where most ops of the side with fewer pair up: the same code called from elsewhere (with
        # more on either side); two arms of an `if` share an op or two. Counted among the ops inside
        # submodule calls too (keys are signatures: module path second): a model called from an
        # evaluation's line with a metric after it (`model(x).argmax(1).eq(y).sum()`)
        if not matches or 2 * len(matches) <= min(len(xs), len(ys)) and not _submodules_pair(matches, xs, ys, ka, kb):
            return run
        out: List[Pair] = []
        p0 = q0 = 0
        for p, q in matches + [(len(xs), len(ys))]:
            out += [(x, None) for x in xs[p0:p]] + [(None, y) for y in ys[q0:q]]
            if p < len(xs):
                out.append((xs[p], ys[q]))
            p0, q0 = p + 1, q + 1
        return out

    _each_run(pairs, paired)


def _submodules_pair(matches: List[Tuple[int, int]], xs: List[int], ys: List[int],
                     ka: Sequence[Any], kb: Sequence[Any]) -> bool:
    """Do most of the ops inside submodule calls (a signature's module path,
    its second field, not the root's ``""``) of the side with fewer pair up?"""
    def sub(k: Any) -> bool:
        return isinstance(k, tuple) and len(k) > 1 and bool(k[1])

    paired = sum(1 for p, _ in matches if sub(ka[xs[p]]))
    fewer = min(sum(1 for i in xs if sub(ka[i])), sum(1 for j in ys if sub(kb[j])))
    return paired > 0 and 2 * paired > fewer


def _each_run(pairs: List[Pair], edit: Callable[[List[Pair]], List[Pair]]) -> None:
    """Replace each run of one-sided entries of ``pairs`` by ``edit(run)``."""
    k = 0
    while k < len(pairs):
        if pairs[k][0] is not None and pairs[k][1] is not None:
            k += 1
            continue
        k1 = k
        while k1 < len(pairs) and (pairs[k1][0] is None or pairs[k1][1] is None):
            k1 += 1
        run = edit(pairs[k:k1])
        pairs[k:k1] = run
        k += len(run)


def _align(a: List[int], b: List[int], wa: List[Any], wb: List[Any], la: Sequence[bool] = (),
           lb: Sequence[bool] = ()) -> List[Pair]:
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
    for side, seq, w_other, w_self, looped in ((1, b, wa, wb, lb), (0, a, wb, wa, la)):
        for down in (True, False):
            _group(pairs, side, last=down)
            _slide(pairs, seq, w_other, w_self, side, down, looped)
    _group(pairs, 0, last=False)
    return pairs


def _group(pairs: List[Pair], side: int, last: bool) -> None:
    """Within each run of one-sided entries, put ``side``'s entries last
    (or first), keeping their order: the tail (head) of a one-sided run
    then touches the aligned block below (above) it."""
    def grouped(run: List[Pair]) -> List[Pair]:
        mine = [p for p in run if p[side] is not None]
        theirs = [p for p in run if p[side] is None]
        return theirs + mine if last else mine + theirs

    _each_run(pairs, grouped)


def _slide(pairs: List[Pair], seq: List[int], w_other: List[Any], w_self: List[Any], side: int,
           down: bool, looped: Sequence[bool] = ()) -> None:
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
            moved = _move(pairs, seq, w_other, w_self, side, k, k1)
            cut = _two_loops(pairs, seq, side, k, k1, looped) if down and moved == k1 == end else None
            if cut is None:
                k1 = moved
            else:  # (each part placed on its own: the tail in the second loop, the head in the first)
                k1 = _move(pairs, seq, w_other, w_self, side, cut, k1)
                _move(pairs, seq, w_other, w_self, side, k, cut)
        k = max(k1, end)


def _two_loops(pairs: List[Pair], seq: List[int], side: int, k: int, k1: int,
               looped: Sequence[bool]) -> Optional[int]:
    """Where the one-sided run ``pairs[k:k1]``, aligned on both ends, splits
    into a copy of the ops right above it and a copy of those right below it:
    one more iteration of each of two loops in a row (each ended by its own
    read). The tail then moves on its own, into the second loop. Each part must
    hold an op whose line is in a loop (``looped``): straight-line code that
    calls a module twice (`if refine: x = self.enc(x)`) repeats its ops too."""
    j0, j1 = pairs[k][side], pairs[k1 - 1][side] + 1
    if (j0 and seq[j0 - 1] == seq[j1 - 1]) or (j1 < len(seq) and seq[j0] == seq[j1]):
        return None  # (it could move whole: one loop's iterations)
    for cut in range(k + 1, k1):
        head, tail = cut - k, k1 - cut
        if not set(seq[j0:j0 + head]).isdisjoint(seq[j0 + head:j1]):
            continue  # (ops of one loop body on both sides of the cut)
        if not (any(looped[j0:j0 + head]) and any(looped[j0 + head:j1])):
            continue
        if _repeats(pairs, seq, side, k, j0, head, -1) and _repeats(pairs, seq, side, k1, j0 + head, tail, 1):
            return cut
    return None


def _repeats(pairs: List[Pair], seq: List[int], side: int, e: int, j: int, length: int, way: int) -> bool:
    """Are the ``length`` ops ``seq[j:j + length]`` (one-sided, from entry ``e`` on
    when ``way`` is -1, up to entry ``e`` when 1) iterations of the loop whose
    aligned ops are right above (-1) or below (1) them: they repeat with some
    period ``p``, and the ``p`` aligned ops next to them are one such iteration
    (a run of 3 extra iterations below 2 aligned ones)."""
    for p in range(1, length + 1):
        if any(seq[j + t] != seq[j + t + p] for t in range(length - p)):
            continue  # (not that period)
        near = [e - p + t for t in range(p)] if way < 0 else [e + t for t in range(p)]
        at = [j - p + t for t in range(p)] if way < 0 else [j + length + t for t in range(p)]
        if all(0 <= x < len(pairs) and None not in pairs[x] and pairs[x][side] == y for x, y in zip(near, at)) and \
                all(seq[y] == seq[j + t] for t, y in enumerate(at)):
            return True
    return False


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
