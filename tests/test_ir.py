"""The IR contract: round trips, the committed schema, and clear errors for bad files."""
from __future__ import annotations

import copy
import gzip
import hashlib
import json
import math
import os
import pickle
from pathlib import Path

import jsonschema
import pytest
import torch

import torchtrace
from torchtrace.ir import VERSION
from zoo import Branchy, gpt2, token_ids

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "torchtrace" / "schema" / "graph.v1.json"


@pytest.fixture(scope="module")
def graph() -> torchtrace.Graph:
    m = Branchy()
    x = torch.randn(2, 4)
    with torchtrace.trace(m, label="branchy") as t:
        m(x).sum().backward()
    return t.graph


@pytest.fixture(scope="module")
def gpt2_graph() -> torchtrace.Graph:
    m = gpt2()
    with torchtrace.trace(m) as t:
        m(token_ids())
    return t.graph


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_save_load_round_trip(graph, gpt2_graph, tmp_path, suffix):
    for g in (graph, gpt2_graph):
        path = torchtrace.save(g, tmp_path / f"g{suffix}")
        loaded = torchtrace.load(path)
        assert loaded == g
        assert loaded.to_dict() == g.to_dict()
        assert str(loaded) == str(g)
        assert loaded.fingerprints == g.fingerprints
    raw = (tmp_path / f"g{suffix}").read_bytes()
    assert raw[:2] == (b"\x1f\x8b" if suffix.endswith(".gz") else b'{"')


def test_from_dict_to_dict_is_identity(gpt2_graph):
    d = gpt2_graph.to_dict()
    assert torchtrace.Graph.from_dict(json.loads(json.dumps(d))).to_dict() == d


def test_files_match_committed_schema(graph, gpt2_graph):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for g in (graph, gpt2_graph):
        jsonschema.validate(g.to_dict(), schema)  # independent validator as oracle


def test_schema_change_requires_version_bump():
    lock = json.loads((ROOT / "tests" / "schema_lock.json").read_text())
    schema = json.loads(SCHEMA.read_text())
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert tuple(schema["x-torchtrace-version"]) == VERSION, "schema file and ir.VERSION disagree"
    if digest != lock["sha256"]:
        assert tuple(lock["version"]) != VERSION, (
            "graph.v1.json changed but ir.VERSION was not bumped: bump the minor version for added "
            "fields (major for renames/removals), then update tests/schema_lock.json")


def test_ids_are_deterministic_and_in_order(graph):
    assert [v.id for v in graph.values] == [f"v{i}" for i in range(len(graph.values))]
    assert [n.id for n in graph.nodes] == [f"n{i}" for i in range(len(graph.nodes))]
    assert [m.id for m in graph.modules] == [f"m{i}" for i in range(len(graph.modules))]
    assert [a.id for a in graph.autograd.nodes] == [f"a{i}" for i in range(len(graph.autograd.nodes))]
    # values appear in order of first use: each node mentions ids not above the next fresh one
    fresh = 0
    for n in graph.nodes:
        for v in (*n.inputs, *n.outputs):
            k = int(v[1:])
            assert k <= fresh, f"{n.id} mentions {v} before v{fresh}"
            fresh = max(fresh, k + 1)


def test_two_recordings_are_identical_but_for_time():
    m, x = Branchy(), torch.randn(2, 4)
    dicts = []
    for _ in range(2):
        with torchtrace.trace(m) as t:
            m(x)
        d = t.graph.to_dict()
        d["meta"].pop("created")
        dicts.append(d)
    assert dicts[0] == dicts[1]


def _write(tmp_path, data, name="bad.json") -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return p


def _broken(graph, edit):
    d = copy.deepcopy(graph.to_dict())
    edit(d)
    return d


