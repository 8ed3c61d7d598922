"""Loops that ran a different number of times in two aligned passes.

Three kinds of evidence, each a ``LoopFinder`` method:

* ``by_witness``: scalar reads at one line inside the hunk that repeated a
  different number of times before their exit read (``while k > 0`` reading
  True 3x then False, against 5x): "`while` at `model.py:57` ran 3x in A, 5x in B";
* ``by_repeat``: a block of ops that repeats more times on one side, without a
  read at its line (a Python-level loop): "the block at `m.py:9` ran 2x in A,
  3x in B". A block that runs as often in all on both sides, only in another
  order (recursion: two merges in a row in A, apart in B), is no loop count;
* ``by_runs``: a loop statement run several times per pass (a `while` inside a
  `for`): its k-th run, the one the hunk's ops sit in, against the other
  side's k-th run: "`while` at `m.py:18` ran 2x in A, 1x in B (the 1st of its 2 runs)".
"""
from __future__ import annotations

import bisect
import linecache
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .align import Pair
from .blockcalls import block_counts, call_scope, calls_under, one_call
from .side import Loop, Side, Sig, is_engine_sum
from .sourceloops import can_leave, exits_loop, first_test_reads_nothing, in_loop, keyword_at, loop_span, while_end
from .loopchange import BRANCHES, LoopChange

if TYPE_CHECKING:  # pragma: no cover
    from .explain import WitnessChange
    from .ir import Node, Source

