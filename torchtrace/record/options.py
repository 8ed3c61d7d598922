"""The options ``trace()`` and ``Recorder`` share, checked before anything is installed."""
from __future__ import annotations

from typing import Any, Optional, Tuple

from ..errors import UsageError


def capture_options(skip: Any, max_ops: Any) -> Tuple[Tuple[str, ...], Optional[int]]:
    """``skip`` and ``max_ops`` as ``trace()`` and ``Recorder`` take them, checked
    before anything is installed: one prefix or an iterable of them; None or >= 1."""
    if isinstance(skip, str):
        skip = (skip,)
    try:
        prefixes = tuple(skip)
    except TypeError:
        prefixes = (None,)
    if not all(isinstance(s, str) for s in prefixes):
        raise UsageError("bad `skip`", expected="a source-path prefix or a list of them", found=repr(skip),
                         fix="pass e.g. skip=['transformers/'] (or leave it out)")
    if max_ops is not None and (not isinstance(max_ops, int) or isinstance(max_ops, bool) or max_ops < 1):
        raise UsageError("bad `max_ops`", expected="None (no cap) or an integer >= 1", found=repr(max_ops),
                         fix="pass e.g. max_ops=1_000_000, or None for no cap")
    return prefixes, max_ops
