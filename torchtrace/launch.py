"""``torchtrace run``: run a script as ``__main__`` under a Recorder.

The script sees exactly what ``python script.py args`` gives it (``sys.argv``,
``sys.path[0]``, ``__name__ == "__main__"``); its exit status is ours. Every
pass is committed as it finishes, so a script that raises, exits or is
interrupted keeps all finished passes.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import TorchtraceError, UsageError
from .ir import Graph
from .pyrun import (ENDED, INTERRUPTED, TERMINATED, Terminated, Terminator, check_module, check_script, execute,
                    exit_like_python, exit_status, is_regular, show_uncaught)
from .outdir import PREV_STORE, claim_drawing, store_in
from .whentorch import WhenTorch
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
    """Counts passes and variants as they are stored; writes variant renders; on
    a terminal, says how far the run is: a line (never redrawn over the script's
    own output) at the first pass, at each new variant, and every ``EVERY_S`` when
    the script's standard output goes elsewhere (on the same terminal a line
    may land inside one the script has half written: only the rare ones then)."""

    options: RunOptions
    console: Console
    live: bool = False
    passes: int = 0
    variants: Dict[str, List[int]] = field(default_factory=dict)   # structure fp -> pass indices
    renders: List[Path] = field(default_factory=list)
    failed: Optional[str] = None  # why rendering stopped: said at the end, never raised into the script

    EVERY_S = 10.0

    def __post_init__(self) -> None:
        self.folder = self.options.out.absolute()  # the script may chdir
        self.said = -self.EVERY_S
        self.periodic = self.live and not _same_terminal()

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
        now = time.monotonic()
        if self.live and (new or (self.periodic and now - self.said >= self.EVERY_S)):
            self.said = now
            n, k = self.passes, len(self.variants)
            _say(self.console, f"[dim]torchtrace: {n} pass{'es' * (n != 1)} recorded, {k} variant{'s' * (k != 1)}"
                               f"{f' (new: variant-{k - 1} at pass {index})' if new else ''}[/dim]")

    def settle(self, store: Path) -> None:
        """Count the passes and variants as the store holds them, where it holds
        more: a Ctrl-C between a pass's commit and ``on_pass`` left one uncounted."""
        from .store import Store

        try:
            with Store(store, readonly=True) as st:
                rows = st.passes()
        except Exception:  # (no store: the run stored no pass; a damaged one: the counts as they were)
            return
        _let_go(store)
        if len(rows) > self.passes:
            self.passes, self.variants = len(rows), {}
            for r in rows:
                self.variants.setdefault(r.structure_fp, []).append(r.idx)

    def _render(self, graph: Graph, k: int) -> Path:
        from .renderers import render

        fmt = self.options.render
        ext = {"markdown": "md", "mermaid": "mmd", "text": "txt", "terminal": "txt"}.get(fmt, fmt)
        from .filewrite import atomic_write

        data = render(graph, fmt)
        name = f"variant-{k}.{ext}"
        claim_drawing(self.folder, name)  # (listed first: the next run moves only the drawings a run listed)
        atomic_write(self.folder / name, data if isinstance(data, bytes) else data.encode("utf-8"))
        return self.options.out / name  # as the user wrote --out: their shell's cwd has not moved


def _same_terminal() -> bool:
    """Do standard output and standard error go to one terminal?"""
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno()))
    except (OSError, ValueError, AttributeError):  # (closed, or replaced by an object without a descriptor)
        return True


def _stderr_now() -> Console:
    """A console on standard error as it is now, before the script runs: the
    summary goes there even when the script points ``sys.stderr`` at its own file."""
    return Console(file=sys.stderr, highlight=False, emoji=False)


def _check_options(options: RunOptions) -> None:
    """The Recorder's options, checked before anything in the folder moves."""
    from .options import capture_options

    capture_options(options.skip, options.max_ops)


def run_script(script: str, argv: Sequence[str], options: RunOptions, *, worker: bool = False) -> int:
    """Run ``script`` like ``python script argv...`` while recording; returns its
    exit status. ``worker``: one rank of a distributed run (the launcher made
    the store and prints the summary)."""
    console = _stderr_now()
    path = check_module(script) if options.module is not None else check_script(script)
    _check_options(options)
    with nullcontext(options.out.absolute() / RUN_STORE) if worker else store_in(options.out) as store_path:
        return _run(path, argv, options, console, worker, store_path,
                    str(path) if options.module is not None else script)  # (sys.argv[0] as typed: `./app/`)


