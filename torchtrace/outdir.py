"""The folder ``torchtrace run`` records into: its lock, and the previous run's
store and drawings set aside (``trace.prev.db``, ``prev-variant-K.*``) -- put
back when the new run stores no pass (a script with a syntax error, a file
that is not a script), so that failed runs never push a good trace out.

Only torchtrace's own files move or go: a ``trace.db`` or ``trace.prev.db`` a
Recorder would not record into (another program's database, a newer store, any
other file) is refused before anything moves, and the drawings are those the
run listed in ``.trace.db.drawings`` as it wrote them (the user's own
``variant-1.png`` stays where it is).
"""
from __future__ import annotations

import os
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

from .errors import UsageError, WriteError
from .filewrite import atomic_write
from .store import RUN_STORE, Store

PREV_STORE = "trace.prev.db"
_RENDER = re.compile(r"variant-\d+\.[a-z]+")  # what --render writes (``launch._Progress._render``)
_SUFFIXES = ("", "-wal", "-shm")
_OLD = ".torchtrace-older-"  # the run before the previous one's files, while this run may still be undone


@contextmanager
def store_in(out: Path) -> Iterator[Path]:
    """The store path in ``out``, with the previous run's store moved aside,
    while this process holds the folder's lock: a second run into the same
    folder would move the first run's open store aside under it. The path is
    absolute: a script that changes its folder before ``import torch`` (when
    the recorder opens the store) records into the folder ``--out`` named."""
    try:
        is_file = out.exists() and not out.is_dir()
    except OSError as e:  # (a name too long: said as a folder that cannot be made, not as our output failing)
        raise WriteError.of(out, e) from None
    if is_file:
        raise UsageError("--out names a file", where=str(out), expected="a folder (made if missing) for trace.db",
                         found="a file", fix=f"pass a folder, e.g. --out {out.stem or 'trace'}-out")
    out = out.absolute()  # (not abspath: `link/..` is where the OS takes it, as --render and the summary do)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".torchtrace.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a folder that cannot be made
        raise WriteError.of(out, e) from None
    try:
        _lock(fd, out)
        moves = _aside(out)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):  # a store that cannot be moved aside
            raise WriteError.of(out, e) from None
        raise
    _HELD.add(fd)
    try:
        yield out / RUN_STORE
    finally:
        try:
            if fd in _HELD:  # (not in a process the script forked: the run's own end)
                _settle(out, moves)
        finally:
            if fd in _HELD:  # (a process the script forked closed its copy already: _let_go)
                _HELD.discard(fd)
                os.close(fd)  # releases the lock


def claim_drawing(folder: Path, name: str) -> None:
    """List ``name`` (``variant-0.svg``) among the drawings this run writes into
    ``folder``, before it is written: the next run moves only the drawings a
    run listed. A file of that name the run did not list is the user's: refused
    (the render reports it), never written over."""
    listed = _listed(folder, RUN_STORE)
    if name in listed or os.path.isdir(folder / name):  # (a folder: the write says so)
        return
    if os.path.lexists(folder / name):
        raise UsageError(f"the --out folder holds a {name} torchtrace did not write", where=str(folder),
                         expected="none: the drawing of a new variant is written to that name",
                         found="a file (yours, or an older torchtrace's, from before runs listed their drawings)",
                         fix="move it elsewhere, or pass another --out (it is left as it was)")
    atomic_write(folder / _drawings(RUN_STORE), "".join(f"{n}\n" for n in [*listed, name]).encode())


def _drawings(store: str) -> str:
    """The name of the list of drawings the run that wrote ``store`` wrote (``.trace.db.drawings``)."""
    return f".{store}.drawings"


def _store_files(store: str) -> List[str]:
    """A store's files, moved together: itself, its log and index, and its list of drawings."""
    return [f"{store}{s}" for s in _SUFFIXES] + [_drawings(store)]


def _listed(out: Path, store: str) -> List[str]:
    """The drawings listed beside ``store`` (names of drawings only: a list edited by hand moves nothing else)."""
    try:
        text = (out / _drawings(store)).read_text(encoding="utf-8", errors="replace")
    except OSError:  # (none: that run drew nothing)
        return []
    return [n for n in text.splitlines() if _RENDER.fullmatch(n)]


