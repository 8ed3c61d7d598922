"""One writing process per rank of a trace store.

The ranks of a distributed run share one store, so a store takes passes from
many processes. Two processes that record the same rank into it (two training
runs started with the default ``Recorder()`` path) would interleave their
passes into one sequence that ``variants`` and ``diff`` then read as one run.
The first process to store a pass of rank r holds a lock on byte r of
``.<store name>.writers`` beside it until it closes the store or dies (the file
stays: removing it while another process opens it would give the two processes
two files to lock); another process's pass
of that rank is refused with a ``WriteError`` (a Recorder then stops with a
warning, the script runs on). The lock is POSIX ``lockf``, so the processes of
one machine are told apart, and those of several on a file system that keeps
such locks across machines (NFS with lockd); elsewhere nothing is refused.
"""
from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any, Dict, Optional, Set

from .errors import WriteError

_MAX_RANK = 1 << 40  # (a byte offset: ranks past it are no real process's, nothing to hold)


class RankClaims:
    """The ranks this process writes into the store at ``store``: one per store
    file and process (``of``), shared by its Store objects, since closing any
    descriptor of a file drops every POSIX lock the process holds on it."""

    _OPEN: Dict[str, "RankClaims"] = {}

    @classmethod
    def of(cls, store: Path) -> "RankClaims":
        """The claims of the store at ``store`` (its path as the caller meant it
        now: a later ``chdir`` moves nothing), one more user of them."""
        key = str(Path(store).absolute())  # (not abspath: `link/..` is where the OS takes it)
        claims = cls._OPEN.get(key)
        if claims is None or claims.pid != os.getpid():
            claims = cls._OPEN[key] = cls(Path(key))
        claims.users += 1
        return claims

    def __init__(self, store: Path) -> None:
        self.path = store.parent / f".{store.name}.writers"  # (hidden; never removed: see above)
        self.store = store
        self.fd: Optional[int] = None
        self.held: Set[int] = set()
        self.pid = os.getpid()
        self.users = 0
        self.writers: Dict[int, Any] = {}  # rank -> weakref to the open Store of this process that writes it

    def claim(self, rank: int, writer: object) -> None:
        """Hold rank ``rank`` for this process and ``writer`` (a Store), or raise
        WriteError when another process holds it, or another writer of this one
        that is still open (two Recorders of two threads, one nested in another)."""
        if self.pid != os.getpid():  # (a forked child holds none of its parent's locks)
            self.pid, self.held, self.fd, self.writers = os.getpid(), set(), None, {}
        if not 0 <= rank < _MAX_RANK:
            return
        first = self.writers.get(rank)
        if first is None or first() is None:  # (free, or its Store was dropped without a close)
            self.writers[rank] = first = weakref.ref(writer)
        if first() is not writer:
            raise WriteError(f"another Recorder of this process is recording rank {rank} into this store",
                             where=str(self.store), expected="one writer per rank at a time",
                             found=f"rank {rank} held by a store still open", fix="give each Recorder its own "
                             "path, or close the first before the second records")
        if rank in self.held:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locks
            return
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # (a folder we may not write beside the store: SQLite says what is wrong)
                return
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank)
        except (BlockingIOError, PermissionError):  # (EAGAIN / EACCES: another process holds it)
            raise WriteError(f"another process is recording rank {rank} into this store", where=str(self.store),
                             expected="one process per rank", found=f"rank {rank} held (by {self.path.name})",
                             fix="give each run its own store (Recorder(path), torchtrace run --out), or set "
                                 "RANK for the processes of one distributed run") from None
        except OSError:  # (a file system without locks)
            return
        self.held.add(rank)

    def release(self, writer: object) -> None:
        """One user (``writer``) fewer; the last lets the ranks go."""
        for rank in [r for r, w in self.writers.items() if w() is writer]:
            del self.writers[rank]
        self.users -= 1
        if self.users > 0:
            return
        if self._OPEN.get(str(self.store)) is self:
            del self._OPEN[str(self.store)]
        if self.fd is not None and self.pid == os.getpid():
            os.close(self.fd)  # (and with it its locks)
        self.fd = None
        self.held.clear()