def _run(path: Path, argv: Sequence[str], options: RunOptions, console: Console, worker: bool,
         store_path: Path, argv0: str) -> int:
    progress = _Progress(options, console, live=console.is_terminal and not worker)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [argv0, *argv]
    code, pid, started, hook = 0, os.getpid(), False, sys.excepthook  # (the CLI's own hook: not the script's)
    sys.excepthook = sys.__excepthook__  # (what python gives the script)
    # (no live status line while the script runs: rich's would swap the script's sys.stdout for a proxy
    # without an encoding, and redraw over its prompts; the summary comes at the end)
    # SIGTERM (a scheduler, or torchrun stopping the other ranks) ends the
    # script like an exception, so the pass in flight is stored too
    main = threading.current_thread() is threading.main_thread()
    terminator = Terminator(signal.getsignal(signal.SIGTERM)) if main else None
    old_term = signal.signal(signal.SIGTERM, terminator) if terminator is not None else None
    if terminator is not None:
        terminator.watch.start()
    def recorder() -> Any:  # (made once torch is imported: the script may set what torch reads at import)
        from .record.recorder import Recorder

        made = Recorder(store_path, every=options.every, max_passes=options.max_passes, backward=options.backward,
                        skip=options.skip, on_pass=progress.on_pass, cut=options.cut,
                        **({} if options.max_ops is None else {"max_ops": options.max_ops}))
        made.launched = True
        return made

    try:
        with WhenTorch(recorder):
            started = True
            try:
                execute(path, options.module, argv0)
            except Terminated:  # (out of the script: the pass in flight is stored, then the death)
                if terminator is not None:
                    terminator.reached()
                raise
    except Terminated:  # (the pass in flight is stored; then die by SIGTERM, as python does)
        code = TERMINATED
    except SystemExit as e:
        code = exit_status(e)
    except TorchtraceError as e:
        if started:  # (raised in the script: its own error, as python shows it)
            show_uncaught(e, hook)
            code = 1
        else:  # (the recorder's own trouble, before the script ran: ours to say)
            _say(console, f"[bold red]error[/]: {escape(str(e))}")
            code = 2
    except BaseException as e:  # the script's own error: show it as python would, without our frames
        code = INTERRUPTED if isinstance(e, KeyboardInterrupt) else 1  # (Ctrl-C: then die by SIGINT, as python)
        show_uncaught(e, hook)
    finally:
        if terminator is not None and terminator.swallowed:  # the script caught it: python would have died
            terminator.reached()
            code = TERMINATED
        if terminator is not None:
            terminator.watch.stop()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        sys.argv, sys.path[:] = saved_argv, saved_path
        if sys.excepthook is sys.__excepthook__:  # (a hook the script set stays, as under python)
            sys.excepthook = hook
    if not worker and os.getpid() == pid:  # (not in a process the script forked: it ends as the script says)
        _say(console, lambda: _summary(console, progress, store_path, options.out / RUN_STORE, path, code))
    return code


def _say(console: Console, what: Any) -> None:
    """Print to standard error, which the script may have closed (as python, nothing then)."""
    try:
        what() if callable(what) else console.print(what)
    except (OSError, ValueError):
        pass


