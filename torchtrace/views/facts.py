"""Facts about a set of ops that boxes, frames and the terminal tree show:
the tensors crossing its boundary, its parameter count, the bytes autograd
saved for backward."""
from __future__ import annotations

from typing import Dict, List, Sequence, Set, Tuple

from ..ir import Graph, Node
from .groups import Group
from .labels import numel
from .select import Selection

NOT_FLOW = ("param", "buffer", "constant")


def boundary(sel: Selection, nodes: Sequence[Node]) -> Tuple[List[str], List[str]]:
    """(value ids entering, value ids leaving) ``nodes``; parameters, buffers
    and constants are internal, not inputs. A set whose results nobody reads
    reports its last op's first output."""
    g = sel.graph
    inside = {n.id for n in nodes}
    ins: Dict[str, None] = {}
    for n in nodes:
        for nid, vid in sel.inputs(n):
            if nid not in inside and g.value(vid).role not in NOT_FLOW:
                ins.setdefault(vid, None)
    # outputs are what the same pass reads outside; in phase "both", tensors
    # saved for backward would otherwise count as outputs of every forward box
    used_outside = {vid for n in nodes for reader, vid in sel.readers(n.id)
                    if reader not in inside and g.node(reader).phase == n.phase}
    used_outside.update(vid for o in g.outputs for nid, vid in sel.origins(o) if nid in inside)
    outs = [v for n in nodes for v in n.outputs if v in used_outside]
    if not outs and nodes and nodes[-1].outputs:
        outs = [nodes[-1].outputs[0]]
    if len(outs) > 1:  # what the traced call returned, in its order (`return logits, mask`)
        returned: Dict[str, int] = {}
        for k, o in enumerate(g.outputs):
            for nid, vid in sel.origins(o):
                returned.setdefault(vid, k)
        if all(v in returned for v in outs):
            outs.sort(key=returned.__getitem__)
    return list(ins), outs


def group_params(g: Graph, grp: Group) -> int:
    """Elements of the parameters a module-call group stands for: those its
    ops read (a recompute group's re-run forward code reads them too); for a
    backward group, those its call's forward read -- the gradients it computes
    (its own ops read saved tensors)."""
    if grp.phase in ("forward", "recompute") or grp.call is None:
        return param_count(g, grp.nodes)
    calls = g.calls_under(grp.call.id)
    return param_count(g, [n for n in g.nodes if n.phase == "forward" and n.module in calls])


def param_count(g: Graph, nodes: Sequence[Node]) -> int:
    """Elements of the distinct parameters ``nodes`` read."""
    seen: Set[str] = set()
    total = 0
    for n in nodes:
        for v in n.inputs:
            val = g.value(v)
            if val.role == "param" and v not in seen:
                seen.add(v)
                total += numel(val.shape)
    return total


def saved_bytes(g: Graph) -> Dict[str, int]:
    """forward node id -> bytes its autograd Node saved for backward."""
    out: Dict[str, int] = {}
    for a in g.autograd.nodes:
        if a.op is not None and a.saved_bytes:
            out[a.op] = out.get(a.op, 0) + a.saved_bytes
    return out
