"""``torchtrace run``: run a script as ``__main__`` under a Recorder.

The script sees exactly what ``python script.py args`` gives it (``sys.argv``,
``sys.path[0]``, ``__name__ == "__main__"``); its exit status is ours. Every
pass is committed as it finishes, so a script that raises, exits or is
interrupted keeps all finished passes.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UsageError, WriteError
from .ir import Graph
from .store import RUN_STORE


@dataclass
class RunOptions:
    out: Path = Path("torchtrace-out")
    max_passes: Optional[int] = None
    every: int = 1
    backward: bool = True
    skip: Sequence[str] = ()
    render: Optional[str] = None
    max_ops: Optional[int] = None
    cut: str = "root"  # "step": passes start at torchtrace.mark_step() only
    module: Optional[str] = None  # `-m MODULE`: the script is that module, run as `python -m` runs it


@dataclass
class _Progress:
    """Counts passes and variants as they are stored; writes variant renders."""

    options: RunOptions
    console: Console
    passes: int = 0
    variants: Dict[str, List[int]] = field(default_factory=dict)   # structure fp -> pass indices
    renders: List[Path] = field(default_factory=list)
    failed: Optional[str] = None  # why rendering stopped: said at the end, never raised into the script

    def __post_init__(self) -> None:
        self.folder = self.options.out.absolute()  # the script may chdir

    def on_pass(self, graph: Graph, index: int) -> None:
        self.passes += 1
        fp = graph.fingerprints["structure"]
        new = fp not in self.variants
        self.variants.setdefault(fp, []).append(index)
        if new and self.options.render and self.failed is None:
            try:  # (this runs inside the script's model call: its run must not depend on a render)
                self.renders.append(self._render(graph, len(self.variants) - 1))
            except Exception as e:
                self.failed = f"variant-{len(self.variants) - 1}: {e}"

    def _render(self, graph: Graph, k: int) -> Path:
        from .renderers import render

        fmt = self.options.render
        ext = {"markdown": "md", "mermaid": "mmd", "text": "txt"}.get(fmt, fmt)
        from .serialize import atomic_write

        data = render(graph, fmt)
        name = f"variant-{k}.{ext}"
        atomic_write(self.folder / name, data if isinstance(data, bytes) else data.encode("utf-8"))
        return self.options.out / name  # as the user wrote --out: their shell's cwd has not moved


@contextmanager
def _store_in(out: Path) -> Iterator[Path]:
    """The store path in ``out``, with the previous run's store moved aside,
    while this process holds the folder's lock: a second run into the same
    folder would move the first run's open store aside under it."""
    path = out / RUN_STORE
    if out.exists() and not out.is_dir():
        raise UsageError("--out names a file", where=str(out), expected="a folder (made if missing) for trace.db",
                         found="a file", fix=f"pass a folder, e.g. --out {out.stem or 'trace'}-out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".torchtrace.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a folder that cannot be made
        raise WriteError.of(out, e) from None
    try:
        _lock(fd, out)
        if path.exists():  # keep the previous run once, never append to it
            prev = out / "trace.prev.db"
            for suffix in ("-wal", "-shm", ""):  # an older run's log left there would be applied to this one
                Path(str(prev) + suffix).unlink(missing_ok=True)
            for suffix in ("", "-wal", "-shm"):
                old = Path(str(path) + suffix)
                if old.exists():
                    os.replace(old, Path(str(prev) + suffix))
            _renders_aside(out)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):  # a store that cannot be moved aside
            raise WriteError.of(out, e) from None
        raise
    try:
        yield path
    finally:
        os.close(fd)  # releases the lock


_RENDER = re.compile(r"variant-\d+\.[a-z]+")  # what --render writes (``Launch._render``)


def _renders_aside(out: Path) -> None:
    """The previous run's drawings go with its store: ``prev-variant-0.svg``
    (those of the run before it are dropped, as its store was)."""
    for f in out.glob("prev-variant-*"):
        if _RENDER.fullmatch(f.name[len("prev-"):]):
            f.unlink()
    for f in out.glob("variant-*"):
        if _RENDER.fullmatch(f.name):
            os.replace(f, out / f"prev-{f.name}")


def _lock(fd: int, out: Path) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError("another torchtrace run is recording into this folder", where=str(out),
                         expected="an --out folder no other run is using", found="its lock held",
                         fix="pass another --out, or wait until that run ends") from None


def _exit_code(e: SystemExit, console: Console) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):  # as the OS keeps it: sys.exit(-2) is 254 (never INTERRUPTED)
        return e.code % 256
    console.print(str(e.code), markup=False, highlight=False)  # sys.exit("message") prints and returns 1
    return 1