def run_distributed(script: str, argv: Sequence[str], options: RunOptions, nproc: int) -> int:
    """``torchtrace run --nproc-per-node N``: start N ranks through
    ``torch.distributed.run`` (torchrun); every rank records into one store."""
    from .ranks import rank_report
    from .store import Store

    console = _stderr_now()
    path = check_script(script)
    if not (path.is_dir() or is_regular(path)):  # (every rank reads the script: a FIFO can be read once)
        raise UsageError("a script every rank can read", where=script, expected="a regular file (or a folder with "
                         "__main__.py) with --nproc-per-node", found="a pipe or a device, which can be read once",
                         fix="save the script to a file and run that")
    _check_options(options)
    with store_in(options.out) as store_path:
        Store(store_path).close()  # made (WAL, schema) once here, not by every rank at the same moment
        spec = json.dumps({"out": str(store_path.parent), "max_passes": options.max_passes, "every": options.every,
                           "backward": options.backward, "skip": list(options.skip), "max_ops": options.max_ops,
                           "cut": options.cut})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "torchtrace.launch", spec, script, *argv]
        code = _wait_forwarding(subprocess.Popen(cmd, start_new_session=True))
        with Store(store_path, readonly=True) as store:
            ranks = store.ranks()
            stored = bool(ranks)
            kept = not stored and (store_path.parent / PREV_STORE).exists()
            try:
                report: Any = rank_report(store)
            except TorchtraceError as e:  # (a damaged pass: the run's own end is still said)
                report = f"no rank report: {e}"
    store_path = options.out / RUN_STORE  # (said as the user wrote --out)
    console.print(f"[bold]torchtrace[/]: {nproc} rank{'s' if nproc != 1 else ''} of {escape(Path(script).name)} "
                  f"({ENDED.get(code, f'exit {code}')}) -> "
                  f"{escape(str(store_path))}", highlight=False, soft_wrap=True)
    console.print(str(report), markup=False, highlight=False, soft_wrap=True)
    if kept:
        console.print(f"  no pass stored: the previous run's {store_path.name} stays as it was", highlight=False,
                      markup=False, soft_wrap=True)
    elif stored:
        other = next((r for r in ranks if r != 0), None)  # (a rank that recorded: --rank of one that did not fails)
        more = f"  |  torchtrace variants {shell_arg(str(store_path))} --rank {other}" if other is not None else ""
        console.print(f"  next: torchtrace ranks {shell_arg(str(store_path))}{more}", markup=False, highlight=False,
                      soft_wrap=True)
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


def _let_go(store: Path) -> None:
    """Close the store as a writer would, the last of its connections: SQLite then removes
    its ``-wal`` and ``-shm`` files, which a read-only connection closing last leaves."""
    try:
        db = sqlite3.connect(str(store))
        try:
            db.execute("PRAGMA schema_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # (a store on a read-only mount: they stay, as after any reader)
        pass


def _worker_main(args: Sequence[str]) -> int:
    """Entry of each rank: ``python -m torchtrace.launch SPEC script args...``."""
    spec = json.loads(args[0])
    options = RunOptions(out=Path(spec["out"]), max_passes=spec["max_passes"], every=spec["every"],
                         backward=spec["backward"], skip=tuple(spec["skip"]), render=None,
                         max_ops=spec["max_ops"], cut=spec["cut"])
    return run_script(args[1], list(args[2:]), options, worker=True)


def _summary(console: Console, progress: _Progress, path: Path, store: Path, script: Path, code: int) -> None:
    """``path``: the store, absolute; ``store``: its path as the user wrote ``--out`` (their shell's folder)."""
    progress.settle(path)
    n = progress.passes
    console.print(f"[bold]torchtrace[/]: recorded {n} pass{'es' if n != 1 else ''} in "
                  f"{len(progress.variants)} variant{'s' if len(progress.variants) != 1 else ''} from "
                  f"{escape(script.name or script.resolve().name)} ({ENDED.get(code, f'exit {code}')})"
                  + (f" -> {escape(str(store))}" if path.exists() else f"; no store written at {escape(str(store))}"),
                  highlight=False, soft_wrap=True)
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
    if not n and (path.parent / PREV_STORE).exists():
        console.print(f"  no pass stored: the previous run's {store.name} stays as it was", highlight=False,
                      markup=False, soft_wrap=True)
    if n:
        q = shell_arg
        console.print(f"  next: torchtrace variants {q(str(store))}  |  torchtrace show {q(f'{store}:0')}  |  "
                      f"torchtrace diff {q(f'{store}:0')} {q(f'{store}:-1')}", highlight=False, markup=False,
                      soft_wrap=True)


def shell_arg(text: str) -> str:
    """A path as one shell argument that no command reads as an option: quoted
    (a folder with spaces), and ``./`` before one that starts with ``-``."""
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


if __name__ == "__main__":
    exit_like_python(_worker_main(sys.argv[1:]))
