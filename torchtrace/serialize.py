"""JSON form of the IR: ``Graph`` <-> dict, and ``save``/``load`` for files.

Loading parses JSON only (never pickle, never code), checks the committed
schema and the version, then the semantic invariants (``Graph.validate``).
Writes are atomic (``filewrite.atomic_write``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import orjson

from . import _jsonschema
from .errors import IRError, UsageError
from .filewrite import PathLike, atomic_write
from .ir import (FORMAT, VERSION, Autograd, AutogradNode, GradInfo, Graph, ModuleCall, Node, Source,
                 Value, Witness, check_version, is_norm)

GZIP_MAGIC = b"\x1f\x8b"
SQLITE_HEADER = b"SQLite format 3\x00"  # (the first bytes of a trace store)


def is_sqlite(path: PathLike) -> bool:
    """Does the file at ``path`` begin as an SQLite database (a trace store) does?
    (OSError as ``open`` raises it.)"""
    with open(path, "rb") as fh:
        return fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER


STORE_FILES = ("-wal", "-shm", "-journal")  # SQLite's files beside a store


def is_store(path: PathLike) -> bool:
    """Is there a trace store at ``path``, or is ``path`` one of SQLite's files
    beside one (its write-ahead log holds its last passes until a checkpoint)?
    (OSError where the file cannot be read.)"""
    text = os.fspath(path)
    if not os.path.isfile(text):
        return False
    owner = next((text[:-len(s)] for s in STORE_FILES if text.endswith(s)), None)
    return is_sqlite(text) or (owner is not None and os.path.isfile(owner) and is_sqlite(owner))


def graph_to_dict(g: Graph) -> Dict[str, Any]:
    """The JSON form of ``g`` as plain dicts and lists (a fresh tree: the
    caller may edit it)."""
    return _tree(g, list, share=False)


def _tree(g: Graph, arr: Callable[[Any], Any], share: bool) -> Dict[str, Any]:
    """The JSON form with sequences made by ``arr``: ``list`` for
    ``graph_to_dict``; ``tuple`` for the encoder (no copy: the IR's tuples
    as they are), which also shares one dict per source record."""
    modules = []
    for m in g.modules:
        d = {"id": m.id, "path": m.path, "type": m.type, "call": m.call, "parent": m.parent}
        if m.phase != "forward":
            d["phase"] = m.phase
        if m.training is not None:
            d["training"] = m.training
        modules.append(d)
    values = []
    for v in g.values:
        d = {"id": v.id, "shape": arr(v.shape), "dtype": v.dtype, "device": v.device,
             "requires_grad": v.requires_grad, "role": v.role, "name": v.name, "alias_of": v.alias_of}
        if v.version_of is not None:
            d["version_of"] = v.version_of
        values.append(d)
    sources: Dict[int, Any] = {}

    def source(src: Any) -> Any:
        if src is None:
            return None
        d = sources.get(id(src)) if share else None
        if d is None:
            d = {"file": src.file, "line": src.line, "function": src.function}
            if share:
                sources[id(src)] = d  # the graph holds src alive meanwhile: its id stays its own
        return d

    def witness(w: Any) -> Any:
        d = {"shape": arr(w.shape)} if w.shape is not None else {"value": w.value}
        if w.called_from:
            d["called_from"] = [source(s) for s in w.called_from]
        return d

    # witness and grad_fn are always written (null when absent): readers index them
    nodes = [{"id": n.id, "kind": n.kind, "op": n.op, "phase": n.phase, "module": n.module,
              "inputs": arr(n.inputs), "outputs": arr(n.outputs),
              "args": n.args if share and type(n.args) is dict else dict(n.args),
              "source": source(n.source), "tags": arr(n.tags),
              "witness": None if n.witness is None else witness(n.witness),
              "grad_fn": n.grad_fn} for n in g.nodes]
    for d, n in zip(nodes, g.nodes):  # (since 1.2; only on backward ops: it costs the other ops no bytes)
        if n.autograd_node is not None:
            d["autograd_node"] = n.autograd_node
    ag = g.autograd
    return {
        "format": FORMAT,
        "version": list(VERSION),
        "meta": dict(g.meta),
        "modules": modules,
        "values": values,
        "nodes": nodes,
        "outputs": arr(g.outputs),
        "autograd": {
            "nodes": [{"id": a.id, "name": a.name, "op": a.op, "next": arr(a.next), "saved_bytes": a.saved_bytes,
                       "param": a.param, "value": a.value} for a in ag.nodes],
            "executed": arr(ag.executed),
            "grads": [{"value": x.value, "name": x.name, "shape": arr(x.shape), "dtype": x.dtype,
                       "norm": norm_json(x.norm)} for x in ag.grads],
            "no_grad_params": arr(ag.no_grad_params),
        },
        "fingerprints": dict(g.fingerprints),
    }


def graph_from_dict(data: Any, *, where: str = "graph") -> Graph:
    if not isinstance(data, dict):
        raise IRError("not a torchtrace graph", where=where, expected="a JSON object",
                      found=_jsonschema.describe(data), fix="pass the object written by torchtrace.save()")
    if data.get("format") != FORMAT:
        keys = ", ".join(map(str, list(data)[:6])) + (", ..." if len(data) > 6 else "")
        raise IRError("not a torchtrace graph", where=f"{where}.format", expected=repr(FORMAT),
                      found=_jsonschema.describe(data["format"]) if "format" in data else
                      f"no 'format' field (an object with {keys or 'no fields'})",
                      fix="load a file written by torchtrace.save() or `torchtrace export`")
    check_version(data.get("version"), where)
    _jsonschema.check(data, where)
    ag = data["autograd"]
    graph = Graph(
        meta=dict(data["meta"]),
        modules=tuple(ModuleCall(m["id"], m["path"], m["type"], m["call"], m["parent"],
                                 m.get("phase", "forward"), m.get("training")) for m in data["modules"]),
        values=tuple(Value(v["id"], tuple(v["shape"]), v["dtype"], v["device"], v["requires_grad"],
                           v["role"], v["name"], v["alias_of"], v.get("version_of"))
                     for v in data["values"]),
        nodes=tuple(
            Node(id=n["id"], op=n["op"], inputs=tuple(n["inputs"]), outputs=tuple(n["outputs"]),
                 phase=n["phase"], module=n["module"], args=dict(n["args"]),
                 source=None if n["source"] is None else
                 Source(n["source"]["file"], n["source"]["line"], n["source"]["function"]),
                 tags=tuple(n["tags"]), witness=witness_from_dict(n.get("witness")), grad_fn=n.get("grad_fn"),
                 kind=n["kind"], autograd_node=n.get("autograd_node"))
            for n in data["nodes"]),
        outputs=tuple(data["outputs"]),
        autograd=Autograd(
            nodes=tuple(AutogradNode(a["id"], a["name"], a["op"], tuple(a["next"]), a["saved_bytes"],
                                     a.get("param"), a.get("value")) for a in ag["nodes"]),
            executed=tuple(ag["executed"]),
            grads=tuple(GradInfo(x["value"], x["name"], tuple(x["shape"]), x["dtype"],
                                 norm_from_json(x["norm"], f"{where}.autograd.grads[{k}].norm"))
                        for k, x in enumerate(ag.get("grads", ()))),
            no_grad_params=tuple(ag.get("no_grad_params", ())),
        ),
        fingerprints=dict(data["fingerprints"]),
    )
    try:
        return graph.validate()
    except IRError as e:  # (its locations are inside the graph: say which file or pass)
        if where is None or e.where is None:
            raise
        raise IRError(e.problem, where=f"{where}: {e.where}", expected=e.expected, found=e.found, fix=e.fix) from None


def norm_json(x: Optional[float]) -> Any:
    """A gradient norm for JSON, which has no NaN or inf: those as strings."""
    return x if x is None or math.isfinite(x) else str(x)


def norm_from_json(x: Any, where: str = "norm") -> Optional[float]:
    """The norm ``norm_json`` wrote ("nan", "inf"; "unknown" in files before 2026-11-27: None)."""
    if isinstance(x, str):
        if x in ("nan", "inf", "-inf"):
            return float(x)
        if x != "unknown":
            raise IRError("bad gradient norm", where=where, expected='a number, "nan", "inf" or null',
                          found=repr(x), fix="write norms as torchtrace.save() does")
        return None
    return x


def stored_norm(x: Any) -> Optional[float]:
    """A pass's gradient norm as a store keeps it (``norm_json``); anything else
    is a ValueError (``Store._reading`` makes that a damaged store)."""
    try:
        v = norm_from_json(x)
    except IRError:
        v = x
    if not is_norm(v):
        raise ValueError(f"a gradient norm {x!r}, not a number >= 0, 'nan', 'inf' or null")
    return v


def witness_from_dict(d: Any) -> Any:
    """A node's ``witness`` from its JSON (None stays None)."""
    if d is None:
        return None
    via = _sources(d.get("called_from", []), "witness.called_from")
    if "shape" in d:
        return Witness(shape=tuple(d["shape"]), called_from=via)
    return Witness(value=d.get("value"), called_from=via)


