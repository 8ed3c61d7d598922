"""Why two aligned graphs differ: the witness that decided a hunk, and loop
counts.

Every record here is a frozen dataclass with a ``mirror()`` (A and B swapped)
and a ``describe()`` that writes the sentence shown to users; the sentences
are built from the fields, so a mirrored diff reads correctly.

Rules (DESIGN.md, "diff"):

* a hunk whose ops contain scalar reads at one line that ran a different
  number of times (``while k > 0`` reading True 3x then False, against 5x) is
  a loop count change: "`while` at `model.py:57` ran 3x in A, 5x in B"; an
  `if` read inside it that differs is named with it;
* otherwise the nearest aligned witness before the hunk whose value differs
  explains it: "`model.py:42` read True in A, False in B". A float read (a
  logged loss differs every step) gives way to an earlier decisive read
  (``decisive``), unless that read's branch already showed as ops only in A
  or B before the float read: then the float read, compared in Python
  (``if peak > 1.5``), is the nearer cause;
* a run of ops that repeats a block just before it, without a witness at
  its line, is a Python-level loop ("the block at `m.py:9` ran 2x in A, 3x in B");
  the read that explains it is the nearest one before the loop's first pass.
"""
from __future__ import annotations

import bisect
import linecache
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .align import Pair, Side, Sig
from .textform import shape_str

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph, Witness

ARROW = "\u2192"
TIMES = "\u00d7"


# -- records ---------------------------------------------------------------

def plural(k: int, word: str) -> str:
    """``1 op``, ``2 ops``, ``3 hunks``, ``2 witness reads``."""
    return f"{k} {word}{'' if k == 1 else ('es' if word.endswith(('ch', 'sh', 's', 'x')) else 's')}"


def where(file: str, line: int) -> str:
    return f"`{file.replace(chr(92), '/').rsplit('/', 1)[-1]}:{line}`"


def read_str(w: "Witness") -> str:
    if w.shape is not None:
        return "shape " + shape_str(w.shape)
    v = w.value
    if isinstance(v, float):
        return f"{v:.6g}"
    return repr(v)


@dataclass(frozen=True)
class WitnessChange:
    """A data read at the same line (the same aligned op) that returned
    different data in A and B: the branch it steered went different ways."""

    file: str
    line: int
    function: str
    a: "Witness"
    b: "Witness"
    node_a: str
    node_b: str
    weak: bool = False
    call: Optional[Tuple[str, int, int]] = None  # a module called more than once: (path, call in A, call in B)

    @property
    def where(self) -> str:
        return where(self.file, self.line)

    def describe(self) -> str:
        text = f"{self.where}{self._call()} read {read_str(self.a)} in A, {read_str(self.b)} in B"
        return text + " (a float: the nearest read that differs, maybe not the cause)" if self.weak else text

    def _call(self) -> str:
        """" (2nd call of `gate`)": which call of a module called several times per pass read it."""
        if self.call is None:
            return ""
        path, a, b = self.call
        path = path or "<root>"
        if a == b:
            return f" ({_ordinal(a + 1)} call of `{path}`)"
        return f" (call {a + 1} of `{path}` in A, {b + 1} in B)"

    def mirror(self) -> "WitnessChange":
        call = (self.call[0], self.call[2], self.call[1]) if self.call else None
        return replace(self, a=self.b, b=self.a, node_a=self.node_b, node_b=self.node_a, call=call)

    def to_dict(self) -> Dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function,
                "a": _witness_dict(self.a), "b": _witness_dict(self.b),
                "node_a": self.node_a, "node_b": self.node_b, "weak": self.weak,
                "call": list(self.call) if self.call else None}


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def repeated_call(g: "Graph", mid: Optional[str], calls: Dict[str, int]) -> Optional[Tuple[str, int]]:
    """The innermost module call around ``mid`` whose module the pass called
    more than once (``calls``: calls per path), as (path, call index)."""
    while mid is not None:
        m = g.module(mid)
        if calls.get(m.path, 0) > 1:
            return m.path, m.call
        mid = m.parent
    return None


def decisive(w: "Witness") -> bool:
    """A read that steers control flow by itself: a bool (``if``/``while``),
    an int or an integral float (a count), a data-dependent shape. Other
    floats (a logged loss) differ every step and decide nothing on their own."""
    if w.shape is not None or not isinstance(w.value, float):
        return True
    return w.value.is_integer()


