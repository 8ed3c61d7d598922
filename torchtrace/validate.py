"""Semantic invariants of a Graph that a JSON schema cannot express.

Ids unique and increasing in order of first appearance, every reference
resolvable, values produced once and before use, closed vocabularies.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional

from .errors import IRError
from .ir import GRAD_MODES, PHASES, ROLES, TAGS, Graph, is_norm

_FIX = "re-record the pass, or repair the file so that every id it mentions is defined"


def _ids(items: Iterable, prefix: str, table: str) -> Dict[str, int]:
    seen: Dict[str, int] = {}
    last = -1
    for i, item in enumerate(items):
        m = re.fullmatch(prefix + r"(\d+)", item.id)
        if m is None:
            raise IRError("bad id", where=f"{table}[{i}].id", expected=f"{prefix}<number>",
                          found=repr(item.id), fix=_FIX)
        k = int(m.group(1))
        if item.id in seen:
            raise IRError("duplicate id", where=f"{table}[{i}].id", expected="each id defined once",
                          found=f"{item.id!r} again (first at {table}[{seen[item.id]}])", fix=_FIX)
        if k <= last:
            raise IRError("ids out of order", where=f"{table}[{i}].id",
                          expected=f"ids increasing in order of first appearance (after {prefix}{last})",
                          found=repr(item.id), fix=_FIX)
        seen[item.id] = i
        last = k
    return seen


def _ref(ref: Optional[str], table: Dict[str, int], where: str, what: str) -> None:
    if ref is not None and ref not in table:
        raise IRError(f"dangling {what} id", where=where, expected=f"the id of a {what} defined in the graph",
                      found=repr(ref), fix=_FIX)


def _shape(shape: Any, where: str) -> None:
    if any(type(d) is not int or d < -1 for d in shape):
        raise IRError("bad shape", where=where, expected="sizes >= 0 (-1: a ragged size, no fixed number)",
                      found=repr(list(shape)), fix=_FIX)


def validate_graph(g: Graph) -> None:
    values = _ids(g.values, "v", "values")
    nodes = _ids(g.nodes, "n", "nodes")
    modules = _ids(g.modules, "m", "modules")
    anodes = _ids(g.autograd.nodes, "a", "autograd.nodes")

    for i, m in enumerate(g.modules):
        _ref(m.parent, modules, f"modules[{i}].parent", "module call")
        if m.parent is not None and modules[m.parent] >= i:
            raise IRError("module call before its parent", where=f"modules[{i}].parent",
                          expected="a parent call that entered earlier", found=repr(m.parent), fix=_FIX)
    for i, v in enumerate(g.values):
        if v.role not in ROLES:
            raise IRError("unknown role", where=f"values[{i}].role", expected=" | ".join(ROLES),
                          found=repr(v.role), fix=_FIX)
        _ref(v.alias_of, values, f"values[{i}].alias_of", "value")
        _ref(v.version_of, values, f"values[{i}].version_of", "value")
        _shape(v.shape, f"values[{i}].shape")
    for field in ("alias_of", "version_of"):  # (a chain back to itself: renderers and diff would walk it forever)
        ends: set = set()  # values whose chain is known to end
        for i, v in enumerate(g.values):
            seen, up = [v.id], getattr(v, field)
            while up is not None and up not in ends:
                if up in seen:
                    raise IRError(f"{field} leads back to the value", where=f"values[{i}].{field}",
                                  expected=f"a chain of {field} that ends at a value of its own",
                                  found=" -> ".join([*seen, up]), fix=_FIX)
                seen.append(up)
                up = getattr(g.values[values[up]], field)
            ends.update(seen)

    produced: Dict[str, str] = {}
    for i, n in enumerate(g.nodes):
        where = f"nodes[{i}] ({n.id} {n.op})"
        if n.phase not in PHASES:
            raise IRError("unknown phase", where=f"{where}.phase", expected=" | ".join(PHASES),
                          found=repr(n.phase), fix=_FIX)
        for t in n.tags:
            if t not in TAGS:
                raise IRError("unknown tag", where=f"{where}.tags", expected=" | ".join(TAGS),
                              found=repr(t), fix=_FIX)
        if n.witness is not None and "witness" not in n.tags:
            raise IRError("witness without tag", where=f"{where}.tags", expected="'witness' in tags",
                          found=list(n.tags), fix=_FIX)
        _ref(n.module, modules, f"{where}.module", "module call")
        _ref(n.grad_fn, anodes, f"{where}.grad_fn", "autograd node")
        _ref(n.autograd_node, anodes, f"{where}.autograd_node", "autograd node")
        for k, vid in enumerate(n.inputs):
            _ref(vid, values, f"{where}.inputs[{k}]", "value")
            if g.values[values[vid]].role == "activation" and vid not in produced:
                raise IRError("value used before it is produced", where=f"{where}.inputs[{k}]",
                              expected="an activation produced by an earlier node", found=repr(vid), fix=_FIX)
        for k, vid in enumerate(n.outputs):
            _ref(vid, values, f"{where}.outputs[{k}]", "value")
            if vid in produced:
                raise IRError("value produced twice", where=f"{where}.outputs[{k}]",
                              expected="each value produced by one node",
                              found=f"{vid!r}, also produced by {produced[vid]}", fix=_FIX)
            produced[vid] = n.id
    for i, v in enumerate(g.values):
        if v.role == "activation" and v.id not in produced:
            raise IRError("activation without producer", where=f"values[{i}] ({v.id})",
                          expected="a node that outputs it, or a role other than 'activation'",
                          found="no producing node", fix=_FIX)
    for k, vid in enumerate(g.outputs):
        _ref(vid, values, f"outputs[{k}]", "value")
    for i, a in enumerate(g.autograd.nodes):
        _ref(a.op, nodes, f"autograd.nodes[{i}].op", "node")
        _ref(a.value, values, f"autograd.nodes[{i}].value", "value")
        for k, nxt in enumerate(a.next):
            _ref(nxt, anodes, f"autograd.nodes[{i}].next[{k}]", "autograd node")
    for k, aid in enumerate(g.autograd.executed):
        _ref(aid, anodes, f"autograd.executed[{k}]", "autograd node")
    for k, gi in enumerate(g.autograd.grads):
        _ref(gi.value, values, f"autograd.grads[{k}].value", "value")
        _shape(gi.shape, f"autograd.grads[{k}].shape")
        if not is_norm(gi.norm):
            raise IRError("bad gradient norm", where=f"autograd.grads[{k}].norm",
                          expected="a norm >= 0 (a float; NaN or inf) or None", found=repr(gi.norm), fix=_FIX)
    mode = g.meta.get("grad_mode")
    if mode is not None and mode not in GRAD_MODES:
        raise IRError("unknown grad mode", where="meta.grad_mode", expected=" | ".join(GRAD_MODES),
                      found=repr(mode), fix=_FIX)
