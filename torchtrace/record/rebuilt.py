"""The autograd Nodes torch makes anew for a view read after an in-place write to
its base (``v = h[:, :3]; h.mul_(2); v * 3``: ``AsStridedBackward0``), joined to the
view op that made the view. Their sequence numbers say which op read them, not which
made them (linking.py joins the other Nodes by those numbers)."""
from __future__ import annotations

import bisect
from typing import Any, Dict, List

from .aliases import is_version
from .mode import E_INS, E_OUTS, V_ORIGIN

REBUILT = "AsStridedBackward0"  # the Node torch makes anew for a stale view


def link_rebuilt(rebuilt: List[Any], th: Any, events: List[tuple], infos: List[Any],
                 vmeta: List[tuple]) -> Dict[tuple, int]:
    """Entry key -> the view op, for the Nodes torch made anew (``AsStridedBackward0``)
    for views read after an in-place write to their base (``v = h[:, :3]; h.mul_(2);
    v * 3``). Such a Node takes its number as the op that reads the view makes its own,
    so that op is the first past it. Its stale inputs: those a view op made from a tensor
    written in place after it, before the reader (not ``W.t()`` read beside). The Nodes
    one reader made, in order, take its stale inputs in argument order (torch rebuilds
    them so); where the counts differ, none is linked."""
    def first(v: int) -> int:
        while 0 <= v < len(vmeta) and is_version(vmeta, v):
            v = vmeta[v][V_ORIGIN][1]  # (a read refreshed after a write: a version of it)
        return v

    producer: Dict[int, int] = {}
    for k, ev in enumerate(events):
        for v in ev[E_OUTS]:
            producer.setdefault(v, k)

    def root(v: int) -> int:  # (a view's base, through views of views, back to what was written)
        v = first(v)
        for _ in range(64):
            k = producer.get(v)
            if k is None or not infos[k].view or not events[k][E_INS]:
                break
            v = first(events[k][E_INS][0])
        return v

    by_reader: Dict[int, List[Any]] = {}
    for e in rebuilt:
        i = bisect.bisect_right(th.seqs, e.seq)
        if i < len(th.seqs):
            by_reader.setdefault(th.index[i], []).append(e)
    out: Dict[tuple, int] = {}
    for reader, nodes in by_reader.items():
        stale = []
        for v in (first(v) for v in events[reader][E_INS]):
            k = producer.get(v)
            if k is None or k >= reader or not infos[k].view or not events[k][E_INS] or k in stale:
                continue
            base = root(events[k][E_INS][0])
            if any(infos[j].mutates and any(root(w) == base for w in events[j][E_OUTS]) for j in range(k + 1, reader)):
                stale.append(k)
        if len(stale) == len(nodes):
            out.update((e.key, k) for e, k in zip(sorted(nodes, key=lambda e: e.seq), stale))
    return out
