"""`torchtrace run --out DIR` moves and drops only torchtrace's own files, and
takes every script path python takes (an audit found a foreign trace.db and the
user's variant-N files deleted, and FIFOs and too-long names misreported)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from itertools import count
from pathlib import Path

import pytest

from torchtrace import outdir
from torchtrace.errors import UsageError
from torchtrace.outdir import store_in
from test_cli import _one_pass  # (one pass of a Linear, stored at a path)


def _torchtrace(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchtrace", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


_RUNS = count()


def _a_run(out: Path, drawings: tuple = ()) -> None:
    """What `torchtrace run --out out` does to the folder, with ``drawings`` as --render writes them."""
    with store_in(out) as path:
        _one_pass(path)
        for name in drawings:
            outdir.claim_drawing(out, name)
            (out / name).write_text(f"drawn by run {next(_RUNS)}")


def _another_app_s_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE app_events(t, what)")
    db.execute("INSERT INTO app_events VALUES (1, 'important')")
    db.commit()
    db.close()


def _contents(out: Path) -> dict:
    return {f.name: f.read_bytes() for f in out.iterdir() if f.is_file() and f.name != ".torchtrace.lock"}


@pytest.mark.parametrize("name", ["trace.db", "trace.prev.db"])
@pytest.mark.parametrize("foreign", ["sqlite", "text"])
def test_a_store_torchtrace_did_not_write_is_refused_before_anything_moves(tmp_path, name, foreign):
    """Another program's SQLite file named trace.db was deleted at once (it has no
    passes table: read as a run killed before its first pass); any other file was
    moved to trace.prev.db and deleted by the run after."""
    out = tmp_path / "o"
    out.mkdir()
    if name == "trace.prev.db":
        _a_run(out)
    if foreign == "sqlite":
        _another_app_s_db(out / name)
    else:
        (out / name).write_text("my notes, not a database")
    before = _contents(out)
    script = tmp_path / "s.py"
    script.write_text("print('the script ran')\n")
    for _ in range(2):
        res = _torchtrace("run", "--out", str(out), str(script), cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.startswith("error: "), res.stderr
        assert f"holds a {name} torchtrace did not write" in res.stderr and "pass another --out" in res.stderr
        assert "Traceback" not in res.stderr and "the script ran" not in res.stdout
        assert _contents(out) == before
    with pytest.raises(UsageError, match="did not write"):  # (and the Recorder's own folder check, in-process)
        with store_in(out):
            pass
    assert _contents(out) == before


def test_an_empty_store_a_killed_run_left_is_still_torchtrace_s(tmp_path):
    """A run killed as it began leaves trace.db empty (0 bytes, or a store with no
    pass): the previous run's store comes back, as before."""
    out = tmp_path / "o"
    _a_run(out)
    good = (out / "trace.db").read_bytes()
    outdir._aside(out)  # what the killed run did before it died ...
    (out / "trace.db").write_bytes(b"")  # ... leaving its store empty
    with store_in(out) as path:  # the next run
        assert not path.exists() and (out / "trace.prev.db").read_bytes() == good
        _one_pass(path)