@dataclass(frozen=True)
class LoopChange:
    """A loop that ran a different number of times. ``via="witness"``: the
    loop condition read tensor data at ``line`` (``count`` = reads before the
    exit read); ``via="repeat"``: a block of ``period`` ops starting at ``line``
    repeats (a Python-level loop, no tensor read at its condition)."""

    file: str
    line: int
    function: str
    a: int
    b: int
    via: str
    period: int
    keyword: Optional[str] = None

    def describe(self) -> str:
        if self.via == "witness":
            head = f"`{self.keyword}` at {where(self.file, self.line)}" if self.keyword else \
                f"the loop at {where(self.file, self.line)}"
        else:
            head = f"the block at {where(self.file, self.line)} ({plural(self.period, 'op')})"
        return f"{head} ran {self.a}{TIMES} in A, {self.b}{TIMES} in B"

    def mirror(self) -> "LoopChange":
        return replace(self, a=self.b, b=self.a)

    def to_dict(self) -> Dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function, "a": self.a, "b": self.b,
                "via": self.via, "period": self.period, "keyword": self.keyword}


def _witness_dict(w: "Witness") -> Dict[str, Any]:
    return {"shape": list(w.shape)} if w.shape is not None else {"value": w.value}


# -- causes of a structural hunk -------------------------------------------

class Causes:
    """Finds the witness and loop behind each hunk of one alignment."""

    def __init__(self, A: Side, B: Side, pairs: Sequence[Pair]) -> None:
        self.A, self.B, self.pairs = A, B, pairs
        # merged positions of aligned witness pairs whose reads differ, ascending
        self.differing: List[int] = [
            e for e, (i, j) in enumerate(pairs)
            if i is not None and j is not None and A.wkeys[i] is not None and A.wkeys[i] != B.wkeys[j]]
        self.decisive: List[int] = [e for e in self.differing if decisive(A.nodes[pairs[e][0]].witness)
                                    and decisive(B.nodes[pairs[e][1]].witness)]
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

    def witness_change(self, i: int, j: int) -> WitnessChange:
        na, nb = self.A.nodes[i], self.B.nodes[j]
        src = na.source or nb.source
        ca = repeated_call(self.A.graph, na.module, self.A.calls)
        cb = repeated_call(self.B.graph, nb.module, self.B.calls)
        call = None
        if ca is not None or cb is not None:
            path = (ca or cb)[0]
            call = (path, ca[1] if ca and ca[0] == path else 0, cb[1] if cb and cb[0] == path else 0)
        return WitnessChange(src.file if src else "?", src.line if src else 0, src.function if src else "?",
                             na.witness, nb.witness, na.id, nb.id, call=call)

    def explain(self, k0: int, k1: int) -> Tuple[Optional[WitnessChange], Optional[LoopChange]]:
        """The witness and the loop behind hunk ``k0:k1``. An `if` read inside
        the hunk is not a loop (a loop around it ran on: an early exit read True
        at once in A, False first in B): it is the witness, and a `while` read
        inside the same hunk, if any, the loop (an iteration more, whose `if`
        went the other way)."""
        branch: Optional[WitnessChange] = None
        for w, loop in self._loops_by_witness(k0, k1):
            if loop.keyword not in _BRANCHES:
                return branch or w, loop
            branch = branch or w
        if branch is not None:
            return branch, None
        loop, start = self._loop_by_repeat(k0, k1)
        # a loop's count is decided before its first pass (``for c in torch.unique(y)``), not by the
        # reads its earlier passes made (``h[y == c]``): those are named only when nothing before differs
        witness = self._nearest_before(min(start, k0)) or self._nearest_before(k0) or self._inside(k0, k1)
        return witness, loop

    def shape_read(self, k0: int, k1: int) -> Optional[WitnessChange]:
        """For a hunk of changed shapes: the data-dependent shape read
        (``nonzero``, boolean indexing...) that differs, inside the hunk or
        the nearest before it."""
        inside = [e for e in self.differing if k0 <= e < k1] + \
            list(reversed([e for e in self.differing if e < k0]))
        for e in inside:
            i, j = self.pairs[e]
            assert i is not None and j is not None
            if self.A.nodes[i].witness.shape is not None and self.B.nodes[j].witness.shape is not None:
                return self.witness_change(i, j)
        return None

    def _nearest_before(self, k0: int) -> Optional[WitnessChange]:
        """The nearest aligned read before the hunk that returned other data:
        a decisive one (see ``decisive``), unless ops only in A or B lie
        between it and a nearer float read; else that float read, marked
        ``weak``."""
        at = bisect.bisect_left(self.decisive, k0)
        e = self.decisive[at - 1] if at else None
        nearest = self.differing[bisect.bisect_left(self.differing, k0) - 1] if self.differing and \
            self.differing[0] < k0 else None
        if nearest is None:
            return None
        weak = e is None or (e != nearest and self.one_sided[nearest] > self.one_sided[e])
        i, j = self.pairs[nearest if weak else e]
        assert i is not None and j is not None
        return replace(self.witness_change(i, j), weak=weak)

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
        return None

    def _loops_by_witness(self, k0: int, k1: int) -> Iterator[Tuple[WitnessChange, LoopChange]]:
        """Lines inside the hunk whose scalar reads repeated a different number
        of times before their exit read. A data-dependent shape is no loop
        condition: ``out[mask] = expert(x[mask])`` reads [1,3] in two
        iterations of a loop whose `if mask.any()` decides them."""
        first: Dict[Sig, Any] = {}
        for i, j in self.pairs[k0:k1]:
            for side, x in ((self.A, i), (self.B, j)):
                if x is not None and side.wkeys[x] is not None and side.nodes[x].witness.shape is None:
                    first.setdefault(side.sigs[x], side.wkeys[x])
        for sig, rep in first.items():
            ra, exit_a = _run(self.A, sig, self.next_a[k0], rep)
            rb, exit_b = _run(self.B, sig, self.next_b[k0], rep)
            if len(ra) == len(rb):
                continue
            k = min(len(ra), len(rb))
            # the read that differs: a repeat on the longer side, the exit on the shorter
            ia = ra[k] if k < len(ra) else exit_a
            ib = rb[k] if k < len(rb) else exit_b
            if ia is None or ib is None:
                continue
            w = self.witness_change(ia, ib)
            yield w, LoopChange(w.file, w.line, w.function, len(ra), len(rb), "witness", 0, _keyword(w.file, w.line))

    def _loop_by_repeat(self, k0: int, k1: int) -> Tuple[Optional[LoopChange], int]:
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
        if cy == 0 and (inside < 2 or unit_len < 2):
            return None, k0  # one op twice where the other side has none: not evidence of a loop
        src = X.nodes[xs[0]].source
        a, b = (cx, cy) if X is self.A else (cy, cx)
        reached = self.next_a if X is self.A else self.next_b
        start = bisect.bisect_left(reached, xs[0] - before * unit_len + 1) - 1  # the merged row of that op
        return LoopChange(src.file if src else "?", src.line if src else 0, src.function if src else "?",
                          a, b, "repeat", unit_len), start


