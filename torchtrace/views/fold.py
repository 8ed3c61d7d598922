"""Fold repeated structure: runs of identical sibling module calls
("GPT2Block × 12") and iterations of Python loops ("loop model.py:31 × 50").

Two pieces of a graph are *the same* when their structural signatures are
equal: the same ops in the same order, the same internal dataflow (by
position, not id), the same tensor types, module types and nesting, the same
witness values. A run folds when its pieces follow each other, are the same,
and either form a chain (piece k+1 reads what piece k produced: a recurrence,
a stack of layers) or repeat at least ``UNCHAINED_MIN`` times. Two equal
neighbours that are not chained (query and key projections) stay apart.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Union

from ..ir import Node
from ..textform import type_str
from .groups import Group
from .select import Selection

Item = Union[Node, Group]
MAX_PERIOD = 256     # longest loop body (in items) looked for
UNCHAINED_MIN = 4    # independent repeats (heads, list comprehensions) fold from here
# ops signed while looking for runs: a flat list of a thousand optimizer ops (one AdamW step with
# clipping of a small model) signed 2.4 million, 6 s. One container's search (a module call's
# children, the top level with a whole optimizer step) stops past SEARCH_MAX, so that it cannot
# starve the others' (the blocks of the forward and backward); all of a view's stop past WORK_MAX
SEARCH_MAX = 100_000
WORK_MAX = 400_000


@dataclass(frozen=True)
class Run:
    """``reps`` consecutive pieces of ``period`` items each, from ``start``."""

    start: int
    period: int
    reps: int

    @property
    def stop(self) -> int:
        return self.start + self.period * self.reps


def item_nodes(item: Item) -> Sequence[Node]:
    return item.nodes if isinstance(item, Group) else (item,)


class Folder:
    """Finds runs; caches signatures per group (they do not depend on depth)."""

    def __init__(self, sel: Selection) -> None:
        self.sel = sel
        self._intern: Dict[tuple, int] = {}
        self._group_sig: Dict[str, int] = {}
        self._pieces: Dict[tuple, int] = {}  # ids of a piece's items -> its signature
        self.work = 0  # ops signed so far (WORK_MAX bounds the search for runs)
        self._runs: Dict[str, List[Run]] = {}

    # -- signatures -----------------------------------------------------
    def _sig_of_nodes(self, head: tuple, nodes: Sequence[Node]) -> int:
        sel, g = self.sel, self.sel.graph
        self.work += len(nodes)
        local = {n.id: k for k, n in enumerate(nodes)}
        mods: Dict[Optional[str], int] = {}
        toks: List[tuple] = [head]
        for n in nodes:
            ins = []
            for nid, vid in sel.inputs(n):
                if nid is not None and nid in local:
                    ins.append(local[nid])
                else:  # from outside: a traced input and an activation are alike here
                    v = g.value(vid)
                    ins.append((v.role if v.role in ("param", "buffer", "constant") else "x", type_str(v)))
            m = mods.setdefault(n.module, len(mods))
            mtype = g.module(n.module).type if n.module is not None else ""
            toks.append((n.op, n.phase, m, mtype, tuple(ins),
                         tuple(type_str(g.value(v)) for v in n.outputs),
                         None if n.witness is None else n.witness.describe()))
        key = tuple(toks)
        return self._intern.setdefault(key, len(self._intern))

    def group_sig(self, grp: Group) -> int:
        got = self._group_sig.get(grp.key)
        if got is None:
            got = self._group_sig[grp.key] = self._sig_of_nodes(("group", grp.type, grp.phase), grp.nodes)
        return got

    def _token(self, item: Item) -> tuple:
        """What equal items share: a group's signature; an op's name, phase, line and output
        types (a piece's signature holds them too: an optimizer's per-parameter ops of other
        shapes are no candidates to sign, the most of its search)."""
        if isinstance(item, Group):
            return ("g", self.group_sig(item))
        src, g = item.source, self.sel.graph
        return ("o", item.op, item.phase, src.file if src else None, src.line if src else None,
                tuple(type_str(g.value(v)) for v in item.outputs))

    def _piece_sig(self, items: Sequence[Item]) -> int:
        key = tuple(map(id, items))  # (the items live as long as the view is built)
        got = self._pieces.get(key)
        if got is None:  # candidates overlap: a piece is asked for again by every period tried around it
            nodes = [n for it in items for n in item_nodes(it)]
            head = ("piece",) + tuple(("g", it.type, it.depth) if isinstance(it, Group) else ("o",) for it in items)
            got = self._pieces[key] = self._sig_of_nodes(head, nodes)
        return got

    # -- runs -------------------------------------------------------------
    def runs(self, items: Sequence[Item], cache_key: Optional[str] = None) -> List[Run]:
        """Non-overlapping runs among ``items`` (a container's children),
        greedily left to right, each the longest cover found at its start."""
        if cache_key is not None and cache_key in self._runs:
            return self._runs[cache_key]
        tokens = [self._token(it) for it in items]
        ids: Dict[tuple, int] = {}
        tok = [ids.setdefault(t, len(ids)) for t in tokens]
        where: Dict[int, List[int]] = {}
        for k, t in enumerate(tok):
            where.setdefault(t, []).append(k)
        out: List[Run] = []
        i, n = 0, len(items)
        stop = min(self.work + SEARCH_MAX, WORK_MAX)
        while i < n - 1 and self.work < stop:
            best: Optional[Run] = None
            later = where[tok[i]]
            for j in later[bisect_right(later, i):]:
                p = j - i
                if p > MAX_PERIOD or i + 2 * p > n:
                    break
                if i and tok[i - 1] == tok[i + p - 1] and self._piece_sig(items[i - 1:i]) == self._piece_sig(
                        items[i + p - 1:i + p]):
                    continue  # a rotation of the pattern at i-1, which was not a loop (q/k/v reshapes)
                reps = 1
                while i + (reps + 1) * p <= n and tok[i + reps * p: i + (reps + 1) * p] == tok[i: i + p]:
                    reps += 1
                if reps < 2 or (best is not None and p * reps <= best.period * best.reps):
                    continue
                run = self._verify(items, i, p, reps)
                if run is not None and (best is None or run.period * run.reps > best.period * best.reps):
                    best = run
            if best is None:
                i += 1
            else:
                out.append(best)
                i = best.stop
        if cache_key is not None:
            self._runs[cache_key] = out
        return out

    def _verify(self, items: Sequence[Item], i: int, p: int, reps: int) -> Optional[Run]:
        """The longest prefix of the candidate whose pieces are structurally
        equal and chained (or numerous enough), or None."""
        pieces = [items[i + k * p: i + (k + 1) * p] for k in range(reps)]
        if p == 1 and isinstance(items[i], Group):
            same = reps  # the token already is the group's full signature
        else:
            first = self._piece_sig(pieces[0])
            same = 1
            while same < reps and self._piece_sig(pieces[same]) == first:
                same += 1
        if same < 2:
            return None
        chained = 1
        produced = _produced(pieces[0])
        while chained < same:
            nxt = pieces[chained]
            if not any(nid in produced for it in nxt for n in item_nodes(it) for nid, _ in self.sel.inputs(n)):
                break
            produced = _produced(nxt)
            chained += 1
        reps = max(chained if chained >= 2 else 0, same if same >= UNCHAINED_MIN else 0)
        return Run(i, p, reps) if reps else None


def _produced(piece: Sequence[Item]) -> Set[str]:
    return {n.id for it in piece for n in item_nodes(it)}
