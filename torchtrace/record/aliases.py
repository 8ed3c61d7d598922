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

from .autograd import storage_keys
from .mode import E_INS, E_OUTS, V_ORIGIN


def refresh_stale_reads(events: List[tuple], vmeta: List[tuple], vrefs: List[Any],
                        alias_root: Dict[int, int], producer: Dict[int, int]) -> None:
    """Rewrite ``events`` (inputs and the writes' outputs), ``vmeta``, ``vrefs``,
    ``alias_root`` and ``producer`` in place; nothing when no op wrote."""
    written = [v for v in range(len(vmeta)) if _written(vmeta, v) and v in producer]
    if not written:
        return
    _outside_aliases(written, vmeta, vrefs, alias_root)
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


def _outside_aliases(written: List[int], vmeta: List[tuple], vrefs: List[Any], alias_root: Dict[int, int]) -> None:
    """Tensors made before the pass that share a storage the pass wrote (a view
    taken at setup, ``k = cache[0]``; ``w = lin.weight.detach()``; ``m(x, x[0])``)
    came in as values of their own: each becomes an alias of the written one, so
    that its reads after the write depend on it. Only outside values that are
    alive are compared (a storage's key: ``storage_keys``)."""
    def base(v: int) -> int:
        while _written(vmeta, v):
            v = vmeta[v][V_ORIGIN][1]
        return alias_root.get(v, v)

    bases = {b for b in map(base, written) if _outside(vmeta, b)}
    if not bases:
        return
    outside = [v for v in range(len(vmeta)) if _outside(vmeta, v) and v not in alias_root]
    keys: Dict[int, int] = {}  # storage -> the written base that holds it
    of: Dict[int, int] = {}
    for v in outside:
        t = vrefs[v]()
        k = storage_keys(t) if t is not None else []
        if k:
            of[v] = k[0]
            if v in bases:
                keys.setdefault(k[0], v)
    joined = False
    for v, k in of.items():
        b = keys.get(k)
        if b is not None and b != v:
            alias_root[v] = joined = b
    if joined is not False:  # (their versions too: a write through one is a write of the base)
        for v in range(len(vmeta)):
            if v not in alias_root and _written(vmeta, v) and vmeta[v][V_ORIGIN][1] in alias_root:
                alias_root[v] = alias_root[vmeta[v][V_ORIGIN][1]]


def _outside(vmeta: List[tuple], v: int) -> bool:
    origin = vmeta[v][V_ORIGIN]
    return origin is not None and origin[0] == "ext"


def _written(vmeta: List[tuple], v: int) -> bool:
    origin = vmeta[v][V_ORIGIN]
    return origin is not None and origin[0] == "ver" and origin[1] >= 0
