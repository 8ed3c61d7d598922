"""Why ops only one pass ran, when an `if` around them tests a name: the read
kept in that name (``has_pad = bool(...)`` ... ``if has_pad:``), the latest
before the hunk in that function, decided them, whichever read is nearer; or
the `if` read tensor data itself (``if best > 1.5:``). The `if`s of each line
of the hunk's one-sided ops are read (two flags read up front, two `if`s).
``grad_mode_if``: the user's `if` on grad mode around them.

A mixin of ``explain.Causes``: it reads that class's alignment tables
(``pairs``, ``differing``) and its ``witness_change``.
"""
from __future__ import annotations

import bisect
from dataclasses import replace
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .readchange import WitnessChange, decisive
from .sourcetext import grad_mode_test, guard_names, names_assigned
from .textform import where

if TYPE_CHECKING:  # pragma: no cover
    from .align import Pair
    from .classify import OpPair
    from .ir import Node
    from .side import Side

_GUARDS_READ = 8  # the lines of a hunk's one-sided ops whose `if`s are read for a kept read


class GuardCauses:
    A: "Side"
    B: "Side"
    pairs: Sequence["Pair"]
    differing: List[int]

    def witness_change(self, i: int, j: int) -> WitnessChange:  # pragma: no cover (Causes's)
        raise NotImplementedError

    def _named_by_guard(self, k0: int, k1: int, nearest: Optional[WitnessChange]) -> Optional[WitnessChange]:
        """The read kept in the name that the `if` around the hunk's first op
        tests (``has_pad = bool(...)`` ... ``if has_pad:``), the latest before
        the hunk in that function, when it differs: it decided the hunk,
        whichever read is nearer. Else ``nearest``. The `if`s around the
        hunk's other lines, outside the branches already found, name theirs
        too (``if big:`` ... ``if spiky:``, two flags read up front), as
        deciding other ops of the hunk."""
        found: Dict[int, Tuple[bool, Optional[WitnessChange]]] = {}  # row of the read -> (weak, change to name)
        branches: List[Tuple[str, str, int, int]] = []  # (file, function, first, last line) of the `if`s found
        seen = set()
        for i, j in self.pairs[k0:k1]:
            if i is not None and j is not None:
                continue
            first, other = (self.A.nodes[i], self.B) if j is None else (self.B.nodes[j], self.A)
            at = first.source
            if at is None or (at.file, at.line) in seen or len(seen) == _GUARDS_READ or any(
                    (at.file, at.function) == b[:2] and b[2] <= at.line <= b[3] for b in branches):
                continue  # (an op in a branch found: what decided that branch decided it)
            seen.add((at.file, at.line))
            got = self._guard_read(first, other, k0, nearest)
            if got is None and not found:
                return nearest  # (the hunk's first op has no `if` of its own that a kept read decided)
            if got is not None:
                found.setdefault(got[0], got[1:3])
                branches.append((at.file, at.function, *got[3]))
        if not found:
            return nearest
        rows = list(found)  # (the first op's first)
        weak, named = found[rows[0]]
        main = named or nearest
        others = tuple(w for w in (found[e][1] or self.witness_change(*self.pairs[e]) for e in rows[1:])
                       if w.short() != main.short())
        if named is None:  # (the `if` read tensor data itself: that read)
            return replace(nearest, others=others)
        same = nearest is not None and nearest.node_a == named.node_a  # (then no other read is as likely)
        return replace(nearest if same else named, also=(), others=others, weak=weak, merged=False, named=True)

    def _guard_read(self, first: "Node", other: Side, k0: int, nearest: Optional[WitnessChange]) -> Optional[
            Tuple[int, bool, Optional[WitnessChange], Tuple[int, int]]]:
        """For an op only one side ran: (row, weak, change, the lines of its
        branch) of the read kept in the name its `if` tests (``_named_by_guard``);
        change None when that `if` read tensor data itself and it is ``nearest``
        (``if best > 1.5:``); None when no `if` tests a name, the other pass ran
        its branch too, or no read before ``k0`` went into the name."""
        names, lo, hi, test = guard_names(first)
        at = first.source
        if not names or other.ran_lines(at.file, at.function, lo, hi):
            return None  # (no `if` tests a name, or the other pass ran its branch too: it went the same way)
        if nearest is not None and (nearest.file, nearest.function) == (at.file, at.function) \
                and test <= nearest.line < lo:
            row = next((e for e in self.differing if self.A.nodes[self.pairs[e][0]].id == nearest.node_a), k0)
            return row, False, None, (lo, hi)
        # (a float kept, compared; or a helper's read it returned: `flag = check(x)`)
        kept = [e for e in reversed(self.differing[:bisect.bisect_left(self.differing, k0)])
                if names_assigned(self.A.nodes[self.pairs[e][0]], at.file, at.function) & names]
        if not kept:
            return None
        e, read = kept[0], self.A.nodes[self.pairs[kept[0]][0]]
        # `flag, n = check(x)`: which of the helper's reads went into the tested name is not known; a bool, for
        # `if flag:`, likeliest
        several = read.source is not None and (read.source.file, read.source.function) != (at.file, at.function) \
            and len(names_assigned(read, at.file, at.function)) > 1
        if several:
            e = next((x for x in kept if self._bools(x)), e)
        i, j = self.pairs[e]
        read = self.A.nodes[i]
        # a bool or a count kept in the name decided it; a float kept in it is compared to something
        # (`if loss < best:`), maybe re-assigned first: named, still a guess
        weak = not (decisive(read.witness) and decisive(self.B.nodes[j].witness)) or (several and not self._bools(e))
        return e, weak, self.witness_change(i, j), (lo, hi)

    def _bools(self, e: int) -> bool:
        i, j = self.pairs[e]
        return isinstance(self.A.nodes[i].witness.value, bool) and isinstance(self.B.nodes[j].witness.value, bool)


def grad_mode_if(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[str]:
    """`file:line` of the user's `if` that tests grad mode around the first op only
    one side ran, when the other pass ran nothing in its branch (else it went the
    same way, and something inside it decided the op)."""
    p = next((p for p in rows if p.status in ("only_a", "only_b")), None)
    if p is None:
        return None
    n, other = (p.a, B) if p.status == "only_a" else (p.b, A)
    found = grad_mode_test(n)
    if found is None:
        return None
    own_line = found[0] == n.source.line  # (`h * 2 if torch.is_grad_enabled() else h`: whichever ran there)
    if not own_line and other.ran_lines(n.source.file, n.source.function, found[1], found[2]):
        return None
    return where(n.source.file, found[0])