class LoopFinder:
    """Finds the loop behind a hunk of one alignment; ``witness(i, j)`` makes
    the WitnessChange of A's read ``i`` against B's read ``j``."""

    def __init__(self, A: Side, B: Side, pairs: Sequence[Pair], next_a: List[int], next_b: List[int],
                 witness: Callable[[int, int], "WitnessChange"]) -> None:
        self.A, self.B, self.pairs, self.next_a, self.next_b = A, B, pairs, next_a, next_b
        self.witness_change = witness
        self._cache: Dict[Any, Any] = {}

    def by_witness(self, k0: int, k1: int) -> Iterator[Tuple["WitnessChange", LoopChange]]:
        """Lines inside the hunk whose scalar reads repeated a different number
        of times before their exit read. A data-dependent shape is no loop
        condition: ``out[mask] = expert(x[mask])`` reads [1,3] in two
        iterations of a loop whose `if mask.any()` decides them."""
        first: Dict[Sig, Tuple[Any, Side, int]] = {}
        for i, j in self.pairs[k0:k1]:
            for side, x in ((self.A, i), (self.B, j)):
                if x is not None and side.wkeys[x] is not None and side.nodes[x].witness.shape is None:
                    first.setdefault(side.sigs[x], (side.loop_keys[x], side, x))
        for sig, (rep, side, x) in first.items():
            ended = self._run_ended(sig, side, x, k0)
            if ended is not None:
                yield ended
                continue
            ra, exit_a = _run(self.A, sig, self.next_a[k0], rep)
            rb, exit_b = _run(self.B, sig, self.next_b[k0], rep)
            if len(ra) == len(rb):
                continue
            k = min(len(ra), len(rb))
            # the read that differs: a repeat on the longer side, the exit on the shorter; a number read
            # (`while n.item() > 0`: 3, 2, 1, 0) at the loop's first read, which told how often it would run
            counted = any(side.loop_keys[r[0]] != side.wkeys[r[0]] for side, r in ((self.A, ra), (self.B, rb)) if r)
            if counted:  # (or the first pair that differs: `if tok.item() == eos: break` read 0, 0, 1 against
                #             0, 0, 0, 0, 1, or 5, 3, 7 against 5, 2, 9, 4, 7; not where an exit value was read
                #             inside the runs: a helper's loop called again at once, its runs read as one)
                d = next((d for d, (x, y) in enumerate(zip(ra + [exit_a], rb + [exit_b]))
                          if x is None or y is None or self.A.wkeys[x] != self.B.wkeys[y]), None)
                ends = {S.wkeys[e] for S, e in ((self.A, exit_a), (self.B, exit_b)) if e is not None}
                merged = any(S.wkeys[x] in ends for S, r in ((self.A, ra), (self.B, rb)) for x in r)
                ia, ib = ((ra + [exit_a])[d], (rb + [exit_b])[d]) if d in (0, k) or (
                    d is not None and not merged) else (None, None)
            else:
                ia = ra[k] if k < len(ra) else exit_a
                ib = rb[k] if k < len(rb) else exit_b
            if ia is None or ib is None or self.A.wkeys[ia] == self.B.wkeys[ib]:
                continue  # (reads alike: the runs are not what they seem, a helper's loop called again at once)
            w = self.witness_change(ia, ib)
            yield w, self._loop_change(w, ia, len(ra), len(rb), ((self.A, exit_a), (self.B, exit_b)),
                                       ((self.A, ra + [exit_a] * (exit_a is not None)),
                                        (self.B, rb + [exit_b] * (exit_b is not None))),
                                       self._which_run(sig, exit_a, exit_b))

    def _run_ended(self, sig: Sig, X: Side, x: int, k0: int) -> Optional[Tuple["WitnessChange", LoopChange]]:
        """When the hunk's first read at ``sig`` is the exit read of a run on its
        side (a `while` inside a `for`, its runs aligned across their ends when
        their counts swap, [3, 1] against [1, 3]): the change of the k-th runs'
        counts, with the read of the side whose k-th run went on at the place
        where the other's ended. The k-th: the run that ended there, when the other
        side's went on; else the other side's run at the hunk (it went on there)."""
        Y = self.B if X is self.A else self.A
        rx, ry = self._runs(X, sig), self._runs(Y, sig)
        k = next((k for k, r in enumerate(rx) if r[1] == x), None)
        if k is None or len(rx) != len(ry):
            return None
        if ry[k][2] <= rx[k][2]:
            at = (self.next_b if Y is self.B else self.next_a)[k0]
            k = next((k for k, r in enumerate(ry) if r[1] is not None and r[0] <= at <= r[1]), None)
            if k is None or rx[k][2] == ry[k][2]:
                return None
        ra, rb = (rx, ry) if X is self.A else (ry, rx)
        short, long_, rs, rl = (self.A, self.B, ra, rb) if ra[k][2] < rb[k][2] else (self.B, self.A, rb, ra)
        reads = long_.reads[sig]
        ended, went_on = rs[k][1], reads[reads.index(rl[k][0]) + rs[k][2]]  # (its read where the short one ended)
        ia, ib = (ended, went_on) if short is self.A else (went_on, ended)
        w = self.witness_change(ia, ib)
        runs = [(S, _reads_of(S, sig, r[k])) for S, r in ((self.A, ra), (self.B, rb))]
        return w, self._loop_change(w, ia, ra[k][2], rb[k][2], ((self.A, ra[k][1]), (self.B, rb[k][1])), runs,
                                    (k, len(rx)) if len(rx) > 1 else None)

    def _loop_change(self, w: "WitnessChange", ia: int, a: int, b: int, exits: Sequence[Tuple[Side, Optional[int]]],
                     runs: Sequence[Tuple[Side, Sequence[int]]], run: Optional[Tuple[int, int]]) -> LoopChange:
        """The loop that the reads of ``w`` counted ``a``/``b`` times: at their line,
        or the loop whose body holds them (``_body_loop``: each run's exit read is
        in one run of the body more)."""
        file, line, function, keyword = w.file, w.line, w.function, keyword_at(w.file, w.line)
        if not linecache.getlines(file):  # (a header's reads are its count + 1, an exit's in its body its count)
            ea, eb = (e for s, e in sorted(exits, key=lambda se: se[0] is not self.A))
            return _unreadable(file, line, function, a, b, ea, eb, self.A.nodes[ia], run)
        loop, ended = self._body_loop(self.A, ia, exits, runs)
        if ended:
            file, function, line, keyword = loop[0], loop[1], loop[2], loop[4]
            if not loop[5]:
                ea, eb = (e for s, e in sorted(exits, key=lambda se: se[0] is not self.A))
                a, b = a + (ea is not None), b + (eb is not None)
        elif loop is not None:
            keyword = "if"
        elif keyword == "while" and first_test_reads_nothing(file, line):
            a, b = a + 1, b + 1  # (`done = False` ... `while not done:`: no read before the first iteration)
        return LoopChange(file, line, function, a, b, "witness", 0, keyword, run)

    def _body_loop(self, side: Side, i: int, exits: Sequence[Tuple[Side, Optional[int]]],
                   runs: Sequence[Tuple[Side, Sequence[int]]]) -> Tuple[Optional[Loop], bool]:
        """The loop around read ``i`` when its line is no loop's header nor an
        ``if`` that does not leave it (``Side.loop_of``), and whether the reads
        ``runs`` ((side, reads) up to the exit) were one run of it each, ended by
        the exit reads ``exits`` ((side, read), at least one). A loop that went on
        after one (``v = bool(m[i])`` ... ``if v:`` in a ``for``), or a ``for``
        without ``break`` or ``return``, makes the read each iteration's branch."""
        src = side.nodes[i].source
        loop = side.loop_of(i) if src is not None and (keyword_at(src.file, src.line) not in BRANCHES or
                                                       exits_loop(src.file, src.line)) else None
        if loop is None:
            return None, False
        return loop, loop[5] or any(e is not None for _, e in exits) and all(
            e is None or s.left_loop(e, loop) for s, e in exits) and all(s.one_run(r, loop) for s, r in runs) and (
            loop[4] == "while" or can_leave(loop[0], loop[2]))

    def _which_run(self, sig: Sig, exit_a: Optional[int], exit_b: Optional[int]) -> Optional[Tuple[int, int]]:
        """(k, runs) when the loop at ``sig`` ran as many times on both sides (a
        `while` inside a `for`) and the runs ending at these exits are both the k-th."""
        ra, rb = self._runs(self.A, sig), self._runs(self.B, sig)
        if len(ra) < 2 or len(ra) != len(rb):
            return None
        ka = next((k for k, r in enumerate(ra) if r[1] == exit_a), None)
        kb = next((k for k, r in enumerate(rb) if r[1] == exit_b), None)
        return (ka, len(ra)) if ka is not None and ka == kb else None

    def by_repeat(self, k0: int, k1: int) -> Tuple[Optional[LoopChange], int]:
        """A block that repeats more times on one side, and the merged row
        where its first copy starts (``k0`` when there is none)."""
        ia = [i for i, _ in self.pairs[k0:k1] if i is not None]
        ib = [j for _, j in self.pairs[k0:k1] if j is not None]
        if ia and ib:
            return None, k0
        X, Y, xs, y = ((self.A, self.B, ia, self.next_b[k0]) if ia else (self.B, self.A, ib, self.next_a[k0]))
        sx, sy = X.loop_sigs, Y.loop_sigs  # the blocks of a ModuleList loop repeat too
        unit_len = _period(sx[xs[0]:xs[-1] + 1])
        unit = sx[xs[0]:xs[0] + unit_len]
        inside = len(xs) // unit_len
        before = _copies_before(sx, xs[0], unit)
        cx = before + inside + _copies_after(sx, xs[-1] + 1, unit)
        cy = _copies_before(sy, y, unit) + _copies_after(sy, y, unit)
        if cx == cy or (cy == 0 and (inside < 2 or unit_len < 2)) or len(xs) > abs(cx - cy) * unit_len or \
                unit_len == 1 and (_one_statement(X, xs[0]) or is_engine_sum(X.nodes[xs[0]])):
            return None, k0  # as many copies (the others aligned elsewhere), one op twice where the
            #                  other side has none, more ops than the extra copies hold, or one op twice
            #                  from a line in no loop or from no line (the engine's gradient sums): no loop
        scope = call_scope(X, range(xs[0], xs[0] + unit_len))
        if self._total(X, scope, unit) == self._total(Y, scope, unit):
            return None, k0  # as many copies in all, in another order (recursion): no loop ran more times
        src = X.nodes[xs[0]].source
        header = _while_read_by(X.nodes[xs[0]:xs[0] + unit_len])
        src, keyword = (header, "while") if header is not None else (src, None)
        calls = one_call(X, scope, xs[0], unit_len)
        if header is None and calls is None:
            src, keyword = _scope_loop(X, scope, X.nodes[xs[0]:xs[0] + unit_len]) or (src, None)
        if calls is not None:
            cx, cy, calls = block_counts(X, Y, scope, calls, cx, cy)
        a, b = (cx, cy) if X is self.A else (cy, cx)
        reached = self.next_a if X is self.A else self.next_b
        start = bisect.bisect_left(reached, xs[0] - before * unit_len + 1) - 1  # the merged row of that op
        return LoopChange(src.file if src else "?", src.line if src else 0, src.function if src else "?",
                          a, b, "repeat", unit_len, keyword, calls=calls), start

    def by_runs(self, k0: int, k1: int) -> Optional[LoopChange]:
        """The loop whose k-th run (of the runs its statement made in the pass:
        a `while` inside a `for`) holds the hunk's ops on one side, when the
        k-th runs of A and B took other counts. Runs are told apart by their
        exit reads, so both sides must have as many."""
        for col, X, Y in ((0, self.A, self.B), (1, self.B, self.A)):
            xs = [p[col] for p in self.pairs[k0:k1] if p[col] is not None]
            if not xs:
                continue
            for sig in X.reads:
                rx, ry = self._runs(X, sig), self._runs(Y, sig)
                k = next((k for k, (first, exit_, _) in enumerate(rx)
                          if first <= xs[0] and (exit_ is None or xs[-1] <= exit_)), None)
                if k is None or len(rx) != len(ry) or rx[k][2] == ry[k][2]:
                    continue
                src = X.nodes[rx[k][0]].source
                file, line = (src.file, src.line) if src else ("?", 0)
                a, b = (rx[k][2], ry[k][2]) if col == 0 else (ry[k][2], rx[k][2])
                if keyword_at(file, line) == "while" and first_test_reads_nothing(file, line):
                    a, b = a + 1, b + 1
                elif not linecache.getlines(file):  # (not readable here: its reads, as _loop_change says)
                    ea, eb = (rx[k][1], ry[k][1]) if col == 0 else (ry[k][1], rx[k][1])
                    return _unreadable(file, line, src.function if src else "?", a, b, ea, eb, X.nodes[rx[k][0]],
                                       (k, len(rx)) if len(rx) > 1 else None)
                body, ended = self._body_loop(X, rx[k][0], [(S, r[1]) for S, rs in ((X, rx), (Y, ry)) for r in rs],
                                              [(S, _reads_of(S, sig, r)) for S, rs in ((X, rx), (Y, ry)) for r in rs])
                if body is not None and not ended:
                    continue  # (each iteration's branch)
                return LoopChange(file, line, src.function if src else "?", a, b, "witness", 0,
                                  keyword_at(file, line), (k, len(rx)) if len(rx) > 1 else None)
        return None

    def _runs(self, side: Side, sig: Sig) -> List[Tuple[int, Optional[int], int]]:
        """The runs of the scalar reads at ``sig``: (first read, exit read, repeats
        before it), the exit being a read of the other value than the one that
        both sides read most there (``while``'s True); cached."""
        key = (id(side), sig)
        if key not in self._cache:
            reads = side.reads.get(sig, [])
            if not reads or side.nodes[reads[0]].witness.shape is not None:
                self._cache[key] = []
                return []
            seen = Counter(side.loop_keys[i] for i in reads) + Counter(
                o.loop_keys[i] for o in (self.A, self.B) if o is not side for i in o.reads.get(sig, []))
            rep = seen.most_common(1)[0][0]
            last = side.nodes[reads[-1]].source
            ends = {o.loop_keys[o.reads[sig][-1]] for o in (self.A, self.B) if o.reads.get(sig)}
            if len(seen) == 2 and len(ends) == 1 and last is not None and keyword_at(last.file, last.line) == "while":
                # (a `while` whose runs often did 0 iterations reads its exit value most: its last read is one;
                # not where the two passes' last reads differ: `while n < cap and x.norm() > 1:` left by `n`)
                rep = next(k for k in seen if k not in ends)
            runs: List[Tuple[int, Optional[int], int]] = []
            first, count = None, 0
            for i in reads:
                first = i if first is None else first
                if side.loop_keys[i] == rep:
                    count += 1
                    continue
                runs.append((first, i, count))
                first, count = None, 0
            if first is not None:
                runs.append((first, None, count))
            self._cache[key] = runs
        return self._cache[key]

    def _total(self, side: Side, scope: Optional[Tuple[str, int]], unit: Sequence[Sig]) -> int:
        """Copies of ``unit`` (one after another or apart) among the ops inside
        the module call ``scope`` (path, call; ``None``: the whole pass)."""
        key = (id(side), scope, tuple(unit))
        if key not in self._cache:
            inside = calls_under(side, scope)
            seq = [s for s, n in zip(side.loop_sigs, side.nodes) if inside is None or n.module in inside]
            count, t, p = 0, 0, len(unit)
            while t + p <= len(seq):
                if seq[t] == unit[0] and list(seq[t:t + p]) == list(unit):
                    count, t = count + 1, t + p
                else:
                    t += 1
            self._cache[key] = count
        return self._cache[key]


