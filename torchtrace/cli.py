"""The ``torchtrace`` command: thin typer commands over the library.

``show``, ``render``, ``diff``, ``variants`` and ``export`` work on saved graphs
and never import torch; only ``run`` does. Errors print ``error: …`` to stderr,
without a traceback, and exit 2 for what the command line named (a bad option,
or a path that is not a graph or store this version reads) or 1 for a failure
(a file that cannot be written, ``dot`` missing).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from rich.text import Text

from . import __version__
from .cliout import Fmt, emit, err, json_name, out, output_format
from .errors import IRError, TorchtraceError, UsageError
from .views.options import PHASE_CHOICES
from .textform import number_ranges

app = typer.Typer(
    name="torchtrace", no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
    help="Record, show and explain the graphs PyTorch actually builds.",
    context_settings={"help_option_names": ["-h", "--help"]})


Phase = Enum("Phase", {p: p for p in PHASE_CHOICES}, type=str)  # the views' own list
# what `run --render` draws: every format but json (graphs are in trace.db already: `torchtrace export`)
RenderFmt = Enum("RenderFmt", {f.value: f.value for f in Fmt if f is not Fmt.json}, type=str)

class Cut(str, Enum):
    root = "root"
    step = "step"


REF_HELP = "a graph: FILE.json[.gz], STORE.db (last pass), STORE.db:IDX or STORE.db:RANK:IDX"
DepthOpt = typer.Option(None, "--depth", "-d", min=0, help="module depth to expand (deeper calls become one box)")
FoldOpt = typer.Option(True, "--fold/--no-fold", help="fold repeated blocks and loop iterations")
PhaseOpt = typer.Option(None, "--phase", "-p", help="which ops to show")
FocusOpt = typer.Option(None, "--focus", help="show only this module path, e.g. transformer.h.0")


def _fail(e: TorchtraceError) -> None:
    _say(e)
    raise typer.Exit(2 if isinstance(e, (UsageError, IRError)) else 1)


def _say(e: TorchtraceError) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", str(e)), soft_wrap=True)


def _view(depth: Optional[int], fold: bool, phase: Optional[Phase], focus: Optional[str]) -> dict:
    opts: dict = {"fold": fold}
    if depth is not None:
        opts["depth"] = depth
    if phase is not None:
        opts["phase"] = phase.value
    if focus is not None:
        opts["focus"] = focus
    return opts


def _version(value: bool) -> None:
    if value:
        out.print(f"torchtrace {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(ctx: typer.Context,
                 version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="print the version and exit")) -> None:
    """Record with `torchtrace run script.py`; look with show, render, diff, variants."""
    if ctx.invoked_subcommand != "run":  # (the script's own streams stay as python gives them)
        _tolerant_streams()


def _tolerant_streams() -> None:
    """Characters the console's encoding lacks (`→` on an ASCII or cp1252 one) are
    written escaped (``\u2192``), where rich raised UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.errors == "strict":
                stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # (not a text file of io's, or closed)
            pass


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "allow_interspersed_args": False})
def run(ctx: typer.Context,
        script: Optional[str] = typer.Argument(None, help="the Python script to run (its own arguments follow it)"),
        module: Optional[str] = typer.Option(None, "-m", help="run a module as a script, like `python -m MODULE`"),
        out_dir: str = typer.Option("torchtrace-out", "--out", "-o", help="folder for trace.db and renders"),
        max_passes: Optional[int] = typer.Option(None, "--max-passes", min=0, help="stop recording after N passes"),
        every: int = typer.Option(1, "--every", min=1, help="record every K-th pass of each model "
                                  "(a script that calls rec.step(i): steps whose number is a multiple of K)"),
        backward: bool = typer.Option(True, "--backward/--no-backward", help="record backward and optimizer ops "
                                      "(--no-backward: each pass ends where its root call returns)"),
        skip: List[str] = typer.Option([], "--skip", help="source prefix to skip for lines, e.g. transformers/"),
        render_fmt: Optional[RenderFmt] = typer.Option(None, "--render",
                                                       help="also write a drawing of each new variant"),
        max_ops: Optional[int] = typer.Option(None, "--max-ops", min=1, help="cap on ops recorded per pass"),
        cut: Cut = typer.Option(Cut.root, "--cut", help="where passes start: at each root model call, or at "
                                "each torchtrace.mark_step() (a model called twice per step)"),
        nproc: Optional[int] = typer.Option(None, "--nproc-per-node", min=1,
                                            help="start N ranks with torchrun; all record into one store")) -> None:
    """Run SCRIPT like `python SCRIPT ARGS...` and record every forward pass of its models."""
    from .launch import RunOptions, run_distributed, run_script

    if render_fmt is not None and _needs_dot(render_fmt.value) and shutil.which("dot") is None:
        # (checked before the script runs, not at its first variant)
        _fail(UsageError(f"--render {render_fmt.value} needs the Graphviz `dot` program", expected="`dot` on PATH",
                         found="no `dot` executable", fix="install Graphviz (apt-get install graphviz / brew install "
                         "graphviz / conda install graphviz), or pass --render dot, mermaid or text"))
    argv = list(ctx.args)
    if module is not None:  # `-m pkg.mod ARGS`: the script's arguments are all that follows
        argv = ([script] if script is not None else []) + argv
    elif script is None:
        _fail(UsageError("no script to run", expected="a script path or -m MODULE, then its arguments",
                         found="nothing", fix="e.g. `torchtrace run train.py --lr 0.1`"))
    elif script.startswith("-") and not os.path.lexists(script):  # an option of run's, mistyped (or too long)
        _fail(UsageError(f"no such option: {script}", expected="run's options before the script (see "
                         "`torchtrace run --help`), then the script and its arguments", found=script,
                         fix="check the spelling, e.g. --max-passes, --every, --out"))
    if out_dir.strip() in ("-", ""):  # (`-o -` is standard output elsewhere; `--out ''`, an unset $OUT)
        _fail(UsageError("--out names no folder", expected="a folder for trace.db (made if missing)",
                         found=repr(out_dir), fix="e.g. --out runs/exp1 (the default is torchtrace-out)"))
    options = RunOptions(out=Path(out_dir), max_passes=max_passes, every=every, backward=backward, skip=tuple(skip),
                         render=None if render_fmt is None else render_fmt.value, max_ops=max_ops, module=module,
                         cut=cut.value)
    try:
        if nproc is not None:
            if module is not None:
                raise UsageError("-m with --nproc-per-node", expected="a script path for a distributed run",
                                 found=f"-m {module}", fix="pass the module's file, e.g. "
                                 f"`torchtrace run --nproc-per-node {nproc} {module.replace('.', '/')}.py`")
            if options.render is not None:  # (the ranks share one store: draw its variants afterwards)
                raise UsageError("--render with --nproc-per-node", expected="one of them",
                                 found=f"--render {options.render}", fix="record first, then draw each variant with "
                                 "`torchtrace variants OUT/trace.db` and `torchtrace render OUT/trace.db:RANK:IDX`")
            code = run_distributed(script, argv, options, nproc)
        else:  # (the summary goes to standard error as it is now: the script may set sys.stderr to its own file)
            code = run_script(module if module is not None else script, argv, options)
    except TorchtraceError as e:
        _fail(e)
    raise typer.Exit(code)