BAD = {
    "unknown major": (lambda d: d.update(version=[VERSION[0] + 1, 0]), ["major version", "upgrade"]),
    "missing field": (lambda d: d.pop("nodes"), ["missing field", "'nodes'"]),
    "missing node field": (lambda d: d["nodes"][3].pop("op"), ["nodes[3]", "'op'"]),
    "dangling input": (lambda d: d["nodes"][2]["inputs"].append("v9999"), ["dangling value id", "v9999", "nodes[2]"]),
    "dangling module": (lambda d: d["nodes"][0].update(module="m77"), ["dangling module call id", "m77"]),
    "wrong type": (lambda d: d["values"][0].update(shape="2x4"), ["values[0].shape", "array", "string"]),
    "bad role": (lambda d: d["values"][0].update(role="weights"), ["values[0].role", "weights"]),
    "wrong format": (lambda d: d.update(format="torchviz"), ["not a torchtrace graph", "torchviz"]),
    "duplicate id": (lambda d: d["values"][1].update(id=d["values"][0]["id"]), ["duplicate id"]),
    "bad tag": (lambda d: d["nodes"][0].update(tags=["fancy"]), ["unknown tag", "fancy"]),
    "negative size": (lambda d: d["values"][0].update(shape=[-3, 2]), ["values[0].shape", "bad shape", "[-3, 2]"]),
    # inside a field that may be null: the field itself, not its parent ("source: expected integer or null")
    "wrong type in a nullable record": (lambda d: d["nodes"][0]["source"].update(line="27"),
                                        ["nodes[0].source.line", "expected integer", 'string "27"']),
    # a problem found after the schema check names the file too (in a diff of two files: which one)
    "duplicate node id": (lambda d: d["nodes"][3].update(id=d["nodes"][2]["id"]), ["bad.json: nodes[3].id"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_graph_errors_name_the_problem(graph, tmp_path, case):
    edit, words = BAD[case]
    path = _write(tmp_path, _broken(graph, edit))
    with pytest.raises(torchtrace.TorchtraceError) as info:
        torchtrace.load(path)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"
    assert "Fix:" in msg and "expected" in msg


@pytest.mark.parametrize("norm, ok", [(1.5, True), ("nan", True), ("inf", True), (None, True), ("unknown", True),
                                      ("banana", False), (-2.0, False)])
def test_a_gradient_norm_is_a_number_nan_inf_or_null(tmp_path, norm, ok):
    """A norm of "banana" loaded as None, silently."""
    lin = torch.nn.Linear(2, 2)
    with torchtrace.trace(lin) as t:
        lin(torch.randn(1, 2)).sum().backward()
    d = json.loads(json.dumps(t.graph.to_dict()))
    d["autograd"]["grads"][0]["norm"] = norm
    path = _write(tmp_path, d)
    if ok:
        got = torchtrace.load(path).autograd.grads[0].norm
        assert got is None if norm in (None, "unknown") else got == float(norm) or math.isnan(got)
        return
    with pytest.raises(torchtrace.TorchtraceError, match=r"autograd\.grads\[0\]\.norm: bad gradient norm"):
        torchtrace.load(path)


@pytest.mark.parametrize("data, words", [
    (b"{not json", ["not valid JSON", ":1:2"]),
    (b"", ["an empty file", "found 0 bytes"]),
    (b" \n", ["an empty file", "2 bytes of white space"]),
    (b"null", ["not a torchtrace graph", "found null"]),  # (was "found NoneType")
    (b'{"format": null}', ["not a torchtrace graph", "found null"]),
    (gzip.compress(b""), ["an empty file once unzipped", "found 0 bytes"]),
    (b'{"a": {}, "ops": []}', ["no 'format' field (an object with a, ops)"]),  # (was "found '<missing>'")
    (gzip.compress(b"[1, 2]"), ["not a torchtrace graph", "JSON object", "found array"]),
    (b"\x1f\x8b\x08garbage", ["corrupt gzip"]),
    (pickle.dumps({"format": "torchtrace.graph"}), ["not"]),
    (b"\xff\xfe\x00", ["UTF-8"]),
    (b'{"format": "torchtrace.graph", "version": [1, ' + b"1" * 5000 + b"]}", ["not valid JSON", "4300 digits"]),
])
def test_unreadable_files(tmp_path, data, words):
    with pytest.raises(torchtrace.TorchtraceError) as info:
        torchtrace.load(_write(tmp_path, data))
    for w in words:
        assert w in str(info.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(torchtrace.TorchtraceError, match="no such file"):
        torchtrace.load(tmp_path / "nope.json")
    with pytest.raises(torchtrace.TorchtraceError, match="folder"):
        torchtrace.load(tmp_path)


def test_save_is_atomic(graph, tmp_path, monkeypatch):
    target = tmp_path / "g.json"
    torchtrace.save(graph, target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        torchtrace.save(graph, target)
    assert target.read_bytes() == before  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # no temp file left behind


def test_saved_files_get_the_mode_open_would_give(graph, tmp_path):
    """Not mkstemp's 0600: the umask for a new file, the old mode for a file written over."""
    old = os.umask(0o022)
    try:
        torchtrace.save(graph, tmp_path / "new.json")
        (tmp_path / "shared.json").write_text("{}")
        os.chmod(tmp_path / "shared.json", 0o664)
        torchtrace.save(graph, tmp_path / "shared.json")
        os.umask(0o077)
        torchtrace.save(graph, tmp_path / "private.json")
    finally:
        os.umask(old)
    assert oct((tmp_path / "new.json").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "shared.json").stat().st_mode & 0o777) == oct(0o664)
    assert oct((tmp_path / "private.json").stat().st_mode & 0o777) == oct(0o600)


def test_save_rejects_non_graph(tmp_path):
    with pytest.raises(torchtrace.TorchtraceError, match="torchtrace.Graph"):
        torchtrace.save({"format": "x"}, tmp_path / "x.json")


def test_text_form_is_one_line_per_op(graph):
    text = str(graph)
    op_lines = [line for line in text.splitlines() if line.startswith("n")]
    assert len(op_lines) == len(graph.nodes)
    addmm = next(line for line in op_lines if "aten.addmm" in line)
    # jaxpr-like: v<k>:f32[shape] = aten.op inputs ... # module  file:line
    assert addmm.split()[1].startswith("v") and ":f32[" in addmm
    assert "# fc" in addmm and "zoo.py:" in addmm
    assert "-> True" in text or "-> False" in text  # the witness of `if h.sum() > 0`


def test_validate_rejects_use_before_definition(graph):
    d = graph.to_dict()
    d["nodes"][0]["inputs"] = [d["nodes"][5]["outputs"][0]]
    with pytest.raises(torchtrace.TorchtraceError, match="before it is produced"):
        torchtrace.Graph.from_dict(d)


@pytest.mark.parametrize("field", ["alias_of", "version_of"])
def test_validate_rejects_a_value_whose_chain_leads_back_to_it(graph, field):
    """A value that is its own base (or version), or two that are each other's,
    loaded: a walk up the chain never ends."""
    d = graph.to_dict()
    a, b = d["values"][1], d["values"][2]
    a[field] = a["id"]
    with pytest.raises(torchtrace.TorchtraceError, match=f"{field} leads back to the value"):
        torchtrace.Graph.from_dict(d)
    a[field], b[field] = b["id"], a["id"]
    with pytest.raises(torchtrace.TorchtraceError, match=f"{a['id']} -> {b['id']} -> {a['id']}"):
        torchtrace.Graph.from_dict(d)


def test_encoder_writes_the_json_form(graph, gpt2_graph):
    from types import MappingProxyType

    from torchtrace.ir import Autograd, AutogradNode, GradInfo, Graph, ModuleCall, Node, Source, Value, Witness
    from torchtrace.serialize import dumps

    odd = 'q"u\\o\nte\t é 字 \u2028 \x01'
    hostile = Graph(
        meta={"label": odd, "step": 3, "nested": {"x": [1, 2.5, None, True]}},
        modules=(ModuleCall("m0", "", odd, 0, None), ModuleCall("m1", "a.b", "Linear", 2, "m0", "backward", True)),
        values=(Value("v0", (2, 3), "float32", "cpu", True, "input", odd, None),
                Value("v1", (), "bfloat16", "meta", False, "activation", None, "v0", "v0"),
                Value("v2", (0, 1), "int64", "cuda:0", False, "constant", None, None)),
        nodes=(Node("n0", "aten.add_.Tensor", ("v0", "v2"), ("v1",), "forward", "m1",
                    MappingProxyType({"alpha": 1.5, "name": odd, "size": [1, -1], "flag": False}),
                    Source(f"/tmp/{odd}.py", 7, "<lambda>"), ("inplace", "witness"), Witness(value=odd), "a0"),
               Node("n1", "aten.nonzero.default", ("v1",), ("v2",), "backward", None, {},
                    None, ("witness",), Witness(shape=(4, 1)), None)),
        outputs=("v2",),
        autograd=Autograd(nodes=(AutogradNode("a0", "AddBackward0", "n0", ("a1",), 96, None, None),
                                 AutogradNode("a1", "torch::autograd::AccumulateGrad", None, (), 0, odd, "v0")),
                          executed=("a0", "a1"),
                          grads=(GradInfo("v0", odd, (2, 3), "float32", 0.25),
                                 GradInfo("v1", None, (), "float32", float("nan"))),
                          no_grad_params=(odd, "w")),
    )
    for g in (graph, gpt2_graph, hostile):
        text = dumps(g)
        assert json.loads(text) == g.to_dict()  # json, not orjson, reads it back: the oracle
        assert text.startswith('{"format":"torchtrace.graph","version":[%d,%d],"meta":{' % VERSION)  # compact
    text = dumps(hostile)
    assert json.loads(text)["nodes"][0]["args"]["name"] == odd
    assert [x["norm"] for x in json.loads(text)["autograd"]["grads"]] == [0.25, "nan"]  # (JSON has no NaN)
    assert "é 字" in text  # UTF-8, not \\u escapes
    assert json.loads(dumps(Graph(meta={"x": float("nan")})))["meta"]["x"] is None  # NaN is not JSON
    # what orjson refuses goes through json: a 70-bit integer, a non-string key
    d = json.loads(dumps(Graph(meta={"big": 2 ** 70, 3: "int key"})))
    assert d["meta"] == {"big": 2 ** 70, "3": "int key"}


def _mutations(d):
    """Single-field corruptions of a graph dict, as (where, row, key, bad): each
    field of the first and last entry of every table dropped ("drop") or set to
    a value of another JSON type."""
    tables = {"modules": d["modules"], "values": d["values"], "nodes": d["nodes"],
              "autograd.nodes": d["autograd"]["nodes"], "autograd.grads": d["autograd"]["grads"]}
    for name, rows in tables.items():
        for r in sorted({0, len(rows) - 1}) if rows else ():
            for key in list(rows[r]):
                for bad in ("drop", 12345, "x", None, ["x"], True):
                    yield f"{name}[{r}]", rows[r], key, bad
    for key in list(d):
        for bad in ("drop", None, [], {}, 3):
            yield "graph", d, key, bad


def test_fast_schema_check_accepts_exactly_what_the_oracle_accepts(graph):
    """The loader's compiled schema predicate against jsonschema (the oracle)
    and against the path that writes the error message, on every single-field
    corruption of a real graph: a looser predicate would load a broken file."""
    from torchtrace import _jsonschema

    oracle = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    root = _jsonschema.graph_schema()
    fast = _jsonschema._fast()
    d = graph.to_dict()
    assert d["autograd"]["grads"] and fast(d) and oracle.is_valid(d)
    rejected = 0
    for where, row, key, bad in _mutations(d):
        old = row.pop(key)
        if bad != "drop":
            row[key] = bad
        want = oracle.is_valid(d)
        assert fast(d) == want, (where, key, bad)
        assert (_jsonschema._error(root, d, "graph", root) is None) == want, (where, key, bad)
        rejected += not want
        row[key] = old
    assert fast(d) and rejected > 300  # restored; and the corruptions do reach the checks


@pytest.mark.parametrize("bad", [{"file": "m.py", "line": "7", "function": "f"}, "m.py:7", None])
def test_a_bad_called_from_record_is_a_clear_error(graph, bad):
    from torchtrace.errors import IRError
    from torchtrace.serialize import graph_from_dict, graph_to_dict

    d = json.loads(json.dumps(graph_to_dict(graph)))
    node = next(n for n in d["nodes"] if n["witness"] is not None)
    node["witness"]["called_from"] = [bad]
    with pytest.raises(IRError, match="witness.called_from") as e:
        graph_from_dict(d)
    assert "expected" in str(e.value)


def test_writes_follow_symlinks_and_write_special_files_in_place(tmp_path):
    """`-o /dev/null` or `-o /dev/stdout` must not put a regular file where the
    device was: only regular files are replaced atomically; a symlink's target
    is the file written (the link stays a link)."""
    import stat
    import threading

    from torchtrace.serialize import atomic_write

    target = tmp_path / "real.dot"
    target.write_text("old")
    link = tmp_path / "link.dot"
    link.symlink_to(target)
    atomic_write(link, b"new")
    assert link.is_symlink() and target.read_text() == "new"

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    atomic_write(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_writing_to_dev_stdout_writes_the_callers_stream(graph, tmp_path):
    """`-o /dev/stdout` resolved to the file or pipe behind it and replaced that
    file (a log the shell appended to lost its lines) or failed on a pipe; a
    symlink loop was replaced by a file."""
    import subprocess
    import sys

    from torchtrace.errors import WriteError
    from torchtrace.serialize import atomic_write

    log = tmp_path / "log.txt"
    log.write_text("EARLIER\n")
    code = "import sys; from torchtrace.serialize import atomic_write; print('first', flush=True); " \
           "atomic_write('/dev/stdout', b'graph bytes\\n')"
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=60)
    assert log.read_text() == "EARLIER\nfirst\ngraph bytes\n"
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    assert piped.stdout == b"first\ngraph bytes\n"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(WriteError):
        atomic_write(tmp_path / "a", b"x")
    assert (tmp_path / "a").is_symlink()


def test_a_hand_built_graph_whose_module_calls_form_a_cycle_is_refused_by_render():
    """(An audit.) `Graph(...)` is not validated; rendering one whose module calls
    are each other's parent looped for good, taking memory without bound."""
    import subprocess
    import sys
    code = ("import torchtrace as tt\nfrom torchtrace.ir import Node, ModuleCall\n"
            "g = tt.Graph(modules=(ModuleCall('m0', '', 'M', 0, 'm1'), ModuleCall('m1', 'a', 'M', 0, 'm0')),\n"
            "             nodes=(Node(id='n0', op='aten.add.Tensor', module='m1'),))\n"
            "try:\n    tt.render(g, 'text')\nexcept tt.errors.IRError as e:\n    print('refused:', e.problem)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("refused: module call before its parent"), res.stderr


def test_non_finite_numbers_from_another_json_writer_load_as_the_ir_writes_them(graph, tmp_path):
    """(An audit.) Python's json writes NaN and Infinity, which load read as floats
    and save (orjson) then wrote as null: a round trip lost them. They load as the
    strings the recorder writes ("nan", "inf"); a value JSON cannot hold is refused
    by save with an IRError (a bare TypeError before)."""
    d = graph.to_dict()
    d["nodes"][0]["args"] = {"a": float("nan"), "b": float("-inf")}
    (tmp_path / "nan.json").write_text(json.dumps(d))
    g = torchtrace.load(tmp_path / "nan.json")
    torchtrace.save(g, tmp_path / "again.json")
    assert g.nodes[0].args == torchtrace.load(tmp_path / "again.json").nodes[0].args == {"a": "nan", "b": "-inf"}
    d["nodes"][0]["args"] = {"t": b"ab"}
    with pytest.raises(torchtrace.errors.IRError, match="a value JSON cannot hold"):
        torchtrace.save(torchtrace.Graph.from_dict(d), tmp_path / "b.json")


def test_save_refuses_a_read_only_file_as_open_would(graph, tmp_path, monkeypatch):
    """(An audit.) The atomic write renames a temporary file over the target, which
    a read-only file does not stop: its content was replaced where `open(path, "w")`
    is refused. (The test runs as root, whom no mode stops: the check asks
    `os.access`, as open() would, and this test makes it say no.)"""
    from torchtrace import filewrite
    target = tmp_path / "ro.json"
    target.write_text("PRECIOUS")
    target.chmod(0o444)
    real = os.access
    monkeypatch.setattr(filewrite.os, "access", lambda p, mode: False if Path(p) == target else real(p, mode))
    with pytest.raises(torchtrace.errors.WriteError, match="read-only"):
        torchtrace.save(graph, target)
    assert target.read_text() == "PRECIOUS"
    torchtrace.save(graph, tmp_path / "other.json")  # (a writable path is written)


@pytest.mark.parametrize("field, value", [("meta", 3), ("nodes", [1]), ("outputs", ("v0", 3)), ("autograd", None),
                                          ("values", "v0")])
def test_a_hand_built_graph_with_a_field_of_another_kind_says_which(field, value):
    """(An audit.) `Graph(meta=3)` and `Graph(nodes=[1])` raised bare
    AttributeErrors from deep inside (the fingerprint)."""
    with pytest.raises(torchtrace.errors.UsageError, match=rf"Graph\({field}=\.\.\.\) holds something else"):
        torchtrace.Graph(**{field: value})


def test_save_refuses_a_trace_store_and_its_files_and_keeps_every_pass(graph, tmp_path):
    """(A 2026-11-28 audit.) `save(g, "runs/trace.db")` replaced a whole store with
    one graph, silently; the command line's `-o` already refused that."""
    from torchtrace.errors import UsageError
    from torchtrace.store import Store

    m = torch.nn.Linear(2, 2)
    with torchtrace.Recorder(tmp_path / "trace.db") as rec:
        for i in range(3):
            rec.step(i)
            m(torch.ones(1, 2))
    (tmp_path / "trace.db-wal").write_bytes(b"")  # (SQLite's log beside it, as while a run records)
    before = (tmp_path / "trace.db").read_bytes()
    for name in ("trace.db", "trace.db-wal"):
        with pytest.raises(UsageError, match="trace store.*would lose its passes"):
            torchtrace.save(graph, tmp_path / name)
    assert (tmp_path / "trace.db").read_bytes() == before
    with Store(tmp_path / "trace.db", readonly=True) as st:
        assert len(st.passes()) == 3
    torchtrace.save(graph, tmp_path / "g.json")
    torchtrace.save(graph, tmp_path / "g.json")  # (a graph file of its own is written over, as before)


def test_save_checks_the_meta_a_user_edited_against_the_schema_load_reads(graph, tmp_path):
    """(A 2026-11-28 audit.) `g.meta` is a plain dict: `g.meta["step"] = "epoch-3"` went
    through save() into a file load() refused."""
    g = copy.deepcopy(graph)
    g.meta["step"] = "epoch-3"
    with pytest.raises(torchtrace.errors.IRError, match=r"meta\.step: .*expected integer or null; "
                       r'found string "epoch-3"'):
        torchtrace.save(g, tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()
    g.meta["step"] = 3
    assert torchtrace.load(torchtrace.save(g, tmp_path / "g.json")).meta["step"] == 3


def test_a_nul_in_a_path_is_an_error_that_says_so(graph):
    with pytest.raises(torchtrace.errors.IRError, match="not a usable path.*NUL"):
        torchtrace.load("graph\x00.json")
    with pytest.raises(torchtrace.errors.IRError, match="not a usable path"):
        torchtrace.diff(graph, "graph\x00.json")


def test_a_gz_name_in_capitals_is_gzipped_too(graph, tmp_path):
    path = torchtrace.save(graph, tmp_path / "G.JSON.GZ")
    assert path.read_bytes()[:2] == b"\x1f\x8b" and torchtrace.load(path) == graph
