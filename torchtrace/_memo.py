"""The two caches the IR's builders and writers share.

* ``Lazy(make)``: a dict that fills a missing key with ``make(key)``; a hit
  is one C-level lookup (``lazy[key]``), as in the per-op loops.
* ``TextMemo(key, make, memo)``: the text of objects that nodes share (args
  dicts, sources): per object for one graph (the graph holds them alive
  meanwhile), then per ``key(obj)`` in ``memo``, a dict kept across graphs
  because a training loop repeats its args and lines every step. ``memo`` is
  bounded: cleared when full.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

MEMO_MAX = 8192


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
                if len(self.memo) >= MEMO_MAX:
                    self.memo.clear()
                t = self.memo[k] = self.make(x)
            self.by_id[id(x)] = t
        return t