@app.command()
def show(ref: str = typer.Argument(..., help=REF_HELP), depth: Optional[int] = DepthOpt, fold: bool = FoldOpt,
         phase: Optional[Phase] = PhaseOpt, focus: Optional[str] = FocusOpt) -> None:
    """Show a graph in the terminal: module tree, op histogram, witnesses."""
    from .passref import open_graph

    try:
        graph = open_graph(ref)
        from .renderers.terminal import renderable

        out.print(renderable(graph, **_view(depth, fold, phase, focus)))
    except TorchtraceError as e:
        _fail(e)


@app.command()
def render(ref: str = typer.Argument(..., help=REF_HELP),
           given: Optional[Fmt] = typer.Option(None, "--format", "-f",
                                               help="output format [default: from -o's extension, else svg]"),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="write here instead of stdout"),
           depth: Optional[int] = DepthOpt, fold: bool = FoldOpt, phase: Optional[Phase] = PhaseOpt,
           focus: Optional[str] = FocusOpt) -> None:
    """Draw a graph as DOT/SVG/PNG/PDF, Mermaid, Markdown, text or JSON."""
    from .passref import open_graph

    try:
        fmt = output_format(given, output, Fmt.svg)
        graph = open_graph(ref)
        if fmt is Fmt.json:
            from .serialize import dumps

            given = [o for o, v in (("--depth", depth is not None), ("--no-fold", not fold),
                                    ("--phase", phase is not None), ("--focus", focus is not None)) if v]
            if given:  # (the IR is the whole graph: a view option would be silently dropped)
                raise UsageError("view options do not apply to json", expected="-f json alone (the whole graph)",
                                 found=" ".join(given), fix="drop them, or draw the view in another format")
            emit(dumps(graph), output, "json", (ref,))
            return
        from .renderers import render as draw

        emit(draw(graph, fmt.value, **_view(depth, fold, phase, focus)), output, fmt.value, (ref,))
    except TorchtraceError as e:
        _fail(e)


