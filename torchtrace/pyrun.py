"""Running a script as ``python`` would, for ``torchtrace run``: its
``__main__`` globals, ``sys.path``, exit status, uncaught exceptions (through
``sys.excepthook``), ``sys.exit("message")``, and death by SIGINT or SIGTERM.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import traceback
import zipfile
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError
from .termwatch import Watch, die_by

INTERRUPTED = -signal.SIGINT  # the script ended by KeyboardInterrupt: exit as python does
TERMINATED = -signal.SIGTERM  # ended by SIGTERM (torchrun stopping the other ranks): likewise
ENDED = {INTERRUPTED: "interrupted", TERMINATED: "terminated"}  # what the summary says of a signal
GRACE_S = 10.0  # how long a SIGTERM's exception may take to leave the script before the process dies


def check_script(script: str) -> Path:
    """The script to run, checked as python checks it before running it: any
    path that is no folder is a script (a FIFO from ``<(...)``, ``/dev/null``:
    python runs them), a folder runs its ``__main__.py``; a store or a saved
    graph is refused (the command meant was another)."""
    path = Path(script)
    try:
        if path.is_dir():  # (`python adir` runs adir/__main__.py)
            if not (path / "__main__.py").is_file():
                raise _no_script(script, "a folder without __main__.py")
        elif not path.exists():
            raise _no_script(script, "nothing there")
    except OSError as e:  # (a name too long, a folder that may not be searched: python cannot open it either)
        raise UsageError("cannot open the script", where=script, expected="a Python file to run",
                         found=e.strerror or str(e), fix="check the path (its length, its folders' permissions)"
                         ) from None
    kind = _recording(path)
    if kind is not None:  # (`torchtrace run trace.db`: the command meant was another)
        raise UsageError("not a script", where=script, expected="a Python file to run", found=kind,
                         fix=f"read it with `torchtrace show {script}{':0' if 'store' in kind else ''}` "
                         f"(or variants, diff)")
    return path


def _no_script(script: str, found: str) -> UsageError:
    """Nothing python could run at ``script`` (``found`` says what is there instead)."""
    return UsageError("no such script", where=script, expected="a Python file to run (or a folder with __main__.py)",
                      found=found, fix="give the path of the script, e.g. `torchtrace run train.py --lr 0.1`")


def _recording(path: Path) -> Optional[str]:
    """What a file torchtrace wrote is, when ``path`` is one: a store, a gzipped
    or a JSON graph."""
    from .serialize import GZIP_MAGIC, SQLITE_HEADER

    if not is_regular(path):  # (a FIFO can be read once: what is read here, python would not run)
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError:
        return None  # (python says why it cannot run it)
    for magic, kind in ((SQLITE_HEADER, "a trace store (SQLite)"), (GZIP_MAGIC, "a gzipped file (a saved graph?)")):
        if head.startswith(magic):
            return kind
    return "a torchtrace graph (JSON)" if head.lstrip().startswith(b"{") and b'"torchtrace.graph"' in head else None


def check_module(name: str) -> Path:
    """The file of module ``name``, found as ``python -m`` finds it (the current
    folder first; a package runs its ``__main__``), without running any of its
    packages' ``__init__`` (they run when the module does, with its ``sys.argv``)."""
    spec, why = None, "no module of that name"
    sys.path.insert(0, os.getcwd())
    try:
        spec = _locate(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = _locate(f"{name}.__main__")
            if spec is None:  # (as python says: "'pkg' is a package and cannot be directly executed")
                raise UsageError("a package without __main__", where=name,
                                 expected=f"a module, or a package with a __main__.py (python runs {name}.__main__)",
                                 found=f"the package {name}, which has no __main__ module",
                                 fix=f"name the module of {name} to run (`-m {name}.train`), or add "
                                     f"{name}/__main__.py")
    except (ImportError, ValueError) as e:
        spec, why = None, f"{type(e).__name__}: {e}"
    finally:
        sys.path.pop(0)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise UsageError("no such module", where=name, expected="a module or package importable from here "
                         "(the current folder or sys.path)", found=why,
                         fix="check the name, and run from the folder `python -m` would run it from")
    return Path(spec.origin)


def _locate(name: str) -> Any:
    """The spec of module ``name`` (dotted), found on ``sys.path`` by the path
    finder alone, a package at a time: nothing is imported."""
    import importlib.machinery
    import importlib.util

    if not name or any(not part.isidentifier() for part in name.split(".")):
        raise ValueError(f"not a module name: {name!r}")
    spec, path = None, None
    for part in name.split("."):
        if spec is not None and spec.submodule_search_locations is None:
            return None  # (a module, not a package, with a name after it)
        full = part if spec is None else f"{spec.name}.{part}"
        if path is None and part in sys.builtin_module_names:
            return importlib.util.find_spec(part)
        spec = importlib.machinery.PathFinder.find_spec(full, path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
    return spec


KEEP_MAIN = False  # the console script: the script's module stays ``__main__`` until the process ends


def execute(path: Path, module: Optional[str], typed: Optional[str] = None) -> None:
    """:func:`_execute`, with as much room to recurse as under python: the frames
    below the script's (the command line's, torchtrace's: about 20) are added to
    the recursion limit while it runs (a script that recursed 980 deep raised
    RecursionError here)."""
    extra, f = _C_CALLS, sys._getframe()
    while f is not None:
        extra, f = extra + 1, f.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + extra)
    try:
        _execute(path, module, typed)
    finally:
        if sys.getrecursionlimit() == limit + extra:  # (unless the script set its own)
            sys.setrecursionlimit(limit)


_C_CALLS = 5  # calls through C below the script (click's, exec's) that count as frames: measured on 3.11


def _execute(path: Path, module: Optional[str], typed: Optional[str] = None) -> None:
    """Run the script (or ``python -m`` module) in a new ``__main__`` module, with
    the globals python gives one (``__builtins__`` the module, ``__loader__``,
    ``__annotations__``...). It stays ``sys.modules["__main__"]`` after the body
    ends, as under python, for atexit handlers and threads that pickle the script's
    classes (under ``KEEP_MAIN``; in-process callers get theirs back). ``sys.path[0]``
    is the script's folder (the current folder for a module), in place of the
    launcher's own; a file runs with ``__package__`` None (PEP 366). ``typed``:
    the path as the user typed it (``./app/``: a folder's ``sys.path[0]``, as python's)."""
    safe = getattr(sys.flags, "safe_path", False)  # (python -P adds no folder of the script's)
    name = os.path.abspath(path)  # (__file__ absolute, as python's)
    regular = is_regular(path)  # (else a FIFO or a device: read once, by compile below, as python reads it)
    archive = module is None and (path.is_dir() or regular and zipfile.is_zipfile(name))  # (run_path: first)
    if not safe:
        sys.path[0:1] = [os.getcwd()] if module is not None else [] if archive else [str(path.resolve().parent)]
    if module is None and not archive and regular and _compiled(name):
        runpy.run_path(name, run_name="__main__")  # (a .pyc: as python runs it)
        return
    if archive:  # (a folder or zip: its __main__ module, from it, as python runs it, sys.path[0] not normalised)
        typed = typed or str(path)
        sys.path.insert(0, typed if os.path.isabs(typed) else os.path.join(os.getcwd(), typed))
        module = "__main__"
    launcher = sys.modules.get("__main__")
    main = _new_main(launcher)
    sys.modules["__main__"] = main
    try:
        if module is not None:
            as_main = getattr(runpy, "_run_module_as_main", None)
            if as_main is None:  # pragma: no cover - a Python without it
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:  # (what `python -m` runs: the module's code in sys.modules["__main__"]'s globals)
                as_main(module, alter_argv=False)
            return
        with open(name, "rb") as f:
            source = f.read() if regular else _read_stream(f)
        if not regular:  # (a FIFO: opened again for a line, it would wait for a writer that has gone)
            _remember_lines(name, source)
        code = compile(source, name, "exec", dont_inherit=True)
        main.__dict__.update(__file__=name, __cached__=None)
        if hasattr(launcher, "__loader__"):
            import importlib.machinery

            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", name)
        exec(code, main.__dict__)
    finally:
        if not KEEP_MAIN and launcher is not None:
            sys.modules["__main__"] = launcher


def _new_main(launcher: Any) -> Any:
    """A module ``__main__`` with the globals python gives a script's (those of
    the launcher's own ``__main__``, which python ran as a script: ``__builtins__``,
    ``__annotations__`` where this Python makes one)."""
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __package__=None, __spec__=None)
    if launcher is not None and "__annotations__" in vars(launcher):
        main.__annotations__ = {}
    return main


