"""The `torchtrace` command: typer CliRunner tests for every command, real
subprocesses of the console script, exit codes, and commands that must run
without torch."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchtrace
from torchtrace.cli import _module_args_are_its_own, app
from torchtrace.errors import WriteError
from torchtrace.outdir import store_in as _store_in
from torchtrace.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXE = shutil.which("torchtrace") or str(Path(sys.executable).parent / "torchtrace")
runner = CliRunner()

SCRIPT = """
import sys, torch, torch.nn as nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
x = torch.randn(3, 4)
for step in range(int(sys.argv[1])):
    out = model(x)
    if out.sum() > 100:   # never true: a witness in every pass
        out = out * 0
    out.pow(2).mean().backward()
print("done", sys.argv[1:], __name__)
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    script = d / "train.py"
    script.write_text(SCRIPT)
    res = subprocess.run([EXE, "run", "--out", str(d / "out"), str(script), "4", "--flag"],
                         capture_output=True, text=True, timeout=300, cwd=d)
    assert res.returncode == 0, res.stderr
    return d, res


def _on_a_terminal(cmd: list, cwd=None) -> tuple:
    """(exit status, what it wrote) of ``cmd`` run with a pty for its standard streams."""
    import pty

    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, close_fds=True, cwd=cwd)
        os.close(child)
        out = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # (the pty closed: the process ended)
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=300)
    finally:
        os.close(main)
    return code, out.decode("utf-8", "replace")


def test_run_on_a_terminal_says_how_far_it_is_while_the_script_runs(tmp_path):
    """Issue 6: "a rich progress line while it runs". Nothing was printed before
    the summary. On a terminal, a line (never redrawn over the script's output)
    at the first pass and at each new variant; none when standard error is a file."""
    script = tmp_path / "loop.py"
    script.write_text("import torch\nm = torch.nn.Linear(4, 4)\nfor i in range(6):\n"
                      "    print('step', i, flush=True)\n    m(torch.randn(2, 4)).sum().backward()\n"
                      "print('SCRIPT-END', flush=True)\n")
    code, text = _on_a_terminal([EXE, "run", "--out", str(tmp_path / "o"), str(script)], cwd=tmp_path)
    assert code == 0, text
    during, _, after = text.partition("SCRIPT-END")
    assert "torchtrace: 1 pass recorded, 1 variant (new: variant-0 at pass 0)" in during, text
    assert "step 5\r\n" in during  # the script's own lines, whole
    assert "recorded 6 passes" in after
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o2"), str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert "pass recorded" not in res.stderr and "recorded 6 passes" in res.stderr
    for out in ("o", "o2"):  # (audit: the summary's read-only connection, closing last, left SQLite's -wal, -shm)
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == [".torchtrace.lock", ".trace.db.writers",
                                                                      "trace.db"]


def test_run_is_like_python_and_records_every_pass(recorded):
    d, res = recorded
    assert "done ['4', '--flag'] __main__" in res.stdout  # argv and __name__ as with `python`
    assert "recorded 4 passes" in res.stderr
    with Store(d / "out" / "trace.db", readonly=True) as store:
        passes = store.passes()
        assert [p.idx for p in passes] == [0, 1, 2, 3]
        g = store.graph(1)
        assert {n.phase for n in g.nodes} == {"forward", "backward"}
        assert any(n.witness is not None for n in g.nodes)


