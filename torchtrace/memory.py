"""Activation memory saved for backward, per module call.

Each autograd Node's ``saved_bytes`` counts the storages it holds for
backward (each storage once per pass, parameters and buffers excluded); a module call's
total is the sum over the Nodes its forward ops created.
"""
from __future__ import annotations

from typing import Dict

from .errors import UsageError
from .ir import Graph


def saved_bytes_by_module(graph: Graph, *, inclusive: bool = True) -> Dict[str, int]:
    """module call id -> bytes saved for backward by the ops it ran.

    ``inclusive`` adds each call's children (so the root holds the total)."""
    if not isinstance(graph, Graph):
        raise UsageError("saved_bytes_by_module() needs a Graph", expected="a torchtrace.Graph",
                         found=type(graph).__name__, fix="pass t.graph (from `with torchtrace.trace() as t`) "
                         "or torchtrace.load(path)")
    if not isinstance(inclusive, bool):
        raise UsageError("bad value for inclusive", expected="True or False", found=repr(inclusive),
                         fix="pass inclusive=False for each call's own bytes")
    own: Dict[str, int] = {}
    for a in graph.autograd.nodes:
        if a.saved_bytes and a.op is not None:
            mid = graph.node(a.op).module
            if mid is not None:
                own[mid] = own.get(mid, 0) + a.saved_bytes
    if not inclusive:
        return own
    total: Dict[str, int] = {m.id: own.get(m.id, 0) for m in graph.modules}
    for m in reversed(graph.modules):  # children come after their parents
        if m.parent is not None:
            total[m.parent] += total[m.id]
    return total
