"""``torch.inference_mode`` puts back, on exit, the thread's dispatch keys as
they were on entry, and those say whether a dispatch mode is on (the Python
keys). A Recorder that takes its mode off or puts it on inside such a block
(a pass boundary at an evaluation's model call, with ``every=K``) would leave
the keys out of step with the mode stack: the next op then fails in torch
("Hit Python dispatch key but no arguments had PyInterpreter") or skips the
mode. While a Capture is started, each exit of an ``inference_mode`` block
sets the Python keys from the mode stack again (what pushing and popping a
mode set them to).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

_C = torch._C
_KEYS = tuple(getattr(_C.DispatchKey, k) for k in ("Python", "PythonTLSSnapshot") if hasattr(_C.DispatchKey, k))
_CLASS = torch.autograd.grad_mode.inference_mode


def sync_python_keys() -> None:
    """The Python dispatch keys on exactly when a dispatch mode is on the stack."""
    on = _C._len_torch_dispatch_stack() > 0
    for k in _KEYS:
        _C._dispatch_tls_set_dispatch_key_included(k, on)


class KeySync:
    """Wraps ``torch.inference_mode.__exit__`` from ``start()`` to ``stop()``
    (nested Captures: the first one's wrapper stays until it stops)."""

    def __init__(self) -> None:
        self._orig: Optional[Any] = None

    def start(self) -> None:
        orig = _CLASS.__dict__.get("__exit__")
        if self._orig is not None or orig is None or getattr(orig, "_torchtrace_sync", False):
            return
        self._orig = orig

        def __exit__(self_: Any, *exc: Any) -> Any:
            try:
                return orig(self_, *exc)
            finally:
                sync_python_keys()

        __exit__._torchtrace_sync = True  # type: ignore[attr-defined]
        _CLASS.__exit__ = __exit__  # type: ignore[method-assign]

    def stop(self) -> None:
        if self._orig is not None:
            _CLASS.__exit__ = self._orig  # type: ignore[method-assign]
            self._orig = None