def _remember_lines(name: str, source: bytes) -> None:
    """Keep the lines of a script that can be read only once in ``linecache``,
    where tracebacks and the recorder's source lines read them (an entry
    without a modification time: never read again from the file)."""
    import io
    import linecache
    import tokenize

    try:
        encoding = tokenize.detect_encoding(io.BytesIO(source).readline)[0]
        lines = io.TextIOWrapper(io.BytesIO(source), encoding=encoding).readlines()  # (as linecache splits)
    except (SyntaxError, UnicodeDecodeError, LookupError):  # (compile says why)
        return
    linecache.cache[name] = (len(source), None, lines, name)


def _read_stream(f: Any, cap: int = 1 << 28) -> bytes:
    """A FIFO's or a device's bytes, up to the first NUL (compile then says "source
    code cannot contain null bytes", as python does at once for ``/dev/zero``) or
    ``cap`` bytes: such a file may never end."""
    chunks, size = [], 0
    while size < cap:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\0" in chunk:
            break
    return b"".join(chunks)


def is_regular(path: Path) -> bool:
    """Is ``path`` a regular file, which may be read more than once?"""
    try:
        return path.is_file()
    except OSError:
        return False


def _compiled(name: str) -> bool:
    """Is the file compiled bytecode (a .pyc, which python runs as such)?"""
    import importlib.util

    with open(name, "rb") as f:
        return f.read(4) == importlib.util.MAGIC_NUMBER