def _run(side: Side, sig: Sig, pos: int, rep: Any) -> Tuple[List[int], Optional[int]]:
    """The reads at ``sig`` that repeated ``rep`` up to the loop exit at or
    after ``pos`` (the first read there with another value), within one
    module call: ``while k > 0`` reading True, True, True, False gives 3.
    Returns the run and the exit read (``None`` when the graph ends first)."""
    reads = side.reads.get(sig, [])
    at = bisect.bisect_left(reads, pos)
    while at < len(reads) and side.wkeys[reads[at]] == rep:
        at += 1
    exit_ = reads[at] if at < len(reads) else None
    mod = side.nodes[exit_].module if exit_ is not None else (side.nodes[reads[at - 1]].module if at else None)
    run: List[int] = []
    k = at - 1
    while k >= 0 and side.wkeys[reads[k]] == rep and side.nodes[reads[k]].module == mod:
        run.append(reads[k])
        k -= 1
    run.reverse()
    return run, exit_

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


_BRANCHES = ("if", "elif", "assert")


def _keyword(file: str, line: int) -> Optional[str]:
    """``while``/``for``/``if`` when the source line is readable here, for wording only."""
    text = linecache.getline(file, line).strip()
    word = text.split(" ", 1)[0].rstrip(":") if text else ""
    return word if word in ("while", "for", "if", "elif", "assert") else None


def common_module(paths: Iterable[str]) -> str:
    """The deepest module path that contains all ``paths`` (``""`` = root)."""
    parts: Optional[List[str]] = None
    for p in paths:
        ps = p.split(".") if p else []
        if parts is None:
            parts = ps
        else:
            k = 0
            while k < len(parts) and k < len(ps) and parts[k] == ps[k]:
                k += 1
            parts = parts[:k]
    return ".".join(parts or [])