def _sources(items: Any, where: str) -> Tuple[Source, ...]:
    """A list of source records (a field the schema file leaves open: checked here)."""
    if not isinstance(items, list) or not all(
            isinstance(x, dict) and isinstance(x.get("file"), str) and type(x.get("line")) is int
            and isinstance(x.get("function"), str) for x in items):
        raise IRError("bad source records", where=where, expected='a list of {"file": str, "line": int, '
                      '"function": str}', found=repr(items)[:120], fix="re-export the graph with torchtrace")
    return tuple(Source(x["file"], x["line"], x["function"]) for x in items)


# -- files ---------------------------------------------------------------
def dumps(g: Graph) -> str:
    """Compact JSON text (``separators=(",", ":")``, UTF-8, not ASCII-escaped)."""
    return encode(g).decode("utf-8")


def encode(g: Graph, gz: bool = False) -> bytes:
    """The graph's JSON bytes, gzipped if ``gz``. orjson writes them (C: with
    the dict tree built, about a third of ``json.dumps``'s time, bench/parts.py)."""
    raw = _json_bytes(_tree(g, tuple, share=True))
    return gzip.compress(raw, mtime=0) if gz else raw


def _json_bytes(tree: Dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an IR tree: orjson; what it refuses (an integer past
    64 bits, a non-string key in ``meta``, a lone surrogate) through ``json``,
    which writes the same document (a lone surrogate escaped, as JSON allows)."""
    try:
        return orjson.dumps(tree)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    text = json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=symbolic_value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(tree, separators=(",", ":"), allow_nan=False, default=symbolic_value).encode("ascii")


def content_key(g: Graph, per_pass_meta: Tuple[str, ...]) -> str:
    """A hash of everything in ``g`` but what each pass of a store keeps for
    itself (``per_pass_meta``, what witnesses read, gradient norms, the names of
    ``record_function`` markers): two passes
    with equal fingerprints can still differ in what the fingerprints leave
    out (source lines, ``record_function`` markers, autograd bookkeeping,
    exception messages), and a store must not read one back as the other."""
    tree = _tree(g, tuple, share=True)
    tree["meta"] = {k: v for k, v in tree["meta"].items() if k not in per_pass_meta}
    tree["nodes"] = [n if n["witness"] is None and "annotation" not in n["tags"] else
                     {**n, "witness": _kind_only(n["witness"])} if n["witness"] is not None else {**n, "args": {}}
                     for n in tree["nodes"]]  # (markers' names are each pass's own: `ProfilerStep#7`)
    tree["autograd"]["grads"] = [{**x, "norm": None} for x in tree["autograd"]["grads"]]
    return hashlib.sha256(_json_bytes(tree)).hexdigest()[:16]


def _kind_only(w: Dict[str, Any]) -> Dict[str, Any]:
    """A witness without what it read: which kind of read, and where from."""
    return {"kind": "shape" if "shape" in w else "value", "called_from": w.get("called_from")}


def symbolic_value(x: Any) -> Any:
    """A symbolic size (``torch.SymInt``: a jagged NestedTensor's shape holds one):
    its number where it has one, else -1, "no fixed size" (found without importing torch)."""
    kind = type(x).__name__
    if kind not in ("SymInt", "SymFloat", "SymBool"):
        raise TypeError(f"Object of type {kind} is not JSON serializable")
    try:
        return {"SymInt": int, "SymFloat": float, "SymBool": bool}[kind](x)
    except Exception:  # a nested int (j0): no number
        return -1 if kind == "SymInt" else None


_NON_FINITE = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}  # (JSON has none: the IR writes strings)


def save(graph: Graph, path: PathLike) -> Path:
    """Write ``graph`` as JSON (``.json``) or gzipped JSON (``.json.gz``), atomically."""
    if not isinstance(graph, Graph):
        raise IRError("cannot save this object", expected="a torchtrace.Graph",
                      found=type(graph).__name__, fix="pass trace.graph (from `with torchtrace.trace() as t`)")
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError("cannot save to this", expected="a file path (str or pathlib.Path)", found=repr(path),
                         fix="pass e.g. 'graph.json' or 'graph.json.gz'")
    target = Path(path)
    bad = _jsonschema.check_field("meta", graph.meta)  # (the part of a Graph edited in place: g.meta["step"] = ...)
    if bad is not None:
        raise IRError("this graph's meta would not load back", where=bad.where, expected=bad.expected,
                      found=bad.found, fix="set that field to a value of the expected type before saving")
    try:
        if is_store(path):
            raise UsageError(f"{path} is a trace store or one of its files", expected="a new graph file, or one "
                             "written by torchtrace.save()", found="an SQLite trace store: writing there would lose "
                             "its passes", fix="save to another file, e.g. 'graph.json.gz'")
    except OSError:  # (not readable: the write says what is wrong)
        pass
    try:
        raw = encode(graph, gz=target.name.lower().endswith(".gz"))
    except (TypeError, ValueError) as e:  # (a hand-built graph holding what JSON cannot: bytes, a set, NaN)
        raise IRError("the graph holds a value JSON cannot hold", expected="JSON values in args and meta "
                      "(numbers, strings, lists, dicts; non-finite numbers as the strings 'nan', 'inf')",
                      found=str(e), fix="replace that value in the graph (Graph.from_dict of its to_dict())") from None
    atomic_write(path, raw)  # (the path as given: `"out/"` names a folder)
    return target


def decode(raw: bytes, where: str) -> Graph:
    if raw.startswith(SQLITE_HEADER):
        raise IRError("a trace store, not a graph file", where=where, expected="a .json or .json.gz graph file",
                      found="an SQLite database (a trace store holds many passes)",
                      fix=f"open one of its passes: `{where}:0` on the command line, or "
                      f"torchtrace.store.Store(path).graph(0) in Python") from None
    gunzipped = raw[:2] == GZIP_MAGIC
    if gunzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IRError("corrupt gzip data", where=where, expected="a complete .json.gz file",
                          found=str(e), fix="re-export the graph; the file was cut short or damaged") from None
    if not raw.strip():
        raise IRError("an empty file" if not gunzipped else "an empty file once unzipped", where=where,
                      expected="a JSON document", found=f"{len(raw)} bytes{' of white space' if raw else ''}",
                      fix="pass a .json or .json.gz file written by torchtrace.save()")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_NON_FINITE.__getitem__)  # (`NaN` from another writer: as ours)
    except UnicodeDecodeError as e:
        raise IRError("not UTF-8 text", where=where, expected="a JSON file (UTF-8)",
                      found=f"undecodable byte at offset {e.start}",
                      fix="pass a .json or .json.gz file written by torchtrace.save()") from None
    except json.JSONDecodeError as e:
        raise IRError("not valid JSON", where=f"{where}:{e.lineno}:{e.colno}", expected="a JSON document",
                      found=e.msg, fix="pass a .json or .json.gz file written by torchtrace.save()") from None
    except RecursionError:
        raise IRError("not a torchtrace graph", where=where, expected="a JSON object nested a few levels deep",
                      found="JSON nested deeper than Python's recursion limit",
                      fix="pass a .json or .json.gz file written by torchtrace.save()") from None
    except ValueError as e:  # (an integer of more than 4,300 digits)
        raise IRError("not valid JSON", where=where, expected="a JSON document with numbers Python can read",
                      found=str(e).split(";")[0],
                      fix="pass a .json or .json.gz file written by torchtrace.save()") from None
    return graph_from_dict(data, where=where)


def load(path: PathLike) -> Graph:
    """Read a graph written by ``save`` (JSON or gzipped JSON); never runs code."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError("load() takes a path", expected="a str or os.PathLike naming a .json or .json.gz file",
                         found=type(path).__name__, fix="pass the path given to torchtrace.save(); for an "
                         "IR dict use torchtrace.Graph.from_dict(d)")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except ValueError as e:  # (a NUL in the path)
        raise IRError("not a usable path", where=repr(str(path)), expected="a file path",
                      found=str(e), fix="name the file without NUL characters") from None
    except FileNotFoundError:
        from .passref import _store_ref

        found = _store_ref(str(path))  # (`trace.db:3`: a pass reference, as the command line takes them)
        if found is not None and 0 < len(found[1]) <= 2 and all(x.lstrip("-").isdigit() for x in found[1]) \
                and Path(found[0]).is_file():
            store, args = found[0], ", ".join(reversed(found[1]))  # (idx[, rank])
            raise IRError("a pass reference, not a file", where=str(p), expected="a graph file (.json or .json.gz)",
                          found=f"pass {found[1][-1]} of {store}", fix=f"torchtrace.store.Store({store!r})."
                          f"graph({args}) reads that pass in Python (`STORE:IDX` is for the command line)") from None
        raise IRError("no such file", where=str(p), expected="a graph file (.json or .json.gz)",
                      found="nothing at that path", fix="check the path") from None
    except IsADirectoryError:
        raise IRError("is a folder", where=str(p), expected="a graph file (.json or .json.gz)",
                      found="a directory", fix="pass one of the .json files inside it") from None
    except OSError as e:  # permissions, a broken mount, ...
        raise IRError("cannot read", where=str(p), expected="a readable graph file", found=e.strerror or str(e),
                      fix="check the file's permissions") from None
    return decode(raw, str(p))
