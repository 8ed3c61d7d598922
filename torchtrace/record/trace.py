"""``torchtrace.trace``: record one pass inside a ``with`` block."""
from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

import torch

from ..errors import UsageError, exit_error
from ..ir import Graph
from .capture import Capture
from ..options import capture_options


class Trace:
    """Context manager returned by :func:`trace`. After the block, ``.graph``
    holds the recorded pass -- also when the block raised (the graph then
    holds every op that completed)."""

    def __init__(self, model: Optional[torch.nn.Module] = None, *, skip: Iterable[str] = (),
                 max_ops: Optional[int] = None, label: Optional[str] = None) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise UsageError("trace() got a model that is not an nn.Module", expected="an nn.Module or None",
                             found=type(model).__name__,
                             fix="pass the module whose params/inputs should be named, or nothing")
        skip, max_ops = capture_options(skip, max_ops)
        self._options = dict(model=model, skip=skip, max_ops=max_ops)
        self._label = None if label is None else str(label)  # (the IR's label is text)
        self._capture: Optional[Capture] = None
        self._graph: Optional[Graph] = None

    def __enter__(self) -> "Trace":
        if self._capture is not None:
            raise UsageError("this trace is already active", fix="use a new torchtrace.trace(...) per block")
        self._capture = Capture(**self._options)
        try:
            self._capture.start()
        except BaseException:
            self._capture.stop()
            self._capture = None
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        capture = self._capture
        if capture is not None and threading.get_ident() != capture.tid:  # (its dispatch mode is that thread's)
            raise UsageError("a trace ended in another thread than the one it started in",
                             expected="__exit__ in the thread that entered the trace", found="another thread",
                             fix="end the `with torchtrace.trace(...)` block in the thread that began it; "
                             "the trace goes on recording until then")
        self._capture = None
        if capture is None:
            raise UsageError("this trace is not running", expected="__exit__ once, after __enter__",
                             found="ended already" if self._graph is not None else "never entered",
                             fix="use `with torchtrace.trace(...) as t:`")
        try:
            capture.stop()
        finally:
            try:
                self._graph = capture.finish_pass(label=self._label, error=exit_error(exc_type, exc))
            finally:
                capture.dispose()
        return False

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            raise UsageError("the graph is not ready", expected="access after the `with` block ends",
                             found="the block still running" if self._capture else "a trace never entered",
                             fix="read t.graph after `with torchtrace.trace(...) as t:` has finished")
        return self._graph


def trace(model: Optional[torch.nn.Module] = None, *, skip: Iterable[str] = (), max_ops: Optional[int] = None,
          label: Optional[str] = None) -> Trace:
    """Record every aten op run inside the ``with`` block as one pass.

    ``model`` (optional) names parameters, buffers and the forward's inputs.
    ``skip``: extra source-path prefixes to skip when finding the user's line
    (e.g. ``"transformers/"``). ``max_ops`` caps the ops recorded.
    """
    return Trace(model, skip=skip, max_ops=max_ops, label=label)