def _check_script(script: str) -> Path:
    path = Path(script)
    if not path.is_file() and not (path / "__main__.py").is_file():  # (`python adir` runs adir/__main__.py)
        raise UsageError("no such script", where=script, expected="a Python file to run (or a folder with __main__.py)",
                         found="nothing there" if not path.exists() else "a folder without __main__.py",
                         fix="give the path of the script, e.g. `torchtrace run train.py --lr 0.1`")
    return path


def _check_module(name: str) -> Path:
    """The file of module ``name``, found as ``python -m`` finds it (the current
    folder first; a package runs its ``__main__``)."""
    import importlib.util

    spec, why = None, "no module of that name"
    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec, why = importlib.util.find_spec(f"{name}.__main__"), "a package without __main__"
    except (ImportError, ValueError) as e:
        spec, why = None, f"{type(e).__name__}: {e}"
    finally:
        sys.path.pop(0)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise UsageError("no such module", where=name, expected="a module or package importable from here "
                         "(the current folder or sys.path)", found=why,
                         fix="check the name, and run from the folder `python -m` would run it from")
    return Path(spec.origin)


def run_script(script: str, argv: Sequence[str], options: RunOptions, *, console: Optional[Console] = None,
               worker: bool = False) -> int:
    """Run ``script`` like ``python script argv...`` while recording; returns its
    exit status. ``worker``: one rank of a distributed run (the launcher made
    the store and prints the summary)."""
    console = console or Console(stderr=True, emoji=False)
    path = _check_module(script) if options.module is not None else _check_script(script)
    with nullcontext(options.out / RUN_STORE) if worker else _store_in(options.out) as store_path:
        return _run(path, argv, options, console, worker, store_path)


def _run(path: Path, argv: Sequence[str], options: RunOptions, console: Console, worker: bool,
         store_path: Path) -> int:
    from .record.recorder import Recorder

    progress = _Progress(options, console)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(path), *argv]
    if path.is_file():  # (run_path puts a folder on sys.path itself)
        sys.path.insert(0, str(path.resolve().parent))
    code = 0
    # (no live status line while the script runs: rich's would swap the script's sys.stdout for a proxy
    # without an encoding, and redraw over its prompts; the summary comes at the end)
    # SIGTERM (a scheduler, or torchrun stopping the other ranks) ends the
    # script like an exception, so the pass in flight is stored too
    main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _terminator(signal.getsignal(signal.SIGTERM))) if main else None
    try:
        recorder = Recorder(store_path, every=options.every, max_passes=options.max_passes, backward=options.backward,
                            skip=options.skip, on_pass=progress.on_pass, cut=options.cut,
                            **({} if options.max_ops is None else {"max_ops": options.max_ops}))
        recorder.launched = True
        with recorder:
            if options.module is not None:  # as `python -m`: sys.argv[0] the module's file, the cwd on sys.path
                sys.path[0] = os.getcwd()
                runpy.run_module(options.module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(os.path.abspath(path), run_name="__main__")  # (__file__ absolute, as python's)
    except _Terminated:  # (the pass in flight is stored; then die by SIGTERM, as python does)
        code = TERMINATED
    except SystemExit as e:
        code = _exit_code(e, console)
    except BaseException as e:  # the script's own error: show it as python would, without our frames
        code = INTERRUPTED if isinstance(e, KeyboardInterrupt) else 1  # (Ctrl-C: then die by SIGINT, as python)
        print("".join(_without_our_frames(traceback.TracebackException.from_exception(e)).format()),
              end="", file=sys.stderr)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        sys.argv, sys.path[:] = saved_argv, saved_path
    if not worker:
        _summary(console, progress, store_path, path, code)
    return code


def run_distributed(script: str, argv: Sequence[str], options: RunOptions, nproc: int, *,
                    console: Optional[Console] = None) -> int:
    """``torchtrace run --nproc-per-node N``: start N ranks through
    ``torch.distributed.run`` (torchrun); every rank records into one store."""
    from .ranks import rank_report
    from .store import Store

    console = console or Console(stderr=True, emoji=False)
    _check_script(script)
    with _store_in(options.out) as store_path:
        Store(store_path).close()  # made (WAL, schema) once here, not by every rank at the same moment
        spec = json.dumps({"out": str(options.out), "max_passes": options.max_passes, "every": options.every,
                           "backward": options.backward, "skip": list(options.skip), "max_ops": options.max_ops,
                           "cut": options.cut})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "torchtrace.launch", spec, script, *argv]
        code = _wait_forwarding(subprocess.Popen(cmd, start_new_session=True))
        with Store(store_path, readonly=True) as store:
            report = rank_report(store)
    console.print(f"[bold]torchtrace[/]: {nproc} ranks of {escape(Path(script).name)} "
                  f"({_ENDED.get(code, f'exit {code}')}) -> "
                  f"{escape(str(store_path))}", highlight=False, soft_wrap=True)
    console.print(str(report), markup=False, highlight=False, soft_wrap=True)
    console.print(f"  next: torchtrace ranks {store_path}  |  torchtrace variants {store_path} --rank 1",
                  markup=False, highlight=False, soft_wrap=True)
    return code


