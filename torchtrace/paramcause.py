"""Causes that are parameters: a module both passes called whose ops read a
parameter of its own only one pass read (a head swapped for one with a bias),
and the autograd engine summing the gradients of a parameter that more ops read
in one pass (tied weights)."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from .side import is_engine_sum
from .textform import type_str

if TYPE_CHECKING:  # pragma: no cover
    from .classify import OpPair
    from .ir import Graph, Node
    from .side import Side


Found = Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], FrozenSet[Tuple[str, int]]]]


def own_params(A: Side, B: Side, ops: Sequence[OpPair]) -> Found:
    """Module path -> (names in A, names in B, the lines that read them) of the parameters
    of its own that ops only that side ran read and the other pass never read, for a
    module both passes called with the same class (``m.head = nn.Linear(32, 8,
    bias=True)`` for a head without bias: B's ``addmm`` reads ``head.bias``, where A's
    ``mm`` read none): the module's parameters, or the ones it uses, differ."""
    found: Dict[str, Tuple[List[str], List[str], Set[Tuple[str, int]]]] = {}
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
                    val.name.rpartition(".")[0] == path:
                names = found.setdefault(path, ([], [], set()))
                names[2].add(side.line(n))
                if val.name not in names[x]:
                    names[x].append(val.name)
    return {path: (tuple(a), tuple(b), frozenset(lines)) for path, (a, b, lines) in found.items()}


def params_of(A: Side, B: Side, rows: Sequence[OpPair], found: Found, ops: Sequence[OpPair], k0: int
              ) -> Optional[Tuple[str, Tuple[str, ...], Tuple[str, ...]]]:
    """(module path, names in A, names in B) of ``own_params`` when every op only one
    side ran in ``rows`` ran in such a module at a line that reads them (the ``view``
    of `F.linear` before B's ``addmm``, A's ``mm``; not the ``tanh`` of another `if`),
    and the ops of that module call read nothing that an op before row ``k0``, outside it,
    made on one side only or in another type, unlike the other pass (`x = torch.cat([x,
    x])` in the block, then `if x.shape[0] > 2: h = h * self.w`; not the output of a
    module before it that took a bias too: ``_read_otherwise``)."""
    ones = [(side, n) for p in rows if p.a is None or p.b is None for side, n in ((A, p.a), (B, p.b)) if n is not None]
    paths = {side.graph.module_path(n.module) if n.module is not None else None for side, n in ones}
    if len(paths) != 1 or None in paths or next(iter(paths)) not in found:
        return None
    [path] = paths
    in_a, in_b, lines = found[path]
    if any(side.line(n) not in lines for side, n in ones):
        return None
    # (each side's own calls: B's extra first call of a module is not A's first)
    calls = [{(m.path, m.call) for s, n in ones if s is side for m in [side.graph.module(n.module)]} for side in (A, B)]
    calls = [mine or theirs for mine, theirs in zip(calls, calls[::-1])]
    within = [{n.id for n in g.nodes if n.module is not None and any((m.path, m.call) in keys
                                                                     for m in g.calls_around(n.module))}
              for g, keys in zip((A.graph, B.graph), calls)]
    for x, side in ((0, A), (1, B)):
        g, other = side.graph, (B, A)[x].graph
        made = {v for p in ops[:k0] for n in [(p.a, p.b)[x]] if n is not None and n.id not in within[x] and (
            p.a is None or p.b is None or p.status == "changed" and {"shape", "dtype"} & set(p.what))
            for v in n.outputs}
        if made and _read_otherwise(g, other, made, within, x, ops):
            return None
    return path, in_a, in_b


