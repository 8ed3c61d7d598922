"""Why two aligned graphs differ: the witness that decided a hunk (loop
counts are found by ``loops.py``).

The records (``readchange.WitnessChange``, ``loops.LoopChange``) are frozen
dataclasses with a ``mirror()`` (A and B swapped) and a ``describe()`` that
writes the sentence shown to users; the sentences are built from the fields,
so a mirrored diff reads correctly.

Rules (DESIGN.md, "diff"):

* a hunk whose ops contain scalar reads at one line that ran a different
  number of times (``while k > 0`` reading True 3x then False, against 5x) is
  a loop count change: "`while` at `model.py:57` ran 3x in A, 5x in B"; an
  `if` read inside it that differs is named with it; numbers read at a
  ``while`` (``while n.item() > 0``) count by whether the loop went on;
* otherwise the nearest aligned witness before the hunk whose value differs
  explains it: "`model.py:42` read True in A, False in B". A float read (a
  logged loss differs every step) gives way to an earlier decisive read
  (``decisive``), unless that read's branch already showed as ops only in A
  or B before the float read: then the float read, compared in Python
  (``if peak > 1.5``), is the nearer cause;
* a run of ops that repeats a block just before it, without a witness at
  its line, is a Python-level loop ("the block at `m.py:9` ran 2x in A, 3x in B");
  the read that explains it is the nearest one before the loop's first pass
  (a float whose integer part is the count, ``range(int(n.item()))``, named
  without a hedge);
* a hunk with no read inside it, in the k-th run of a loop statement that
  runs several times a pass, is that run's count change (``loops.by_runs``);
* an `if` around the hunk's ops that tests a name kept from a read names that
  read (``guardcause.py``).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .align import Pair
from .changecause import ChangedCauses, number
from .guardcause import GuardCauses
from .side import Side, Sig
from .loopchange import BRANCHES, TIMES, LoopChange
from .loops import LoopFinder
from .readchange import WitnessChange, decisive, read_str, same_read
from .sourceloops import accumulates, ended_by, feeds_loop
from .sourcetext import except_bodies, kept_aside, printed_aside, read_by_branch, read_by_if
from .textform import common_module, plural, where

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph

ARROW = "\u2192"
__all__ = ["ARROW", "TIMES", "Causes", "LoopChange", "WitnessChange", "common_module", "decisive", "plural",
           "read_str", "where"]


def repeated_call(g: "Graph", mid: Optional[str], calls: Dict[str, int]) -> Optional[Tuple[str, int]]:
    """The innermost module call around ``mid`` whose module the pass called
    more than once (``calls``: calls per path), as (path, call index)."""
    return next(((m.path, m.call) for m in g.calls_around(mid) if calls.get(m.path, 0) > 1), None)


# -- causes of a structural hunk -------------------------------------------
class Causes(ChangedCauses, GuardCauses):
    """Finds the witness and loop behind each hunk of one alignment."""

    def __init__(self, A: Side, B: Side, pairs: Sequence[Pair]) -> None:
        self.A, self.B, self.pairs = A, B, pairs
        # merged positions of aligned witness pairs whose reads differ, ascending
        self.differing: List[int] = [  # (a read paired with one at another line is another statement: no cause)
            e for e, (i, j) in enumerate(pairs)
            if i is not None and j is not None and A.wkeys[i] is not None and B.wkeys[j] is not None
            and A.wkeys[i] != B.wkeys[j] and same_read(A.nodes[i], B.nodes[j]) and not printed_aside(A.nodes[i])]
        self.decisive: List[int] = [e for e in self.differing if decisive(A.nodes[pairs[e][0]].witness)
                                    and decisive(B.nodes[pairs[e][1]].witness) and not kept_aside(A.nodes[pairs[e][0]])]
        # an optimizer's reads (Adam's step count) steer only its own ops: for other hunks, the reads outside
        # it, and those an `if` or `while` tests (`if not torch.isfinite(p.grad).all(): continue`)
        self.outside = tuple([e for e in reads if A.nodes[pairs[e][0]].phase != "optimizer"
                              or read_by_branch(A.nodes[pairs[e][0]])] for reads in (self.differing, self.decisive))
        # the index each side has reached at each merged position (next op of that side), and how
        # many ops before it are only in A or B
        self.next_a: List[int] = []
        self.next_b: List[int] = []
        self.one_sided: List[int] = []
        ia = ib = lone = 0
        for i, j in pairs:
            self.next_a.append(ia)
            self.next_b.append(ib)
            self.one_sided.append(lone)
            ia += i is not None
            ib += j is not None
            lone += i is None or j is None
        self.next_a.append(ia)
        self.next_b.append(ib)
        self.one_sided.append(lone)
        self.loops = LoopFinder(A, B, pairs, self.next_a, self.next_b, self.witness_change)
        raised_a, raised_b = A.graph.raised(), B.graph.raised()  # ops that raised on one side only
        self.raised: List[int] = [e for e, (i, j) in enumerate(pairs) if i is not None and j is not None
                                  and (A.nodes[i].id in raised_a) != (B.nodes[j].id in raised_b)]
        self.raised_in_a = raised_a

    def caught(self, k0: int, k1: int) -> Optional[int]:
        """The row of the op that raised on one side only, before row ``k0`` with
        no read that differs since, where that side went on: the program caught
        the exception, and the hunk is what its ``except`` ran -- right after
        the raise, or at lines of the ``except`` clauses of the ``try`` around it
        (other ops only in A or B between them are another cause's)."""
        at = bisect.bisect_left(self.raised, k0)
        if not at:
            return None
        row = self.raised[at - 1]
        i, j = self.pairs[row]
        in_a = self.A.nodes[i].id in self.raised_in_a
        if (self.next_a[k0] == len(self.A.nodes)) if in_a else (self.next_b[k0] == len(self.B.nodes)):
            return None  # (the pass that raised ran nothing after it: it stopped, the other went on)
        read = bisect.bisect_left(self.differing, k0)
        if read and self.differing[read - 1] > row:
            return None
        if self.one_sided[k0] == self.one_sided[row + 1]:
            return row
        src = (self.A.nodes[i] if in_a else self.B.nodes[j]).source
        first = next((self.A.nodes[x] if y is None else self.B.nodes[y] for x, y in self.pairs[k0:k1]
                      if x is None or y is None), None)
        at_line = first.source if first is not None else None
        if src is None or at_line is None or at_line.file != src.file:
            return None
        lo, hi = except_bodies(src.file, src.line)
        return row if lo <= at_line.line <= hi else None

    def past_end(self, k0: int) -> bool:
        """Has one side run all its ops before row ``k0`` (what follows is only
        the other's: all of it comes after the point where a raising pass stopped)?"""
        return self.next_a[k0] == len(self.A.nodes) or self.next_b[k0] == len(self.B.nodes)

    def witness_change(self, i: int, j: int) -> WitnessChange:
        na, nb = self.A.nodes[i], self.B.nodes[j]
        src = na.source or nb.source
        ca = repeated_call(self.A.graph, na.module, self.A.calls)
        cb = repeated_call(self.B.graph, nb.module, self.B.calls)
        call = None
        if ca is not None or cb is not None:
            path = (ca or cb)[0]
            call = (path, ca[1] if ca and ca[0] == path else 0, cb[1] if cb and cb[0] == path else 0)
        via = None
        if src is not None and (len(self.A.call_sites.get((src.file, src.line), ())) > 1
                                or len(self.B.call_sites.get((src.file, src.line), ())) > 1):
            via = tuple(", from ".join(where(c.file, c.line) for c in w.called_from) if w.called_from else "?"
                        for w in (na.witness, nb.witness))
        at_b = None if na.source is None or nb.source is None or (nb.source.file, nb.source.line) == (
            na.source.file, na.source.line) else (nb.source.file, nb.source.line)  # (`oa.step()` against `ob.step()`)
        return WitnessChange(src.file if src else "?", src.line if src else 0, src.function if src else "?",
                             na.witness, nb.witness, na.id, nb.id, call=call, via=via, at_b=at_b)

    def explain(self, k0: int, k1: int) -> Tuple[Optional[WitnessChange], Optional[LoopChange]]:
        """The witness and the loop behind hunk ``k0:k1``. An `if` read inside
        the hunk is not a loop (a loop around it ran on: an early exit read True
        at once in A, False first in B): it is the witness, and a `while` read
        inside the same hunk, if any, the loop (an iteration more, whose `if`
        went the other way)."""
        branch: Optional[WitnessChange] = None
        loops: List[Tuple[int, int, WitnessChange, LoopChange]] = []  # (the outermost: a caller's loop, one more
        for w, loop in self.loops.by_witness(k0, k1):  # iteration of it, before the inner loop it calls)
            if loop.keyword not in BRANCHES:
                loops.append((self.A.module_depth(w.node_a), len(loops), branch or w, loop))
            else:
                branch = branch or w
        if loops or branch is not None:
            return min(loops)[2:] if loops else (branch, None)
        loop, start = self.loops.by_repeat(k0, k1)
        # a loop's count is decided before its first pass (``for c in torch.unique(y)``), not by the
        # reads its earlier passes made (``h[y == c]``): those are named only when nothing before differs
        optimizer = any((self.A.nodes[i] if j is None else self.B.nodes[j]).phase == "optimizer"
                        for i, j in self.pairs[k0:k1] if i is None or j is None)
        ended = self._exit_read(loop, start, k0, k1)
        if ended is not None:
            return ended
        witness = self._counted(loop, min(start, k0)) or self._nearest_before(min(start, k0), optimizer) or \
            self._nearest_before(k0, optimizer) or self._inside(k0, k1)
        if loop is not None and witness is not None and witness.weak and _counts(witness, loop) and \
                feeds_loop(self.A.graph.node(witness.node_a), loop.file, loop.line):
            witness = replace(witness, weak=False)  # (`for _ in range(int(n.item()))`: the float is the count)
        if loop is None:
            witness = self._named_by_guard(k0, k1, witness)
            # the k-th run of a nested loop, when its own condition is the read that differs
            run = self.loops.by_runs(k0, k1)  # (an `if` read at each level of a recursion is no loop)
            if run is not None and run.keyword not in BRANCHES and (
                    witness is None or (witness.file, witness.line) == (run.file, run.line)):
                loop = run
        return witness, loop

    def _counted(self, loop: Optional[LoopChange], start: int) -> Optional[WitnessChange]:
        """The read before a loop's first pass that returned its counts, whatever
        reads lie between (``ks = [int(k.item()) for k in steps]`` read up front,
        then ``for k in ks: for _ in range(k):``)."""
        if loop is None:
            return None
        lines = set()
        for e in reversed(self.differing[:bisect.bisect_left(self.differing, start)]):
            w = self.witness_change(*self.pairs[e])
            if number(w.a.value) and number(w.b.value) and (w.a.value, w.b.value) == (loop.a, loop.b):
                return w if lines <= {(w.file, w.line)} else None
            lines.add((w.file, w.line))  # (a read between, at another line, may be the count's own)
        return None

    def _exit_read(self, loop: Optional[LoopChange], start: int, k0: int,
                   k1: int) -> Optional[Tuple[WitnessChange, LoopChange]]:
        """A repeated block's loop ended by a read in its body: the latest read
        that differs between the block's first copy and the hunk, made once per
        extra iteration in the hunk, that ends its loop (``sourceloops.ended_by``:
        ``if i >= n.item(): break``, ``delta = d.item()`` ... ``if delta < tol:
        break``), with that loop named by its header. Not when a read before the
        loop gave its count (``range(int(n.item()))``), nor for a float that
        cannot have gone another way than the reads that went on (``_parted``).
        Else a second loop after one that ran longer was blamed on the first's read."""
        if loop is None or start >= k0:
            return None
        one_sided = [self.A.sigs[i] if j is None else self.B.sigs[j] for i, j in self.pairs[k0:k1]
                     if i is None or j is None]
        reads, seen = self.differing, set()
        for e in reversed(reads[bisect.bisect_left(reads, start):bisect.bisect_left(reads, k0)]):
            i, j = self.pairs[e]
            read = self.A.nodes[i]
            if self.A.sigs[i] in seen or one_sided.count(self.A.sigs[i]) != abs(loop.a - loop.b):
                continue  # (an earlier iteration's read, which went on; an inner loop's read: several a copy)
            seen.add(self.A.sigs[i])
            span = ended_by(read)
            parted = self._parted(e, start, k1, loop) if span is not None else None
            if parted is None:
                continue
            before = self._nearest_before(min(start, k0))
            if before is not None and feeds_loop(self.A.graph.node(before.node_a), read.source.file, span[0]):
                return None  # (the count was read before the loop)
            return replace(self.witness_change(i, j), weak=not parted), replace(
                loop, file=read.source.file, function=read.source.function, line=span[0], via="witness",
                keyword=span[2])
        return None

    def _parted(self, e: int, start: int, k1: int, loop: LoopChange) -> Optional[bool]:
        """Can the shorter pass's read at row ``e`` have gone the exit way? True
        for a bool or count read; for a float, when it lies below or above every
        read at its line that went on (both passes' before it, the other pass's
        after), as ``if d < tol:`` parts them: True when the longer pass's last read
        lies on its side too (it ended the same way), False (a guess, said so)
        when not (that pass may have run out of items); None when it cannot."""
        i, j = self.pairs[e]
        short, x = (0, i) if loop.a < loop.b else (1, j)
        if not isinstance((self.A, self.B)[short].nodes[x].witness.value, float):
            return True
        sig = self.A.sigs[i]
        reads = {(row, side): S.nodes[y].witness.value for row in range(start, k1) for side, (S, y) in
                 enumerate(((self.A, self.pairs[row][0]), (self.B, self.pairs[row][1])))
                 if y is not None and S.sigs[y] == sig and S.wkeys[y] is not None}
        if accumulates(self.A.nodes[i]):  # (`total += p.item()` ... `while total < 0.99:`: the totals part them)
            total = [0.0, 0.0]
            for (row, side), v in reads.items():
                if not isinstance(v, (int, float)):
                    return None
                total[side] = reads[row, side] = total[side] + v
        exit_value = reads.pop((e, short), None)
        went_on = list(reads.values())
        last = went_on.pop() if went_on else None  # (the longer pass's last read, in the hunk)
        if exit_value is None:
            return None
        numbers = [v for v in went_on if isinstance(v, (int, float))]
        if not numbers or min(numbers) <= exit_value <= max(numbers):
            return None
        below = exit_value < min(numbers)
        return isinstance(last, (int, float)) and (last < min(numbers) if below else last > max(numbers))

    def _nearest_before(self, k0: int, optimizer: bool = True) -> Optional[WitnessChange]:
        """The nearest aligned read before the hunk that returned other data:
        a decisive one (see ``decisive``), unless ops only in A or B lie
        between it and a nearer float read; else that float read, marked
        ``weak``. Without ``optimizer`` (the hunk has no optimizer op) the
        optimizer's own reads are passed over."""
        differing, decisive_ = (self.differing, self.decisive) if optimizer else self.outside
        at = bisect.bisect_left(decisive_, k0)
        e = decisive_[at - 1] if at else None
        nearest = differing[bisect.bisect_left(differing, k0) - 1] if differing and differing[0] < k0 else None
        if nearest is None:
            return None
        weak = e is None or (e != nearest and self.one_sided[nearest] > self.one_sided[e])
        row = nearest if weak else e
        i, j = self.pairs[row]
        # ops only in A or B after an `if`'s read, then ops in both, then this hunk: the read's branch
        # came and went (`if x.mean() > 0: h = h.exp()`), and what decided this one is not known
        merged = self.one_sided[k0] > self.one_sided[row + 1] and read_by_if(self.A.nodes[i]) and any(
            x is not None and y is not None and self.A.sigs[x] == self.B.sigs[y] for x, y in self.pairs[row + 1:k0])
        assert i is not None and j is not None
        # other decisive reads that differ with nothing only in A or B since: just as likely the cause
        also = [] if weak else [x for x in reversed(decisive_[:at - 1])
                                if self.one_sided[x] == self.one_sided[k0]]
        cause = self.witness_change(i, j)
        alts: Dict[str, WitnessChange] = {}  # (one line read per parameter: said once)
        for x in also:
            w = self.witness_change(*self.pairs[x])
            if w.short() != cause.short():
                alts.setdefault(w.short(), w)
            if len(alts) == 2:
                break
        return replace(cause, weak=weak or merged, merged=merged, also=tuple(alts.values()))

    def _inside(self, k0: int, k1: int) -> Optional[WitnessChange]:
        """Reads at the same line on both sides of the hunk that the alignment
        did not pair: the k-th read in A against the k-th read in B."""
        reads_a: Dict[Sig, List[int]] = {}
        reads_b: Dict[Sig, List[int]] = {}
        for i, j in self.pairs[k0:k1]:
            if i is not None and self.A.wkeys[i] is not None:
                reads_a.setdefault(self.A.sigs[i], []).append(i)
            if j is not None and self.B.wkeys[j] is not None:
                reads_b.setdefault(self.B.sigs[j], []).append(j)
        for sig, ia in reads_a.items():
            for i, j in zip(ia, reads_b.get(sig, ())):
                if self.A.wkeys[i] != self.B.wkeys[j]:
                    return self.witness_change(i, j)
        return self._by_order(k0, k1)

    def _by_order(self, k0: int, k1: int) -> Optional[WitnessChange]:
        """A read inside the hunk on one side against the read of the same rank at
        that line on the other, when they differ: the 3rd shape read of a `while`
        whose condition is the shape (`h = h[s > t]` until `h` is empty), with the
        extra iteration aligned before the other side's last read."""
        for col, X, Y in ((0, self.A, self.B), (1, self.B, self.A)):
            for p in self.pairs[k0:k1]:
                x = p[col]
                if x is None or X.wkeys[x] is None:
                    continue
                mine, theirs = X.reads[X.sigs[x]], Y.reads.get(X.sigs[x], [])
                k = bisect.bisect_left(mine, x)
                if k < len(theirs) and Y.wkeys[theirs[k]] != X.wkeys[x]:
                    return self.witness_change(x, theirs[k]) if col == 0 else self.witness_change(theirs[k], x)
        return None

def _counts(w: WitnessChange, loop: LoopChange) -> bool:
    """Are the loop's counts the float read's floor, ceiling or rounding on both
    sides (``range(int(n.item()))``)? (``sourceloops.feeds_loop``: read for that loop)"""
    a, b = w.a.value, w.b.value
    if not (isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b)):
        return False
    return any((f(a), f(b)) == (loop.a, loop.b) for f in (math.floor, math.ceil, round))

