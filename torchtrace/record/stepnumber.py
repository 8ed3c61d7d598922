"""What ``Recorder.step(n)`` takes: a training step's number, from an int, a
NumPy integer or a 0-dim integer tensor (not a bool), read with the recorder's
dispatch mode off so that the read is no op of the user's pass."""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch

from ..errors import UsageError
from ..store import fits_int64


def step_number(n: Any, mode: Any) -> int:
    """``n`` as a 64-bit int; ``mode`` (the recorder's, or None) is off while a tensor is read."""
    step: Optional[int] = None
    if isinstance(n, torch.Tensor):
        if n.dim() == 0 and n.dtype != torch.bool and not n.is_meta:
            off = mode is not None and mode.off
            try:
                if mode is not None:
                    mode.off = True
                step = operator.index(n)
            except (TypeError, RuntimeError):  # (a float tensor; one whose data cannot be read)
                pass
            finally:
                if mode is not None:
                    mode.off = off
    elif not isinstance(n, bool):  # (NumPy's bool has no __index__)
        try:
            step = operator.index(n)
        except TypeError:
            pass
    if step is None or not fits_int64(step):  # (the store keeps 64-bit integers)
        raise UsageError("bad step", expected="an integer of at most 64 bits (the training step)",
                         found=repr(n), fix="pass the loop counter, e.g. rec.step(i)")
    return step
