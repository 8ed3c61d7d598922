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

import threading
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
    """Wraps ``torch.inference_mode.__exit__`` while any KeySync is started
    (counted: traces that end out of order, or in other threads, keep it until
    the last one stops)."""

    _lock = threading.Lock()
    _users = 0
    _orig: Optional[Any] = None

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        if self.started:
            return
        cls = KeySync
        with cls._lock:
            if cls._users == 0:
                orig = _CLASS.__dict__.get("__exit__")
                if orig is None:
                    return

                def __exit__(self_: Any, *exc: Any) -> Any:
                    try:
                        return orig(self_, *exc)
                    finally:
                        sync_python_keys()

                cls._orig = orig
                _CLASS.__exit__ = __exit__  # type: ignore[method-assign]
            cls._users += 1
            self.started = True

    def stop(self) -> None:
        if not self.started:
            return
        cls = KeySync
        with cls._lock:
            self.started = False
            cls._users -= 1
            if cls._users == 0 and cls._orig is not None:
                _CLASS.__exit__ = cls._orig  # type: ignore[method-assign]
                cls._orig = None
