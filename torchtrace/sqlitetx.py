"""SQLite's write transaction and its "database is locked" retry, for the store."""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable


def retry_locked(fn: Callable[[], Any], wait_s: float = 30.0) -> Any:
    """``fn()``, retried while SQLite answers "database is locked" without
    waiting itself (opening a new WAL store while another process sets it up)."""
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class Tx:
    """A write transaction: ``BEGIN IMMEDIATE`` (the write lock at once), then commit, or roll back on an error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
