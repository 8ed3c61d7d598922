"""Tensors a ``torch.Tensor`` subclass re-wrapped outside any op.

``Tensor.__torch_function__`` returns each op's result as the subclass
(``as_subclass``): a new Python tensor over the same data, made by no op the
dispatch mode sees. Keyed by identity, every such result would be a new
constant and the dataflow would fall apart. An unseen tensor of a subclass is
the value of a recent one that is the same view of the same storage.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

_PLAIN = (torch.Tensor, torch.nn.Parameter)
LOOK_BACK = 64  # values searched, latest first: the re-wrap comes right after the op that made the result


def _view(t: Any) -> Optional[tuple]:
    try:
        return t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # no storage (meta, sparse, wrappers)
        return None


def rewrapped(t: Any, vrefs: List[Any], vmap: Dict[int, int]) -> Optional[int]:
    """The value id (its latest version) of a recent tensor that ``t``, a plain
    subclass instance seen for the first time, re-wraps; None if there is none.
    Of several (autograd's own ``detach`` of a result it saves is the same view),
    the earliest: the op's result itself."""
    if type(t) in _PLAIN or is_traceable_wrapper_subclass(t):
        return None
    key = _view(t)
    if key is None:
        return None
    found = None
    for v in range(len(vrefs) - 1, max(-1, len(vrefs) - 1 - LOOK_BACK), -1):
        o = vrefs[v]()
        if o is None or o is t:
            continue
        latest = vmap.get(id(o))
        if latest is not None and vrefs[latest]() is o and _view(o) == key:
            found = latest
    return found
