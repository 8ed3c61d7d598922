"""Which Python frames are "user code": the first frame outside torch/,
torchtrace/ and any prefix the user adds (e.g. ``transformers/``).

The answer is cached per code object, so the per-op walk costs a few dict
lookups; ``traceback.extract_stack`` would cost 40-100 µs per op.
"""
from __future__ import annotations

import os
from types import CodeType
from typing import Dict, Iterable, Tuple

import torch

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_AUTOGRAD_DIR = os.path.join(_TORCH_DIR, "autograd") + os.sep
# stdlib plumbing that never is the line a user wants to see
_PLUMBING = ("contextlib.py", "functools.py", "<frozen ")


def _normalise(prefix: str) -> str:
    return prefix if prefix.endswith(("/", os.sep)) or prefix.endswith(".py") else prefix + os.sep


class FrameFilter:
    """Classifies code objects as internal (skipped) or user code."""

    def __init__(self, skip: Iterable[str] = ()) -> None:
        absolute, segments = [_TORCH_DIR, _OWN_DIR], []
        for s in skip:
            s = _normalise(str(s))
            (absolute if os.path.isabs(s) else segments).append(s)
        self.absolute: Tuple[str, ...] = tuple(absolute)
        # "transformers/" matches any path with a "/transformers/" component
        self.segments: Tuple[str, ...] = tuple(os.sep + s.lstrip("./" + os.sep) for s in segments)
        self.cache: Dict[CodeType, bool] = {}

    def internal(self, code: CodeType) -> bool:
        hit = self.cache.get(code)
        if hit is None:
            name = code.co_filename
            hit = (name.startswith(self.absolute) or any(s in name for s in self.segments)
                   or any(p in name for p in _PLUMBING))
            self.cache[code] = hit
        return hit


def is_torch_internal(code: CodeType) -> bool:
    return code.co_filename.startswith(_TORCH_DIR)


def is_autograd_engine(code: CodeType) -> bool:
    """Frames of torch.autograd itself: a backward op issued with one of these
    innermost runs a derivative formula (not user code inside backward)."""
    return code.co_filename.startswith(_AUTOGRAD_DIR)
