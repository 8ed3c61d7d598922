"""Canonical hashes of a Graph, stable across processes and machines.

* ``structure``: ops, phases, module paths and the dataflow topology (which
  earlier output or which named param/input each op reads). Not shapes, not
  args, not source lines, not ids.
* ``shapes``: ``structure`` plus every value's shape and dtype and the ops'
  non-tensor args.

Two passes with equal ``structure`` ran the same program; equal ``shapes``
means they also ran it on the same tensor types.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph


def _refs(g: "Graph") -> Dict[str, str]:
    """A position-based name for every value: ``3.0`` = node #3 output #0;
    external values by role and name (or order of first use)."""
    refs: Dict[str, str] = {}
    for k, n in enumerate(g.nodes):
        for j, v in enumerate(n.outputs):
            refs[v] = f"{k}.{j}"
    seen = 0
    for n in g.nodes:
        for v in n.inputs:
            if v not in refs:
                val = g.value(v)
                refs[v] = (f"{val.role}:{val.name}" if val.role in ("param", "buffer") and val.name
                           else f"{val.role}#{seen}")
                seen += 1
    for v in g.outputs:
        refs.setdefault(v, f"out#{seen}")
    return refs


def fingerprints(g: "Graph") -> Dict[str, str]:
    refs = _refs(g)
    structure = hashlib.sha256()
    shapes = hashlib.sha256()
    mod_path = {m.id: m.path for m in g.modules}
    for n in g.nodes:
        token = "|".join((n.op, n.phase, mod_path.get(n.module, "") if n.module else "-",
                          ",".join(refs[v] for v in n.inputs), str(len(n.outputs))))
        structure.update(token.encode())
        structure.update(b"\n")
        shape_token = ";".join(_type(g, v) for v in (*n.inputs, *n.outputs))
        shapes.update(token.encode() + b"#" + shape_token.encode() + b"#"
                      + json.dumps(n.args, sort_keys=True, default=str).encode() + b"\n")
    tail = ("out:" + ",".join(refs[v] for v in g.outputs)).encode()
    structure.update(tail)
    shapes.update(tail + b"#" + ";".join(_type(g, v) for v in g.outputs).encode())
    return {"structure": structure.hexdigest()[:16], "shapes": shapes.hexdigest()[:16]}


def _type(g: "Graph", vid: str) -> str:
    v = g.value(vid)
    return f"{v.dtype}{list(v.shape)}"