def _aside(out: Path) -> List[Tuple[Path, Path]]:
    """Move the previous run's store and drawings to their ``prev`` names, and
    the ones there (the run before it) to hidden names; returns the moves made.
    Refused, before anything moves, where a move would take a file torchtrace did not write."""
    _refuse_foreign_stores(out)
    _after_a_kill(out)
    if not (out / RUN_STORE).exists():
        return []
    drawings, older = _listed(out, RUN_STORE), _listed(out, PREV_STORE)
    _refuse_foreign_prev_drawings(out, drawings, older)
    moves: List[Tuple[Path, Path]] = []

    def move(src: str, dst: str) -> None:
        if (out / src).is_file():
            os.replace(out / src, out / dst)
            moves.append((out / src, out / dst))

    # (an older run's log left beside the previous store would be applied to it: it goes too)
    for name in _store_files(PREV_STORE) + [f"prev-{n}" for n in older]:
        move(name, f"{_OLD}{name}")
    for src, dst in zip(_store_files(RUN_STORE), _store_files(PREV_STORE)):
        move(src, dst)
    for name in drawings:
        move(name, f"prev-{name}")
    return moves


def _refuse_foreign_stores(out: Path) -> None:
    """A ``trace.db`` or ``trace.prev.db`` that is no store of torchtrace's: a
    run would move it aside and drop it a run later."""
    for name in (RUN_STORE, PREV_STORE):
        found = _not_ours(out / name)
        if found is not None:
            raise UsageError(f"the --out folder holds a {name} torchtrace did not write", where=str(out),
                             expected=f"a folder whose {name} is a store torchtrace wrote (or none)", found=found,
                             fix="pass another --out (the file is left as it was)")


def _refuse_foreign_prev_drawings(out: Path, drawings: List[str], older: List[str]) -> None:
    """A ``prev-variant-K.*`` of the user's where the previous run's drawing would be moved to."""
    for name in drawings:
        prev = out / f"prev-{name}"
        if (out / name).is_file() and os.path.lexists(prev) and name not in older:
            raise UsageError(f"the --out folder holds a {prev.name} torchtrace did not write", where=str(out),
                             expected=f"none: the previous run's drawing {name} is moved to that name",
                             found="a file", fix="move it elsewhere, or pass another --out (it is left as it was)")


def _not_ours(path: Path) -> Optional[str]:
    """What ``path`` is when it is no store of torchtrace's; None when it is one
    (or there is none). Judged as a Recorder judges a file it would record into
    (``Store._ours``): an SQLite file of a store schema, or one with no table
    yet; an empty file is one too (a run killed as it began left it)."""
    try:
        if not os.path.lexists(path):
            return None
        if not path.is_file():
            return "not a regular file (a folder, or a link to nothing)"
        if path.stat().st_size == 0:
            return None
        # (read-write, never creating: a read-only connection to a WAL store leaves its -wal and -shm behind)
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=5.0)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.Error as e:
        return f"no SQLite database torchtrace can read ({e})"
    ours = Store._ours(version, tables)  # (the Recorder's own test, not a copy of it)
    return None if ours else f"an SQLite database of schema {version}, tables {sorted(tables)}"


def _settle(out: Path, moves: List[Tuple[Path, Path]]) -> None:
    """Keep the moves when this run stored a pass; else undo them (the new
    store, empty, goes)."""
    if not moves:
        return
    if _stored_a_pass(out / RUN_STORE):
        _drop_older(out)
        return
    _drop_run_store(out)
    for src, dst in reversed(moves):
        os.replace(dst, src)


def _after_a_kill(out: Path) -> None:
    """Settle what a run killed before it settled left: its store holds no pass
    (killed before the first) -- put the previous run's files back, as
    ``_settle`` would have, so the next run does not push the last good trace
    out for it --, or some -- keep it, and drop the files it hid."""
    store = out / RUN_STORE
    if not (store.exists() and _no_pass(store)):
        _drop_older(out)
        return
    _drop_run_store(out)
    for src, dst in zip(_store_files(PREV_STORE), _store_files(RUN_STORE)):
        if (out / src).is_file():
            os.replace(out / src, out / dst)
    for name in _listed(out, RUN_STORE):  # (the list just put back: the drawings of that store's run)
        if (out / f"prev-{name}").is_file():
            os.replace(out / f"prev-{name}", out / name)
    for f in out.glob(f"{_OLD}*"):
        if f.is_file() and _previous(f.name[len(_OLD):]):
            os.replace(f, out / f.name[len(_OLD):])


