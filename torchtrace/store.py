"""Many passes in one SQLite file (stdlib ``sqlite3``, WAL journal).

Schema (``PRAGMA user_version`` = ``SCHEMA_VERSION``), readable by any client::

    graphs(shapes_fp TEXT, rank INTEGER, structure_fp TEXT, n_ops INTEGER,
           created TEXT, ir BLOB, PRIMARY KEY(shapes_fp, rank))
                                           -- gzipped IR JSON, one per distinct graph and rank
    passes(id INTEGER PRIMARY KEY, rank INTEGER, idx INTEGER, step INTEGER,
           label TEXT, root TEXT, started TEXT, wall_s REAL, n_ops INTEGER,
           n_forward INTEGER, n_backward INTEGER, truncated INTEGER,
           error TEXT, structure_fp TEXT, shapes_fp TEXT, witnesses TEXT,
           UNIQUE(rank, idx))

A graph row's ``shapes_fp`` is its key: the shapes fingerprint, a dot, and
``serialize.content_key`` (passes with equal fingerprints can differ in what
fingerprints leave out: source lines, markers). A pass row's ``witnesses``
(JSON) names that key (``"graph"``) and keeps what is the pass's own: its
witness values (``{node id: value or shape}``), gradient norms and per-pass
meta, which ``graph()`` puts back on the shared graph. (Stores written before
2026-11-27 have no ``"graph"``: their passes read the graph keyed by their
shapes fingerprint alone.) Each pass is one
transaction: a process killed mid-run loses at most the pass in flight.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .errors import IRError, NewerVersionError, UsageError, WriteError
from .ir import GRAD_MODES, Graph, Witness
from .options import check_store_path
from .rankclaim import RankClaims
from .sqlitetx import Tx, retry_locked
from .serialize import content_key, decode, encode, is_sqlite, norm_json, stored_norm, witness_from_dict

SCHEMA_VERSION = 2  # 2: graph rows keyed by content (passes name theirs); 1 is read too
_SCHEMA = """
CREATE TABLE IF NOT EXISTS graphs(
    shapes_fp TEXT NOT NULL, rank INTEGER NOT NULL DEFAULT 0, structure_fp TEXT NOT NULL,
    n_ops INTEGER NOT NULL, created TEXT, ir BLOB NOT NULL, PRIMARY KEY(shapes_fp, rank));
CREATE TABLE IF NOT EXISTS passes(
    id INTEGER PRIMARY KEY, rank INTEGER NOT NULL DEFAULT 0, idx INTEGER NOT NULL,
    step INTEGER, label TEXT, root TEXT, started TEXT, wall_s REAL,
    n_ops INTEGER NOT NULL, n_forward INTEGER, n_backward INTEGER, truncated INTEGER,
    error TEXT, structure_fp TEXT NOT NULL, shapes_fp TEXT NOT NULL,
    witnesses TEXT, UNIQUE(rank, idx));
