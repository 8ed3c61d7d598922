"""The one error family torchtrace raises for user-facing problems.

Every message says what was expected, what was found, where, and how to fix it,
so the CLI can print it as ``error: …`` without a traceback.
"""
from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import Any, Optional

__all__ = ["TorchtraceError", "IRError", "RenderError", "UsageError", "WriteError", "NotInGraphError"]


class TorchtraceError(Exception):
    """Base class: a problem the user can act on.

    ``expected``/``found``/``where``/``fix`` are kept as attributes so tools can
    show them separately; ``str(err)`` joins them into one readable message.
    """

    def __init__(
        self,
        problem: str,
        *,
        expected: Optional[str] = None,
        found: Optional[str] = None,
        where: Optional[str] = None,
        fix: Optional[str] = None,
    ) -> None:
        self.problem = problem
        self.expected = expected
        self.found = found
        self.where = where
        self.fix = fix
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.problem if self.where is None else f"{self.where}: {self.problem}"]
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        if self.found is not None:
            parts.append(f"found {self.found}")
        msg = "; ".join(parts)
        if self.fix is not None:
            msg += f". Fix: {self.fix}"
        return msg


class IRError(TorchtraceError):
    """A graph file or dict does not follow the torchtrace.graph format."""


class NewerVersionError(IRError):
    """A graph of a newer major version than this torchtrace reads."""


class RenderError(TorchtraceError):
    """A graph cannot be drawn as asked (unknown format, missing binary, …)."""


class UsageError(TorchtraceError):
    """An API or CLI argument is not valid (unknown option, bad value, …)."""


class WriteError(TorchtraceError, OSError):
    """A file or folder torchtrace was asked to write cannot be written (also
    an ``OSError``, as the failed write itself was)."""

    @classmethod
    def of(cls, path: object, error: OSError) -> "WriteError":
        reason = error.strerror or type(error).__name__
        bad = getattr(error, "filename", None)
        name = os.path.basename(str(path))
        if bad and os.path.basename(str(bad)).startswith(f".{name}.") and str(bad).endswith(".tmp"):
            bad = None  # (our temporary file beside it: the path is what the user named)
        if error.errno in (errno.EEXIST, errno.ENOTDIR):  # (`-o notes.txt/x.svg`)
            up = os.path.dirname(str(path))
            while up and not os.path.exists(up) and os.path.dirname(up) != up:
                up = os.path.dirname(up)
            if up and os.path.isfile(up):
                reason, bad = f"{up} is a file, not a folder", None
        return cls("cannot write here", where=str(path), expected="a path whose folder exists or can be created",
                   found=f"{reason}{f' ({bad})' if bad and str(bad) != str(path) else ''}",
                   fix="choose another path (-o / --out), or create the folder and check its permissions")


class NotInGraphError(UsageError, KeyError):
    """An id a graph does not hold (``graph.node("n99")``); also a ``KeyError``,
    as a failed lookup is."""

    __str__ = Exception.__str__  # the message, not KeyError's repr of it


def exit_error(exc_type: Any, exc: Any) -> Optional[str]:
    """The name of the exception that ended a traced block or script, for
    ``meta.error``: None when none did, or a clean ``sys.exit()`` (code 0 or None)."""
    if exc_type is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return None
    return getattr(exc_type, "meta_name", None) or exc_type.__name__  # (the run's SIGTERM: "SIGTERM")


def warn(message: str, stacklevel: int = 3) -> None:
    """A RuntimeWarning, under the user's filters, that never raises into their
    code (``-W error`` turns it into an exception inside their model call):
    then it is written to stderr instead."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=_user_level(stacklevel))
    except Exception:
        print(message, file=sys.stderr)


_INTERNAL = (os.path.dirname(os.path.abspath(__file__)) + os.sep, "<frozen ")


def _user_level(default: int) -> int:
    """The stack level of the innermost frame outside torchtrace, torch and runpy
    (a warning raised while a model call is recorded points at that call, not at
    the recorder); ``default`` when there is none."""
    # (torch's frames, and the CLI's: the end of `torchtrace run` finishes the last pass; not
    # imported here: this layer never imports torch, and a module not loaded has no frame)
    loaded = [sys.modules.get(name) for name in ("torch", "typer", "runpy")]
    internal = (*_INTERNAL, *(os.path.dirname(os.path.abspath(m.__file__)) + os.sep if m.__name__ != "runpy"
                              else os.path.abspath(m.__file__) for m in loaded if m is not None and m.__file__))
    frame, level = sys._getframe(2), 2  # (the caller of ``warn``: stacklevel 2)
    while frame is not None:
        if not frame.f_code.co_filename.startswith(internal):
            return level
        frame, level = frame.f_back, level + 1
    return default
