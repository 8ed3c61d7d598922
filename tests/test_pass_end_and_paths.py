"""A pass ended by an exception says so in every view (as a truncated one does); `dot`'s
stderr stays out of the caller's; a folder given as a store to write is refused with an
error that says so (it was SQLite's "unable to open", or, with a trailing slash, a store
*file* named like the folder)."""
from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import torchtrace
from torchtrace.cli import app
from torchtrace.errors import RenderError, WriteError
from torchtrace.store import Store

SAID = "FloatingPointError: the ops after the raise did not run"
VIEW_FORMATS = ("text", "mermaid", "markdown", "dot", "terminal")


def _passes(raise_it: bool):
    """One traced pass of a tiny model: ended by a FloatingPointError after its
    first layer (``raise_it``), or run to its end."""
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), torch.ones(1, 4)
    try:
        with torchtrace.trace(m) as t:
            h = m[0](x)
            if raise_it:
                raise FloatingPointError("activations exploded")
            m[1](h).sum().backward()
    except FloatingPointError:
        pass
    return t.graph


@pytest.fixture(scope="module")
def ended():
    g = _passes(raise_it=True)
    assert g.meta["error"] == "FloatingPointError"
    return g


# -- a pass ended by an exception ------------------------------------------------------------

@pytest.mark.parametrize("fmt", VIEW_FORMATS)
def test_a_pass_ended_by_an_exception_says_so_in_every_view(ended, fmt):
    """`show` and every drawing of the ops before the raise read as a whole step:
    only `variants`/`diff` said the pass ended with FloatingPointError."""
    assert SAID in torchtrace.render(ended, fmt)


def test_the_views_say_it_where_they_say_truncation(ended):
    """A `#` line of the text view, a `%%` comment in Mermaid, the DOT comment, a
    red `!!` line under the terminal report's header."""
    assert f"# ENDED WITH {SAID}" in torchtrace.render(ended, "text").splitlines()
    assert f"%% ENDED WITH {SAID}" in torchtrace.render(ended, "mermaid").splitlines()
    assert torchtrace.render(ended, "dot").splitlines()[0].startswith(f"// torchtrace view: ENDED WITH {SAID}")
    assert f"!! pass ended with {SAID}" in torchtrace.render(ended, "terminal").splitlines()
    assert str(ended).splitlines()[0].endswith(f"ENDED WITH {ended.meta['error']}")  # (print(g): its header)
    empty = torchtrace.render(ended, "terminal", phase="optimizer")  # (an empty view keeps its header)
    assert "nothing to draw" in empty and f"!! pass ended with {SAID}" in empty


def test_a_pass_that_ran_to_its_end_says_nothing_of_the_kind():
    whole = _passes(raise_it=False)
    assert not whole.meta.get("error")
    for fmt in VIEW_FORMATS:
        out = torchtrace.render(whole, fmt)
        assert "ENDED WITH" not in out and "pass ended with" not in out, fmt
    assert "labelloc=t" not in torchtrace.render(whole, "dot")  # (no title drawn)


@pytest.mark.dot
def test_the_drawing_shows_it_not_only_its_comment(ended, dot_check):
    """The DOT comment is not drawn: an SVG of the ops before the raise showed no sign of it."""
    svg = dot_check(torchtrace.render(ended, "dot"))
    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert f"ENDED WITH {SAID}" in texts
    assert f"ENDED WITH {SAID}" in torchtrace.render(ended, "svg")


@pytest.mark.mermaid
def test_the_mermaid_diagram_still_parses(ended, mermaid_check):
    text = torchtrace.render(ended, "mermaid")
    for version in ("mermaid", "mermaid-v11"):
        [res] = mermaid_check([text], version)
        assert res["ok"], res["problems"]


def test_show_of_a_stored_pass_says_it(tmp_path):
    """The error is the pass's own (a store row's column): `torchtrace show` reads it back."""
    db = tmp_path / "trace.db"
    m, x = nn.Linear(4, 2), torch.ones(1, 4)
    with pytest.raises(FloatingPointError):
        with torchtrace.Recorder(db):
            m(x)
            raise FloatingPointError("activations exploded")
    res = CliRunner().invoke(app, ["show", f"{db}:-1"])
    assert res.exit_code == 0, res.output
    assert f"!! pass ended with {SAID}" in res.output


# -- dot's stderr --------------------------------------------------------------------------

