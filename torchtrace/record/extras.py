"""What an event's last field (``extra``) holds besides nothing: an op that
raised (``Raised``), or an op that handed tensor data to Python (``Read``)."""
from __future__ import annotations

from typing import Any


class Raised(str):
    """An event's ``extra`` when its op raised: ``"RuntimeError: <first line>"``."""

    def __new__(cls, error: BaseException) -> "Raised":
        text = str(error).strip().splitlines()
        return super().__new__(cls, f"{type(error).__name__}: {text[0][:300] if text else ''}".rstrip(": "))


class Read:
    """An event's ``extra`` for an op that hands tensor data to Python (a witness):
    what it returned (None for a data-dependent shape) and who called the user
    frame that issued it (``frames.callers_of``)."""

    __slots__ = ("value", "callers")

    def __init__(self, value: Any, callers: tuple) -> None:
        self.value, self.callers = value, callers