def test_python_dash_m_works(recorded):
    res = subprocess.run([sys.executable, "-m", "torchtrace", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"torchtrace {torchtrace.__version__}"


def test_export_and_render_json_round_trip(recorded, tmp_path):
    d, _ = recorded
    db = d / "out" / "trace.db"
    res = runner.invoke(app, ["export", f"{db}:2", "-o", str(tmp_path / "p2.json.gz")])
    assert res.exit_code == 0, res.output
    g = torchtrace.load(tmp_path / "p2.json.gz")
    assert g.meta["pass_index"] == 2
    res = runner.invoke(app, ["render", f"{db}:2", "--format", "json"])
    assert res.exit_code == 0
    assert torchtrace.Graph.from_dict(json.loads(res.stdout)) == g
    res = runner.invoke(app, ["render", f"{db}:2", "--format", "json", "-o", str(tmp_path / "r2.json.gz")])
    assert res.exit_code == 0, res.output
    with gzip.open(tmp_path / "r2.json.gz", "rt") as f:  # (it was plain JSON under a .gz name)
        assert torchtrace.Graph.from_dict(json.load(f)) == g


def test_output_that_cannot_be_written_is_one_error_line(recorded):
    """`show > /dev/full` printed a traceback from rich's write."""
    d, _ = recorded
    for args in (["show", f"{d / 'out' / 'trace.db'}:0"], ["variants", str(d / "out" / "trace.db")], ["--version"]):
        with open("/dev/full", "w") as full:
            res = subprocess.run([EXE, *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        assert res.returncode == 1, (args, res.stderr)
        assert res.stderr.startswith("error: the output could not be written") and "Traceback" not in res.stderr, \
            res.stderr
        assert "No space left on device" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def _script(tmp_path, body: str) -> Path:
    p = tmp_path / "s.py"
    p.write_text(textwrap.dedent(body))
    return p


def test_script_that_raises_keeps_its_passes(tmp_path):
    s = _script(tmp_path, """
        import torch
        m = torch.nn.Linear(2, 2)
        x = torch.randn(1, 2)
        for i in range(3):
            m(x)
        raise ValueError("after three passes")
    """)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    assert "ValueError: after three passes" in res.stderr
    assert "torchtrace/" not in res.stderr.split("Traceback")[1].split("ValueError")[0]  # the script's frames only
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 3


def test_exit_code_is_propagated(tmp_path):
    s = _script(tmp_path, """
        import sys, torch
        torch.nn.Linear(2, 2)(torch.randn(1, 2))
        sys.exit(3)
    """)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 3
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "o2"), str(s)])
    assert res.exit_code == 3


def test_sigkill_mid_run_keeps_committed_passes(tmp_path):
    s = _script(tmp_path, """
        import time, torch
        m = torch.nn.Linear(4, 4)
        x = torch.randn(2, 4)
        for i in range(100000):
            m(x).sum().backward()
            if i == 5:
                print("ready", flush=True)
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([EXE, "run", "--out", str(tmp_path / "o"), str(s)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        passes = store.passes()
        assert len(passes) >= 5
        for p in passes:
            assert len(store.graph(p.idx).nodes) == p.n_ops


@pytest.mark.parametrize("args, code, words", [
    (["run", "missing_script.py"], 2, ["no such script", "Fix:"]),
    (["show", "nowhere.json"], 2, ["no such file"]),
    (["render", "x.db:abc"], 2, ["bad pass reference"]),
    (["export", "nowhere.db:1", "-o", "x.json"], 2, ["no trace store"]),
    (["render", "nowhere.json", "--format", "gif"], 2, ["gif"]),
    (["run", "--every", "0", "s.py"], 2, ["every"]),
])
def test_user_mistakes_give_clear_errors_without_traceback(args, code, words, tmp_path):
    res = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in res.stderr


@pytest.mark.parametrize("args, words", [
    (["render", "g.json", "-f", "gif"], ["'--format'", "'gif' is not one of", "torchtrace render --help"]),
    (["run", "--every", "0", "s.py"], ["'--every'", "greater than or equal to 1", "torchtrace run --help"]),
    (["render"], ["Missing argument", "torchtrace render --help"]),
    (["render", "--no-such-option", "g.json"], ["No such option: --no-such-option"]),
    (["no-such-command"], ["No such command 'no-such-command'", "torchtrace --help"]),
])
def test_usage_errors_are_one_error_line(args, words, tmp_path):
    """A bad option value, a missing argument or an unknown command reads like
    torchtrace's own errors: one ``error:`` line naming what was wrong, what is
    accepted and where the help is; exit 2, no framed box."""
    res = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0]
    assert res.stdout == ""


def test_no_arguments_prints_the_help(tmp_path):
    res = subprocess.run([EXE], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "Usage: torchtrace" in res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "error:" not in res.stderr


def test_bad_graph_file_is_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "torchtrace.graph", "version": [9, 0]}')
    res = runner.invoke(app, ["show", str(bad)])
    assert res.exit_code == 2 and "major version" in res.output


@pytest.mark.parametrize("argv", [["show", "{d}"], ["show", "{py}"], ["variants", "{py}"], ["diff", "{py}", "{py}"],
                                  ["render", "{d}", "-f", "text"], ["show", "{d}/none.json"], ["show", "{d}/none.db"]])
def test_paths_that_are_not_graphs_exit_2(tmp_path, argv):
    """What the command line named is the user's mistake: exit 2, as a bad option does."""
    py = tmp_path / "script.py"
    py.write_text("print('hi')\n")
    res = runner.invoke(app, [a.format(d=tmp_path, py=py) for a in argv])
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and "Traceback" not in res.output


def test_help_everywhere():
    for cmd in ([], ["run"], ["show"], ["render"], ["diff"], ["variants"], ["export"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_show_render_diff_variants_on_a_store(recorded, tmp_path):
    d, _ = recorded
    db = d / "out" / "trace.db"
    res = runner.invoke(app, ["show", f"{db}:1", "--depth", "1"])
    assert res.exit_code == 0 and "Sequential" in res.output and "witness" in res.output
    res = runner.invoke(app, ["render", f"{db}:1", "-f", "mermaid", "--phase", "both"])
    assert res.exit_code == 0 and res.output.startswith("---\nconfig:") and "flowchart" in res.output
    res = runner.invoke(app, ["render", f"{db}:1", "-f", "svg", "-o", str(tmp_path / "g.svg")])
    assert res.exit_code == 0 and (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")
    res = runner.invoke(app, ["diff", f"{db}:1", f"{db}:2"])
    assert res.exit_code == 0 and "identical" in res.output
    res = runner.invoke(app, ["diff", f"{db}:0", f"{db}:1", "-f", "json"])  # offered by --help, was refused
    assert res.exit_code == 0 and json.loads(res.output)["hunks"][0]["explanation"].startswith("gradient accumulated")
    res = runner.invoke(app, ["variants", str(db)])
    # pass 0 creates .grad; later passes accumulate into it (the script never zeroes them)
    assert res.exit_code == 0 and "2 variants in 4 passes" in res.output
    assert "variant 1 from pass 1, vs pass 0" in res.output and "1–3" in res.output
    res = runner.invoke(app, ["variants", f"{db}:1"])  # a pass, where the store is wanted
    assert res.exit_code == 2 and "a pass reference (STORE:N), not a store" in res.output
    assert f"pass the store itself: {db}" in res.output


def test_the_variants_table_lists_passes_and_steps_as_ranges():
    """(An audit.) Passes {0, 1, 3} read "0–3", a single step "4–4"."""
    from torchtrace.textform import number_ranges
    assert [number_ranges(x) for x in ([0, 1, 3], [4, 4], [], range(10), [1, 3, 5, 7], [1, 3, 5, 7, 9])] == \
        ["0–1, 3", "4", "", "0–9", "1, 3, 5, 7", "1, 3, 5, … (+2 more)"]


def test_commands_print_on_a_console_that_cannot_encode_their_arrows(recorded):
    """On an ASCII (or cp1252) console, show, variants and diff died with rich's
    UnicodeEncodeError and a traceback; the characters are now escaped."""
    d, _ = recorded
    db = d / "out" / "trace.db"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for args in (["show", f"{db}:1"], ["variants", str(db)], ["diff", f"{db}:0", f"{db}:1"]):
        res = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (args, res.stderr[-2000:])
        assert res.stdout.isascii() and res.stdout.strip(), args
        if args[0] == "diff":
            assert "\\u2192" in res.stdout  # (the arrow of "-> 1 op changed", escaped)


@pytest.mark.parametrize("encoding", ["ascii", "cp1252"])
def test_files_written_to_standard_output_are_utf8_whatever_the_console(tmp_path, encoding):
    """DOT, JSON, Mermaid and `export -o -` sent to a pipe were written in the
    console's encoding: with cp1252 (Python's on a Windows pipe) every module label's
    `·` became a byte `dot` refused, and JSON with an ASCII console held `\\xe9` escapes
    that no JSON reader takes. They are file contents: UTF-8, as with `-o FILE`."""
    m = torch.nn.Sequential()
    m.add_module("café", torch.nn.Linear(2, 2))
    with torchtrace.trace(m) as t:
        m(torch.ones(1, 2))
    torchtrace.save(t.graph, tmp_path / "g.json")
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    outs = {}
    for name, args in (("dot", ["render", "g.json", "-f", "dot"]), ("json", ["render", "g.json", "-f", "json"]),
                       ("mermaid", ["render", "g.json", "-f", "mermaid"]), ("export", ["export", "g.json", "-o", "-"])):
        res = subprocess.run([EXE, *args], capture_output=True, timeout=120, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
        outs[name] = res.stdout.decode("utf-8")  # (raised UnicodeDecodeError for cp1252)
    assert "café · Linear" in outs["dot"] and "café" in outs["mermaid"]
    assert json.loads(outs["json"])["modules"][1]["path"] == "café"
    (tmp_path / "back.json").write_text(outs["export"], encoding="utf-8")
    assert torchtrace.load(tmp_path / "back.json") == t.graph
    check = subprocess.run(["dot", "-Tsvg"], input=outs["dot"].encode(), capture_output=True, timeout=60)
    assert check.returncode == 0 and not check.stderr, check.stderr


def test_emit_writes_text_where_standard_output_has_no_bytes_layer(capsys):
    """`emit` to a `sys.stdout` with no `.buffer` (`redirect_stdout(io.StringIO())`, a
    notebook's stream) writes the text, as before UTF-8 went to the bytes layer."""
    import contextlib
    import io

    from torchtrace.cliout import emit

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        emit("digraph { a -> b }", None, "dot")
    assert buf.getvalue() == "digraph { a -> b }\n"


def test_train_loop_example_reports_the_switch(tmp_path):
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(ROOT / "examples" / "train_loop.py")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "in 2 variants" in res.stderr
    res = runner.invoke(app, ["variants", str(tmp_path / "o" / "trace.db")])
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if x.startswith("variant 1 from pass"))
    src = (ROOT / "examples" / "train_loop.py").read_text().splitlines()
    if_line = next(i for i, x in enumerate(src, 1) if "if self.loss_ema > 0.25" in x)
    assert f"`train_loop.py:{if_line}` read True in A, False in B" in line


NO_TORCH = "import sys; sys.modules['torch'] = None; from torchtrace.cli import main; sys.argv = {argv!r}; main()"


@pytest.mark.parametrize("cmd", [["show", "{db}:0"], ["render", "{db}:0", "-f", "mermaid"],
                                 ["render", "{db}:0", "-f", "dot"], ["diff", "{db}:0", "{db}:1"],
                                 ["variants", "{db}"], ["export", "{db}:0", "-o", "{tmp}/x.json"]])
def test_commands_on_saved_graphs_never_import_torch(recorded, tmp_path, cmd):
    d, _ = recorded
    argv = ["torchtrace", *(c.format(db=d / "out" / "trace.db", tmp=tmp_path) for c in cmd)]
    res = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "torch" not in res.stderr.lower() or "torchtrace" in res.stderr.lower()


def test_run_renders_each_new_variant(tmp_path):
    s = _script(tmp_path, """
        import torch
        m = torch.nn.Linear(2, 2)
        for n in (1, 1, 3):
            m(torch.randn(n, 2))
    """)
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "o"), "--render", "mermaid", str(s)])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "o").glob("variant-*"))
    assert files == ["variant-0.mmd"]  # batch size 3 is a shape variant, not a new structure
    assert (tmp_path / "o" / "variant-0.mmd").read_text().startswith("---\nconfig:")
    res = runner.invoke(app, ["run", "--out", str(tmp_path / "t"), "--render", "terminal", str(s)])
    assert res.exit_code == 0 and [p.name for p in (tmp_path / "t").glob("variant-*")] == ["variant-0.txt"]
    s.write_text("import torch\ntorch.nn.Linear(2, 2)(torch.ones(1, 2))\n")
    assert runner.invoke(app, ["run", "--out", str(tmp_path / "one"), str(s)]).exit_code == 0
    res = runner.invoke(app, ["variants", str(tmp_path / "one")])
    assert res.exit_code == 0 and "1 variant in 1 pass of" in res.output, res.output