@app.command()
def diff(a: str = typer.Argument(..., help="graph A (" + REF_HELP + ")"),
         b: str = typer.Argument(..., help="graph B"),
         given: Optional[Fmt] = typer.Option(None, "--format", "-f", help="output format (json: the hunks and "
                                             "causes) [default: from -o's extension, else text]"),
         output: Optional[str] = typer.Option(None, "--output", "-o", help="write here instead of stdout")) -> None:
    """Explain why two passes built different graphs."""
    from .compare import diff as compare
    from .passref import open_graph

    try:
        fmt = output_format(given, output, Fmt.text)
        d = compare(open_graph(a), open_graph(b))
        if fmt is Fmt.text and output is None:
            out.print(d, soft_wrap=True)  # GraphDiff.__rich__: the text form in colour
            return
        if fmt is Fmt.json:
            emit(json.dumps(d.to_dict(), indent=1, ensure_ascii=False) + "\n", output, "json", (a, b))
            return
        from .renderers import render as draw

        emit(draw(d, fmt.value), output, fmt.value, (a, b))
    except TorchtraceError as e:
        _fail(e)


@app.command()
def variants(store: Path = typer.Argument(..., help="a trace store (trace.db)"),
             rank: int = typer.Option(0, "--rank", help="which rank's passes")) -> None:
    """Group a store's passes by graph structure and explain each switch."""
    from rich.table import Table

    from .families import store_variants
    from .passref import no_pass_of_rank
    from .store import Store

    try:
        with Store(store, readonly=True) as st:
            records, vs = store_variants(st, rank)  # reads only the graphs the explanations need
            if not records:
                raise no_pass_of_rank(st, store, rank, option=True)
    except TorchtraceError as e:
        _fail(e)
    title = f"{len(vs)} variant{'s' * (len(vs) != 1)} in {len(records)} pass{'es' * (len(records) != 1)} of " \
        f"{escape(str(store))}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in ("variant", "structure", "passes", "pass range", "steps", "shape/arg variants"):
        table.add_column(col, justify="right" if col in ("variant", "passes") else "left")
    for v in vs:
        idx = [records[i].idx for i in v.indices]
        steps = [records[i].step for i in v.indices if records[i].step is not None]
        table.add_row(str(v.index), v.structure, str(v.count), number_ranges(idx),
                      number_ranges(steps) if steps else "-", str(len(v.shapes)))
    out.print(table)
    for v in vs:
        if v.why:
            first = records[v.first]
            when = f"pass {first.idx}" + (f" (step {first.step})" if first.step is not None else "")
            out.print(Text.assemble((f"variant {v.index}", "bold"), f" from {when}, vs pass "
                                    f"{records[v.previous].idx}: {v.why}"), soft_wrap=True)


@app.command()
def ranks(store: Path = typer.Argument(..., help="the trace store of a distributed run")) -> None:
    """Compare the ranks of a distributed run: the first pass and collective where they part ways."""
    from .ranks import rank_report
    from .store import Store

    try:
        with Store(store, readonly=True) as st:
            report = rank_report(st)
        if not report.ranks:
            raise UsageError("the store holds no pass", where=str(store), expected="passes of one or more ranks",
                             found="none", fix="record with `torchtrace run --nproc-per-node N script.py`")
    except TorchtraceError as e:
        _fail(e)
    out.print(str(report), markup=False, soft_wrap=True)


@app.command()
def export(ref: str = typer.Argument(..., help=REF_HELP),
           output: str = typer.Option(..., "--output", "-o", help="FILE.json or FILE.json.gz")) -> None:
    """Write one pass as a torchtrace.graph JSON file."""
    from .serialize import dumps
    from .passref import open_graph

    try:  # (as `render -f json`: `-o -` is standard output, a .gz name is gzipped)
        json_name(output, ref)
        emit(dumps(open_graph(ref)), output, "json", (ref,))
    except TorchtraceError as e:
        _fail(e)


def _needs_dot(fmt: str) -> bool:
    from .renderers.dot import IMAGE_FORMATS

    return fmt in IMAGE_FORMATS