def _unreadable(file: str, line: int, function: str, a: int, b: int, exit_a: Optional[int], exit_b: Optional[int],
                read: "Node", run: Optional[Tuple[int, int]]) -> LoopChange:
    """A loop whose source is not readable here, counted by its reads: ``a``/``b``
    repeats, plus each side's exit read (a header reads once more than it runs, an
    exit in its body as often); no count for a number read (-1)."""
    known = isinstance(read.witness.value, bool)
    return LoopChange(file, line, function, a + (exit_a is not None) if known else -1,
                      b + (exit_b is not None) if known else -1, "witness", 0, run=run, readable=False)


def _scope_loop(side: Side, scope: Optional[Tuple[str, int]], unit: Sequence["Node"]
                ) -> Optional[Tuple["Source", str]]:
    """The loop of the module call ``scope`` whose iteration ``unit`` is, when its
    first op is another module's (an inner module's loop would be named: the block
    at its line, counted by the outer loop): the ``for``/``while`` around the first
    op at a line of the scope module's own code."""
    if scope is None:
        return None
    kind = next((m.type for m in side.graph.modules if (m.path, m.call) == scope), None)
    own = next((n.source for n in unit if n.source is not None and kind is not None
                and n.source.function.startswith(f"{kind}.")), None)
    span = loop_span(own.file, own.line) if own is not None else None
    if span is None or unit[0].source == own:
        return None
    return replace(own, line=span[0]), span[2]