CREATE INDEX IF NOT EXISTS passes_structure ON passes(structure_fp);
"""


@dataclass(frozen=True)
class PassRecord:
    """One row of ``passes``."""

    id: int
    rank: int
    idx: int
    step: Optional[int]
    label: Optional[str]
    root: Optional[str]
    started: Optional[str]
    wall_s: Optional[float]
    n_ops: int
    n_forward: int
    n_backward: int
    truncated: bool
    error: Optional[str]
    structure_fp: str
    shapes_fp: str


_COLUMNS = ("id, rank, idx, step, label, root, started, wall_s, n_ops, n_forward, n_backward, truncated, "
            "error, structure_fp, shapes_fp")


_CANTOPEN = 14  # SQLITE_CANTOPEN
_BUSY, _READONLY, _CORRUPT = 5, 8, 11  # SQLITE_BUSY, SQLITE_READONLY, SQLITE_CORRUPT


def fits_int64(x: int) -> bool:
    """Can SQLite keep ``x`` (a 64-bit integer; a bigger one raises OverflowError)?"""
    return -(2 ** 63) <= x < 2 ** 63


RUN_STORE = "trace.db"  # the store `torchtrace run` writes in its --out folder
# meta that is the pass's own, kept per pass (passes that share a stored graph may differ in it)
PER_PASS_META = ("compiled_regions_ran_eager", "grad_mode")
# what each pass keeps for itself (its row and its witnesses column): not part of the stored graph's key
_PASS_OWN = ("created", "label", "step", "error", "pass_index", "last", *PER_PASS_META)


class Store:
    """A trace store file. ``Store(path)`` opens or creates it; ``readonly=True``
    requires it to exist and never writes."""

    def __init__(self, path: Union[str, Path], *, readonly: bool = False) -> None:
        if not readonly:  # (a folder: SQLite's "unable to open" never said so; "new/" made a file `new`)
            check_store_path(path)
        self.path = Path(path)
        self._claims: Optional[RankClaims] = RankClaims.of(self.path)  # (the ranks this process writes)
        if readonly:
            self._find(str(path))
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError.of(self.path, e) from None
        # as_uri() escapes what a URI would read as syntax: '?', '#', '%' in folder names
        self.readonly = readonly
        uri = f"{self.path.absolute().as_uri()}?mode=ro" if readonly else str(self.path)
        try:
            try:
                self.db = self._connect(uri, readonly)
            except sqlite3.OperationalError as e:
                # (the primary code: SQLite gives an extended one, SQLITE_READONLY_DIRECTORY = 8 | 6 << 8)
                if not readonly or (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF not in (_CANTOPEN, _READONLY):
                    raise
                # a read-only folder: SQLite cannot make the WAL index beside the file; nothing can
                # write there either, so the file is read as it is -- unless its last writes are still in
                # the WAL, which such a read would silently leave out
                wal = Path(f"{self.path}-wal")
                if wal.exists() and wal.stat().st_size > 0:
                    raise IRError("the store's last passes are in its write-ahead log", where=str(wal),
                                  expected="a folder SQLite may write its index into, to read the log",
                                  found="a read-only folder", fix="copy the folder (trace.db with trace.db-wal) "
                                  "somewhere writable and read the copy") from None
                self.db = self._connect(uri.replace("?mode=ro", "?immutable=1"), readonly)
            version, tables = retry_locked(lambda: self._setup(readonly))
            for _ in range(40):  # an empty file: a writer may be creating it this very moment (2 s at most)
                if not readonly or version or tables:
                    break
                time.sleep(0.05)
                version, tables = retry_locked(lambda: self._setup(readonly))
        except sqlite3.DatabaseError as e:
            if not readonly and getattr(e, "sqlite_errorcode", None) == _CANTOPEN:  # (a folder made meanwhile)
                check_store_path(self.path)
                raise WriteError("cannot write a trace store here", where=str(self.path),
                                 expected="a path for a new or existing trace.db", found=str(e),
                                 fix="choose another path, or check the folder's permissions") from None
            code = getattr(e, "sqlite_errorcode", None)
            if code == _CANTOPEN and not os.access(self.path, os.R_OK):
                raise IRError("cannot read the trace store", where=str(self.path), expected="a file you may read",
                              found="no read permission", fix="check its permissions (ls -l), or read a copy"
                              ) from None
            if code == _BUSY:  # another process holds the store (a writer mid-checkpoint, an sqlite3 shell)
                raise IRError("the trace store is locked", where=str(self.path), expected="a store no other process "
                              "holds an exclusive lock on", found=f"{e} (waited 30 s)",
                              fix="wait for the other process (a run still recording, an sqlite3 shell) and retry "
                              ) from None
            if code == _CORRUPT:  # a partial copy, a damaged disk
                raise self._damaged(str(e)) from None
            raise IRError("not a trace store", where=str(self.path), expected="an SQLite file written by torchtrace",
                          found=str(e), fix="pass the trace.db from `torchtrace run --out DIR`") from None
        if version not in (1, SCHEMA_VERSION) or not {"graphs", "passes"} <= tables:
            raise IRError("not a torchtrace store (or a newer one)", where=str(self.path),
                          expected=f"store schema {SCHEMA_VERSION} with tables graphs and passes",
                          found=f"schema {version}, tables {sorted(tables)}",
                          fix="open it with the torchtrace version that wrote it, or re-record" if readonly else
                          "record into a new path: torchtrace writes only into its own stores (this file is left "
                          "as it was)")

    def _find(self, given: str) -> None:
        """The store to read: ``path``, or the one in the folder `torchtrace run` wrote."""
        try:
            if self.path.is_dir() and (self.path / RUN_STORE).is_file():  # `torchtrace run`'s --out
                self.path = self.path / RUN_STORE
            if self.path.is_file():
                return
            there = "a folder with no trace.db" if self.path.is_dir() else \
                "no such file" if not self.path.exists() else "not a regular file"
        except OSError as e:  # (a name too long, ...)
            there = e.strerror or str(e)
        ref = _sqlite_ref(given)  # `store.db:3`: a pass of a store, where the store is wanted
        ref = ref if ref is not None and ref[1] else None
        raise UsageError("no trace store here", where=str(self.path), expected="a .db file written by "
                         "`torchtrace run` or torchtrace.Recorder",
                         found="a pass reference (STORE:N), not a store" if ref else there,
                         fix=f"pass the store itself: {ref[0]}" if ref else
                         "check the path (the default is ./torchtrace-out/trace.db)")

    @staticmethod
    def _connect(uri: str, readonly: bool) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=readonly, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA user_version")  # (opens the file: a folder that refuses the WAL index fails here)
        except BaseException:
            db.close()
            raise
        return db

    def _setup(self, readonly: bool) -> Tuple[int, set]:
        if not readonly and self._ours(*self._found()):  # (another app's database, a newer store: untouched)
            # switching to WAL takes an exclusive lock that SQLite does not wait for
            # (no busy handler): ranks that open a new store at once must not all try
            if self.db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            with self._transaction():
                if self._ours(*self._found()):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return self._found()

    def _found(self) -> Tuple[int, set]:
        """(schema version, tables), read in one statement: one snapshot, so a reader never sees
        a writer's tables without the version the same transaction set (two reads did: schema 0)."""
        rows = self.db.execute("SELECT (SELECT user_version FROM pragma_user_version), name FROM "
                               "(SELECT NULL AS name UNION ALL SELECT name FROM sqlite_master WHERE type='table')"
                               ).fetchall()
        return rows[0][0], {name for _, name in rows if name is not None}

    @staticmethod
    def _ours(version: int, tables: set) -> bool:
        """A new file, or a store of a schema this version writes."""
        return (version == 0 and not tables) or (version in (1, SCHEMA_VERSION) and {"graphs", "passes"} <= tables)

    def _transaction(self) -> Tx:
        return Tx(self.db)

    # -- writing ---------------------------------------------------------------
    def add(self, graph: Graph, *, idx: Optional[int] = None, wall_s: Optional[float] = None) -> int:
        """Store one pass atomically; returns its pass index (per rank)."""
        if self.readonly:
            raise WriteError("cannot add a pass to a store opened read-only", where=str(self.path),
                             expected="Store(path) (writable)", found="Store(path, readonly=True)",
                             fix="open it with Store(path) to record into it")
        meta = graph.meta
        rank = int(meta.get("rank") or 0)
        if self._claims is not None:  # (None: closed; the write below says so)
            self._claims.claim(rank, self)
        fp = graph.fingerprints
        witnesses: Dict[str, Any] = {n.id: n.witness.read() for n in graph.witnesses()}
        if graph.autograd.grads:  # per pass too: passes that share a stored graph have their own gradients
            witnesses["grads"] = [norm_json(gi.norm) for gi in graph.autograd.grads]
        markers = {n.id: n.args for n in graph.nodes if "annotation" in n.tags and n.args}
        if markers:  # (their names: `ProfilerStep#7`, a step number in a record_function)
            witnesses["markers"] = markers
        if meta.get("last"):  # (and whether it was the Recorder's last: not the stored graph's)
            witnesses["last"] = True
        witnesses["meta"] = {k: meta[k] for k in PER_PASS_META if k in meta}
        key = witnesses["graph"] = f"{fp['shapes']}.{content_key(graph, _PASS_OWN)}"
        phases = Counter(n.phase for n in graph.nodes)  # (optimizer and recompute ops are neither)
        with self._transaction():
            if self.db.execute("SELECT 1 FROM graphs WHERE shapes_fp = ? AND rank = ?",
                               (key, rank)).fetchone() is None:
                self.db.execute("INSERT INTO graphs VALUES (?, ?, ?, ?, ?, ?)",
                                (key, rank, fp["structure"], len(graph.nodes), meta.get("created"),
                                 encode(graph, gz=True)))
            if idx is None:
                row = self.db.execute("SELECT MAX(idx) FROM passes WHERE rank = ?", (rank,)).fetchone()
                idx = 0 if row[0] is None else row[0] + 1
            self.db.execute(
                "INSERT INTO passes (rank, idx, step, label, root, started, wall_s, n_ops, n_forward, n_backward,"
                " truncated, error, structure_fp, shapes_fp, witnesses) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rank, idx, meta.get("step"), meta.get("label"), meta.get("root"), meta.get("created"), wall_s,
                 len(graph.nodes), phases["forward"], phases["backward"], int(bool(meta.get("truncated"))),
                 meta.get("error"), fp["structure"], fp["shapes"], json.dumps(witnesses)))
        return idx

    # -- reading ---------------------------------------------------------------
    @contextmanager
    def _reading(self, *errors: type) -> Iterator[None]:
        """Damaged pages (or ``errors``, a pass's damaged witness values): an IRError."""
        try:
            yield
        except (sqlite3.DatabaseError, *errors) as e:
            raise self._damaged(f"{type(e).__name__}: {e}") from None

    def _damaged(self, found: str, where: Optional[str] = None) -> IRError:
        return IRError("damaged trace store", where=where or str(self.path), expected="a store as torchtrace wrote it",
                       found=found, fix="copy it again, or record again; SQLite's `.recover` may save the passes "
                       "that are intact")

    def passes(self, rank: Optional[int] = None) -> List[PassRecord]:
        if rank is not None and not fits_int64(rank):
            return []
        sql = f"SELECT {_COLUMNS} FROM passes"
        with self._reading():
            rows = (self.db.execute(sql + " ORDER BY rank, idx") if rank is None else
                    self.db.execute(sql + " WHERE rank = ? ORDER BY idx", (rank,))).fetchall()
        odd = [r[2] for r in rows if type(r[1]) is not int or type(r[2]) is not int]
        if odd:  # (a row another SQLite client rewrote: `max()` of the indices, `0–abc` in a table)
            raise self._damaged(f"pass rows whose rank or index is no integer: {odd[:3]}")
        return [PassRecord(*r[:11], bool(r[11]), *r[12:]) for r in rows]

    def ranks(self) -> List[int]:
        with self._reading():
            ranks = [r[0] for r in self.db.execute("SELECT DISTINCT rank FROM passes ORDER BY rank")]
        if not all(type(r) is int for r in ranks):  # (a row another SQLite client rewrote)
            raise self._damaged(f"pass rows with a rank that is no integer: {[r for r in ranks if type(r) is not int]}")
        return ranks

    def graph(self, idx: int, rank: int = 0) -> Graph:
        """The graph of pass ``idx`` (on ``rank``), with that pass's own meta and witness values."""
        row = None
        if fits_int64(idx) and fits_int64(rank):
            with self._reading():
                row = self.db.execute("SELECT step, label, started, error, witnesses, shapes_fp FROM passes "
                                      "WHERE rank = ? AND idx = ?", (rank, idx)).fetchone()
        if row is None:
            have = [p.idx for p in self.passes(rank)]
            raise UsageError("no such pass", where=f"{self.path}:{f'{rank}:' if rank else ''}{idx}",
                             expected=f"a pass index of rank {rank}: " + (f"0..{max(have)}" if have else "none stored"),
                             found=str(idx), fix="list the passes with `torchtrace variants STORE`")
        step, label, started, error, witnesses, key = row
        ref = f"{self.path}:{f'{rank}:' if rank else ''}{idx}"  # (as a pass reference is written)
        with self._reading(ValueError, TypeError, KeyError, AttributeError):  # this pass's witness values
            own = json.loads(witnesses or "{}")
            key = own.pop("graph", key)  # (stores before 2026-11-27 keep one graph per shapes fingerprint)
            blob = self.db.execute("SELECT ir FROM graphs WHERE shapes_fp = ? AND rank = ?", (key, rank)).fetchone()
        blob = blob and blob[0]
        if not isinstance(blob, bytes):  # (a cell another SQLite client rewrote, or a graph row deleted)
            found = "no graph row for the pass" if blob is None else f"the pass's graph as {type(blob).__name__}"
            raise self._damaged(f"{found}, not a BLOB", ref)
        if not (isinstance(step, (int, type(None))) and all(isinstance(x, (str, type(None)))
                                                             for x in (label, started, error))):
            raise self._damaged("a pass row whose step, label, time or error has another type", ref)
        try:
            g = decode(blob, ref)
        except NewerVersionError as e:  # (a newer torchtrace's graph: no damage)
            raise NewerVersionError(e.problem, where=ref, expected=e.expected, found=e.found, fix=e.fix) from None
        except IRError as e:
            at = (e.where or "")[len(ref):].lstrip(".: ")  # (bytes another client wrote: the store is damaged)
            raise self._damaged(f"the pass's graph{f' (at {at})' if at else ''}: {e.problem}; {e.found}", ref) from None
        with self._reading(ValueError, TypeError, KeyError, AttributeError):
            norms = own.pop("grads", None)  # and gradient norms (stores before 2026-11-26 have none)
            last = own.pop("last", False) is True
            flags = own.pop("meta", None)  # (stores before 2026-11-27 have none)
            marks = own.pop("markers", None) or {}
            nodes = tuple(replace(n, witness=_own_read(own[n.id], n.witness)) if n.id in own else
                          replace(n, args=marks[n.id]) if n.id in marks else n for n in g.nodes)
            autograd = g.autograd
            if isinstance(norms, list) and len(norms) == len(autograd.grads):
                autograd = replace(autograd, grads=tuple(replace(gi, norm=stored_norm(x))
                                                            for gi, x in zip(autograd.grads, norms)))
        meta = dict(g.meta, step=step, label=label, created=started, error=error, pass_index=idx)
        meta.pop("last", None)  # (the stored graph's may be another pass's)
        if last:
            meta["last"] = True
        if isinstance(flags, dict):
            if not isinstance(flags.get("compiled_regions_ran_eager", False), bool) or \
                    flags.get("grad_mode", "train") not in GRAD_MODES:
                raise self._damaged(f"per-pass meta {json.dumps(flags)[:200]}", ref)
            meta.update((k, flags[k]) for k in PER_PASS_META if k in flags)
        return Graph(meta=meta, modules=g.modules, values=g.values, nodes=nodes, outputs=g.outputs,
                     autograd=autograd, fingerprints=g.fingerprints)

    def graphs(self, rank: Optional[int] = None) -> Iterator[Tuple[PassRecord, Graph]]:
        for p in self.passes(rank):
            yield p, self.graph(p.idx, p.rank)

    def close(self) -> None:
        self.db.close()
        if self._claims is not None:  # (once: a second close must not let another Store's ranks go)
            self._claims.release(self)
            self._claims = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _own_read(d: Dict[str, Any], stored: Optional[Witness]) -> Witness:
    """A pass's own witness value (or shape), read where the stored graph read it."""
    return replace(witness_from_dict(d), called_from=stored.called_from if stored is not None else ())


_REF = re.compile(r"(?P<path>.+?\.db)(?::(?P<a>[^:]*))?(?::(?P<b>[^:]*))?")


def _sqlite_ref(ref: str) -> Optional[Tuple[str, List[str]]]:
    """A store under another name than ``*.db`` (``run.sqlite``, ``run.sqlite:3``):
    (path, [rank,] idx parts) when the file is an SQLite database, else None."""
    pieces = ref.split(":")
    for k in range(len(pieces), 0, -1):  # the longest prefix that is a file is the path
        path = ":".join(pieces[:k])
        try:
            if is_sqlite(path):
                return path, pieces[k:]
        except OSError:
            continue
    return None


def __getattr__(name: str) -> Any:  # (moved to passref.py: the names stay importable from here)
    if name in ("open_graph", "no_pass_of_rank"):
        from . import passref

        return getattr(passref, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
