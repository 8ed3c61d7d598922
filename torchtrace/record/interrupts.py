"""Ctrl-C held back while torchtrace takes its hooks, mode and patches out, and
teardown steps that each run whatever the one before did.

A KeyboardInterrupt that lands between two steps of a capture's teardown would
leave the steps after it undone for good (global module hooks, class patches: a
notebook keeps them until its kernel restarts). While ``Uninterrupted`` is
entered, SIGINT only notes that it came; the KeyboardInterrupt is raised on leaving,
as soon as the teardown is whole. Only on the main thread (where Python runs
signal handlers) and only over Python's own handler: one a program installed
itself runs as always.
"""
from __future__ import annotations

import _signal  # (signal's wrappers convert to enums: signal.getsignal took 14 µs, this 0.1)
import signal
import threading
from typing import Any, Callable

_SIGINT = int(signal.SIGINT)


class Uninterrupted:
    __slots__ = ("_old", "_came")

    def __enter__(self) -> "Uninterrupted":
        self._old, self._came = None, False
        if _signal.getsignal(_SIGINT) is signal.default_int_handler and \
                threading.current_thread() is threading.main_thread():
            self._old = _signal.signal(_SIGINT, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self._came = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._old is not None:
            _signal.signal(_SIGINT, self._old)
            if self._came and exc_type is None:
                raise KeyboardInterrupt
        return False


def every(*steps: Callable[[], Any]) -> None:
    """Run every step, also when one before it raised; then raise the first exception.
    (A Ctrl-C between two steps: run them under ``Uninterrupted``.)"""
    error: Any = None
    for step in steps:
        try:
            step()
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error
