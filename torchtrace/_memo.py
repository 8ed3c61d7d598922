"""The two caches the IR's builders and writers share.

* ``Lazy(make)``: a dict that fills a missing key with ``make(key)``; a hit
  is one C-level lookup (``lazy[key]``), as in the per-op loops.
* ``remember(table, key, value)``: the bound every cross-graph table uses.
* ``TextMemo(key, make, memo)``: the text of objects that nodes share (the
  fingerprint's canonical args): per object for one graph (the graph holds them alive
  meanwhile), then per ``key(obj)`` in ``memo``, a dict kept across graphs
  because a training loop repeats its args and lines every step. ``memo`` is
  bounded: cleared when full.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

MEMO_MAX = 8192


def remember(table: Dict[Any, Any], key: Any, value: Any, limit: int = MEMO_MAX) -> Any:
    """``table[key] = value`` in a cache kept across graphs or traces, cleared
    when it holds ``limit`` entries (code made on the fly, models built in a
    loop: none of these tables may grow without bound); returns ``value``."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value


class Lazy(dict):
    def __init__(self, make: Callable[[Any], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.make(key)
        return value


class TextMemo:
    def __init__(self, key: Callable[[Any], Any], make: Callable[[Any], str], memo: Dict[Any, str]) -> None:
        self.by_id: Dict[int, str] = {}
        self.key, self.make, self.memo = key, make, memo

    def text(self, x: Any) -> str:
        t = self.by_id.get(id(x))
        if t is None:
            k = self.key(x)
            t = self.memo.get(k)
            if t is None:
                t = remember(self.memo, k, self.make(x))
            self.by_id[id(x)] = t
        return t
