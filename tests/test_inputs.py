"""Inputs torchtrace did not write, or write to places that refuse: stores and
graph files edited by hand, paths that cannot be written, a disk that fills up,
option values of the wrong kind. Each gets a clear error, or is read as far as
it makes sense; none gets a traceback or stops the user's script."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import torchtrace
from torchtrace.cli import app
from torchtrace.errors import TorchtraceError, UsageError
from torchtrace.store import Store

runner = CliRunner()


def _graphs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    out = []
    for x in (torch.ones(2, 4), -torch.ones(3, 4)):
        with torchtrace.trace(m) as t:
            h = m(x)
            if h.sum() > 0:
                h = h * 2
        out.append(t.graph)
    return out


def test_a_store_that_fails_to_write_stops_recording_not_the_script(tmp_path, monkeypatch):
    """A full disk raised `database or disk is full` into the user's model call."""
    real_add, calls = Store.add, []

    def add(self, graph, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real_add(self, graph, **kw)

    monkeypatch.setattr(Store, "add", add)
    torch.manual_seed(0)
    m, outs = nn.Linear(4, 2), []
    with pytest.warns(RuntimeWarning, match="could not store pass 2 .*database or disk is full.*recording stops"):
        with torchtrace.Recorder(tmp_path / "t.db") as rec:
            for step in range(6):
                rec.step(step)
                outs.append(m(torch.ones(1, 4)))
    assert len(outs) == 6 and len(calls) == 3
    monkeypatch.setattr(Store, "add", real_add)
    with Store(tmp_path / "t.db", readonly=True) as store:
        assert [p.step for p in store.passes()] == [0, 1]


@pytest.mark.parametrize("name, found", [("x" * 300 + ".json", "File name too long"),
                                         ("a\0b.json", "embedded null byte")])
def test_a_path_that_cannot_be_written_is_a_torchtrace_error(tmp_path, name, found):
    with pytest.raises(TorchtraceError, match=found) as err:
        torchtrace.save(_graphs()[0], tmp_path / name)
    assert isinstance(err.value, OSError)


@pytest.mark.parametrize("opts", [dict(context="x"), dict(max_ops=-1), dict(context=1.5), dict(max_changed=True)])
def test_diff_drawing_options_of_the_wrong_kind_are_usage_errors(opts):
    d = torchtrace.diff(*_graphs())
    with pytest.raises(UsageError, match=f"bad value for {next(iter(opts))}"):
        torchtrace.render(d, "text", **opts)
    assert torchtrace.render(d, "text", context=0)


def _edited(tmp_path: Path, g, edit) -> Path:
    d = g.to_dict()
    edit(d)
    path = tmp_path / f"edited{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(d))
    return path


def test_hand_edited_graphs_that_load_are_drawn_and_diffed(tmp_path):
    a, b = _graphs()

    def raised_true(d):
        d["meta"]["raised"] = True

    def witness_null(d):  # a node tagged witness whose witness record was removed
        next(n for n in d["nodes"] if "witness" in n["tags"])["witness"] = None

    def param_unnamed(d):
        next(v for v in d["values"] if v["role"] == "param")["name"] = None

    for edit in (raised_true, witness_null, param_unnamed):
        edited = torchtrace.load(_edited(tmp_path, b, edit))
        assert torchtrace.render(edited, "text") and torchtrace.diff(a, edited).why() is not None
        assert torchtrace.render(torchtrace.diff(edited, a), "text")
    far = torchtrace.load(_edited(tmp_path, b, lambda d: [n["source"].update(line=10 ** 12)
                                                           for n in d["nodes"] if n["source"]]))
    assert torchtrace.diff(a, far).why()  # (the source is read around its line: it ran down 10**12 lines)


def test_a_store_row_with_a_text_rank_is_said_to_be_damaged(tmp_path):
    with torchtrace.Recorder(tmp_path / "t.db"):
        nn.Linear(2, 2)(torch.ones(1, 2))
    db = sqlite3.connect(tmp_path / "t.db")
    with db:
        db.execute("UPDATE passes SET rank = 'a'")
    db.close()
    res = runner.invoke(app, ["ranks", str(tmp_path / "t.db")])
    assert res.exit_code == 2 and "damaged trace store" in res.output and "no integer" in res.output, res.output


def test_what_is_at_a_store_path_when_it_is_no_store(tmp_path):
    (tmp_path / "empty.db").mkdir()
    for path, found in ((tmp_path / "empty.db", "a folder with no trace.db"), ("/dev/null", "not a regular file"),
                        (tmp_path / "nothing.db", "no such file"), (tmp_path / ("x" * 300 + ".db"), "too long")):
        res = runner.invoke(app, ["variants", str(path)])
        assert res.exit_code == 2 and found in res.output, res.output


def test_cli_paths_are_printed_as_they_are_and_json_takes_no_view_options(tmp_path):
    """A path with square brackets was read as rich markup (`wrote exp/g.txt`,
    or a MarkupError traceback); `render -f json` dropped view options silently."""
    torchtrace.save(_graphs()[0], tmp_path / "g.json")
    for name in ("exp[lr=0.1]/g.txt", "exp[/x]/g.txt"):
        res = subprocess.run([sys.executable, "-m", "torchtrace", "render", str(tmp_path / "g.json"), "-f", "text",
                              "-o", str(tmp_path / name)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stderr.strip() == f"wrote {tmp_path / name}", res.stderr
    res = runner.invoke(app, ["render", str(tmp_path / "g.json"), "-f", "json", "--focus", "0"])
    assert res.exit_code == 2 and "view options do not apply to json" in res.output and "--focus" in res.output


def test_a_lone_surrogate_in_a_graph_file_is_written_back_as_json(tmp_path):
    """JSON may hold `\\ud800`; writing such a graph back raised UnicodeEncodeError."""
    g = _graphs()[0]
    d = g.to_dict()
    d["meta"]["label"] = "\ud800 step"
    (tmp_path / "s.json").write_text(json.dumps(d))  # (ASCII-escaped, as JSON allows)
    res = runner.invoke(app, ["export", str(tmp_path / "s.json"), "-o", str(tmp_path / "out.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out.json").read_text())["meta"]["label"] == "\ud800 step"