def test_the_user_s_own_variant_files_stay_where_they_are(tmp_path):
    """variant-1.png and variant-2.md of the user's (no --render ever used) were
    renamed prev-variant-* by the first run and deleted by the next."""
    out = tmp_path / "o"
    out.mkdir()
    mine = {"variant-1.png": b"my plot", "variant-2.md": b"my notes", "prev-variant-3.svg": b"mine too"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    for _ in range(3):
        _a_run(out)
    assert {n: (out / n).read_bytes() for n in mine} == mine
    assert not [f for f in out.iterdir() if "variant" in f.name and f.name not in mine]


def test_the_drawings_a_run_wrote_move_aside_and_come_back_when_a_run_stores_no_pass(tmp_path):
    """(The documented behaviour, kept.) Only drawings a run listed as it wrote them move."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "variant-7.txt").write_text("mine")
    _a_run(out, ("variant-0.txt", "variant-1.txt"))
    first = {n: (out / n).read_text() for n in ("variant-0.txt", "variant-1.txt")}
    _a_run(out, ("variant-0.txt",))
    assert {n: (out / f"prev-{n}").read_text() for n in first} == first
    second = (out / "variant-0.txt").read_text()
    assert second not in first.values() and not (out / "variant-1.txt").exists()
    with store_in(out):  # a run that stores no pass
        assert not (out / "variant-0.txt").exists() and (out / "prev-variant-0.txt").read_text() == second
    assert (out / "variant-0.txt").read_text() == second and (out / "prev-variant-1.txt").read_text() == \
        first["variant-1.txt"]
    _a_run(out)
    _a_run(out)  # the drawings of the run two runs back go, the user's stays
    assert sorted(f.name for f in out.iterdir() if "variant" in f.name) == ["variant-7.txt"]


def test_a_drawing_never_writes_over_the_user_s_file_nor_moves_onto_one(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "variant-0.txt").write_text("mine")
    with store_in(out):
        with pytest.raises(UsageError, match="holds a variant-0.txt torchtrace did not write"):
            outdir.claim_drawing(out, "variant-0.txt")
    assert (out / "variant-0.txt").read_text() == "mine"
    (out / "variant-0.txt").rename(out / "elsewhere.txt")
    _a_run(out, ("variant-0.txt",))
    (out / "prev-variant-0.txt").write_text("mine")  # where the next run would move the drawing
    before = _contents(out)
    with pytest.raises(UsageError, match="holds a prev-variant-0.txt torchtrace did not write"):
        with store_in(out):
            pass
    assert _contents(out) == before


def test_run_with_render_leaves_the_user_s_file_of_a_drawing_s_name_and_says_so(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "variant-0.txt").write_text("mine")
    script = tmp_path / "s.py"
    script.write_text("import torch\ntorch.nn.Linear(2, 2)(torch.ones(1, 2))\n")
    res = _torchtrace("run", "--out", "o", "--render", "text", str(script), cwd=tmp_path)
    assert res.returncode == 0 and "recorded 1 pass" in res.stderr, res.stderr
    assert "rendering stopped at variant-0" in res.stderr and "did not write" in res.stderr
    assert (tmp_path / "o" / "variant-0.txt").read_text() == "mine"


def test_run_takes_a_pipe_and_dev_null_as_python_does(tmp_path):
    """`torchtrace run <(echo ...)` and `torchtrace run /dev/null` said "a folder
    without __main__.py"; a pipe can be read once: the script must run whole, and
    its lines (for the recorder and the traceback) come from what was read, not
    from the pipe opened again (that waited for a writer for ever)."""
    fifo = tmp_path / "script.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w") as f:
            f.write("import sys, torch\ntorch.nn.Linear(2, 2)(torch.ones(1, 2))\n"
                    "print('ran from a pipe', sys.argv[1:])\nraise ValueError('from the pipe')\n")

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        res = _torchtrace("run", "--out", "o", str(fifo), "x", cwd=tmp_path, timeout=60)
    finally:
        try:  # (a run that never read it: let the writer go)
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        writer.join(5)
    assert res.returncode == 1 and res.stdout == "ran from a pipe ['x']\n", res.stderr
    assert "    raise ValueError('from the pipe')\nValueError: from the pipe" in res.stderr
    assert "recorded 1 pass in 1 variant from script.fifo (exit 1)" in res.stderr
    res = _torchtrace("run", "--out", "o", os.devnull, cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and "recorded 0 passes" in res.stderr, res.stderr
    assert "no pass stored: the previous run's trace.db stays as it was" in res.stderr, res.stderr
    res = _torchtrace("run", "--out", "o2", os.devnull, cwd=tmp_path, timeout=120)
    # (no torch op ran, no store before: none was made, and the summary names none as written)
    assert not (tmp_path / "o2" / "trace.db").exists() and "; no store written at o2/trace.db" in res.stderr
    (tmp_path / "adir").mkdir()
    res = _torchtrace("run", "--out", "o", "adir", cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "a folder without __main__.py" in res.stderr, res.stderr


def test_an_endless_device_and_a_pipe_for_several_ranks_are_refused_as_python_would(tmp_path):
    """(A review.) `torchtrace run /dev/zero` read the device without end (memory
    until the OOM killer), where python stops at the first NUL; and with
    `--nproc-per-node 2` a pipe was taken, the folder moved aside, and every rank
    died with a traceback: each rank reads the script, a pipe can be read once."""
    ref = subprocess.run([sys.executable, "/dev/zero"], capture_output=True, text=True, timeout=60)
    res = _torchtrace("run", "--out", "o", "/dev/zero", cwd=tmp_path, timeout=60)
    assert res.returncode == ref.returncode == 1 and "null bytes" in res.stderr and "null bytes" in ref.stderr
    fifo = tmp_path / "script.fifo"
    os.mkfifo(fifo)
    res = _torchtrace("run", "--nproc-per-node", "2", "--out", "o2", str(fifo), cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "a script every rank can read" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o2").exists()


def test_a_path_too_long_names_the_path_and_the_os_error(tmp_path):
    """They read "the output could not be written ... Fix: write it to a file with -o PATH"."""
    long = "a" * 300
    script = tmp_path / "s.py"
    script.write_text("print('ran')\n")
    res = _torchtrace("run", "--out", "o", f"{long}.py", cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith(f"error: {long}.py: cannot open the script"), res.stderr
    assert "File name too long" in res.stderr and "output could not be written" not in res.stderr
    res = _torchtrace("run", "--out", long, str(script), cwd=tmp_path, timeout=120)
    assert res.returncode == 1 and res.stderr.startswith(f"error: {long}: cannot write here"), res.stderr
    assert "File name too long" in res.stderr and "--out" in res.stderr and "ran" not in res.stdout
    assert "output could not be written" not in res.stderr


def test_render_lists_only_the_formats_it_takes(tmp_path):
    """`--render foo` listed 'json' among the valid values; `--render json` was refused."""
    for value in ("foo", "json"):
        res = _torchtrace("run", "--render", value, "s.py", cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and "is not one of" in res.stderr, res.stderr
        listed = res.stderr.split("is not one of", 1)[1]
        assert "'mermaid'" in listed and "json" not in listed, res.stderr
