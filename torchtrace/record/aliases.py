"""Reads through an alias that an in-place write made stale.

The recorder gives a written tensor, and the base of a written view, a new
version (``version_of``) as the write happens. Other tensors that share the
storage keep the value they had: a view taken before the write (``flat =
x.view(-1); x.relu_(); flat.sum()``), or the view a written view was cut
from (a preallocated KV cache: ``kc = cache[layer]; kc[pos] = k; kc[:pos + 1]``).
After the pass, each read of such a value is pointed at a new version of it,
made by the last write to its storage before the read (one more output of
that op): the read depends on the write, as the data does.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .mode import E_INS, E_OUTS, V_ORIGIN


def refresh_stale_reads(events: List[tuple], vmeta: List[tuple], vrefs: List[Any],
                        alias_root: Dict[int, int], producer: Dict[int, int]) -> None:
    """Rewrite ``events`` (inputs and the writes' outputs), ``vmeta``, ``vrefs``,
    ``alias_root`` and ``producer`` in place; nothing when no op wrote."""
    written = [v for v in range(len(vmeta)) if _written(vmeta, v) and v in producer]
    if not written:
        return
    writes: Dict[int, List[int]] = {}  # write op -> the versions it made
    for v in written:
        writes.setdefault(producer[v], []).append(v)
    storage: Dict[int, int] = {}

    def storage_of(v: int) -> int:
        s = storage.get(v)
        if s is None:
            r = alias_root.get(v, v)
            origin = vmeta[r][V_ORIGIN]
            s = storage_of(origin[1]) if _written(vmeta, r) else r
            storage[v] = s
        return s

    last: Dict[int, int] = {}  # storage -> the op that last wrote it
    fresh: Dict[int, Tuple[int, int]] = {}  # stale value -> (its version after that write, the write)
    for i in range(min(writes), len(events)):
        ev = events[i]
        ins = ev[E_INS]
        new = None
        for k, v in enumerate(ins):
            if v < 0:
                continue
            j = last.get(storage_of(v))
            if j is None or producer.get(v, -1) >= j:  # (made by the write, or after it)
                continue
            now = fresh.get(v)
            if now is None or now[1] != j:
                base = v if now is None else now[0]
                vid = len(vmeta)
                vmeta.append((*vmeta[v][:V_ORIGIN], ("ver", base), *vmeta[v][V_ORIGIN + 1:]))
                vrefs.append(vrefs[v])
                if v in alias_root:
                    alias_root[vid] = alias_root[v]
                storage[vid] = storage_of(v)
                producer[vid] = j
                events[j] = (*events[j][:E_OUTS], (*events[j][E_OUTS], vid), *events[j][E_OUTS + 1:])
                fresh[v] = now = (vid, j)
            new = list(ins) if new is None else new
            new[k] = now[0]
        if new is not None:
            events[i] = (*ev[:E_INS], tuple(new), *ev[E_INS + 1:])
        for v in writes.get(i, ()):
            last[storage_of(v)] = i


def _written(vmeta: List[tuple], v: int) -> bool:
    origin = vmeta[v][V_ORIGIN]
    return origin is not None and origin[0] == "ver" and origin[1] >= 0
