"""Pass references on the command line (``trace.db:3``, ``trace.db:1:3``,
``runfolder:-1``, a graph file) and the errors for ones that name nothing."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .errors import UsageError
from .ir import Graph
from .store import _REF, RUN_STORE, Store, _sqlite_ref


def _in_run_folder(ref: str) -> str:
    """``OUT`` or ``OUT:3``, where OUT is the folder `torchtrace run --out` wrote:
    the same reference to the store inside it."""
    pieces = ref.split(":")
    for k in range(len(pieces), 0, -1):
        folder = Path(":".join(pieces[:k]))
        try:
            if folder.is_dir() and (folder / RUN_STORE).is_file():
                return ":".join([str(folder / RUN_STORE), *pieces[k:]])
        except OSError:  # (a name too long: no folder, and not ours to say)
            continue
    return ref


def open_graph(ref: str) -> Graph:
    """A graph from a CLI reference: ``file.json[.gz]``, ``store.db`` (its last
    pass), ``store.db:IDX`` or ``store.db:RANK:IDX`` (negative IDX counts back);
    the folder `torchtrace run` wrote stands for the store in it."""
    if not ref.strip():
        raise UsageError("no graph named", expected="FILE.json[.gz], STORE.db[:IDX] or a `torchtrace run` folder",
                         found=repr(ref), fix="e.g. torchtrace-out/trace.db:0")
    ref = _in_run_folder(ref)
    found = _store_ref(ref)
    if found is None:
        from .serialize import load

        _not_a_pass_of_a_file(ref)
        return load(ref)
    path, parts = found
    if len(parts) > 2 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise UsageError("bad pass reference", where=ref, expected="STORE.db, STORE.db:IDX or STORE.db:RANK:IDX",
                         found=repr(":".join(parts)) if any(p.strip() for p in parts) else "nothing after ':'",
                         fix="use a pass index such as trace.db:3")
    rank = int(parts[0]) if len(parts) == 2 else 0
    with Store(path, readonly=True) as store:
        passes = store.passes(rank)
        if not passes:
            raise no_pass_of_rank(store, path, rank)
        idx = int(parts[-1]) if parts else -1
        if idx < 0:
            if -idx > len(passes):
                raise UsageError("no such pass", where=ref, expected=f"-1..-{len(passes)}", found=str(idx),
                                 fix="list the passes with `torchtrace variants STORE`")
            idx = passes[idx].idx
        return store.graph(idx, rank)


def _store_ref(ref: str) -> Optional[Tuple[str, List[str]]]:
    """(store path, [rank,] idx parts) of a reference to a store's pass; None for a graph file."""
    m = _REF.fullmatch(ref)
    if m is not None:
        return m.group("path"), [p for p in (m.group("a"), m.group("b")) if p is not None]
    return _sqlite_ref(ref)


def ref_file(ref: str) -> Optional[Path]:
    """The file a reference reads (the store of ``trace.db:3``, a graph file), if there is one."""
    ref = _in_run_folder(ref)
    found = _store_ref(ref)
    path = Path(found[0] if found is not None else ref)
    try:
        return path if path.is_file() else None
    except OSError:  # (a name too long)
        return None


def _not_a_pass_of_a_file(ref: str) -> None:
    """``graph.json:3``: a graph file holds one pass; the index names nothing."""
    m = re.fullmatch(r"(.+?)((?::-?\d*){1,2})", ref)
    try:
        if m is None or Path(ref).exists() or not Path(m.group(1)).is_file():
            return
    except OSError:  # (a name too long)
        return
    raise UsageError("a graph file holds one pass", where=ref, expected="FILE.json[.gz] alone (STORE.db:IDX picks a "
                     "pass of a store)", found=f"a pass index ({m.group(2)}) after a graph file",
                     fix=f"drop it: {m.group(1)}")


def no_pass_of_rank(store: Store, path: Any, rank: int, option: bool = False) -> UsageError:
    """The error for a rank without passes: the ranks that have some, if any do
    (``option``: the command has ``--rank``)."""
    ranks = store.ranks()
    if not ranks:
        return UsageError("the store holds no pass", where=f"{path} (rank {rank})",
                          expected="at least one recorded pass", found="none",
                          fix="record one with `torchtrace run script.py`")
    listed = ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")
    return UsageError(f"rank {rank} recorded no pass", where=str(path), expected=f"a rank of {listed}",
                      found=f"rank {rank}", fix="name a rank that recorded passes, e.g. "
                      + (f"--rank {ranks[0]}" if option else f"{path}:{ranks[0]}:0"))
