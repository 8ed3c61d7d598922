"""Canonical hashes of a Graph, stable across processes and machines.

* ``structure``: ops, phases, module paths and the dataflow topology (which
  earlier output, which named param, buffer or input, or which other outside
  tensor in order of first use each op reads) and the returned values. Not shapes, not args,
  not source lines, not ids, not devices.
* ``shapes``: ``structure`` plus every value's shape and dtype and the ops'
  non-tensor args (but the rank inside a process-group argument: two ranks
  that run the same program on the same shapes have equal fingerprints).

Two passes with equal ``structure`` ran the same program; equal ``shapes``
means they also ran it on the same tensor types. Autograd bookkeeping ops
(tag ``autograd_internal``) are left out, as in ``torchtrace.diff``: a value
such an op returns stands for its input. What Python read from tensor data
(witness values) is not hashed: it decides the graph, it is not part of it.

Only ``hashlib.sha256`` over text built from positions and names: no
``hash()`` (salted per process), no ``id()``, no set order.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from ._memo import Lazy, TextMemo
from .side import is_bookkeeping

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph

__all__ = ["fingerprints", "canonical_args", "canonical_json"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def strip_addresses(text: str) -> str:
    """``<Generator object at 0x7f…>`` -> ``<Generator object>``: addresses differ in every process."""
    return _ADDRESS.sub("", text) if " at 0x" in text else text


def _refs(g: "Graph", skip: List[bool]) -> Dict[str, str]:
    """A position-based name for every value: ``3.0`` = op #3 output #0;
    params, buffers and the traced call's inputs by name (``x - y`` is not
    ``y - x``), other tensors from outside the pass by role and order of
    first use; bookkeeping outputs by their input's name."""
    refs: Dict[str, str] = {}
    value = g.value
    seen = 0
    k = 0
    for n, bookkeeping in zip(g.nodes, skip):
        for v in n.inputs:
            if v not in refs:
                val = value(v)
                refs[v] = (f"{val.role}:{val.name}" if val.role in _NAMED and val.name
                           else f"{val.role}#{seen}")
                seen += 1
        if bookkeeping:
            for v in n.outputs:
                refs[v] = refs[n.inputs[0]] if n.inputs else f"{n.op}#{seen}"
            continue
        for j, v in enumerate(n.outputs):
            refs[v] = f"{k}.{j}"
        k += 1
    for v in g.outputs:
        if v not in refs:
            refs[v] = f"out#{seen}"
            seen += 1
    return refs


_NAMED = ("param", "buffer", "input")
# repr(args) -> canonical_args(args), kept across graphs (see _memo.TextMemo)
_CANONICAL: Dict[str, str] = {}


def fingerprints(g: "Graph") -> Dict[str, str]:
    """``{"structure": 16 hex digits, "shapes": 16 hex digits}``."""
    skip = [is_bookkeeping(n) for n in g.nodes]
    refs = _refs(g, skip)
    mod_path: Dict[Optional[str], str] = {m.id: m.path for m in g.modules}
    mod_path[None] = "-"
    type_text = Lazy(lambda key: f"{key[0]}{list(key[1])}")
    types = {v.id: type_text[v.dtype, v.shape] for v in g.values}
    canonical = TextMemo(repr, canonical_args, _CANONICAL).text  # the builder shares equal args dicts
    ref, typ = refs.__getitem__, types.__getitem__
    structure: List[str] = []
    shapes: List[str] = []
    for n, bookkeeping in zip(g.nodes, skip):
        if bookkeeping:
            continue
        token = f"{n.op}|{n.phase}|{mod_path.get(n.module, '')}|{','.join(map(ref, n.inputs))}|{len(n.outputs)}"
        structure.append(token)
        a = canonical(n.args) if n.args else "{}"
        shapes.append(f"{token}#{';'.join(map(typ, n.inputs))}{';' if n.inputs and n.outputs else ''}"
                      f"{';'.join(map(typ, n.outputs))}#{a}")
    tail = "out:" + ",".join(map(ref, g.outputs))
    s_text = "".join([t + "\n" for t in structure]) + tail
    h_text = "".join([t + "\n" for t in shapes]) + tail + "#" + ";".join(map(typ, g.outputs))
    return {"structure": hashlib.sha256(s_text.encode()).hexdigest()[:16],
            "shapes": hashlib.sha256(h_text.encode()).hexdigest()[:16]}


def canonical_json(value: Any) -> str:
    """An arg value as canonical JSON, with memory addresses (``<Generator
    object at 0x7f…>``, the repr of an object the recorder could not name)
    removed: they differ in every process."""
    return strip_addresses(json.dumps(value, sort_keys=True, default=str))


def canonical_args(args: Mapping[str, Any]) -> str:
    """Args as canonical JSON; a process group's ``group_rank`` is left out
    (every rank runs the same program: ranks compare by fingerprint)."""
    return canonical_json({k: ({g: x for g, x in v.items() if g != "group_rank"} if isinstance(v, dict) else v)
                           for k, v in args.items()})