def _drop_run_store(out: Path) -> None:
    """This run's store, with its log, index and list of drawings (a run that stored no pass)."""
    for name in _store_files(RUN_STORE):
        (out / name).unlink(missing_ok=True)


def _no_pass(path: Path) -> bool:
    """Is ``path`` a store that holds no pass (an empty file, no passes table, or no row in it)?
    (A store of torchtrace's: ``_refuse_foreign_stores`` refused any other.)"""
    try:
        db = sqlite3.connect(path)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            return "passes" not in tables or db.execute("SELECT 1 FROM passes LIMIT 1").fetchone() is None
        finally:
            db.close()
    except sqlite3.Error:  # (not a store we can read: not ours to drop)
        return False


def _drop_older(out: Path) -> None:
    """The files ``_aside`` hid (ours by their hidden prefix, and by name: a store's, or a drawing's)."""
    for f in out.glob(f"{_OLD}*"):
        if f.is_file() and _previous(f.name[len(_OLD):]):
            f.unlink()


def _previous(name: str) -> bool:
    """Is ``name`` one a run gives a file of the previous run that it hides: its
    store's (``trace.prev.db``, its log, its list of drawings) or a drawing's
    (``prev-variant-0.svg``)?"""
    return name in _store_files(PREV_STORE) or \
        name.startswith("prev-") and _RENDER.fullmatch(name[len("prev-"):]) is not None


def _stored_a_pass(path: Path) -> bool:
    if not path.exists():
        return False
    try:  # (read-write, as the run left it: the last connection to close takes its -wal and -shm files away)
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT 1 FROM passes LIMIT 1").fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error:  # (not a store we can read: keep what the run left, as it is)
        return True


_HELD: Set[int] = set()  # the lock files this process holds open: a process the script forks lets go of them


def _let_go() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # (the lock stays the run's: its own descriptor holds it)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go)


def hold_against_runs(store: Path) -> Optional[int]:
    """A Recorder's shared hold on the lock of the folder of a store a `torchtrace
    run` would record into or move aside (``trace.db``): refused while a run holds
    the lock (the Recorder's passes would land among the run's, with the run's
    indices), and a run started meanwhile is refused (it would move the live store
    aside under the Recorder). Ranks' Recorders share it. Returns the descriptor for
    ``let_go``; None when there is nothing to hold (another name, no folder, no
    write access: then it only looks)."""
    if store.name not in (RUN_STORE, PREV_STORE):
        return None
    lock = store.parent / ".torchtrace.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        keep = True
    except OSError:
        try:
            fd, keep = os.open(lock, os.O_RDONLY), False
        except OSError:  # (no run ever recorded there)
            return None
    try:
        held = not _flock(fd, shared=True)
    except OSError:  # (a file system without locks: nothing to say)
        held, keep = False, False
    if held or not keep:
        os.close(fd)  # (and with it the shared lock taken to look)
    if held:
        raise UsageError("a `torchtrace run` is recording into this store", where=str(store),
                         expected="a store no run is recording into", found="its folder's lock held",
                         fix="pass the Recorder another store, or wait until that run ends")
    if not keep:
        return None
    _HELD.add(fd)  # (a process the script forks lets go of it)
    return fd


def let_go(fd: Optional[int]) -> None:
    """End a ``hold_against_runs`` (not in a forked child: it closed its copy)."""
    if fd is not None and fd in _HELD:
        _HELD.discard(fd)
        os.close(fd)


def _lock(fd: int, out: Path) -> None:
    if not _flock(fd, shared=False):
        raise UsageError("another torchtrace run, or a Recorder, is recording into this folder", where=str(out),
                         expected="an --out folder no other run or Recorder is using", found="its lock held",
                         fix="pass another --out, or wait until that run or Recorder ends")


def _flock(fd: int, shared: bool) -> bool:
    """Take the lock on ``fd`` without waiting: False when another holder has it
    (True too where there is no ``flock``: not POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
