"""Gradient norms for the IR's ``autograd.grads``.

The gradient tensors are taken by a callback the autograd engine runs when each
graph task finishes (references only, no op inside the user's backward), and
their norms when the pass is built: in the usual loop the optimizer's
``zero_grad()`` (after ``step()``, or at the top of the next step, before the
forward that starts the next pass) has dropped every ``.grad`` by then. A
gradient changed in place before the build (``clip_grad_norm_``,
``GradScaler.unscale_``) is read as it was left. Dense gradients are reduced
with one ``_foreach_norm`` and read with one ``tolist()`` per (device, dtype):
on an accelerator one synchronisation per group, not one per parameter.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from ..textform import ir_name


def grad_infos(grads: List[torch.Tensor]) -> List[Tuple[Tuple[int, ...], str, Any]]:
    """(shape, dtype, 2-norm) per gradient: a float (NaN or inf as such), None
    where the gradient holds no numbers."""
    norms: List[Any] = [None] * len(grads)
    groups: Dict[tuple, List[int]] = {}
    for i, g in enumerate(grads):
        if type(g) is torch.Tensor and g.layout is torch.strided and not g.is_meta:
            groups.setdefault((g.device, g.dtype), []).append(i)
    for (_, dtype), idx in groups.items():
        try:
            with torch.no_grad():  # (not a detach per gradient: after create_graph=True they have a graph)
                got = torch._foreach_norm([grads[i] for i in idx], 2, dtype=_accumulate(dtype))
            values = torch.stack(got).tolist()
        except (RuntimeError, NotImplementedError, TypeError):  # a dtype or torch without the fused kernel
            continue
        for i, x in zip(idx, values):
            norms[i] = x
    return [(tuple(g.shape), ir_name(g.dtype), _norm_one(g.detach()) if n is None else n)
            for g, n in zip(grads, norms)]


def _norm_one(g: Any) -> Any:
    """One gradient's 2-norm, or None where it holds no numbers (meta, a
    wrapper subclass) or no kernel computes it."""
    try:
        if g.layout is torch.sparse_coo:  # (nn.Embedding(sparse=True)): its values' norm
            g = g.coalesce().values()
        return float(torch.linalg.vector_norm(g, dtype=_accumulate(g.dtype)))
    except (RuntimeError, NotImplementedError):
        return None


def _accumulate(dtype: torch.dtype) -> Optional[torch.dtype]:
    """fp16/bf16/fp8 gradients are summed in fp32; fp32, fp64 and complex in their own type."""
    return torch.float32 if dtype.is_floating_point and dtype.itemsize < 4 else None