def _wait_forwarding(proc: "subprocess.Popen[bytes]") -> int:
    """Wait for torchrun (started in a session of its own), passing it the
    SIGINT, SIGTERM or SIGHUP this process gets (Ctrl-C, a scheduler stopping the
    job, a closed terminal: SIGHUP as SIGTERM, so that the ranks store the pass in
    flight): torchrun then stops the ranks, and this process keeps the folder's
    lock until torchrun is gone. Each signal reaches torchrun once, from here
    (in one process group it got a terminal's or ``kill 0``'s signal twice, and
    a second one cut its shutdown short). Then this process ends by the first
    such signal, as python does."""
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()
    got: List[int] = []

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return code if not got else INTERRUPTED if got[0] == signal.SIGINT else TERMINATED


def _worker_main(args: Sequence[str]) -> int:
    """Entry of each rank: ``python -m torchtrace.launch SPEC script args...``."""
    spec = json.loads(args[0])
    options = RunOptions(out=Path(spec["out"]), max_passes=spec["max_passes"], every=spec["every"],
                         backward=spec["backward"], skip=tuple(spec["skip"]), render=None,
                         max_ops=spec["max_ops"], cut=spec["cut"])
    return run_script(args[1], list(args[2:]), options, worker=True)


INTERRUPTED = -signal.SIGINT  # the script ended by KeyboardInterrupt: exit as python does
TERMINATED = -signal.SIGTERM  # ended by SIGTERM (torchrun stopping the other ranks): likewise


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


_ENDED = {INTERRUPTED: "interrupted", TERMINATED: "terminated"}  # what the summary says of a signal


class _Terminated(SystemExit):
    """SIGTERM, raised in the script so that the pass in flight is stored."""

    meta_name = "SIGTERM"  # what ``meta.error`` says


def _terminator(before: Any) -> Any:
    """The SIGTERM handler of the run: raises ``_Terminated`` in the script's
    process; in a process the script forked (``multiprocessing``, a DataLoader
    worker), which inherits it, does what ``before`` (the handler it replaced)
    does, so that ``Process.terminate()`` works as under python."""
    pid = os.getpid()

    def terminate(signum: int, frame: Any) -> None:
        if os.getpid() == pid:
            raise _Terminated(128 + signum)
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:  # the default (or a handler not set from Python): die by the signal
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return terminate


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


def _summary(console: Console, progress: _Progress, store: Path, script: Path, code: int) -> None:
    n = progress.passes
    console.print(f"[bold]torchtrace[/]: recorded {n} pass{'es' if n != 1 else ''} in "
                  f"{len(progress.variants)} variant{'s' if len(progress.variants) != 1 else ''} from "
                  f"{escape(script.name or script.resolve().name)} ({_ENDED.get(code, f'exit {code}')}) -> "
                  f"{escape(str(store))}", highlight=False, soft_wrap=True)
    if progress.variants:
        table = Table(box=None, show_header=True, pad_edge=False)
        for col in ("variant", "structure", "passes", "first", "last"):
            table.add_column(col)
        for k, (fp, idx) in enumerate(progress.variants.items()):
            table.add_row(str(k), fp, str(len(idx)), str(idx[0]), str(idx[-1]))
        console.print(table)
    for p in progress.renders:
        console.print(f"  wrote {p}", highlight=False, markup=False, soft_wrap=True)
    if progress.failed:
        console.print(f"  rendering stopped at {progress.failed}", highlight=False, markup=False, soft_wrap=True)
    if n:
        q = shlex.quote  # (pasted into a shell: a folder with spaces stays one argument)
        console.print(f"  next: torchtrace variants {q(str(store))}  |  torchtrace show {q(f'{store}:0')}  |  "
                      f"torchtrace diff {q(f'{store}:0')} {q(f'{store}:-1')}", highlight=False, markup=False,
                      soft_wrap=True)


if __name__ == "__main__":
    exit_like_python(_worker_main(sys.argv[1:]))