def exit_status(e: SystemExit) -> int:
    """The status python exits with for ``e``; ``sys.exit("message")`` prints it."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):  # as the OS keeps it: sys.exit(-2) is 254 (never INTERRUPTED)
        return e.code % 256 if -2 ** 63 <= e.code < 2 ** 63 else 255  # (past a C long: -1, as python)
    try:
        print(e.code, file=sys.stderr)
    except Exception:  # (a closed stderr, as python: the status stays 1)
        pass
    return 1


def show_uncaught(e: BaseException, hook: Any = None) -> None:
    """What python prints for an uncaught exception: ``sys.excepthook`` when the
    script set one (another than ``hook``, the one before it ran), else the
    traceback without torchtrace's and runpy's frames."""
    try:
        if sys.excepthook not in (sys.__excepthook__, hook):
            tb = e.__traceback__  # (from the script's own frames on, as python hands it)
            while tb is not None and (tb.tb_frame.f_code.co_filename or "").startswith(_OURS):
                tb = tb.tb_next
            sys.excepthook(type(e), e.with_traceback(tb), tb)  # (hooks that format e.__traceback__ too)
            return
        print("".join(_without_our_frames(traceback.TracebackException.from_exception(e)).format()),
              end="", file=sys.stderr)
    except Exception:  # (a closed stderr: nothing to print to)
        pass


def exit_like_python(code: int) -> None:
    """``sys.exit(code)``; after a KeyboardInterrupt or a SIGTERM, die by that
    signal as python does (a shell or a parent process sees the signal, not an
    exit status)."""
    if code in (INTERRUPTED, TERMINATED):
        sig = -code
        if os.name == "posix":
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        code = 128 + sig
    sys.exit(code)


class Terminated(SystemExit):
    """SIGTERM, raised in the script so that the pass in flight is stored."""

    meta_name = "SIGTERM"  # what ``meta.error`` says


class Terminator:
    """The SIGTERM handler of the run: raises ``Terminated`` in the script's
    process. The script could catch it (``except BaseException``) and go on,
    where python dies at once: unless ``reached()`` says that it got out of the
    script within ``GRACE_S``, the process then dies by SIGTERM. In a process
    the script forked (``multiprocessing``, a DataLoader worker), which inherits
    the handler, it does what ``before`` (the handler it replaced) does, so that
    ``Process.terminate()`` works as under python."""

    def __init__(self, before: Any) -> None:
        self.before, self.pid = before, os.getpid()
        self.timer: Optional[threading.Timer] = None  # (armed by a SIGTERM, until its exception leaves)
        self._lock = threading.Lock()
        self.watch = Watch(self._heard)  # (arms it as the signal comes, while the script is in a long C call too)

    def __call__(self, signum: int, frame: Any) -> None:
        if os.getpid() == self.pid:
            self._arm()
            raise Terminated(128 + signum)
        if callable(self.before):
            self.before(signum, frame)
        elif self.before != signal.SIG_IGN:  # the default (or a handler not set from Python): die by the signal
            _die(signum)

    def _heard(self) -> None:
        """(The watch's thread.) Only while this is the SIGTERM handler: a script that
        set its own handles the signal itself, as under python."""
        if signal.getsignal(signal.SIGTERM) is self:
            self._arm()

    def _arm(self) -> None:
        with self._lock:
            if self.timer is None:
                self.timer = threading.Timer(GRACE_S, die_by, (signal.SIGTERM,))
                self.timer.daemon = True
                self.timer.start()

    def reached(self) -> None:
        """The exception left the script: the run stores the pass, then dies by SIGTERM itself."""
        with self._lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    @property
    def swallowed(self) -> bool:
        """A SIGTERM came and its exception never left the script (it caught it)."""
        return self.timer is not None


def _die(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.abspath(runpy.__file__), "<frozen runpy>")


def _without_our_frames(te: traceback.TracebackException, depth: int = 0) -> traceback.TracebackException:
    """The traceback python would print: torchtrace's frames (the launcher, the
    recorder's handler an op raised in) and runpy's left out, in chained
    exceptions too. A script that does not compile shows no frame at all."""
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not (f.filename or "").startswith(_OURS)])
    for chained in (te.__cause__, te.__context__):
        if chained is not None and depth < 32:
            _without_our_frames(chained, depth + 1)
    return te
