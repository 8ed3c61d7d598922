"""Causes that are parameters: a module both passes called whose ops read a
parameter of its own only one pass read (a head swapped for one with a bias),
and the autograd engine summing the gradients of a parameter that more ops read
in one pass (tied weights)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .classify import OpPair
    from .ir import Graph, Node
    from .side import Side


def own_params(A: Side, B: Side, ops: Sequence[OpPair]) -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """Module path -> (names in A, names in B) of the parameters of its own that ops only
    that side ran read and the other pass never read, for a module both passes called
    with the same class (``m.head = nn.Linear(32, 8, bias=True)`` for a head without
    bias: B's ``addmm`` reads ``head.bias``, where A's ``mm`` read none): the module's
    parameters, or the ones it uses, differ."""
    found: Dict[str, Tuple[List[str], List[str]]] = {}
    for p in ops:
        if p.a is not None and p.b is not None:
            continue
        x, n = (0, p.a) if p.a is not None else (1, p.b)
        side, other = (A, B)[x], (B, A)[x]
        path = side.graph.module_path(n.module) if n.module is not None else None
        if path is None or path not in other.calls or other.types.get(path) != side.types.get(path):
            continue
        for v in n.inputs:
            val = side.graph.value(v)
            if val.role == "param" and val.name and val.name not in other.named and \
                    val.name.rpartition(".")[0] == path and val.name not in found.setdefault(path, ([], []))[x]:
                found[path][x].append(val.name)
    return {path: (tuple(a), tuple(b)) for path, (a, b) in found.items()}


def params_of(A: Side, B: Side, rows: Sequence[OpPair], found: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]],
              before: Sequence[OpPair]) -> Optional[Tuple[str, Tuple[str, ...], Tuple[str, ...]]]:
    """(module path, names in A, names in B) of ``own_params`` when every op only one
    side ran in ``rows`` ran in such a module (the ``view`` before B's ``addmm`` too),
    and no op ``before`` them outside that module made a tensor of another shape or
    dtype (`x = torch.randn(4, 8)` in the block, then `if x.shape[0] > 2: h = h * self.w`)."""
    paths = {g.module_path(n.module) if n.module is not None else None for p in rows if p.a is None or p.b is None
             for g, n in ((A.graph, p.a), (B.graph, p.b)) if n is not None}
    if len(paths) != 1 or None in paths:
        return None
    [path] = paths
    inside = (path + ".") if path else ""
    if path not in found or any(p.status == "changed" and {"shape", "dtype"} & set(p.what) and (
            p.a.module is None or not (A.graph.module_path(p.a.module) + ".").startswith(inside)) for p in before):
        return None
    return (path, *found[path])  # type: ignore[return-value]


def reader_hunk(g: Graph, param: str, side: int, hunks: Sequence[Any]) -> Optional[Any]:
    """The first forward hunk whose ops only side ``side`` (0: A) ran read ``param``:
    the extra reader whose gradient the engine sums (`if self.reg: y = y + (self.w ** 2).sum()`)."""
    return next((h for h in hunks if any(n.phase == "forward" and any(
        g.value(v).role == "param" and g.value(v).name == param for v in n.inputs)
        for n in (h.only_a, h.only_b)[side])), None)


def gradient_sum(a: Graph, b: Graph, only_a: Sequence[Node], only_b: Sequence[Node]
                 ) -> Optional[Tuple[str, int, int]]:
    """(param, forward ops that read it in A, in B) when a hunk's ops are only the adds of
    the autograd engine summing the gradients that reach one parameter from its
    readers (tied weights: the embedding's and the head's), and the parameter has
    more readers on that side."""
    found = set()
    for g, ops in ((a, only_a), (b, only_b)):
        for n in ops:
            if n.op != "aten.add.Tensor" or n.autograd_node is not None:
                return None
            found.add(_fed_param(g, n))
    if len(found) != 1 or None in found:
        return None
    [param] = found
    readers = [sum(1 for n in g.nodes if n.phase == "forward" and any(
        g.value(v).role == "param" and g.value(v).name == param for v in n.inputs)) for g in (a, b)]
    more = "A" if only_a else "B"
    return (param, *readers) if readers[0] != readers[1] and (readers[0] > readers[1]) == (more == "A") \
        else None  # type: ignore[return-value]


def _fed_param(g: Graph, n: Node) -> Optional[str]:
    """The parameter whose ``AccumulateGrad`` takes what engine add ``n`` made
    (through further adds of the engine)."""
    for _ in range(64):
        user = next((m for m in g.nodes if m.phase == "backward" and n.outputs and n.outputs[0] in m.inputs), None)
        if user is None:
            return None
        if user.op == "aten.add.Tensor" and user.autograd_node is None:
            n = user
            continue
        return g.autograd_node(user.autograd_node).param if user.autograd_node is not None else None
    return None
