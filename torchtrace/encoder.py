"""Graph -> JSON text, fast: the same bytes as ``json.dumps(graph.to_dict())``.

A pass repeats itself: the same ids, op names, source lines, shapes and args
come back on many nodes, and a training loop repeats them every step. Each
such object is encoded once per document (sources and args once per process,
in a bounded memo) and its JSON fragment reused, so a node costs one string
join instead of a dict build plus a walk of ``json``'s encoder. Key order and spacing follow
``serialize.graph_to_dict`` with ``separators=(",", ":")``,
``ensure_ascii=False`` and ``allow_nan=False``; ``tests/test_ir.py`` checks the
two give equal text.
"""
from __future__ import annotations

import json
import json.encoder
from typing import Any, Callable, Dict, List

from ._memo import Lazy, TextMemo
from .ir import FORMAT, VERSION, Graph

__all__ = ["encode_graph"]

_dump: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                               allow_nan=False).encode
_str: Callable[[str], str] = json.encoder.encode_basestring  # what that encoder does for a str


# cross-graph memos for TextMemo: Source (frozen, hashable) / repr(args) -> JSON
# (equal reprs of JSON-safe values are equal JSON)
_SOURCE_TEXT: Dict[Any, str] = {}
_ARGS_TEXT: Dict[Any, str] = {}


def _source(src: Any) -> str:
    if src is None:
        return "null"
    return f'{{"file":{_dump(src.file)},"line":{_dump(src.line)},"function":{_dump(src.function)}}}'


_BOOL = {True: "true", False: "false"}


def _int(x: Any) -> str:
    return str(x) if type(x) is int else _dump(x)


def _shape(xs: tuple) -> str:
    return "[" + ",".join(map(_int, xs)) + "]"


def _args(a: Any) -> str:
    return _dump(a if type(a) is dict else dict(a))


def _witness(w: Any) -> str:
    if w is None:
        return "null"
    if w.shape is not None:
        return '{"shape":' + _dump(list(w.shape)) + "}"
    return '{"value":' + _dump(w.value) + "}"


def _ids(s: Lazy, ids: List[str]) -> None:
    """Put a table's ids into the string cache in one pass (each is used
    two or three times: its own entry, then references)."""
    s.update(zip(ids, map(_str, ids)))


def encode_graph(g: Graph) -> str:
    s = Lazy(_dump)  # str | None -> its JSON text
    for table in (g.modules, g.values, g.nodes, g.autograd.nodes):
        _ids(s, [x.id for x in table])
    S = s.__getitem__
    shape = Lazy(_shape)
    src = TextMemo(lambda x: x, _source, _SOURCE_TEXT).text
    args = TextMemo(repr, _args, _ARGS_TEXT).text
    out: List[str] = [f'{{"format":{_dump(FORMAT)},"version":{_dump(list(VERSION))},"meta":{_dump(dict(g.meta))}'
                      ',"modules":[']
    out.append(",".join([
        f'{{"id":{s[m.id]},"path":{s[m.path]},"type":{s[m.type]},"call":{_int(m.call)},"parent":{s[m.parent]}'
        + ("}" if m.phase == "forward" else f',"phase":{s[m.phase]}}}') for m in g.modules]))
    out.append('],"values":[')
    out.append(",".join([
        f'{{"id":{s[v.id]},"shape":{shape[v.shape]},"dtype":{s[v.dtype]},"device":{s[v.device]},'
        f'"requires_grad":{_BOOL[v.requires_grad]},"role":{s[v.role]},"name":{s[v.name]},'
        f'"alias_of":{s[v.alias_of]}' + ("}" if v.version_of is None else f',"version_of":{s[v.version_of]}}}')
        for v in g.values]))
    out.append('],"nodes":[')
    out.append(",".join([
        f'{{"id":{s[n.id]},"kind":{s[n.kind]},"op":{s[n.op]},"phase":{s[n.phase]},"module":{s[n.module]},'
        f'"inputs":[{",".join(map(S, n.inputs))}],"outputs":[{",".join(map(S, n.outputs))}],'
        f'"args":{args(n.args) if n.args else "{}"},"source":{src(n.source)},'
        f'"tags":[{",".join(map(S, n.tags))}],"witness":{_witness(n.witness)},"grad_fn":{s[n.grad_fn]}}}'
        for n in g.nodes]))
    ag = g.autograd
    out.append(f'],"outputs":[{",".join(map(S, g.outputs))}],"autograd":{{"nodes":[')
    out.append(",".join([
        f'{{"id":{s[a.id]},"name":{s[a.name]},"op":{s[a.op]},"next":[{",".join(map(S, a.next))}],'
        f'"saved_bytes":{_int(a.saved_bytes)},"param":{s[a.param]},"value":{s[a.value]}}}' for a in ag.nodes]))
    out.append(f'],"executed":[{",".join(map(S, ag.executed))}],"grads":[')
    out.append(",".join([
        f'{{"value":{s[x.value]},"name":{s[x.name]},"shape":{shape[x.shape]},"dtype":{s[x.dtype]},'
        f'"norm":{_dump(x.norm)}}}' for x in ag.grads]))
    out.append(f'],"no_grad_params":[{",".join(map(S, ag.no_grad_params))}]}},'
               f'"fingerprints":{_dump(dict(g.fingerprints))}}}')
    return "".join(out)