def _while_read_by(unit: Sequence["Node"]) -> Optional["Source"]:
    """The ``while`` header whose one iteration the repeated ``unit`` is, when its
    condition reads data each time without a read that ends it (``while k <
    n.item():``): one read at that line, and every op of its function in the
    unit inside that ``while`` (not a ``for`` whose body holds a ``while``)."""
    heads = [n.source for n in unit if n.witness is not None and n.source is not None and
             while_end(n.source.file, n.source.line)]
    if len(heads) != 1:
        return None
    head, last = heads[0], while_end(heads[0].file, heads[0].line)
    inside = all(head.line <= n.source.line <= last for n in unit
                 if n.source is not None and (n.source.file, n.source.function) == (head.file, head.function))
    return head if inside else None


def _one_statement(side: Side, i: int) -> bool:
    """Is view op ``i`` repeated by its own line (``x[idx] = v.view(1, -1)``:
    indexing views the value again), not by a loop: its neighbours of the same
    signature are in the same module call, at a line in no ``for``/``while``?
    (Other ops repeat at such a line when a caller's loop calls its function.)"""
    n = side.nodes[i]
    if "view" not in n.tags or n.source is None or in_loop(n.source.file, n.source.line) is not False:
        return False
    return all(side.nodes[k].module == n.module for k in (i - 1, i + 1)
               if 0 <= k < len(side.nodes) and side.loop_sigs[k] == side.loop_sigs[i])


