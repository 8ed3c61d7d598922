"""Causes that only the ops of one side have, each a detector over a hunk's rows:
a pass that stopped (raised, or cut off at ``max_ops``) or ran on past its last
step, AccumulateGrad adding into an existing ``.grad``, backward or an optimizer
step run in one pass only, parameters that require grad in one pass only, the
optimizer's first step making its state, modules in training mode on one side,
ops computed from an input only one side passed, activation checkpointing's
recompute, dtype casts. ``compare`` asks them; ``Hunk.cause`` says what they found.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .side import CASTS, Side
from .classify import ACCUMULATE, OpPair
from .inputchange import InputChange
from .hunk import PHASE_WORDS, cut_off, ended, other_side
from .ir import Graph, ModuleCall, Node
from .sourceloops import if_statement_end
from .sourcetext import call_guard, decided_by_a_call, decided_by_a_flag, shape_test, tests_training
from .typechange import TypeChange


def sole(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[Tuple[str, Side, Side, List[Node]]]:
    """("A", A, B, A's ops) when every row of ``rows`` is an op only in A
    (("B", B, A, B's ops): only in B); else None."""
    if rows and all(p.status == "only_a" for p in rows):
        return "A", A, B, [p.a for p in rows]
    if rows and all(p.status == "only_b" for p in rows):
        return "B", B, A, [p.b for p in rows]
    return None


def stopped(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[str]:
    """The side that raised or was cut off (``max_ops``), when ``rows`` run to
    the end of the diff with ops only on the other side: they ran after the
    point where it stopped."""
    one = sole(A, B, rows)
    if one is None:
        return None
    side, g = other_side(one[0]), one[2].graph
    if g.meta.get("error"):
        return ended(side, g)
    return cut_off(side, g) if g.meta.get("truncated") else None


def ran_on(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[str]:
    """"B" when ``rows``, at the end of the diff, are ops only in B and B's pass
    was a Recorder's last (``meta.last``: ended by the block's end, so it holds
    what the script ran after its last step), A's not. Ops inside a call of the
    pass's root model ran in the step itself, not after it (a branch of the model's
    last call); a loss or metric module called after the loop is not the model."""
    one = sole(A, B, rows)
    if one is None or not one[1].graph.meta.get("last") or one[2].graph.meta.get("last"):
        return None
    return None if _step_own(one[1].graph, one[3]) else one[0]


def _step_own(g: Graph, ops: Sequence[Node]) -> bool:
    """Did one of ``ops`` raise (the step stopped there), or run inside a call of
    the pass's root model (path ""): the step's own work, not what came after it?"""
    return any(n.id in g.raised() or any(c.path == "" for c in g.calls_around(n.module)) for n in ops)


def ended_before(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[str]:
    """"B" when ``rows``, at the end of the diff, are ops only in A, outside its
    root model's calls, and B's pass was a Recorder's last, A's not: what every
    pass but the last runs after its step (the next step's ``zero_grad``, its
    batch's draw), which the last one never reached."""
    one = sole(A, B, rows)
    if one is None or one[1].graph.meta.get("last") or not one[2].graph.meta.get("last") or \
            one[2].graph.meta.get("error"):  # (a last pass that raised: its error says why)
        return None
    start = next((n.source for n in one[2].graph.nodes if n.source is not None), None)
    if start is None or _step_own(one[1].graph, one[3]):
        return None
    # the next step's first ops: at lines before the one the last pass started at (its model call)
    if not all(n.source is not None and n.source.file == start.file and n.source.line < start.line for n in one[3]):
        return None
    return other_side(one[0])


def accumulated(A: Side, B: Side, rows: Sequence[OpPair]) -> Tuple[str, ...]:
    """The .grads (``fc.weight.grad``) that ``rows``, when they are all
    AccumulateGrad's ops (tag ``accumulate_grad``), added into."""
    nodes = [(A.graph, p.a) if p.a is not None else (B.graph, p.b) for p in rows]
    if not nodes or any(ACCUMULATE not in n.tags for _, n in nodes):
        return ()
    names = (g.value(n.inputs[0]).name if n.inputs else None for g, n in nodes)
    return tuple(dict.fromkeys(x or ".grad" for x in names))


def ran_only(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """("A", ("backward",)) when ``rows`` are ops only in A, of phases (backward,
    optimizer) that B's pass never ran: ``loss.backward()`` called in one pass only."""
    one = sole(A, B, rows)
    if one is None:
        return None
    side, _, other, ops = one
    phases = tuple(dict.fromkeys(n.phase for n in ops))
    if all(ph in PHASE_WORDS for ph in phases) and not any(n.phase in phases for n in other.nodes):
        return side, phases
    return None


def needs_grad(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """("A", ("0.weight", ...)) when ``rows`` are backward or optimizer ops only
    in A and parameters require grad in A that do not in B (a frozen layer)."""
    one = sole(A, B, rows)
    if one is None or any(n.phase not in ("backward", "optimizer") for n in one[3]):
        return None
    side, mine, theirs, _ = one
    names = tuple(x for x, rg in mine.trainable.items() if rg and theirs.trainable.get(x) is False)
    return (side, names) if names else None


def unused(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """("A", ("experts.2.weight", ...)) when ``rows`` are optimizer ops only in A
    that update parameters which got no gradient in B (no op of B's pass used
    them: the experts no token was routed to), so B's optimizer skipped them."""
    one = sole(A, B, rows)
    if one is None or any(n.phase != "optimizer" for n in one[3]):
        return None
    side, mine, theirs, ops = one
    starved = set(theirs.graph.autograd.no_grad_params)
    names = tuple(dict.fromkeys(v.name for n in ops for v in map(mine.graph.value, n.inputs)
                                if v.role == "param" and v.name in starved)) if starved else ()
    return (side, names) if names else None


# ops that make a new tensor (``torch.zeros_like(p)``, ``torch.tensor(0.0)``, ``grad.clone().detach()``)
MAKE = frozenset({"zeros_like", "zeros", "empty", "empty_like", "full", "full_like", "ones_like", "lift_fresh",
                  "scalar_tensor", "clone", "detach", "_to_copy", "new_zeros", "new_empty", "new_full"})


def optimizer_state(rows: Sequence[OpPair]) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """("A", ("zeros_like", "lift_fresh")) when ``rows`` are optimizer ops and
    A's are all ops that make tensors: the state an optimizer makes on its first
    step (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``; SGD's momentum buffer)."""
    if not rows or any((p.a or p.b).phase != "optimizer" for p in rows):
        return None
    found = []
    for side, ops in (("A", [p.a for p in rows if p.b is None]), ("B", [p.b for p in rows if p.a is None])):
        names = [n.op.split(".")[1] if n.op.count(".") >= 1 else n.op for n in ops]
        if names and all(x in MAKE for x in names):
            found.append((side, tuple(dict.fromkeys(names))))
    return found[0] if len(found) == 1 else None


Fed = List[Dict[str, InputChange]]  # per side: value id -> the input only that side passed it came from


def fed_values(A: Side, B: Side, inputs: Sequence[InputChange], ops: Sequence[OpPair]) -> Fed:
    """Per side, value id -> the input only that side passed that it was computed
    from through ops only that side ran, and at most one op both sides ran (once per
    diff: ``fed_by`` and ``trained`` read it for every hunk). Further ops both sides
    ran stop it: their results are there without the input too (a decode step's KV
    cache reaches every later layer through the residual stream, and decides none of
    their branches)."""
    out: List[Dict[str, InputChange]] = [{}, {}]
    for x, side in ((0, A), (1, B)):
        own = {n.id for p in ops for n in [(p.a, p.b)[x]] if n is not None and (p.b, p.a)[x] is None}
        for i in inputs:
            if i.name and (i.b, i.a)[x] is None:  # (a second name of an input: the ops that read it as passed)
                same = side.aliases.get(i.name)
                out[x].update(dict.fromkeys({side.named[same].id} if same else side.downstream_of((i.name,), own), i))
    return out


def fed_by(rows: Sequence[OpPair], fed: Fed) -> Tuple[InputChange, ...]:
    """The inputs only one side passed that ops only on that side in ``rows`` read
    what was computed from (``attention_mask`` given in B: its mask's ops)."""
    found = {}
    for p in rows:
        for x, n in ((0, p.a), (1, p.b)):
            if n is not None and (p.a is None or p.b is None):
                found.update((fed[x][v].name, fed[x][v]) for v in n.inputs if v in fed[x])
    return tuple(found.values())


def retyped(A: Side, B: Side, rows: Sequence[OpPair]) -> Optional[Tuple[str, str, str]]:
    """(module path, its class in A, in B) for the outermost module call around the
    first op only one side ran in a module call, whose path both passes called with another class
    (a config that swaps an MLP for a SwiGLU one; two models traced): that is
    why the ops differ."""
    first = next(((x, n) for p in rows for x, n in ((0, p.a), (1, p.b)) if n is not None and n.module is not None
                  and (p.a is None or p.b is None)), None)
    if first is None:
        return None
    x, n = first
    types = (A.types, B.types)
    found = None
    for m in (A, B)[x].graph.calls_around(n.module):
        a, b = types[0].get(m.path), types[1].get(m.path)
        if a is not None and b is not None and a != b:
            found = (m.path, a, b)
    return found


def fed_not_read(A: Side, B: Side, rows: Sequence[OpPair], fed: Fed, witness: Any) -> bool:
    """Do ops only on one side in ``rows`` read what an input only that side passed
    computed (``labels`` given in A: the loss), while ``witness``, a read both sides
    made, read nothing of it (an MoE's routing before the loss)? Then the input
    decided them, not the read."""
    if witness is None or witness.named or not fed_by(rows, fed):
        return False
    return not any(v in fed[x] for x, (side, nid) in enumerate(((A, witness.node_a), (B, witness.node_b)))
                   for v in side.graph.node(nid).inputs)


def trained(A: Side, B: Side, rows: Sequence[OpPair], fed: Fed, by_args: bool = False,
            strict: bool = False) -> Optional[str]:
    """"A" when every op of ``rows`` ran in a module call that was in training
    mode in A and in eval mode in B (the same module call, by path and call
    index; for a call only one side made, the nearest enclosing call both made:
    `if self.training:` calling submodules); "B" the other way round. An op only
    on one side that reads what was computed from an input only that side passed
    (``fed``: ``attention_mask`` given with ``.eval()``) is the input's (``fed_by``),
    not the mode's: it is left out, and a hunk of such ops alone has no mode cause.
    Training mode must be able to decide one of the ops (``_modal``; ``by_args``:
    a ``training`` argument differs): an ``if self.deep:`` flipped together with
    ``.train()`` is not the mode's doing. ``strict`` (``_modal``): only a sign that
    training decides one of the ops counts (a loop count, other input shapes or
    another module class are at hand to explain them)."""
    sides, modal = set(), by_args
    for p in rows:
        for x, n in ((0, p.a), (1, p.b)):
            if n is None or (p.a is None or p.b is None) and any(v in fed[x] for v in n.inputs):
                continue
            if n.module is None:
                return None
            side, them = (A, B)[x], (B, A)[x]
            g, other = side.graph, them.training
            m, child = g.module(n.module), None  # (child: the outermost call around n that only this side made)
            while m.parent is not None and (m.path, m.call) not in other:
                m, child = g.module(m.parent), m
            mine, theirs = side.training.get((m.path, m.call)), other.get((m.path, m.call))
            if mine is None or theirs is None or mine == theirs:
                return None
            sides.add(x if mine else 1 - x)
            modal = modal or _modal(side, n, them, child, strict)
    return "AB"[sides.pop()] if len(sides) == 1 and modal else None


_MODAL_OPS = ("dropout", "bernoulli", "batch_norm", "rrelu")
# torch.nn modules whose fast path (fused kernels) runs only in eval
_FAST_PATHS = ("TransformerEncoder", "TransformerDecoder", "MultiheadAttention")


def _modal(side: Side, n: Node, other: Side, child: Optional[ModuleCall], strict: bool = False) -> bool:
    """Can training mode have decided op ``n``: yes unless a plain flag's ``if``
    ran it (``decided_by_a_flag``: ``if self.deep:``) in a function the ``other``
    pass ran too, or, in a function only this pass ran (a submodule's forward),
    unless a plain flag's ``if`` made the call ``child`` of that submodule
    (``_call_guard``: ``if self.use_adapter: self.adapter(x)``, where ``if
    self.training:`` would be the mode); and then still for a dropout or batch
    norm op (or its backward), an op in a module that runs otherwise in training
    (``_MODAL``, ``_FAST_PATHS``), or one whose line an ``if`` further out on
    ``training`` decides (``tests_training``). ``strict``: only for those, a call
    only this pass made under an ``if`` on ``training``, or an ``if`` whose test
    calls a method (``if self._noisy():``) around the op (another cause is at hand)."""
    src = n.source
    guard = _call_guard(side, child) if child is not None else None
    flag = src is not None and decided_by_a_flag(n) and not _same_backward_line(side, n, other) and (
        other.ran(src.file, src.function) or guard is False)
    return not flag and (not strict or decided_by_a_call(n)) or guard is True or any(
        s in n.op for s in _MODAL_OPS) or tests_training(n) or any(
        m.type.startswith(_MODAL + _FAST_PATHS) for m in side.graph.calls_around(n.module))


def _same_backward_line(side: Side, n: Node, other: Side) -> bool:
    """Did the other pass run backward at backward op ``n``'s line in the same module
    call? Then the `if` around that line went the same way in both passes, and the
    op differs for the layout of the gradient that reached it (training's attention)."""
    if n.phase != "backward" or n.source is None or n.module is None:
        return False
    m = side.graph.module(n.module)
    return (m.path, m.call, n.source.file, n.source.line, "backward") in other.call_lines


def _call_guard(side: Side, child: ModuleCall) -> Optional[bool]:
    """``call_guard`` of the module call ``child`` in its parent's forward (found
    by an op of the parent's own call)."""
    at = side.source_of_call.get(child.parent) if child.parent is not None else None
    if at is None:
        return None
    parent = side.graph.module(child.parent).path
    attr = (child.path[len(parent) + 1:] if parent else child.path).split(".")[0]
    return call_guard(at.file, at.line, attr) if attr else None


# torch.nn modules whose forward runs other ops in training and in eval mode
_MODAL = ("Dropout", "AlphaDropout", "FeatureAlphaDropout", "BatchNorm", "SyncBatchNorm", "InstanceNorm",
          "LazyBatchNorm", "LazyInstanceNorm")


def in_modal_modules(A: Side, B: Side, rows: Sequence[OpPair]) -> bool:
    """Does every op of ``rows`` run inside a module that behaves otherwise in
    training mode (dropout, batch norm)? Then `.train()`/`.eval()` explains them
    better than a read that happens to come right before."""
    return bool(rows) and all(any(m.type.startswith(_MODAL) for m in g.calls_around(n.module))
                              for p in rows for g, n in ((A.graph, p.a), (B.graph, p.b)) if n is not None)


def recomputed(A: Side, B: Side, rows: Sequence[OpPair]) -> bool:
    """``rows`` are all activation checkpointing's recompute, on one side."""
    one = sole(A, B, rows)
    return one is not None and all(n.phase == "recompute" for n in one[3])


def casts(A: Side, B: Side, rows: Sequence[OpPair], types: Sequence[TypeChange]) -> Tuple[TypeChange, ...]:
    """When ``rows`` are all dtype conversions on one side and aligned tensors
    changed dtype (``types``): those changes ("f32 → bf16"). ``x.float()`` on
    a tensor that already is f32 records no op."""
    one = sole(A, B, rows)
    if one is None or any(n.op not in CASTS for n in one[3]):
        return ()
    return tuple(t for t in types if t.kind == "dtype")


def shape_if(A: Side, B: Side, rows: Sequence[OpPair], inputs: Sequence[InputChange]) -> Optional[str]:
    """When an input's shape or dtype differs (an input on both sides), and the
    ``if`` around the first op only one side ran went another way on the other
    side (it ran the ``if``'s block, or another branch of it, and nothing in this
    branch): ``file:line`` of the ``if`` when it tests a shape (``if x.shape[0] > 2:``:
    the inputs decided it, not a float read before it); "" when it tests none (the
    shape is no known cause). None otherwise: no such input or ``if``, the ``if``
    went the same way or did not run there (the ops changed inside torch:
    ``nn.Linear`` of a 3-D input), or the source is not readable here."""
    if not any(i.a is not None and i.b is not None for i in inputs):
        return None
    p = next((p for p in rows if p.status in ("only_a", "only_b")), None)
    first = None if p is None else p.a if p.status == "only_a" else p.b
    found = shape_test(first) if first is not None else None
    for level in range(8):  # (the `if` around it when the other pass did not reach this one: nested arms)
        if found is None:
            return None
        src, (mine, other) = first.source, (A, B) if p.status == "only_a" else (B, A)
        if other.ran_lines(src.file, src.function, *found.branch):
            return None  # (the other pass ran that branch too: the `if` went the same way there)
        called = found.top and first.module is not None and mine.graph.module_path(first.module) in other.calls
        # (an `if` around the first one: only when the other pass ran another arm of it, its `elif`/`else`)
        where = found.block if not level else (found.header, if_statement_end(src.file, found.header))
        if (called and not level) or other.ran_lines(src.file, src.function, *where, but=found.branch):
            return f"{os.path.basename(src.file)}:{found.line}" if found.line else ""
        found = shape_test(first, found.header) if found.header > 1 and not found.top else None
    return None  # (nothing says the other pass ran the `if`: neither its block, nor its module's forward)


def differing_meta(a: Graph, b: Graph, key: str) -> Optional[Tuple[str, str]]:
    """The passes' ``meta[key]`` (A's, B's) when they differ: grad modes, torch versions."""
    values = (a.meta.get(key), b.meta.get(key))
    return values if None not in values and values[0] != values[1] else None  # type: ignore[return-value]


def differing_grad_modes(a: Graph, b: Graph) -> Optional[Tuple[str, str]]:
    return differing_meta(a, b, "grad_mode")


def differing_training(a: Graph, b: Graph) -> str:
    """"modules in training mode in A, eval mode in B" when a module call both
    passes made ran in ``.train()`` on one side and ``.eval()`` on the other."""
    ta = {(m.path, m.call): m.training for m in a.modules}
    differ = {ta[k] for m in b.modules for k in [(m.path, m.call)]
              if ta.get(k) is not None and m.training is not None and ta[k] != m.training}
    if len(differ) != 1:  # (none, or some modules in training mode in A and others in B)
        return "modules in other training modes" if differ else ""
    side, other = ("A", "B") if differ == {True} else ("B", "A")
    return f"modules in training mode in {side}, eval mode in {other}"
