"""Why aligned ops ran with other arguments, shapes or inputs (a diff's
"changed" hunk): the read that returned those values, the data-dependent
shape read, the `if` whose arm ran them, or -- hedged -- the nearest decisive
read before them when both passes ran the same ops since.

A mixin of ``explain.Causes``: it reads that class's alignment tables
(``pairs``, ``differing``, ``decisive``, ``one_sided``) and its
``witness_change``.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .readchange import WitnessChange
from .sourceblocks import code_of, file_lines, headers_around, line_text
from .sourcetext import _NAME, names_assigned, names_at

if TYPE_CHECKING:  # pragma: no cover
    from .align import Pair
    from .side import Side


class ChangedCauses:
    A: "Side"
    B: "Side"
    pairs: Sequence["Pair"]
    differing: List[int]
    decisive: List[int]
    one_sided: List[int]
    outside: Tuple[List[int], List[int]]

    def witness_change(self, i: int, j: int) -> WitnessChange:  # pragma: no cover (Causes's)
        raise NotImplementedError

    def adjacent(self, k0: int) -> Optional[WitnessChange]:
        """The decisive read that differs right before row ``k0``, no op between
        them: what skipped a step's backward (``if torch.isnan(loss).any():``)."""
        at = bisect.bisect_left(self.decisive, k0)
        e = self.decisive[at - 1] if at else None
        if e is None or e != k0 - 1:  # (an op between them: the read steered something else)
            return None
        return self.witness_change(*self.pairs[e])

    def arm(self, k0: int) -> Optional[WitnessChange]:
        """For ops that ran with other args from another line (``h * 2.0`` in one
        arm of an `if`, ``h * 3.0`` in the other): the decisive read before them
        that differs, read at the same line in both passes (lines that all moved
        are edited code, not a branch), with only the arm's other ops between
        them: ops both passes ran, each at another line (``self.c(h) * 2``)."""
        at = bisect.bisect_left(self.decisive, k0)
        if not at:
            return None
        e = self.decisive[at - 1]
        arm = self._lines(k0)  # (the changed op's statement, `self.c(h) * 2`, in A and in B)
        for i, j in self.pairs[e + 1:k0]:
            a = self.A.nodes[i].source if i is not None else None
            b = self.B.nodes[j].source if j is not None else None
            if a is None or b is None or (a.file, a.line) == (b.file, b.line) or arm != (
                    (a.file, a.line), (b.file, b.line)):
                return None  # (an op between them not of the changed op's statement in each pass: not the arm's)
        w = self.witness_change(*self.pairs[e])
        a, b = self.A.graph.node(w.node_a).source, self.B.graph.node(w.node_b).source
        return w if a is not None and b is not None and a.line == b.line else None

    def steered(self, k0: int, changed: Sequence[Any]) -> Optional[WitnessChange]:
        """For ops that read other tensors or ran with other args at one line
        (``best = cands[int(s.argmax())]``, ``scale = 2.0 if ... else 3.0``): the
        nearest decisive read that differs before them, when both passes ran the
        same ops since -- the likeliest cause, hedged (it may have steered
        nothing that ran an op). Not for an optimizer's ops, nor its reads (Adam's
        step count): its floats change every step."""
        if any(p.a.phase == "optimizer" for p in changed):
            return None
        decisive_ = self.outside[1]
        at = bisect.bisect_left(decisive_, k0)
        if not at:
            return None
        e = decisive_[at - 1]
        if self.one_sided[e] != self.one_sided[k0]:
            return None
        read = self.A.nodes[self.pairs[e][0]]
        at_ops = {(p.a.source.file, p.a.source.line) for p in changed if p.a.source is not None}
        words = {w for p in changed for w in _NAME.findall(line_text(p.a))}
        if read.source is None or (read.source.file, read.source.line) not in at_ops and not (
                names_assigned(read) & words):
            return None  # (its value reaches none of these ops' lines: it steered something else)
        return replace(self.witness_change(*self.pairs[e]), weak=True, steered=True)

    def _lines(self, k: int) -> Optional[Tuple[Tuple[str, int], Tuple[str, int]]]:
        """((file, line) in A, in B) of the ops aligned at row ``k`` (None: not both known)."""
        i, j = self.pairs[k]
        a = self.A.nodes[i].source if i is not None else None
        b = self.B.nodes[j].source if j is not None else None
        return None if a is None or b is None else ((a.file, a.line), (b.file, b.line))

    def shape_read(self, k0: int, k1: int) -> Optional[WitnessChange]:
        """For a hunk of changed shapes: the data-dependent shape read
        (``nonzero``, boolean indexing...) that differs, at the hunk's first
        row or the nearest before it (a read after changed ops did not change
        them: both follow from something earlier, such as the inputs)."""
        inside = [e for e in self.differing if e == k0] + \
            list(reversed([e for e in self.differing if e < k0]))
        for e in inside:
            i, j = self.pairs[e]
            assert i is not None and j is not None
            if self.A.nodes[i].witness.shape is not None and self.B.nodes[j].witness.shape is not None:
                return self.witness_change(i, j)
        return None

    def passed_on(self, k0: int, changed: Sequence[Any]) -> Optional[WitnessChange]:
        """For changed ops whose arguments differ: the nearest read before them
        that returned exactly those values (``k = int(mask.sum())`` read 3 in A,
        2 in B, then ``h.topk(k)``: k=3 -> 2), whatever other reads lie between;
        else the nearest number read into a name that such an op's line uses
        (``n = int(...)``, then ``h[:, :1 + n % 4]``: end=3 -> 1)."""
        wanted: Dict[Tuple[Any, Any], str] = {}
        used: Dict[str, Tuple[str, Any]] = {}  # a name on the line of an op whose number args differ -> (arg, op)
        for p in changed:
            if p.a is not None and p.b is not None:
                for key, va in p.a.args.items():
                    for pair in _numbers_changed(va, p.b.args.get(key)):
                        wanted.setdefault(pair, f"`{p.a.short_op}`'s {key}")
                        for name in _NAME.findall(_TESTS.sub(" ", code_of(line_text(p.a)))) if p.a.source else ():
                            used.setdefault(name, (wanted[pair], p.a))  # (not those a test reads: `... if n > 0 else`)
        if not wanted:
            return None
        before = list(reversed(self.differing[:bisect.bisect_left(self.differing, k0)]))
        for e in before:
            i, j = self.pairs[e]
            pair = (self.A.nodes[i].witness.value, self.B.nodes[j].witness.value)
            if number(pair[0]) and number(pair[1]) and pair in wanted:
                return replace(self.witness_change(i, j), passed=wanted[pair])
        for e in before:
            i, j = self.pairs[e]
            read = self.A.nodes[i]
            name = next((x for x in sorted(names_assigned(read)) if x in used and _kept(read, x, used[x][1])), None)
            if name is not None and number(read.witness.value) and number(self.B.nodes[j].witness.value):
                return replace(self.witness_change(i, j), passed=f"`{name}`, in {used[name][0]}")
        return None