def _run(side: Side, sig: Sig, pos: int, rep: Any) -> Tuple[List[int], Optional[int]]:
    """The reads at ``sig`` that repeated ``rep`` up to the loop exit at or
    after ``pos`` (the first read there with another value), within one
    module call: ``while k > 0`` reading True, True, True, False gives 3.
    Returns the run and the exit read (``None`` when the graph ends first)."""
    reads = side.reads.get(sig, [])
    at = bisect.bisect_left(reads, pos)
    while at < len(reads) and side.loop_keys[reads[at]] == rep:
        at += 1
    exit_ = reads[at] if at < len(reads) else None
    mod = side.nodes[exit_].module if exit_ is not None else (side.nodes[reads[at - 1]].module if at else None)
    run: List[int] = []
    k = at - 1
    while k >= 0 and side.loop_keys[reads[k]] == rep and side.nodes[reads[k]].module == mod:
        run.append(reads[k])
        k -= 1
    run.reverse()
    return run, exit_


def _reads_of(side: Side, sig: Sig, run: Tuple[int, Optional[int], int]) -> List[int]:
    """The reads of a run (``LoopFinder._runs``: first read, exit read, repeats), its exit included."""
    reads = side.reads[sig]
    at = reads.index(run[0])
    return reads[at:at + run[2] + (run[1] is not None)]


def _period(seq: Sequence[Any]) -> int:
    n = len(seq)
    for p in range(1, n + 1):
        if n % p == 0 and all(seq[t] == seq[t % p] for t in range(p, n)):
            return p
    return n


def _copies_before(seq: Sequence[Any], end: int, unit: Sequence[Any]) -> int:
    p, c = len(unit), 0
    while end - p * (c + 1) >= 0 and list(seq[end - p * (c + 1):end - p * c]) == list(unit):
        c += 1
    return c


def _copies_after(seq: Sequence[Any], start: int, unit: Sequence[Any]) -> int:
    p, c = len(unit), 0
    while start + p * (c + 1) <= len(seq) and list(seq[start + p * c:start + p * (c + 1)]) == list(unit):
        c += 1
    return c


