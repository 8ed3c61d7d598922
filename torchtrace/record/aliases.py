"""Reads through an alias that an in-place write made stale.

The recorder gives a written tensor, and the base of a written view, a new
version (``version_of``) as the write happens. Other tensors that share the
storage keep the value they had: a view taken before the write (``flat =
x.view(-1); x.relu_(); flat.sum()``), or the view a written view was cut
from (a preallocated KV cache: ``kc = cache[layer]; kc[pos] = k; kc[:pos + 1]``).
After the pass, each read of such a value is pointed at a new version of it,
made by the last write to its storage before the read (one more output of
that op): the read depends on the write, as the data does. A tensor pointed at
another storage (``set_``, ``t.data = ...``: ``rebound``, setdata.py) shares
that storage from then on; doing so writes no storage.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .autograd import storage_keys
from .mode import E_INS, E_OUTS, V_ORIGIN


def refresh_stale_reads(events: List[tuple], vmeta: List[tuple], vrefs: List[Any], alias_root: Dict[int, int],
                        producer: Dict[int, int], rebound: Dict[int, Optional[int]]) -> None:
    """Rewrite ``events`` (inputs and the writes' outputs), ``vmeta``, ``vrefs``,
    ``alias_root`` and ``producer`` in place; nothing when no op wrote.
    ``rebound``: value -> the value whose storage it shares from then on
    (``setdata.rebound_values``; its ``alias_root`` says so already)."""
    written = [v for v in range(len(vmeta)) if is_version(vmeta, v) and v in producer and v not in rebound]
    if not written:
        return
    writes: Dict[int, List[int]] = {}  # write op -> the versions it made (the written tensor's first)
    for v in written:
        writes.setdefault(producer[v], []).append(v)
    _outside_aliases(written, writes, vmeta, vrefs, alias_root, rebound)
    storage: Dict[int, int] = {}

    def storage_of(v: int) -> int:
        s = storage.get(v)
        if s is None:
            r = alias_root.get(v, v)
            origin = vmeta[r][V_ORIGIN]
            s = storage_of(origin[1]) if is_version(vmeta, r) and r not in rebound else r
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


def _outside_aliases(written: List[int], writes: Dict[int, List[int]], vmeta: List[tuple], vrefs: List[Any],
                     alias_root: Dict[int, int], rebound: Dict[int, Optional[int]]) -> None:
    """Tensors made before the pass that share a storage the pass wrote (a view
    taken at setup, ``k = cache[0]``; ``w = lin.weight.detach()``; ``m(x, x[0])``)
    came in as values of their own: each becomes an alias of the written one, so
    that its reads after the write depend on it. Only outside values that are
    alive are compared (a storage's key: ``storage_keys``), and only while their
    tensor shows their storage: not one pointed at another since (``rebound``)."""
    first: Dict[int, int] = {}  # version -> the value it is a version of, first (memo: chains can be long)
    moved: Dict[int, int] = {}  # id of a tensor pointed at another storage -> the last value that did so
    for r in rebound:
        t = vrefs[r]()
        if t is not None and moved.get(id(t), -1) < r:
            moved[id(t)] = r

    def span_of(v: int) -> Optional[Tuple[int, int, int]]:
        t = vrefs[v]()
        return _span(t) if t is not None and moved.get(id(t), -1) <= v else None

    def base(v: int) -> int:
        chain = []
        while v not in first and is_version(vmeta, v) and v not in rebound:
            chain.append(v)
            v = vmeta[v][V_ORIGIN][1]
        root = first.get(v, v)
        for c in chain:
            first[c] = root
        return alias_root.get(root, root)

    bases = {b for b in map(base, written) if _outside(vmeta, b)}
    if not bases:
        return
    spans: Dict[int, Tuple[int, int, int]] = {}  # outside value -> (storage, first byte, end byte)
    for v, rec in enumerate(vmeta):
        origin = rec[V_ORIGIN]
        if origin is not None and origin[0] == "ext" and v not in alias_root:
            span = span_of(v)
            if span is not None:
                spans[v] = span
    held: Dict[int, List[Tuple[int, int, int]]] = {}  # storage -> (first byte, end byte, written base)
    for vs in writes.values():  # (the bytes the op wrote: each written tensor's; for the base of a view it
        own = [span_of(w) for w in vs]  # wrote, the narrowest written span inside the base's: foreach writes many)
        for w, sw in zip(vs, own):
            b = base(w)
            inner = [x for x in own if x is not None and sw is not None and x != sw and x[0] == sw[0]
                     and sw[1] <= x[1] and x[2] <= sw[2]]
            got = min(inner, key=lambda x: x[2] - x[1]) if inner else sw if sw is not None else spans.get(b)
            if b in bases and got is not None:
                held.setdefault(got[0], []).append((got[1], got[2], b))
    def root_of(x: int) -> int:
        while x in alias_root:
            x = alias_root[x]
        return x

    def width(x: int) -> int:
        return spans[x][2] - spans[x][1] if x in spans else -1

    joined = False
    # narrowest first, each to the widest written base whose bytes it touches (a view made at setup to its
    # base, both written: the base stays the root), never to one that leads back to it (no alias cycle)
    for v in sorted(spans, key=lambda x: (width(x), x)):
        st, lo, hi = spans[v]
        b = max((b for blo, bhi, b in held.get(st, ()) if lo < bhi and blo < hi and root_of(b) != v),
                key=lambda x: (width(x), -x), default=None)  # (bytes both touch: not the next parameter)
        if b is not None:
            alias_root[v] = joined = root_of(b)
    for v in spans:  # (one joined before its own target was joined on: to the root it leads to)
        if v in alias_root:
            alias_root[v] = root_of(v)
    if joined is not False:  # (their versions too: a write through one is a write of the base)
        for v in written:
            origin = vmeta[v][V_ORIGIN][1]
            if v not in alias_root and origin in alias_root:
                alias_root[v] = alias_root[origin]


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _span(t: Any) -> Optional[Tuple[int, int, int]]:
    """(storage key, first byte, end byte) of what tensor ``t`` can touch; for a
    tensor that is no plain strided one (a subclass, sparse), its first storage
    (``storage_keys``), all of it."""
    try:
        if type(t) in _PLAIN and t.layout is torch.strided:
            size = t.element_size()
            last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0) if t.numel() else -1
            lo = t.storage_offset() * size
            return t.untyped_storage()._cdata, lo, lo + (last + 1) * size
    except (RuntimeError, NotImplementedError):
        pass
    keys = storage_keys(t)
    return (keys[0], 0, 1 << 62) if keys else None


def _outside(vmeta: List[tuple], v: int) -> bool:
    origin = vmeta[v][V_ORIGIN]
    return origin is not None and origin[0] == "ext"


def is_version(vmeta: List[tuple], v: int) -> bool:
    """Is value ``v`` a version of another, written in place by an op of the pass?"""
    origin = vmeta[v][V_ORIGIN]
    return origin is not None and origin[0] == "ver" and origin[1] >= 0