def _kept(read: Any, name: str, op: Any) -> bool:
    """Does ``name``, assigned at the line of ``read``, still hold a value made from
    it at the line of ``op``: the same function, and no line between them assigns it
    anew (``n = k + 1``; not ``n = n - 1``, nor ``n = 3`` under ``if n > 3:``)?"""
    a, b = read.source, op.source
    if a is None or b is None or (a.file, a.function) != (b.file, b.function) or a.line >= b.line:
        return False
    lines = file_lines(a.file, b.line)
    return lines is not None and not any(
        name in names_at(lines[k]) and _anew(lines, k, name) for k in range(a.line, b.line - 1))


def _anew(lines: List[str], k: int, name: str) -> bool:
    """Does the assignment at line index ``k`` give ``name`` a value not made from it:
    ``name`` is neither on its right-hand side nor tested by the ``if`` it is in?"""
    rhs = code_of(lines[k]).split("=", 1)[-1]
    header = next(headers_around(lines, k + 1), None)
    return name not in _NAME.findall(rhs) and (header is None or name not in _NAME.findall(code_of(header[1])))


# the tests on a line: a conditional expression's (`h[:, :k] if n > 0 else h`), a one-line `if`'s
_TESTS = re.compile(r"\bif\b[^\]]*?\belse\b|^\s*(?:if|elif|while)\b[^:]*:")


def number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _numbers_changed(a: Any, b: Any) -> List[Tuple[Any, Any]]:
    """The (A, B) numbers that differ between two argument values, element by
    element in lists of one length (``size=[3, -1]`` against ``[2, -1]``)."""
    if number(a) and number(b):
        return [(a, b)] if a != b else []
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [pair for x, y in zip(a, b) for pair in _numbers_changed(x, y)]
    return []