def test_a_new_run_moves_the_previous_runs_drawings_aside(tmp_path):
    """The first run's variant-2.svg stayed beside the second run's store and read
    as its drawing (the store itself had moved to trace.prev.db)."""
    first = _script(tmp_path, """
        import torch
        for d in (2, 3):
            torch.nn.Linear(d, 2)(torch.randn(1, d)).sum().backward()
    """)
    out = tmp_path / "o"
    (out).mkdir()
    (out / "variant-notes.txt").write_text("mine")  # not a drawing of ours: left alone
    assert runner.invoke(app, ["run", "--out", str(out), "--render", "text", str(first)]).exit_code == 0
    assert sorted(p.name for p in out.glob("variant-*")) == ["variant-0.txt", "variant-1.txt", "variant-notes.txt"]
    assert runner.invoke(app, ["run", "--out", str(out), "--render", "mermaid", str(first)]).exit_code == 0
    assert sorted(p.name for p in out.glob("*variant-*")) == [
        "prev-variant-0.txt", "prev-variant-1.txt", "variant-0.mmd", "variant-1.mmd", "variant-notes.txt"]
    assert runner.invoke(app, ["run", "--out", str(out), str(first)]).exit_code == 0
    assert sorted(p.name for p in out.glob("*variant-*")) == ["prev-variant-0.mmd", "prev-variant-1.mmd",
                                                              "variant-notes.txt"]