def _module_args_are_its_own(args: List[str]) -> List[str]:
    """``run [opts] -m MODULE ARGS``: like ``python -m``, everything after the
    module is the module's, options of ``run`` included (``--out``): a ``--`` is
    put after the module's name so that click parses nothing there."""
    if "run" not in args:
        return args
    import typer.main

    takes_value = {o for p in typer.main.get_command(app).commands["run"].params  # type: ignore[attr-defined]
                   if p.param_type_name == "option" and not getattr(p, "is_flag", False) for o in p.opts}
    k = args.index("run") + 1
    while k < len(args) and args[k].startswith("-") and args[k] != "--":
        if args[k].startswith("-m") and len(args[k]) > 2:  # `-mpkg.mod`, as python takes it
            args = [*args[:k], "-m", args[k][2:], *args[k + 1:]]
        if args[k] == "-m" and k + 1 < len(args):  # (the module's own `--` stays its own: click eats ours)
            return args[:k + 2] + ["--"] + args[k + 2:]
        if args[k].startswith("-o") and len(args[k]) > 2:  # `-oDIR`: one argument
            k += 1
            continue
        k += 2 if args[k] in takes_value else 1
    return args


def main() -> None:
    """The console script: a usage error (a bad option value, a missing argument,
    an unknown command) prints the same one ``error:`` line as torchtrace's own
    errors and exits 2, instead of click's framed box."""
    from . import pyrun

    pyrun.KEEP_MAIN = True  # (`run`: the script's module stays __main__ for its atexit handlers and threads)
    try:
        code = app(args=_module_args_are_its_own(sys.argv[1:]), standalone_mode=False)
    except RecursionError:  # (a file that loads but nests module calls ~1,000 deep: hand-made)
        e = IRError("the graph nests too deeply to show", expected="module calls nested at most a few hundred deep",
                    found="deeper than Python's recursion limit",
                    fix="check the file's modules[].parent chain; a recorded model does not nest so deep")
        _say(e)
        sys.exit(2)
    except OSError as e:  # our own output could not be written (`> /dev/full`, a closed pipe): no traceback
        _output_failed(e)
    except Exception as e:  # click's exceptions, from typer's own copy of click or from click
        kinds = {c.__name__ for c in type(e).__mro__}
        if "Abort" in kinds:
            err.print("Aborted!")
            sys.exit(1)
        if "ClickException" not in kinds:
            raise
        if "NoArgsIsHelpError" not in kinds:  # (that one: typer printed the help already)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if "UsageError" in kinds and ctx is not None else ""
            came = _given(getattr(e, "param", None), sys.argv[1:]) if "BadParameter" in kinds else None
            msg = e.format_message()
            found = f"; found {came!r}" if came is not None and repr(came) not in msg else ""
            err.print(Text.assemble(("error:", "bold red"), f" {msg}{found}{hint}"), soft_wrap=True)
        sys.exit(e.exit_code)
    from .launch import exit_like_python  # (Ctrl-C in `torchtrace run`: death by SIGINT, as python's)

    exit_like_python(code if isinstance(code, int) else 0)


def _given(param: Any, args: List[str]) -> Optional[str]:
    """The value the command line gave the option ``param``, for an error that says
    what came (`--depth abc`, `--depth=abc`, `-dabc`); None unless given once (a
    script's own options after `run script.py` may use the same names)."""
    came = []
    for k, a in enumerate(args):
        for opt in getattr(param, "opts", None) or ():
            if a == opt and k + 1 < len(args):
                came.append(args[k + 1])
            elif a.startswith(f"{opt}=") and opt.startswith("--"):
                came.append(a[len(opt) + 1:])
            elif len(opt) == 2 and opt[1] != "-" and a.startswith(opt) and len(a) > 2 and not a.startswith("--"):
                came.append(a[2:])
    return came[0] if len(came) == 1 else None


def _output_failed(e: OSError) -> None:
    """Standard output failed: a pipe whose reader left (`| head`) ends quietly, as
    python's own tools do; anything else (a full disk) is one error line. Our
    stdout then points at /dev/null, so that the flush at exit raises nothing."""
    import errno
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # (no stdout file descriptor to point elsewhere)
        pass
    if e.errno == errno.EPIPE:
        sys.exit(1)
    _say(UsageError("the output could not be written", expected="a place to write the output to",
                    found=f"{e.strerror or e} ({e.filename})" if e.filename else str(e.strerror or e),
                    fix="write it to a file with -o PATH where there is space, or to a pipe"))
    sys.exit(1)


if __name__ == "__main__":
    main()
