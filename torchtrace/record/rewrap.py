"""Tensors a ``torch.Tensor`` subclass re-wrapped outside any op.

``Tensor.__torch_function__`` returns each op's result as the subclass
(``as_subclass``): a new Python tensor over the same data, made by no op the
dispatch mode sees. Keyed by identity, every such result would be a new
constant and the dataflow would fall apart. An unseen tensor of a subclass is
the value of a recent one that is the same view of the same storage.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

_PLAIN = (torch.Tensor, torch.nn.Parameter)
LAST_OPS = 4  # ops searched, latest first: the re-wrap comes right after the op that made the result


def _view(t: Any) -> Optional[tuple]:
    try:
        return t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):  # no storage (meta, sparse, wrappers)
        return None


def rewrapped(t: Any, mode: Any) -> Optional[int]:
    """The value id of the op result that ``t``, a plain subclass instance seen
    for the first time (no named input, attribute or parameter), re-wraps: an
    output of one of the last few ops, of ``t``'s dtype and shape, the same view
    of the same storage while it lives (a result that was itself a view dies
    once wrapped: the wrap keeps its base). A ``detach``'s result for one that
    needs grad is autograd's own detach of the result it saves: passed over."""
    if type(t) in _PLAIN or is_traceable_wrapper_subclass(t):
        return None
    from .mode import E_INFO, E_OUTS, V_DTYPE, V_ORIGIN, V_SHAPE
    from .opinfo import BY_INDEX

    key, events, vmeta, vrefs = _view(t), mode.events, mode.vmeta, mode.vrefs
    if key is None:
        return None
    for back in range(1, min(LAST_OPS, len(events)) + 1):
        ev = events[-back]
        for v in ev[E_OUTS]:
            rec = vmeta[v]
            if (rec[V_ORIGIN] is not None and rec[V_ORIGIN][0] == "ext") or rec[V_DTYPE] != t.dtype or \
                    tuple(rec[V_SHAPE:]) != key[2]:
                continue
            o = vrefs[v]()
            if (o is not None and _view(o) != key) or (t.requires_grad and BY_INDEX[ev[E_INFO]].is_detach):
                continue  # (another tensor; a detach's result needs no grad: autograd's own detach of the result)
            return v
    return None