def test_every_view_phase_is_a_cli_choice(tmp_path):
    """`--phase` takes what the views take: the optimizer's ops of a training
    step shown alone, no forward or backward op among them."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torchtrace.trace(model) as t:
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    g = t.graph
    assert {n.phase for n in g.nodes} == {"forward", "backward", "optimizer"}
    path = tmp_path / "step.json"
    torchtrace.save(g, path)
    res = runner.invoke(app, ["render", str(path), "-f", "text", "--phase", "optimizer"])
    assert res.exit_code == 0, res.output
    assert "phase=optimizer" in res.output and "ops of other phases not shown" in res.output
    shown = [line for line in res.output.splitlines() if "[optimizer]" in line]
    assert any("add_" in line for line in shown), res.output  # SGD's parameter update
    assert "addmm" not in res.output and "randn" not in res.output, res.output
    res = runner.invoke(app, ["show", str(path), "--phase", "optimizer"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args, code, words", [
    (["run", "--out", "s.py", "s.py"], 2, ["--out names a file", "Fix:"]),
    (["run", "--out", "s.py/deeper", "s.py"], 1, ["cannot write here", "s.py/deeper", "Fix:"]),
    (["export", "g.json", "-o", "s.py/x.json"], 1, ["cannot write here", "s.py is a file, not a folder", "Fix:"]),
    (["render", "g.json", "-f", "text", "-o", "s.py/deeper/x.txt"], 1, ["s.py is a file, not a folder"]),
    (["render", "g.json", "-f", "mermaid", "-o", "."], 1, ["is a folder", "name a file"]),
])
def test_unwritable_outputs_give_clear_errors_without_traceback(args, code, words, tmp_path):
    import torch

    (tmp_path / "s.py").write_text("print('never runs')\n")
    with torchtrace.trace() as t:
        torch.ones(2).add(1)
    torchtrace.save(t.graph, tmp_path / "g.json")
    res = subprocess.run([EXE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr and "never runs" not in res.stdout
    for w in words:
        assert w in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "s.py"]  # no temporary file left


def test_a_write_refused_names_the_path_given_not_our_temporary_file(tmp_path):
    from torchtrace.errors import WriteError

    e = WriteError.of(tmp_path / "x.svg", PermissionError(13, "Permission denied", str(tmp_path / ".x.svg.a6tq3.tmp")))
    assert str(e).startswith(f"{tmp_path / 'x.svg'}: cannot write here") and ".tmp" not in str(e)
    assert "found Permission denied." in str(e)


def test_dash_o_dash_is_standard_output(tmp_path):
    import torch

    with torchtrace.trace() as t:
        torch.ones(2).add(1)
    torchtrace.save(t.graph, tmp_path / "g.json")
    res = subprocess.run([EXE, "render", "g.json", "-f", "text", "-o", "-"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and "add.Tensor" in res.stdout and not (tmp_path / "-").exists(), res.stderr
    res = subprocess.run([EXE, "export", "g.json", "-o", "-"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0 and not (tmp_path / "-").exists(), res.stderr
    assert torchtrace.Graph.from_dict(json.loads(res.stdout)) == torchtrace.load(tmp_path / "g.json")


def test_a_failed_save_is_an_oserror_and_a_torchtrace_error(tmp_path):
    import torch

    with torchtrace.trace() as t:
        torch.ones(2).add(1)
    for target in (tmp_path, tmp_path / "file.txt" / "g.json"):
        (tmp_path / "file.txt").write_text("")
        with pytest.raises(OSError) as err:
            torchtrace.save(t.graph, target)
        assert isinstance(err.value, torchtrace.TorchtraceError) and "Fix:" in str(err.value)


def test_run_writes_into_out_even_when_the_script_changes_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "s.py").write_text(textwrap.dedent("""
        import os, torch
        os.chdir("sub")
        m = torch.nn.Linear(2, 2)
        m(torch.ones(1, 2)).sum().backward()
    """))
    res = subprocess.run([EXE, "run", "--out", "o", "--render", "mermaid", "s.py"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o" / "variant-0.mmd").read_text().startswith("---")
    assert not (tmp_path / "sub" / "o").exists()
    assert "wrote o/variant-0.mmd" in res.stderr  # the path as the user's shell sees it


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_records(tmp_path):
    """It moved the first run's open store aside (to trace.prev.db) under it, and the
    first run then told the user to open trace.db, which held the second run."""
    flag = tmp_path / "go"
    s = _script(tmp_path, f"""
        import os, time, torch
        m = torch.nn.Linear(2, 2)
        m(torch.randn(1, 2))
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.05)
        m(torch.randn(1, 2))
    """)
    out = tmp_path / "o"
    first = subprocess.Popen([EXE, "run", "--out", str(out), str(s)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "trace.db").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([EXE, "run", "--out", str(out), str(s)], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "another torchtrace run, or a Recorder," in second.stderr
        assert not (out / "trace.prev.db").exists()
        # a Recorder of another process put its pass among the run's, which then were off by one
        with pytest.raises(torchtrace.errors.UsageError, match="a `torchtrace run` is recording into this store"):
            with torchtrace.Recorder(out / "trace.db"):
                torch.nn.Linear(2, 2)(torch.randn(1, 2))
        with torchtrace.Recorder(out / "mine.db"):  # (another store in that folder is the user's)
            torch.nn.Linear(2, 2)(torch.randn(1, 2))
    finally:
        flag.write_text("")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0 and "recorded 2 passes" in err, err
    with Store(out / "trace.db", readonly=True) as store:
        assert [(p.idx, p.label) for p in store.passes()] == [(0, "m (Linear) 0"), (1, "m (Linear) 1")]
    again = subprocess.run([EXE, "run", "--out", str(out), str(s)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0  # the lock went with the first run
    assert (out / "trace.prev.db").exists()


def test_a_run_is_refused_while_a_recorder_of_another_process_records_into_its_store(tmp_path):
    """`torchtrace run -o DIR` moved a live Recorder's DIR/trace.db (with its -wal and
    -shm) aside to trace.prev.db, and the Recorder's later passes landed there."""
    flag, out = tmp_path / "go", tmp_path / "runs"
    s = _script(tmp_path, f"""
        import os, time, torch, torchtrace
        m = torch.nn.Linear(2, 2)
        with torchtrace.Recorder({str(out / "trace.db")!r}):
            m(torch.randn(1, 2))
            open({str(tmp_path / "started")!r}, "w").close()
            while not os.path.exists({str(flag)!r}):
                time.sleep(0.05)
            m(torch.randn(1, 2))
    """)
    recorder = subprocess.Popen([sys.executable, str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.1)
        run = subprocess.run([EXE, "run", "--out", str(out), str(s)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "or a Recorder, is recording into this folder" in run.stderr, run.stderr
        assert not (out / "trace.prev.db").exists()
        with torchtrace.Recorder(out / "trace.db"):  # (Recorders share it: the ranks of a job do)
            torch.nn.Linear(2, 2)(torch.randn(1, 2))
    finally:
        flag.write_text("")
        recorder.communicate(timeout=120)
    assert recorder.returncode == 0
    with Store(out / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 3
    again = subprocess.run([EXE, "run", "--out", str(out), str(_script(tmp_path, "print(1)"))], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr  # the hold went with the Recorder


def test_run_is_python_for_paths_errors_and_a_scripts_own_recorder(tmp_path):
    """`torchtrace run` runs a script as `python` would: `__file__` absolute (a
    script that changes folder still finds its files), a folder runs its
    __main__.py, tracebacks show the script's frames and torch's but not
    torchtrace's (an op that raised inside the recorder, a script that does not
    compile), and a script's own Recorder stands aside (its steps label the run)."""
    (tmp_path / "data.txt").write_text("42")
    _script(tmp_path, """
        import os, sys
        from pathlib import Path
        import torch, torchtrace
        here = Path(__file__).parent
        os.chdir("/")
        m = torch.nn.Linear(2, 2)
        with torchtrace.Recorder(here / "own.db") as rec:
            for i in range(2):
                rec.step(10 + i)
                m(torch.ones(1, 2) * int((here / "data.txt").read_text())).sum().backward()
        print("absolute", Path(__file__).is_absolute())
    """)
    res = subprocess.run([EXE, "run", "--out", "o", "s.py"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "absolute True" in res.stdout and "records this script already" in res.stderr
    assert not (tmp_path / "own.db").exists()
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert [p.step for p in store.passes()] == [10, 11]
    # the folder `run` wrote stands for its store
    shown = subprocess.run([EXE, "show", str(tmp_path / "o") + ":1"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "Linear" in shown.stdout, shown.stderr

    pkg = tmp_path / "app"
    pkg.mkdir()
    (pkg / "__main__.py").write_text("import torch\ntorch.nn.Linear(2, 3)(torch.ones(1, 3))\n")
    res = subprocess.run([EXE, "run", "--out", "o2", "app"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 1 and "mat1 and mat2 shapes cannot be multiplied" in res.stderr
    assert f'File "{pkg / "__main__.py"}", line 2' in res.stderr and "torch/nn/modules" in res.stderr
    assert "torchtrace/" not in res.stderr.split("torchtrace: recorded")[0]  # (the summary names the store)
    assert "runpy" not in res.stderr

    (pkg / "__main__.py").write_text("import sys\nprint(sys.argv, sys.path[0] == __file__.rsplit('/', 1)[0])\n")
    for typed in ("app", "./app", "app/", str(pkg)):  # (sys.argv[0] as typed, as python gives it)
        res = subprocess.run([EXE, "run", "--out", "o4", typed, "x"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=120)
        plain = subprocess.run([sys.executable, typed, "x"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert res.returncode == 0 and res.stdout == plain.stdout and res.stdout.startswith(f"[{typed!r}, 'x'] ")

    (tmp_path / "bad.py").write_text("x = 1\ndef f(:\n")
    res = subprocess.run([EXE, "run", "--out", "o3", "bad.py"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 1 and "SyntaxError" in res.stderr
    assert "Traceback" not in res.stderr and "launch.py" not in res.stderr and 'bad.py", line 2' in res.stderr


def test_next_hints_quote_paths_for_the_shell(tmp_path):
    s = _script(tmp_path, "import torch\ntorch.nn.Linear(2, 2)(torch.ones(1, 2))\n")
    out = tmp_path / "out dir ü"
    res = subprocess.run([EXE, "run", "--out", str(out), str(s)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    hint = next(line for line in res.stderr.splitlines() if "next:" in line)
    import shlex
    first = hint.split("next:", 1)[1].split("|")[0].strip()
    assert shlex.split(first) == ["torchtrace", "variants", str(out / "trace.db")]
    # (an audit: `--out ./-d` was said as `-d/trace.db`, which the command reads as an option)
    res = subprocess.run([EXE, "run", "--out", "./-d", str(s)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    hint = next(line for line in res.stderr.splitlines() if "next:" in line)
    show = hint.split("|")[1].strip()
    assert shlex.split(show) == ["torchtrace", "show", "./-d/trace.db:0"], hint
    assert subprocess.run(shlex.split(show), capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PATH": f"{os.path.dirname(EXE)}:{os.environ['PATH']}"}).returncode == 0


def test_an_older_runs_log_never_lands_beside_the_previous_store(tmp_path):
    """A run killed by SIGKILL leaves trace.db-wal; the next run moves it to
    trace.prev.db-wal, and the run after that (whose trace.db had no log) left it
    there, so SQLite applied the older run's pages to the previous run's store."""

    out = tmp_path / "o"
    out.mkdir()
    for name in ("trace.prev.db", "trace.db"):  # (stores: a run moves no file torchtrace did not write)
        _one_pass(tmp_path / name)
        (tmp_path / name).replace(out / name)
    previous = (out / "trace.db").read_bytes()
    (out / "trace.prev.db-wal").write_bytes(b"older run's log")
    (out / "trace.prev.db-shm").write_bytes(b"older run's index")
    with _store_in(out) as path:
        assert path == out / "trace.db" and not path.exists()
        assert not (out / "trace.prev.db-wal").exists() and not (out / "trace.prev.db-shm").exists()
        _one_pass(path)
    assert (out / "trace.prev.db").read_bytes() == previous
    assert not (out / "trace.prev.db-wal").exists() and not (out / "trace.prev.db-shm").exists()
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith("trace.db")) == [
        ".torchtrace.lock", ".trace.db.writers", "trace.prev.db"]


def test_a_run_killed_before_its_first_pass_does_not_push_the_last_good_trace_out(tmp_path):
    """SIGKILL before the first pass leaves an empty trace.db and the good one
    as trace.prev.db (the run never settled); the next run moved the empty
    store onto trace.prev.db, and the good trace was gone."""
    from torchtrace import outdir

    out = tmp_path / "o"
    with _store_in(out) as path:
        _one_pass(path)
    outdir.claim_drawing(out, "variant-0.txt")  # (as --render lists its drawings: a run moves only those)
    (out / "variant-0.txt").write_text("good")
    good = (out / "trace.db").read_bytes()
    outdir._aside(out)  # what the killed run did before it died ...
    Store(out / "trace.db").close()  # ... and its store, made, with no pass
    (out / "variant-0.txt").write_text("")
    with _store_in(out) as path:  # the next run
        _one_pass(path)
        _one_pass(path)
    assert (out / "trace.prev.db").read_bytes() == good
    assert (out / "prev-variant-0.txt").read_text() == "good"
    with Store(out / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 2


def _one_pass(path: Path) -> None:
    m = torch.nn.Linear(2, 2)
    with torchtrace.trace(m) as t:
        m(torch.ones(1, 2))
    with Store(path) as store:
        store.add(t.graph)


def test_a_run_that_stores_no_pass_leaves_the_previous_runs_as_they_were(tmp_path):
    """A script with a syntax error (or `run trace.db`, once) moved the good
    trace.db aside and dropped the one before it: two failed runs lost it."""
    good = _script(tmp_path, """
        import torch
        m = torch.nn.Linear(2, 1)
        m(torch.ones(1, 2))
    """)
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    out = tmp_path / "o"
    for _ in range(2):
        res = subprocess.run([EXE, "run", "--out", str(out), "--render", "text", str(good)], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.name.endswith(("db", ".txt"))}
    assert set(before) == {"trace.db", "trace.prev.db", "variant-0.txt", "prev-variant-0.txt"}
    for _ in range(2):
        res = subprocess.run([EXE, "run", "--out", str(out), str(bad)], capture_output=True, text=True, timeout=300)
        assert res.returncode == 1 and "SyntaxError" in res.stderr, res.stderr
        assert "no pass stored: the previous run's trace.db stays as it was" in res.stderr, res.stderr
    with Store(out / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 1
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.name.endswith(("db", ".txt"))} == before
    assert not list(out.glob(".old-*"))
    for name, found in (("trace.db", "a trace store (SQLite)"), ("g.json.gz", "a gzipped file")):
        if name == "g.json.gz":
            with Store(out / "trace.db", readonly=True) as store:
                torchtrace.save(store.graph(0), out / name)
        res = subprocess.run([EXE, "run", "--out", str(out), str(out / name)], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and "not a script" in res.stderr
        assert found in res.stderr and "torchtrace show" in res.stderr, res.stderr


def test_a_render_that_fails_never_stops_the_script(tmp_path):
    """The render of a new variant runs inside the script's model call: a file
    that cannot be written made the script exit 1 after its first step (0 under
    python), with an extra pass that ended with the error. Without `dot`,
    image renders are refused before the script runs."""
    s = _script(tmp_path, """
        import torch
        m = torch.nn.Linear(2, 1)
        for step in range(3):
            m(torch.ones(1, 2)).sum().backward()
            print("step", step)
    """)
    (tmp_path / "o" / "variant-0.txt").mkdir(parents=True)  # a folder where the render goes
    res = subprocess.run([EXE, "run", "--out", "o", "--render", "text", str(s)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "step 0\nstep 1\nstep 2\n"
    assert "recorded 3 passes in 2 variants" in res.stderr  # (the first pass has the model's setup)
    assert "rendering stopped at variant-0:" in res.stderr and "is a folder" in res.stderr
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # python and torchtrace, no `dot`
    res = subprocess.run([EXE, "run", "--out", "o2", "--render", "svg", str(s)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300, env=env)
    assert res.returncode == 2 and res.stdout == "" and not (tmp_path / "o2").exists()
    assert res.stderr.startswith("error: --render svg needs the Graphviz `dot` program")


def test_huge_numbers_and_deep_json_are_clear_errors(recorded, tmp_path):
    """SQLite's integers end at 2**63: a bigger pass index or rank was an
    OverflowError traceback; JSON nested 5,000 deep a RecursionError."""
    d, _ = recorded
    db = d / "out" / "trace.db"
    big = "9" * 20
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    for args, words in ((["show", f"{db}:{big}"], "no such pass"),
                        (["variants", str(db), "--rank", big], f"rank {big} recorded no pass; expected a rank of 0"),
                        (["variants", str(db), "--rank", "1"], "rank 1 recorded no pass; expected a rank of 0"),
                        (["show", f"{db}:1:0"], f"e.g. {db}:0:0"),
                        (["show", str(deep)], "nested deeper than Python's recursion limit"),
                        (["diff", f"{db}:0", str(deep)], "nested deeper than Python's recursion limit")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and (res.exception is None or isinstance(res.exception, SystemExit)), args
        assert res.output.startswith("error: ") and words in res.output, (args, res.output)
    res = subprocess.run([EXE, "show", f"{db}:0", "--depth", "-1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: Invalid value for '--depth'"), res.stderr


def test_sigterm_stores_the_pass_in_flight_then_dies_by_sigterm_as_python(tmp_path):
    """torchrun stops the other ranks with SIGTERM: the pass in flight is stored,
    and the process died by the signal (-15) as python does, not with exit 143."""
    s = _script(tmp_path, """
        import os, signal, torch
        m = torch.nn.Linear(2, 2)
        for i in range(3):
            m(torch.ones(1, 2)).sum().backward()
        os.kill(os.getpid(), signal.SIGTERM)
    """)
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == res.returncode == -signal.SIGTERM, res.stderr[-2000:]
    assert "(terminated)" in res.stderr
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 3
        assert store.passes()[-1].error == "SIGTERM"  # (not the launcher's own exception class)


def test_a_script_that_catches_sigterm_still_dies_by_it_as_under_python(tmp_path):
    """The run's SIGTERM is an exception in the script so that the pass in flight
    is stored; a script that caught it (`except BaseException`) went on and
    exited 0, where python dies at once. (It still runs on until it ends, or for
    `pyrun.GRACE_S`: only then does the run know that the exception was caught.)"""
    s = _script(tmp_path, """
        import os, signal, time, torch
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except BaseException as e:
            print("caught", type(e).__name__)
        print("still running")
    """)
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == res.returncode == -signal.SIGTERM and ref.stdout == "", res.stderr[-2000:]
    assert len(Store(tmp_path / "o" / "trace.db", readonly=True).passes()) == 1


def test_a_script_that_changes_folder_before_importing_torch_records_into_out(tmp_path):
    """`os.chdir(...)` above `import torch` (the recorder opens the store at the
    import): the passes went to `<new folder>/o/trace.db`, the summary named
    `o/trace.db`, which did not exist, and the previous run's store stayed moved aside."""
    (tmp_path / "elsewhere").mkdir()
    first = _script(tmp_path, """
        import torch
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
    """)
    moving = tmp_path / "moving.py"
    moving.write_text(f"import os\nos.chdir({str(tmp_path / 'elsewhere')!r})\n" + first.read_text())
    for s in (first, moving):
        res = subprocess.run([EXE, "run", "--out", "o", str(s)], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        assert res.returncode == 0 and "-> o/trace.db" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "elsewhere" / "o").exists()
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 1
    assert (tmp_path / "o" / "trace.prev.db").exists()


def test_a_script_with_its_own_sigterm_handler_runs_on_after_the_signal(tmp_path):
    """(A review.) The run's watch armed its grace clock on any SIGTERM: a script
    that handles SIGTERM itself was killed 10 s later, where python runs it on."""
    from torchtrace.pyrun import GRACE_S
    s = _script(tmp_path, f"""
        import os, signal, time, torch
        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(1))
        m = torch.nn.Linear(2, 2)
        m(torch.ones(1, 2))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep({GRACE_S} + 2)
        print("finished", got)
    """)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout == "finished [1]\n", (res.returncode, res.stderr[-2000:])


def test_max_ops_is_said_once_at_the_script_s_line(tmp_path):
    """Every pass cut at --max-ops was said again, the last at a line of torchtrace's own."""
    s = _script(tmp_path, """
        import torch
        m = torch.nn.Linear(2, 2)
        for i in range(3):
            m(torch.ones(1, 2)).sum().backward()
    """)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), "--max-ops", "3", str(s)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stderr.count("stopped recording after max_ops=3") == 1, res.stderr
    assert f"{s}:5: RuntimeWarning" in res.stderr and "torchtrace/record" not in res.stderr, res.stderr
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 3


def test_an_out_folder_through_a_link_and_dotdot_holds_the_store_and_its_drawings(tmp_path):
    """(A review.) `-o link/../x`: the OS takes `..` from where the link points;
    os.path.abspath from the link's own folder. The store and the drawing went
    to two folders (the drawing failed), and the summary named neither."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to("../real/sub")
    s = _script(tmp_path, """
        import torch
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
    """)
    res = subprocess.run([EXE, "run", "--render", "text", "-o", "link/../x", str(s)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path / "work")
    assert res.returncode == 0 and "-> link/../x/trace.db" in res.stderr, res.stderr[-2000:]
    assert "wrote link/../x/variant-0.txt" in res.stderr and "rendering stopped" not in res.stderr
    assert {p.name for p in (tmp_path / "real" / "x").iterdir()} >= {"trace.db", "variant-0.txt"}
    assert not (tmp_path / "work" / "x").exists()


def test_sigterm_ends_a_script_inside_a_long_c_call(tmp_path):
    """Python runs the run's SIGTERM handler between bytecodes: a script inside one
    long C call (here a hash of 10^9 rounds, minutes; a hung collective) ran on
    until the call returned, where python dies at once. The signal is now heard
    as it comes, and the process dies by it after `pyrun.GRACE_S`; the finished
    passes are kept."""
    from torchtrace.pyrun import GRACE_S
    s = _script(tmp_path, """
        import hashlib, sys, torch
        m = torch.nn.Linear(2, 2)
        for i in range(2):
            m(torch.ones(1, 2))
        print("in C", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 10 ** 9)
    """)
    proc = subprocess.Popen([EXE, "run", "--out", str(tmp_path / "o"), str(s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "in C\n"
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=GRACE_S + 60)
        took = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM and took < GRACE_S + 20, (proc.returncode, took)
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) >= 1  # (the first call's pass; the second was in flight)


PYTHON_ALIKE = {  # script -> what must match `python script` (stdout, stderr, exit status)
    "excepthook": """
        import sys
        sys.excepthook = lambda t, e, tb: print("HOOK", t.__name__, e, file=sys.stderr)
        raise ValueError("boom")
    """,
    "exit_message": """
        import sys
        sys.exit("a message long enough to pass the eighty columns a terminal is wide, in one line only")
    """,
    "exit_huge": "import sys; sys.exit(2 ** 70)",
    "exit_long": "import sys; sys.exit(2 ** 40 + 3)",
    "pep366": """
        if __package__ is None:
            print("package is None")
        import sys
        print(sum(p.endswith("bin") or p == "" for p in sys.path[:1]), __name__)
    """,
    "closed_stderr": "import sys; sys.stderr.close(); print('done')",
    "excepthook_frames": """
        import sys, traceback
        sys.excepthook = lambda t, e, tb: print("".join(traceback.format_tb(tb)).count("File"), file=sys.stderr)
        def f():
            raise ValueError("boom")
        f()
    """,
    "sigterm_then_exit": """
        import os, signal, sys
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except BaseException:
            pass
        sys.exit(0)
    """,
}


@pytest.mark.parametrize("name", sorted(PYTHON_ALIKE))
def test_the_script_ends_as_under_python(tmp_path, name):
    s = _script(tmp_path, PYTHON_ALIKE[name])
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert (res.returncode, res.stdout) == (ref.returncode, ref.stdout)
    assert res.stderr.startswith(ref.stderr) and "torchtrace: recorded" in res.stderr or name == "closed_stderr" \
        or name == "sigterm_then_exit" and ref.stderr == res.stderr == ""


def test_a_zipped_script_runs_as_under_python(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "app.zip", "w") as z:
        z.writestr("__main__.py", "import sys, torch\nprint(__name__, torch.nn.Linear(2, 1)(torch.ones(1, 2)).shape)\n"
                                  f"print(sys.path[0].endswith('app.zip'), {str(tmp_path)!r} in sys.path)\n")
    ref = subprocess.run([sys.executable, str(tmp_path / "app.zip")], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(tmp_path / "app.zip")], capture_output=True,
                         text=True, timeout=300)
    assert (res.returncode, res.stdout) == (ref.returncode, ref.stdout) == (0, "__main__ torch.Size([1, 1])\n"
                                                                             "True False\n")


def test_a_child_the_script_forks_prints_no_summary_and_holds_no_lock(tmp_path):
    """A forked child that returns through `sys.exit` printed the run's summary;
    one that outlives the run kept the folder's lock, so the next run was refused."""
    s = _script(tmp_path, """
        import os, sys, time, torch
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
        if os.fork() == 0:
            if len(sys.argv) > 1:
                time.sleep(8)
                os._exit(0)
            sys.exit(0)
        os.wait() if len(sys.argv) == 1 else None
    """)
    out = str(tmp_path / "o")
    res = subprocess.run([EXE, "run", "--out", out, str(s)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stderr.count("torchtrace: recorded") == 1, res.stderr
    lingering = subprocess.run([EXE, "run", "--out", out, str(s), "linger"], capture_output=True, text=True,
                               timeout=300)
    again = subprocess.run([EXE, "run", "--out", out, str(s)], capture_output=True, text=True, timeout=300)
    assert lingering.returncode == again.returncode == 0, again.stderr


def test_a_forked_child_is_terminated_as_under_python(tmp_path):
    """A process the script forks inherits the run's SIGTERM handler: it raised
    there too, so `Process.terminate()` ran the child's `finally`, gave exit 143,
    and a worker that catches BaseException lived on."""
    s = _script(tmp_path, """
        import multiprocessing as mp, time, torch
        def worker():
            while True:
                try:
                    time.sleep(0.1)
                except BaseException as e:
                    print("caught", repr(e), flush=True)
        if __name__ == "__main__":
            torch.nn.Linear(2, 1)(torch.ones(1, 2)).sum().backward()
            p = mp.get_context("fork").Process(target=worker)
            p.start()
            time.sleep(0.5)
            p.terminate()
            p.join(20)
            print("alive", p.is_alive(), "exitcode", p.exitcode, flush=True)
            if p.is_alive():
                p.kill()
    """)
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == res.returncode == 0, res.stderr[-2000:]
    assert ref.stdout == res.stdout == "alive False exitcode -15\n"


def test_in_a_terminal_the_script_keeps_its_own_stdout(tmp_path):
    """In a terminal, a live status line swapped the script's sys.stdout for
    rich's proxy, whose encoding is None: `s.encode(sys.stdout.encoding)` raised."""
    s = _script(tmp_path, """
        import sys, torch
        torch.nn.Linear(2, 1)(torch.ones(1, 2))
        print("stdout", type(sys.stdout).__name__, sys.stdout.isatty(), "é".encode(sys.stdout.encoding))
    """)
    code, text = _on_a_terminal([EXE, "run", "--out", str(tmp_path / "o"), str(s)])
    assert code == 0, text
    assert "stdout TextIOWrapper True b'\\xc3\\xa9'" in text, text
    assert "recorded 1 pass" in text


def test_ctrl_c_ends_the_run_as_it_ends_python(tmp_path):
    """python prints the KeyboardInterrupt's traceback and dies by SIGINT (a parent
    sees -2); `torchtrace run` printed one word and exited 130. The passes are kept."""
    s = _script(tmp_path, """
        import torch
        m = torch.nn.Linear(2, 2)
        def train():
            for _ in range(3):
                m(torch.ones(1, 2)).sum().backward()
            raise KeyboardInterrupt  # LINE:raise
        train()
    """)
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == res.returncode == -signal.SIGINT
    assert res.stderr.startswith(ref.stderr)  # the same traceback, then torchtrace's summary
    assert "KeyboardInterrupt" in ref.stderr and "(interrupted)" in res.stderr
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 3


def test_run_dash_m_runs_a_module_as_python_does_and_typos_are_no_scripts(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("X = 5\n")
    (pkg / "train.py").write_text(textwrap.dedent("""
        import sys, torch
        from . import helper  # a relative import: only as a module
        m = torch.nn.Linear(2, 2)
        for _ in range(2):
            m(torch.ones(1, 2)).sum().backward()
        print(sys.argv, __name__, __package__, helper.X, sys.path[0])
    """))
    own = ["a", "--out", "ckpt", "--every", "3"]  # the module's arguments, run's option names among them
    ref = subprocess.run([sys.executable, "-m", "pkg.train", *own], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    res = subprocess.run([EXE, "run", "--out", "o", "-m", "pkg.train", *own], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert ref.returncode == res.returncode == 0, res.stderr
    assert res.stdout == ref.stdout  # argv[0] the module's file, __main__, the package, the cwd on sys.path
    assert "recorded 2 passes" in res.stderr and (tmp_path / "o" / "trace.db").exists()
    assert not (tmp_path / "ckpt").exists()
    # the module's own `--` is its own, and `-mMODULE` is `-m MODULE`, as python takes them
    ref = subprocess.run([sys.executable, "-mpkg.train", "--", *own], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    res = subprocess.run([EXE, "run", "-oo2", "-mpkg.train", "--", *own], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert ref.returncode == res.returncode == 0, res.stderr
    assert res.stdout == ref.stdout and "'--', 'a', '--out'" in ref.stdout
    assert (tmp_path / "o2" / "trace.db").exists() and not (tmp_path / "ckpt").exists()
    assert _module_args_are_its_own(["run", "-o", "d", "-m", "p.q", "--", "x"]) == \
        ["run", "-o", "d", "-m", "p.q", "--", "--", "x"]
    for args, words in ((["run", "-m", "nope.x"], "nope.x: no such module"),
                        (["run", "--max-pass", "3", "m.py"], "no such option: --max-pass"),
                        (["run"], "no script to run")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.output.startswith(f"error: {words}"), (args, res.output)


def test_run_leaves_a_script_as_much_room_to_recurse_as_python(tmp_path):
    """(An audit.) The command line's and torchtrace's own frames below the script
    (about 20) came off the recursion limit: a recursion 980 deep that python ran
    raised RecursionError under `torchtrace run`."""
    s = _script(tmp_path, """
        import sys

        def room(n=0):
            try:
                return room(n + 1)
            except RecursionError:
                return n
        print(room(), sys.getrecursionlimit() >= 1000)
    """)
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == res.returncode == 0, res.stderr
    room, ours = int(ref.stdout.split()[0]), int(res.stdout.split()[0])
    assert 900 < room <= ours <= room + 3 and res.stdout.split()[1] == "True", (ref.stdout, res.stdout)


def test_run_dash_m_of_a_package_without_main_says_so(tmp_path, monkeypatch):
    """(An audit.) "pkg: no such module ... found a package without __main__": python
    says the package cannot be run directly; the fix names a module of it."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["run", "-m", "pkg"])
    assert res.exit_code == 2 and res.output.startswith("error: pkg: a package without __main__"), res.output
    assert "no such module" not in res.output and "add pkg/__main__.py" in " ".join(res.output.split())
    assert not (tmp_path / "torchtrace_out").exists() and not list(tmp_path.glob("*.db"))


def test_run_cut_step_records_a_pass_per_mark_step(tmp_path):
    """A model called on two views per step made two passes per step."""
    s = _script(tmp_path, """
        import torch, torchtrace
        m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        x = torch.randn(6, 4)
        for step in range(3):
            torchtrace.mark_step()
            loss = (m(x + 0.1) - m(x - 0.1)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """)
    for cut, passes in (("root", 6), ("step", 3)):  # (root: two per step; the setup before the first is none)
        res = subprocess.run([EXE, "run", "--cut", cut, "--out", str(tmp_path / cut), str(s)], capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        with Store(tmp_path / cut / "trace.db", readonly=True) as store:
            assert len(store.passes()) == passes, (cut, res.stderr)
    assert "recorded 3 passes in 1 variant" in res.stderr


def test_a_negative_exit_status_is_no_ctrl_c(tmp_path):
    """`sys.exit(-2)` is status 254 under python; it read as the Ctrl-C marker."""
    s = _script(tmp_path, """
        import sys, torch
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
        sys.exit(-2)
    """)
    ref = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=120)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == res.returncode == 254
    assert "(exit 254)" in res.stderr and "interrupted" not in res.stderr


def test_a_graph_nested_too_deeply_to_show_is_an_error_not_a_traceback(tmp_path):
    """A hand-made file whose module calls nest 990 deep loads; `show` raised
    RecursionError from the views."""
    import torch

    import torchtrace

    with torchtrace.trace() as t:
        torch.ones(2) + 1
    d = t.graph.to_dict()
    depth = 990
    d["modules"] = [{"id": f"m{k}", "path": ".".join(["a"] * k), "type": "M", "call": 0,
                     "parent": None if k == 0 else f"m{k - 1}", "phase": "forward", "training": True}
                    for k in range(depth)]
    for n in d["nodes"]:
        n["module"] = f"m{depth - 1}"
    (tmp_path / "deep.json").write_text(json.dumps(d))
    res = subprocess.run([EXE, "show", str(tmp_path / "deep.json")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: the graph nests too deeply to show"), res.stderr[-800:]


def test_an_output_path_ending_in_a_slash_names_a_folder_and_is_refused(recorded, tmp_path):
    """`-o newdir/` once wrote a file named `newdir` (Path drops the slash);
    torchtrace.save(g, "out/") too. Both are refused, and nothing is written."""
    d, _ = recorded
    db = d / "out" / "trace.db"
    for args in (["render", f"{db}:0", "-f", "dot", "-o", f"{tmp_path}/newdir/"],
                 ["export", f"{db}:0", "-o", f"{tmp_path}/newdir/"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and res.output.startswith("error: "), (args, res.output)
        assert "names a folder" in res.output and "newdir/NAME" in res.output, res.output
        assert not (tmp_path / "newdir").exists()
    with Store(db, readonly=True) as store:
        g = store.graph(0)
    with pytest.raises(WriteError, match="names a folder"):
        torchtrace.save(g, f"{tmp_path}/newdir/")
    assert not (tmp_path / "newdir").exists()
    (tmp_path / "there").mkdir()
    res = runner.invoke(app, ["render", f"{db}:0", "-f", "dot", "-o", f"{tmp_path}/there/"])
    assert res.exit_code == 1 and "is a folder" in res.output, res.output


def test_a_bad_option_value_says_what_came():
    for args, came in ((["show", "x.json", "--depth", "abc"], "found 'abc'"),
                       (["show", "x.json", "--depth=-2"], "found '-2'"),
                       (["show", "x.json", "-dxyz"], "found 'xyz'"),
                       (["run", "--every", "0", "x.py"], "found '0'")):
        res = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and res.stderr.startswith("error: Invalid value for "), res.stderr
        assert came in res.stderr and "--help" in res.stderr, res.stderr
    res = subprocess.run([EXE, "render", "x.json", "-f", "nope"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("'nope'") == 1, res.stderr  # (said once, by click)


def test_the_output_s_extension_names_the_format_and_a_contradiction_is_refused(recorded, tmp_path):
    """`render -o a.png` wrote SVG into it, `export -o x.svg` JSON."""
    d, _ = recorded
    db = d / "out" / "trace.db"
    magic = {"a.png": b"\x89PNG", "a.pdf": b"%PDF", "a.svg": b"<?xml", "a.mmd": b"---", "a.dot": b"// torchtrace view"}
    for name, head in magic.items():
        if name in ("a.png", "a.pdf", "a.svg") and shutil.which("dot") is None:
            continue
        res = runner.invoke(app, ["render", f"{db}:0", "-o", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        assert (tmp_path / name).read_bytes().lstrip().startswith(head), name
    res = runner.invoke(app, ["diff", f"{db}:0", f"{db}:1", "-o", str(tmp_path / "d.json")])
    assert res.exit_code == 0 and json.loads((tmp_path / "d.json").read_text())["kind"], res.output
    for args, words in ((["render", f"{db}:0", "-f", "svg", "-o", str(tmp_path / "b.png")],
                         "names another format than -f svg; expected a file name for svg (or no -f: the "
                         "extension decides); found a .png file. Fix: drop -f, or name the file *.svg"),
                        (["diff", f"{db}:0", f"{db}:1", "-f", "text", "-o", str(tmp_path / "b.svg")],
                         "names another format than -f text; expected a file name for text (or no -f: the "
                         "extension decides); found a .svg file. Fix: drop -f, or name the file *.txt"),
                        (["render", f"{db}:0", "-f", "markdown", "-o", str(tmp_path / "b.txt")],
                         "Fix: drop -f, or name the file *.md"),  # (was *.markdown, *.text: no format's)
                        (["export", f"{db}:0", "-o", str(tmp_path / "b.svg")], "export writes JSON")):
        res = runner.invoke(app, args)
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and res.output.startswith("error: ") and words in said, (args, res.output)
        assert not (tmp_path / args[-1]).exists()
        if "*." in words:  # the name the fix gives is taken, without -f
            named = str(tmp_path / f"fixed.{words.rsplit('*.', 1)[1]}")
            assert runner.invoke(app, [*args[:-4], "-o", named]).exit_code == 0 and os.path.getsize(named)
    res = runner.invoke(app, ["render", f"{db}:0", "-f", "terminal", "-o", str(tmp_path / "t.txt")])
    assert res.exit_code == 0, res.output
    # export's fix names a render only for a drawing's extension (render refuses `-o snap.db` too)
    said = {ext: runner.invoke(app, ["export", f"{db}:0", "-o", str(tmp_path / f"snap{ext}")]).output
            for ext in (".svg", ".db")}
    assert "draw it: torchtrace render" in said[".svg"] and "torchtrace render" not in said[".db"], said


def test_an_empty_skip_prefix_is_refused_before_anything_moves(tmp_path):
    """`--skip ""` matched every file: every op lost its source line."""
    s = _script(tmp_path, """
        import torch
        torch.nn.Linear(2, 1)(torch.ones(1, 2))
    """)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), "--skip", "", str(s)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: an empty `skip` prefix"), res.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(torchtrace.errors.UsageError, match="empty `skip` prefix"):
        torchtrace.trace(skip=["transformers/", " "])


def test_references_and_paths_that_name_nothing_say_so(recorded, tmp_path):
    d, _ = recorded
    db = d / "out" / "trace.db"
    graph = tmp_path / "g.json"
    assert runner.invoke(app, ["export", f"{db}:0", "-o", str(graph)]).exit_code == 0
    for args, words in ((["show", f"{graph}:3"], "a graph file holds one pass; expected FILE.json[.gz] alone"),
                        (["show", f"{graph}:3"], f"Fix: drop it: {graph}"),
                        (["show", f"{db}:"], "found nothing after ':'"),
                        (["show", ""], "no graph named"),
                        (["render", f"{db}:0", "-o", " "], "an empty output path"),
                        (["run", "--out", "-", "x.py"], "--out names no folder"),
                        (["run", "--out", "", "x.py"], "--out names no folder")):  # (an unset $OUT: not ".")
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.output.startswith("error: ") and words in res.output, (args, res.output)
    assert not (Path.cwd() / "-").exists()


def test_an_example_given_a_bad_format_says_why_without_a_traceback():
    example = Path(__file__).parent.parent / "examples" / "branching.py"
    res = subprocess.run([sys.executable, str(example), "bogus"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr.startswith("error: unknown diff format 'bogus'"), res.stderr


def test_setting_the_previous_run_aside_touches_only_its_own_files(tmp_path):
    """A review found `.old-*` files of the user's deleted (and a `.old-*` folder
    failing every run), and the check for a stored pass leaving -wal/-shm files."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".old-notes.txt").write_text("keep")
    (out / ".old-dir").mkdir()
    for _ in range(3):
        with _store_in(out) as path:
            _one_pass(path)
    assert (out / ".old-notes.txt").read_text() == "keep" and (out / ".old-dir").is_dir()
    assert sorted(f.name for f in out.iterdir()) == [".old-dir", ".old-notes.txt", ".torchtrace.lock",
                                                     ".trace.db.writers", "trace.db", "trace.prev.db"]


def test_a_gz_name_in_capitals_is_gzipped_json(recorded, tmp_path):
    d, _ = recorded
    res = runner.invoke(app, ["export", f"{d / 'out' / 'trace.db'}:0", "-o", str(tmp_path / "g.json.GZ")])
    assert res.exit_code == 0, res.output
    assert json.loads(gzip.decompress((tmp_path / "g.json.GZ").read_bytes()))["format"] == "torchtrace.graph"


def test_the_script_s_main_module_is_python_s_until_the_process_ends(tmp_path):
    """`__main__` was put back to torchtrace's when the body ended: an atexit
    handler pickling a class of the script failed and left a broken file; the
    globals lacked python's (`__builtins__` a dict, no `__annotations__`); and the
    summary went into a file the script had made its sys.stderr."""
    s = _script(tmp_path, """
        import atexit, pickle, sys, builtins, torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(2, 1)
            def forward(self, x):
                return self.fc(x)
        net = Net()
        net(torch.ones(1, 2))
        __builtins__.marker = 1  # (line_profiler's shim does this)
        print(__annotations__ == {}, __builtins__ is builtins, type(__loader__).__name__)
        atexit.register(lambda: torch.save(net, "final.pt"))
        sys.stderr = open("log.txt", "w")
        print("to the file", file=sys.stderr)
    """)
    for cmd in ([sys.executable, str(s)], [EXE, "run", "--out", str(tmp_path / "o"), str(s)]):
        for f in ("final.pt", "log.txt"):
            (tmp_path / f).unlink(missing_ok=True)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert res.returncode == 0 and res.stdout == "True True SourceFileLoader\n", (cmd, res.stdout, res.stderr)
        assert (tmp_path / "log.txt").read_text() == "to the file\n"
        import zipfile

        with zipfile.ZipFile(tmp_path / "final.pt") as z:  # (a torch.save file: complete, not cut off)
            assert z.testzip() is None and any(n.endswith("data.pkl") for n in z.namelist())
    assert "recorded 1 pass" in res.stderr, res.stderr


def test_torch_is_imported_by_the_script_itself_so_what_it_reads_at_import_is_the_script_s(tmp_path):
    """`os.environ["OMP_NUM_THREADS"] = "1"` above `import torch`: torchtrace
    imported torch before the script, so torch ran with 2 threads (and other
    sums); the recorder now starts when the script imports torch."""
    s = _script(tmp_path, """
        import os, sys
        print("torch" in sys.modules)
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch
        print(torch.get_num_threads(), torch.__loader__ is torch.__spec__.loader, type(torch.__loader__).__name__)
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
    """)
    plain = subprocess.run([sys.executable, str(s)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == plain.stdout == "False\n1 True SourceFileLoader\n", (
        res.stdout, plain.stdout, res.stderr)
    assert "recorded 1 pass" in res.stderr, res.stderr
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert [n.short_op for n in store.graph(0).nodes][-2:] == ["t", "addmm"]


def test_forked_workers_that_import_torch_first_record_nothing(tmp_path):
    """The finder that starts the recorder at `import torch` was inherited by
    forked workers: four workers wrote their passes into the run's store."""
    s = _script(tmp_path, """
        import multiprocessing as mp
        def work(i):
            import torch
            return tuple(torch.nn.Linear(3, 2)(torch.ones(1, 3)).shape)
        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as p:
                print(p.map(work, range(4)))
            import torch
            torch.nn.Linear(2, 2)(torch.ones(1, 2))
    """)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), str(s)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == "[(1, 2), (1, 2), (1, 2), (1, 2)]\n", res.stderr
    with Store(tmp_path / "o" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 1  # (the main process's own model call; the workers' Linear(3, 2): none)
        assert [n.short_op for n in store.graph(0).nodes][-2:] == ["t", "addmm"]
        assert tuple(store.graph(0).values[0].shape) == (2, 2)


def test_a_module_s_packages_run_their_init_with_the_module_s_argv(tmp_path):
    """`run -m pkg.tool` imported `pkg` to find the module, before the run:
    its `__init__` saw torchtrace's argv, and an error there was a traceback of ours."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import sys\nprint('init', sys.argv[1:])\n")
    (pkg / "tool.py").write_text("import sys, torch\nprint('tool', sys.argv[1:])\n"
                                 "torch.nn.Linear(2, 2)(torch.ones(1, 2))\n")
    plain = subprocess.run([sys.executable, "-m", "pkg.tool", "a"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    res = subprocess.run([EXE, "run", "--out", str(tmp_path / "o"), "-m", "pkg.tool", "a"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == plain.stdout == "init ['a']\ntool ['a']\n", (res.stdout, res.stderr)
    assert "recorded 1 pass" in res.stderr


def test_an_output_over_an_input_or_a_store_is_refused_and_nothing_is_lost(recorded, tmp_path):
    """`render trace.db:0 -o trace.db` (an unknown extension became SVG) and
    `diff a.json b.json -o a.json` replaced what they read, with exit 0."""
    d, _ = recorded
    db = tmp_path / "trace.db"
    shutil.copy(d / "out" / "trace.db", db)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for k, path in enumerate((a, b)):
        assert runner.invoke(app, ["export", f"{db}:{k}", "-o", str(path)]).exit_code == 0
    wal = tmp_path / "trace.db-wal"  # (a killed run's last passes are in it until a checkpoint)
    wal.write_bytes(b"the log")
    before = {p: p.read_bytes() for p in (db, a, b, wal)}
    cases = ((["render", f"{db}:0", "-o", str(db)], "no format has the extension .db"),
             (["render", str(a), "-f", "text", "-o", str(wal)], "names a trace store or one of its files"),
             (["render", f"{db}:0", "-f", "text", "-o", str(db)], "names the file this command reads"),
             (["render", str(d / "out") + ":1", "-f", "dot", "-o", str(d / "out" / "trace.db")],
              "names the file this command reads"),
             (["render", str(a), "-f", "json", "-o", str(a)], "names the file this command reads"),
             (["diff", str(a), str(b), "-o", str(b)], "names the file this command reads"),
             (["diff", str(a), f"{db}:1", "-f", "mermaid", "-o", str(db)], "names the file this command reads"),
             (["render", str(a), "-f", "mermaid", "-o", str(d / "out" / "trace.db")], "names a trace store"),
             (["export", str(a), "-o", str(a)], "names the file this command reads"),
             (["render", str(a), "-o", str(tmp_path / "g.jpg")], "no format has the extension .jpg"),
             (["render", str(a), "-o", str(tmp_path / "g")], "the name has no extension"))  # (an audit: wrote SVG)
    for args, words in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.output.startswith("error: ") and words in res.output, (args, res.output)
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "g.jpg").exists()
    assert not (tmp_path / "g").exists()
    with Store(d / "out" / "trace.db", readonly=True) as store:
        assert len(store.passes()) == 4
    res = runner.invoke(app, ["render", str(a), "-f", "mermaid", "-o", str(tmp_path / "g.jpg")])  # -f: the user's call
    assert res.exit_code == 0 and (tmp_path / "g.jpg").read_text().startswith("---"), res.output
    res = runner.invoke(app, ["render", str(a), "-f", "mermaid", "-o", str(tmp_path / "g.jpg")])  # its own output
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["diff", str(a), str(b), "-o", str(tmp_path / "why.log")])  # text goes anywhere
    assert res.exit_code == 0 and (tmp_path / "why.log").read_text().startswith("--- A"), res.output


def test_the_summary_counts_the_passes_the_store_holds(tmp_path):
    """A Ctrl-C that lands between a pass's commit and the run's count of it
    (seen once in 40 tries) made the summary say one pass fewer than the store
    held. The summary settles its counts against the store."""
    from rich.console import Console

    from torchtrace.launch import RunOptions, _Progress, _summary
    from torchtrace.pyrun import INTERRUPTED

    store = tmp_path / "trace.db"
    m = torch.nn.Linear(2, 2)
    with torchtrace.Recorder(store) as rec:
        for i in range(3):
            rec.step(i)
            m(torch.ones(1, 2) * (i + 1)).sum().backward()
    console = Console(record=True, width=200)
    progress = _Progress(RunOptions(out=tmp_path), console)
    with Store(store) as st:
        rows = st.passes()
    for r in rows[:2]:  # (the third pass's count was cut off)
        progress.variants.setdefault(r.structure_fp, []).append(r.idx)
    progress.passes = 2
    _summary(console, progress, store, store, Path("s.py"), INTERRUPTED)
    lines = console.export_text().splitlines()
    k = len({r.structure_fp for r in rows})
    assert f"recorded 3 passes in {k} variant" in lines[0], lines
    assert sum(int(line.split()[2]) for line in lines[2:2 + k]) == 3, lines


def test_an_output_name_without_extension_is_refused_but_a_device_is_written(tmp_path):
    """(A review.) The refusal of `-o NAME` with no extension took `/dev/stdout` too."""
    from torchtrace.cliout import Fmt, output_format

    assert output_format(None, "/dev/stdout", Fmt.svg) is Fmt.svg
    assert output_format(None, "/dev/null", Fmt.svg) is Fmt.svg
    with pytest.raises(torchtrace.TorchtraceError, match="or write to standard output with -o -"):
        output_format(None, str(tmp_path / "g"), Fmt.svg)
    assert output_format(None, str(tmp_path / "g"), Fmt.text) is Fmt.text  # (text goes anywhere)