def _fake_dot(tmp_path, monkeypatch, script: str) -> None:
    """A `dot` first on PATH that runs ``script``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dot = bin_dir / "dot"
    dot.write_text("#!/bin/sh\n" + script)
    dot.chmod(dot.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_a_failing_dot_is_quoted_in_the_error_not_echoed(ended, tmp_path, monkeypatch, capfd):
    """graphviz's pipe() wrote dot's stderr to ours as well: under `torchtrace run --render`,
    into the script's stderr."""
    _fake_dot(tmp_path, monkeypatch, 'echo "WARNING FROM DOT" >&2\nexit 3\n')
    with pytest.raises(RenderError, match="WARNING FROM DOT"):
        torchtrace.render(ended, "svg")
    out, err = capfd.readouterr()
    assert "WARNING FROM DOT" not in out + err


def test_the_warnings_of_a_dot_that_succeeds_are_not_echoed(ended, tmp_path, monkeypatch, capfd):
    _fake_dot(tmp_path, monkeypatch, 'cat > /dev/null\necho "Warning: something" >&2\necho "<svg/>"\n')
    assert torchtrace.render(ended, "svg").strip() == "<svg/>"
    out, err = capfd.readouterr()
    assert "Warning: something" not in out + err


# -- a folder given as a store ---------------------------------------------------------------

@pytest.mark.parametrize("as_path", [False, True])
def test_a_recorder_given_a_folder_says_it_is_one(tmp_path, as_path):
    """It said "cannot write a trace store here ... found unable to open database file.
    Fix: choose another path (--out DIR)": no word of a folder, and a CLI flag for Python."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(WriteError) as err:
        torchtrace.Recorder(runs if as_path else str(runs))  # (refused when made: before any hook)
    assert "is a folder" in str(err.value) and str(runs / "trace.db") in err.value.fix
    assert "--out" not in str(err.value)
    assert list(runs.iterdir()) == []


def test_a_store_path_ending_in_a_slash_is_no_file(tmp_path):
    """`Recorder("newdir/")` made a store *file* named `newdir` (Path drops the slash)."""
    new = f"{tmp_path}{os.sep}newdir{os.sep}"
    with pytest.raises(WriteError, match="names a folder") as err:
        torchtrace.Recorder(new)
    assert f"{new}trace.db" in err.value.fix and "--out" not in str(err.value)
    with pytest.raises(WriteError, match="names a folder"):
        Store(new)
    assert not (tmp_path / "newdir").exists() and list(tmp_path.iterdir()) == []


def test_a_store_opened_on_a_folder_says_it_is_one(tmp_path):
    with pytest.raises(WriteError, match="is a folder") as err:
        Store(tmp_path)
    assert "--out" not in str(err.value) and str(tmp_path / "trace.db") in err.value.fix


def test_reading_a_run_folder_still_finds_its_store(tmp_path):
    """Only writing is refused: a folder holding trace.db is read as `torchtrace run`'s --out."""
    db = tmp_path / "trace.db"
    m, x = nn.Linear(4, 2), torch.ones(1, 4)
    with torchtrace.Recorder(db):
        m(x)
    for ref in (tmp_path, f"{tmp_path}{os.sep}"):
        with Store(ref, readonly=True) as store:
            assert store.path == db and len(store.graph(0).nodes) > 0


def test_one_module_at_two_positions_of_a_sequential_takes_each_position_in_turn():
    """`act = nn.Tanh(); nn.Sequential(lin, act, lin2, act)`: both calls of `act`
    were named `1` (its first name), so the drawing sent the data back to position
    1. The k-th call of a module its caller holds under several names takes the k-th."""
    act = nn.Tanh()
    net = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Sequential(act, nn.Linear(4, 2), act))
    seen = []
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, a: seen.append(type(m).__name__))
    try:
        net(torch.randn(2, 4))
    finally:
        handle.remove()
    with torchtrace.trace(net) as t:
        net(torch.randn(2, 4))
    calls = [(m.path, m.type) for m in t.graph.modules]
    assert [ty for _, ty in calls] == seen
    assert [p for p, _ in calls] == ["", "0", "1", "2", "3", "4", "4.0", "4.1", "4.2"]
    tanh_nodes = [n.module for n in t.graph.nodes if n.short_op == "tanh"]
    path_of = {m.id: m.path for m in t.graph.modules}
    assert [path_of[c] for c in tanh_nodes] == ["1", "3", "4.0", "4.2"]


def test_an_alias_of_a_module_called_twice_by_its_first_name_keeps_that_name():
    """`self.relu = self.act` (an alias kept for old checkpoints), forward calling
    `self.act` twice: both calls are `act`. Taking a holder's names in turn is for a
    Sequential, which calls its positions in order (a review found the alias named)."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 4)
            self.relu = self.act

        def forward(self, x):
            return self.act(self.fc(self.act(x)))

    m = Block()
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 4))
    assert [(c.path, c.type) for c in t.graph.modules] == [("", "Block"), ("act", "ReLU"), ("fc", "Linear"),
                                                           ("act", "ReLU")]
