"""The options of ``trace()`` and ``Recorder`` (and so of ``torchtrace run``), checked before anything
is installed (and before torch is imported: `torchtrace run` checks them first)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple

from .errors import UsageError, WriteError


def capture_options(skip: Any, max_ops: Any) -> Tuple[Tuple[str, ...], Optional[int]]:
    """``skip`` and ``max_ops`` as ``trace()`` and ``Recorder`` take them, checked
    before anything is installed: one prefix or an iterable of them; None or >= 1."""
    if isinstance(skip, str):
        skip = (skip,)
    try:
        prefixes = tuple(skip)
    except TypeError:
        prefixes = (None,)
    if not all(isinstance(s, str) for s in prefixes):
        raise UsageError("bad `skip`", expected="a source-path prefix or a list of them", found=repr(skip),
                         fix="pass e.g. skip=['transformers/'] (or leave it out)")
    if any(not s.strip() for s in prefixes):  # (every path starts with "": no line would be the user's)
        raise UsageError("an empty `skip` prefix", expected="source-path prefixes such as 'transformers/'",
                         found=repr(skip), fix="drop the empty prefix: it matches every file, so no op gets a line")
    if max_ops is not None and (not isinstance(max_ops, int) or isinstance(max_ops, bool) or max_ops < 1):
        raise UsageError("bad `max_ops`", expected="None (no cap) or an integer >= 1", found=repr(max_ops),
                         fix="pass e.g. max_ops=1_000_000, or None for no cap")
    return prefixes, max_ops


def recorder_options(store: Any, every: Any, max_passes: Any, backward: Any, on_pass: Any, cut: Any) -> None:
    """``Recorder``'s own options, checked when it is made (a bad ``on_pass`` failed
    at the first pass boundary, inside the user's model call)."""
    from .store import Store

    if not isinstance(store, (str, Store)) and not hasattr(store, "__fspath__"):
        raise UsageError("bad store", expected="a path to a .db file (str or pathlib.Path) or a Store",
                         found=repr(store), fix="pass e.g. 'runs/trace.db' (or leave it out)")
    if not isinstance(store, Store):
        check_store_path(store)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UsageError("bad `every`", expected="an integer >= 1 (record every k-th pass)",
                         found=repr(every), fix="use every=1 to record all passes")
    if max_passes is not None and (not isinstance(max_passes, int) or isinstance(max_passes, bool) or max_passes < 0):
        raise UsageError("bad `max_passes`", expected="None or an integer >= 0", found=repr(max_passes),
                         fix="use max_passes=None for no limit")
    if not isinstance(backward, bool):
        raise UsageError("bad `backward`", expected="True or False (record backward and optimizer ops)",
                         found=repr(backward), fix="pass backward=False to record forward passes only")
    if on_pass is not None and not callable(on_pass):
        raise UsageError("bad `on_pass`", expected="None or a function on_pass(graph, index)", found=repr(on_pass),
                         fix="pass a function, e.g. on_pass=lambda g, i: print(i, len(g.nodes))")
    if cut not in ("root", "step"):
        raise UsageError("bad `cut`", expected="'root' (a pass per root model call) or 'step' (a pass per "
                         "step() / mark_step())", found=repr(cut), fix="use cut='step' with rec.step(i)")


def check_store_path(path: Any) -> None:
    """Refuse a folder as a store to write: SQLite cannot open one ("unable to open database
    file", which never said why), and ``"newdir/"`` lost its slash in ``Path`` and became
    a store *file* named ``newdir``. Checked when a ``Recorder`` is made and when a ``Store``
    opens for writing; the fix names a file inside the folder (a Python path, not a CLI flag)."""
    from .store import RUN_STORE

    raw = os.fsdecode(os.fspath(path))
    try:
        is_dir = Path(raw).is_dir()
    except (OSError, ValueError):  # (a name too long, a NUL: opening the store says so)
        return
    expected = f"a trace store file to create or add to, such as {RUN_STORE}"
    if is_dir:
        raise WriteError("is a folder", where=raw, expected=expected, found="a folder",
                         fix=f"give a store file inside it, such as {Path(raw) / RUN_STORE}")
    if raw.endswith(("/", os.sep)):
        raise WriteError("names a folder", where=raw, expected=expected, found="a path ending in a slash",
                         fix=f"name a store file inside it, such as {raw}{RUN_STORE}")
