"""Hearing a SIGTERM at once while the script is inside a long C call.

Python runs a signal handler in the main thread between two bytecodes: a
script inside one long call into C (an SVD, a collective that hangs) runs the
run's SIGTERM handler only when the call returns, where python, whose SIGTERM
is the default action, dies at once. The C-level handler also writes the
signal's number to the wakeup fd (``signal.set_wakeup_fd``) as the signal
comes: a thread reading it starts the grace clock (``Terminator``), which then
kills the process by the signal itself, wherever the main thread is.
A process the script forks stops listening (the pipe would carry its signals
to the parent's thread).
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Callable, List, Optional, Tuple

_WATCHES: List["Watch"] = []


class Watch:
    """Calls ``on_term()`` in its own thread when this process gets a SIGTERM,
    from ``start()`` (in the main thread) to ``stop()``."""

    def __init__(self, on_term: Callable[[], None]) -> None:
        self.on_term = on_term
        self.pid = os.getpid()
        self._fds: Optional[Tuple[int, int, int]] = None  # (read end, write end, the wakeup fd it replaced)

    def start(self) -> None:
        try:
            r, w = os.pipe()
        except OSError:
            return
        try:
            os.set_blocking(w, False)
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (ValueError, OSError):  # (not the main thread; no such call here)
            os.close(r)
            os.close(w)
            return
        self._fds = (r, w, old)
        _WATCHES.append(self)
        threading.Thread(target=self._listen, args=(r, old), name="torchtrace-sigterm", daemon=True).start()

    def _listen(self, r: int, old: int) -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                os.close(r)
                return
            if old >= 0:  # (a wakeup fd set before ours gets its bytes too)
                try:
                    os.write(old, data)
                except OSError:
                    pass
            if signal.SIGTERM in data and os.getpid() == self.pid:
                self.on_term()

    def stop(self) -> None:
        if self._fds is None:
            return
        r, w, old = self._fds
        self._fds = None
        if self in _WATCHES:
            _WATCHES.remove(self)
        try:
            now = signal.set_wakeup_fd(old)
            if now != w:  # (the script set its own since: it stays)
                signal.set_wakeup_fd(now)
        except (ValueError, OSError):
            pass
        os.close(w)  # (the thread reads the end of the pipe, closes it and returns)


def die_by(signum: int) -> None:
    """End this process by ``signum``'s default action, from any thread (the
    Python ``signal.signal`` may be called only from the main one)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.signal.restype = ctypes.c_void_p
        libc.signal(ctypes.c_int(signum), ctypes.c_void_p(0))  # SIG_DFL
        os.kill(os.getpid(), signum)
    except (OSError, AttributeError):
        pass
    os._exit(128 + signum)


def _forget_in_child() -> None:
    """(After a fork, in the child.) Its signals are its own: no wakeup fd into the parent's pipe."""
    for watch in _WATCHES:
        if watch._fds is not None:
            r, w, _ = watch._fds
            try:
                now = signal.set_wakeup_fd(-1)
                if now != w:  # (one the script set since is its own: it stays)
                    signal.set_wakeup_fd(now)
            except (ValueError, OSError):
                pass
            for fd in (r, w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            watch._fds = None
    _WATCHES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