def _read_otherwise(g: Graph, other: Graph, made: Set[str], within: List[Set[str]], x: int,
                    ops: Sequence[OpPair]) -> bool:
    """Does an op of the module call (``within``, on side ``x``) read a value of ``made``
    unlike the other pass: another type, or role (parameter, buffer), than the paired op read there
    (unless its inputs are the same in another order), or, for
    an op only this side ran, than any input of the other pass's ops in that call?"""
    def kind(graph: Graph, v: str) -> Tuple[str, str]:  # (a parameter or buffer, else any tensor: `x.float()`)
        val = graph.value(v)
        return val.role if val.role in ("param", "buffer") else "", type_str(val)

    theirs = None
    for p in ops:
        n, them = (p.a, p.b) if x == 0 else (p.b, p.a)
        if n is None or n.id not in within[x] or not made.intersection(n.inputs):
            continue
        if them is not None:  # (where it read them, or the same inputs in another order: `add(e, x)`, `add(x, e)`)
            if any(v in made and (k >= len(them.inputs) or kind(g, v) != kind(other, them.inputs[k]))
                   for k, v in enumerate(n.inputs)) and \
                    Counter(kind(g, v) for v in n.inputs) != Counter(kind(other, v) for v in them.inputs):
                return True
            continue
        if theirs is None:
            theirs = {kind(other, v) for m in other.nodes if m.id in within[1 - x] for v in m.inputs}
        if any(v in made and kind(g, v) not in theirs for v in n.inputs):
            return True
    return False


def blocks_params(inputs: Sequence[Any], end: int) -> bool:
    """Do ``inputs`` explain a hunk ending at row ``end`` better than a module's own
    parameters: one only one pass passed (not one it made in the block), or one of
    another type read before ``end`` (a buffer read only after the hunk is not)?"""
    return any((i.a is None or i.b is None) and i.made is None or i.a is not None and i.b is not None and (
        i.role == "input" or i.at < end) for i in inputs)


def reader_hunk(g: Graph, param: str, side: int, hunks: Sequence[Any]) -> Optional[Any]:
    """The first forward hunk whose ops only side ``side`` (0: A) ran read ``param``:
    the extra reader whose gradient the engine sums (`if self.reg: y = y + (self.w ** 2).sum()`)."""
    return next((h for h in hunks if any(n.phase == "forward" and _reads(g, n, param)
                                         for n in (h.only_a, h.only_b)[side])), None)


def gradient_sum(a: Graph, b: Graph, only_a: Sequence[Node], only_b: Sequence[Node]
                 ) -> Optional[Tuple[str, int, int]]:
    """(param, forward ops that read it in A, in B) when a hunk's ops are only the adds of
    the autograd engine summing the gradients that reach one parameter from its
    readers (tied weights: the embedding's and the head's), and the parameter has
    more readers on that side."""
    found = set()
    for g, ops in ((a, only_a), (b, only_b)):
        if not all(map(is_engine_sum, ops)):
            return None
        users: Dict[str, Node] = {}  # value -> the first backward op that reads it
        for m in g.nodes:
            if m.phase == "backward":
                for v in m.inputs:
                    users.setdefault(v, m)
        found.update(_fed_param(g, n, users) for n in ops)
    if len(found) != 1 or None in found:
        return None
    [param] = found
    readers = [sum(1 for n in g.nodes if n.phase == "forward" and _reads(g, n, param)) for g in (a, b)]
    more = "A" if only_a else "B"
    return (param, *readers) if readers[0] != readers[1] and (readers[0] > readers[1]) == (more == "A") \
        else None  # type: ignore[return-value]


def _reads(g: Graph, n: Node, param: str) -> bool:
    return any(g.value(v).role == "param" and g.value(v).name == param for v in n.inputs)


def _fed_param(g: Graph, n: Node, users: Dict[str, Node]) -> Optional[str]:
    """The parameter whose ``AccumulateGrad`` takes what engine add ``n`` made
    (through further adds of the engine)."""
    for _ in range(64):
        user = users.get(n.outputs[0]) if n.outputs else None
        if user is None:
            return None
        if not is_engine_sum(user):
            return g.autograd_node(user.autograd_node).param if user.autograd_node is not None else None
        n = user
    return None
