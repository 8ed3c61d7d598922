"""Turn one pass's raw event tuples into an IR ``Graph``.

Everything the hot path deferred happens here: ids, names, JSON-safe args,
source lines, view/version links, tags that need context (autograd
bookkeeping, optimizer phase), and the join of ops to autograd Nodes.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._memo import Lazy, remember
from ..fingerprint import strip_addresses
from ..ir import Autograd, Graph, ModuleCall, Node, Source, Value, Witness
from ..serialize import symbolic_value
from ..textform import ir_name
from .aliases import refresh_stale_reads
from .boundary import reads_data
from .extras import Raised
from .frames import is_torch_internal, line_of, runs_formula, truth_tested
from .linking import AutogradPart, build_autograd
from .enginephase import RECOMPUTE
from .mode import (BACKWARD, E_ANODE, E_ARGS, E_CODE, E_EXTRA, E_ICODE, E_ILASTI, E_INFO, E_INS, E_KW,
                   E_LINE, E_MOD, E_OUTS, E_PHASE, V_DEVICE, V_DTYPE, V_ORIGIN, V_SHAPE)
from .opinfo import BY_INDEX, describe_object
from .optimizer import ClosureLoss, annotate, open_marks, scaler_step
from .setdata import rebound_values

PHASE_NAMES = {0: "forward", BACKWARD: "backward", RECOMPUTE: "recompute"}


def jsonable(x: Any) -> Any:
    """A JSON-safe rendering of a non-tensor op argument."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, (list, tuple)):
        return [jsonable(i) for i in x]
    if isinstance(x, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(x)
    if isinstance(x, torch.Tensor):
        return f"<tensor {str(x.dtype).replace('torch.', '')}{list(x.shape)}>"
    if isinstance(x, (torch.UntypedStorage, torch.TypedStorage)):  # its repr prints the data
        return f"<storage {x.nbytes()} bytes {x.device}>"
    if isinstance(x, complex):
        return str(x)
    if isinstance(x, dict):  # a process group's description (opinfo.describe_objects)
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, torch.ScriptObject):
        return describe_object(x)
    if isinstance(x, torch.Generator):
        return f"<Generator {x.device}>"
    text = strip_addresses(repr(x))  # the IR is deterministic
    return text if len(text) <= 200 else text[:197] + "..."


def _args(info: Any, argv: tuple, kw: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Non-tensor arguments by schema name (tensor positions hold None in ``argv``)."""
    out: Dict[str, Any] = {}
    n = len(argv)
    for i, name in info.scalar_args:
        if i < n:
            a = argv[i]
            if a is not None:
                out[name] = a if type(a) in _PLAIN else jsonable(a)
    if kw:
        for name, a in kw.items():
            out[name] = a if type(a) in _PLAIN else jsonable(a)
    return out


_PLAIN = {int, str, bool}


class _ArgsCache(dict):
    """One args dict per distinct (op, argument values) in a pass: most ops
    repeat their non-tensor arguments (sizes, dims, flags). Keyed by ``repr``,
    which tells ``2`` from ``2.0`` and ``True`` (equal as dict keys); the
    nodes share the dict, read-only like the rest of the IR."""

    def get_args(self, info: Any, argv: tuple, kw: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        key = (info.index, repr(argv), repr(kw) if kw else "")
        a = self.get(key)
        if a is None:
            a = self[key] = _args(info, argv, kw)
        return a


# (id(code), f_lasti) -> (code, Source), kept across passes (a training loop records
# the same lines every step); holding the code keeps its id from being reused. Keyed by
# id: a code object's hash is recomputed from its bytecode and constants on every
# lookup (0.7 µs for a large forward).
_SOURCES: Dict[Tuple[int, int], Tuple[Any, Source]] = {}


def _source(code: Any, lasti: int) -> Optional[Source]:
    """(code, f_lasti) -> Source; one immutable object shared by every op recorded there."""
    if code is None:
        return None
    hit = _SOURCES.get((id(code), lasti))
    if hit is None:
        src = Source(code.co_filename, line_of(code, lasti), getattr(code, "co_qualname", code.co_name))
        hit = remember(_SOURCES, (id(code), lasti), (code, src))
    return hit[1]


def _bookkeeping(events: List[tuple], infos: List[Any], i: int, created: Any) -> bool:
    """Is event i autograd's own ``detach`` (saving an output, unpacking it,
    or AccumulateGrad) rather than a user's ``.detach()``?"""
    ev = events[i]
    if not infos[i].is_detach:
        return False
    if ev[E_PHASE] == BACKWARD:  # the engine's or torch's own (checkpoint) detaches
        return ev[E_ICODE] is None or is_torch_internal(ev[E_ICODE])  # (None: from the engine's C++ thread)
    if i == 0:
        return False
    prev = events[i - 1]
    if ev[E_INS][:1] == prev[E_OUTS][:1] and (infos[i - 1].name.startswith("aten.lift_fresh") or (
            infos[i - 1].name == "aten._to_copy.default" and i > 1 and _same_place(events[i - 2], prev)
            and (infos[i - 2].name.startswith("aten.lift_fresh") or infos[i - 2].is_detach)
            and prev[E_INS][:1] == events[i - 2][E_OUTS][:1])):
        return True  # torch.tensor(...) makes its result a leaf (seen under inference_mode), after a copy of
        # numpy data or of a tensor (`lift_fresh`/`detach`, `_to_copy`, then this `detach_`)
    # issued inside the autograd kernel of an earlier op of the same Python
    # instruction (saving its outputs), detaching one of that op's fresh outputs
    j = i - 1
    while j > 0 and infos[j].is_detach and events[j][E_ICODE] is ev[E_ICODE]:
        j -= 1
    src = events[j]
    return (src[E_ICODE] is ev[E_ICODE] and src[E_ILASTI] == ev[E_ILASTI]
            and bool(ev[E_INS]) and ev[E_INS][0] in src[E_OUTS] and j in created)


def _same_place(a: tuple, b: tuple) -> bool:
    """Issued by one Python instruction (one call: ``torch.tensor(...)``)?"""
    return a[E_ICODE] is b[E_ICODE] and a[E_ILASTI] == b[E_ILASTI]


def build_graph(capture: Any, mode: Any, meta: Dict[str, Any]) -> Graph:
    # (The collector is left on: pausing it here saves ~0.7 µs per op of the
    # build, but the collection it owes then lands in the user's next steps,
    # +0.7 % on a non-sampled MLP training step in bench/bench.py --sections steps.)
    events = mode.events
    infos = [BY_INDEX[ev[E_INFO]] for ev in events]
    vmeta = mode.vmeta

    # -- value links: views alias their input's base; versions keep the base --
    alias_root: Dict[int, int] = {}
    producer = {v: i for i, ev in enumerate(events) for v in ev[E_OUTS]}
    rebound = rebound_values(events, infos, vmeta, producer)  # (set_, `t.data = ...`: another storage now)
    for i, ev in enumerate(events):
        info, ins, outs = infos[i], ev[E_INS], ev[E_OUTS]
        if info.view and ins:
            root = alias_root.get(ins[0], ins[0])
            for v in outs:
                alias_root[v] = root
        for v in outs:  # (before the views taken of it after: they share the storage it points at now)
            if v in rebound:
                src = rebound[v]
                if src is None:
                    alias_root.pop(v, None)
                else:
                    alias_root[v] = alias_root.get(src, src)
    for vid, rec in enumerate(vmeta):
        origin = rec[V_ORIGIN]
        if vid not in rebound and origin is not None and origin[0] == "ver" and origin[1] in alias_root:
            alias_root[vid] = alias_root[origin[1]]
    refresh_stale_reads(events, vmeta, mode.vrefs, alias_root, producer, rebound)

    alive = mode.live()
    try:
        ag = build_autograd(capture, mode, events, infos)
    except Exception as e:  # torch refused a read (an exotic tensor): keep the ops, say what is missing
        capture.note_fault("the autograd graph", e, stacklevel=5)
        meta.update(capture.fault_meta())
        ag = AutogradPart(capture.autograd)
    created = ag.created_by_op

    grads = _grad_names(events, infos, ag)
    vid_str = [f"v{i}" for i in range(len(vmeta))]
    text = Lazy(ir_name)
    values: List[Value] = []
    version_role: Dict[int, Tuple[str, Optional[str]]] = {}
    for vid, rec in enumerate(vmeta):
        dtype, origin = rec[V_DTYPE], rec[V_ORIGIN]
        role, name, version_of = "activation", None, None
        t = alive.get(vid)
        if origin is None or origin[0] == "data":  # (a tensor the pass made, pointed at new data: setdata.py)
            op = producer.get(vid)
            rg = t.requires_grad if t is not None else (
                op is not None and op in created and (dtype.is_floating_point or dtype.is_complex)
                and ag.differentiable(op, infos[op].name, events[op][E_OUTS], vid))
            if op is None:  # (an op's output whose event a KeyboardInterrupt cut off: no producer to name)
                role = "constant"
        elif origin[0] == "ext":
            role, name, rg = origin[1], origin[2], origin[3]
            name = name or grads.get(vid)
            version_role[vid] = (role, name)
        else:  # a new version written in place: keeps the identity of what it overwrote
            version_of = origin[1]
            role, name = version_role.get(version_of, ("activation", None))
            version_role[vid] = (role, name)
            rg = t.requires_grad if t is not None else bool(
                values[version_of].requires_grad if 0 <= version_of < len(values) else False)
        root = alias_root.get(vid)
        shape = rec[V_SHAPE:]
        try:  # (a jagged NestedTensor's ragged size is a torch.SymInt, new each time one is built: -1)
            plain = sum(shape).__class__ is int
        except Exception:
            plain = False
        if not plain:
            shape = tuple(s if s.__class__ is int else symbolic_value(s) for s in shape)
        values.append(Value(vid_str[vid], shape, text[dtype], text[rec[V_DEVICE]], bool(rg), role, name,
                            None if root is None else vid_str[root],
                            None if version_of is None or version_of < 0 else vid_str[version_of]))

    # -- nodes ---------------------------------------------------------------
    nodes: List[Node] = []
    annotations = list(capture.open_annotations)  # a pass can start inside opt.step (LBFGS's closure)
    in_optimizer, zeroing = open_marks(annotations)
    grad_fn_of = ag.grad_fn_of
    vid_at = vid_str.__getitem__
    mod_str = [f"m{k}" for k in range(len(mode.mcalls))]
    args_of = _ArgsCache().get_args
    no_args: Dict[str, Any] = {}  # shared by this pass's ops without non-tensor arguments
    raised: List[Dict[str, str]] = []
    # ops of a generator forward's own body run as its caller iterates, outside the call
    in_generator = capture.scope.generator_calls()
    # the .grads backward left (not autograd.grad's results: a gradient penalty, MAML's inner step
    # are forward), and what was made from them outside any module after it (clip_grad_norm_,
    # GradScaler.unscale_ before opt.step()): that processing is optimizer phase
    from_grads = set(grads)  # (and, below, what AccumulateGrad puts in .grad)
    closure = ClosureLoss(mode.mcalls, values)
    stepping_in_backward = False
    sums = ag.engine_sums(events, infos)
    for i, ev in enumerate(events):
        info = infos[i]
        ph = ev[E_PHASE]
        phase = PHASE_NAMES[ph]
        module = _module(ev, in_generator)
        anode = None if i in sums else ev[E_ANODE]  # (a gradient sum the engine ran between Nodes: no Node's)
        if ph == BACKWARD:
            if _accumulates(ag, ev) or ("inplace" in info.tags and ev[E_INS] and ev[E_INS][0] in from_grads):
                from_grads.update(ev[E_OUTS])  # (and a hook's write into a .grad: `p.grad.mul_(0.5)`)
            fwd = ag.forward_op_of(ev[E_ANODE])  # (a sum's: where the gradient it adds was made)
            if fwd is not None:  # a derivative formula: belongs to its forward op's module and line
                module = _module(events[fwd], in_generator)
                # (a custom backward's op, or a hook's the Node ran -- `h.register_hook(lambda g: g * 2)`, a
                # saved tensor's unpack hook --: the user's own code, its own line)
                own = ag.is_custom(ev[E_ANODE]) or not runs_formula(ev[E_ICODE])
                source = _source(ev[E_CODE], ev[E_LINE]) if own else _source(events[fwd][E_CODE], events[fwd][E_LINE])
            else:
                source = _source(ev[E_CODE], ev[E_LINE])
        else:
            source = _source(ev[E_CODE], ev[E_LINE])
        args = args_of(info, ev[E_ARGS], ev[E_KW]) if info.scalar_args or ev[E_KW] else no_args
        if info.annotation:
            was, was_zeroing = in_optimizer, zeroing
            annotate(annotations, info, args)
            in_optimizer, zeroing = open_marks(annotations)
            # a step run by a hook in backward (post-accumulate-grad: "optimizer step in backward")
            before, stepping_in_backward = stepping_in_backward, in_optimizer and (
                stepping_in_backward or (ph == BACKWARD and not was))
            if (ph == 0 and (was or in_optimizer or was_zeroing or zeroing)) or (
                    ph == BACKWARD and (before or stepping_in_backward)):
                phase = "optimizer"  # Optimizer.step's and zero_grad's own markers: their phase
        elif stepping_in_backward and ph == BACKWARD:
            phase = "optimizer"
        elif zeroing and ph == 0:
            phase = "optimizer"  # (zero_grad(set_to_none=False)'s zero_ of each .grad)
        elif ph == 0 and module is None and in_optimizer and closure.is_loss(ev, from_grads):
            pass  # (the loss a closure computes from the model's output inside step: forward)
        elif ph == 0 and module is None and (in_optimizer or from_grads and not from_grads.isdisjoint(ev[E_INS])
                                             or scaler_step(ev[E_ICODE])):  # (GradScaler.unscale_'s inverse scale)
            phase = "optimizer"  # (a closure's model call inside step: forward)
            closure.stepped.update(ev[E_OUTS])
            ins = [v for v in ev[E_INS] if v >= 0]
            if not in_optimizer and ins and (from_grads.issuperset(ins) if "inplace" not in info.tags
                                             else ins[0] in from_grads):
                from_grads.update(ev[E_OUTS])  # (gradients made from gradients; not `w -= lr * w.grad`'s w)
        if in_optimizer and ph == 0 and module is not None:
            closure.model_op(module, ev[E_OUTS])
        tags = info.tags
        if info.is_detach and (_bookkeeping(events, infos, i, created)
                               or (ph == BACKWARD and _accumulates(ag, ev))):
            tags = (*tags, "autograd_internal")
        elif ph == BACKWARD and _accumulates(ag, ev):
            tags = (*tags, "accumulate_grad")
        if ph == RECOMPUTE:  # (checkpoint's re-run of forward: its phase, and a tag that says so too)
            tags = (*tags, "recompute")
        witness = None
        if type(ev[E_EXTRA]) is Raised:  # the op raised: no output, no read
            raised.append({"node": f"n{i}", "error": str(ev[E_EXTRA])})
            tags = tuple(t for t in tags if t != "witness")
        elif info.witness is not None:
            read = ev[E_EXTRA]
            via = () if read is None else tuple(_source(c, lasti) for c, lasti in read.callers)
            if info.witness == "value":
                value = read.value if read is not None else None
                if type(value) in (int, float) and truth_tested(ev[E_ICODE], ev[E_ILASTI]):  # `if t:`: bool(t)
                    value = bool(value)
                witness = Witness(value=jsonable(value), called_from=via)
            elif ev[E_OUTS] and reads_data(info, ev, vmeta):
                witness = Witness(shape=vmeta[ev[E_OUTS][0]][V_SHAPE:], called_from=via)
            else:
                tags = tuple(t for t in tags if t != "witness")
        ins = ev[E_INS]
        nodes.append(Node(f"n{i}", info.name,
                          tuple(map(vid_at, ins)) if -1 not in ins else  # -1: a None in a Tensor?[] argument
                          tuple([vid_str[v] for v in ins if v >= 0]),
                          tuple(map(vid_at, ev[E_OUTS])), phase,
                          None if module is None else mod_str[module], args, source, tags, witness,
                          grad_fn_of.get(i), "op", ag.aid_of(anode) if phase == "backward" else None))

    if raised:  # ops that raised (the last one, if the block ended by it): node and error
        meta["raised"] = raised
    capture.open_annotations = tuple(annotations)  # where the next pass starts
    modules = tuple(ModuleCall(f"m{k}", path, typ, call, None if parent is None else f"m{parent}", phase, training)
                    for k, (path, typ, call, parent, phase, training) in enumerate(mode.mcalls))
    # (a root call that raised returned nothing: not the values its traceback still holds)
    outputs = tuple(f"v{v}" for v in _outputs(mode, events, alive, nodes)) if not capture.root_raised or \
        mode.outputs else ()  # (what root calls before it returned stays)
    return Graph(meta=meta, modules=modules, values=tuple(values), nodes=tuple(nodes), outputs=outputs,
                 autograd=Autograd(nodes=ag.nodes, executed=ag.executed, grads=ag.grads,
                                   no_grad_params=ag.no_grad_params))


def _module(ev: tuple, in_generator: Dict[int, int]) -> Optional[int]:
    """The module call an op ran in; the ops of a generator forward's own body run
    as its caller iterates, outside the call (``ModuleScope.generator_calls``)."""
    module = ev[E_MOD]
    if module is None and in_generator and ev[E_CODE] is not None:
        module = in_generator.get(id(ev[E_CODE]))
    return module


def _accumulates(ag: AutogradPart, ev: tuple) -> bool:
    """Is ``ev`` AccumulateGrad's own work (adding into an existing ``.grad``)? Not
    an op of a hook the user put on the leaf (``p.register_hook``,
    ``register_post_accumulate_grad_hook``): those run inside the same Node, from
    the user's own code."""
    return ag.is_accumulate(ev[E_ANODE]) and (ev[E_ICODE] is None or is_torch_internal(ev[E_ICODE]))


def _grad_names(events: List[tuple], infos: List[Any], ag: AutogradPart) -> Dict[int, str]:
    """``fc.weight.grad``: the .grad tensors that AccumulateGrad added into (the
    first input of its ops other than its bookkeeping detach), by value id."""
    out: Dict[int, str] = {}
    for i, ev in enumerate(events):
        if ev[E_PHASE] == BACKWARD and ev[E_INS] and not infos[i].is_detach and _accumulates(ag, ev):
            param = ag.param_of(ev[E_ANODE])
            if param is not None and ev[E_INS][0] >= 0:
                out.setdefault(ev[E_INS][0], f"{param}.grad")
    return out


def open_annotations(events: List[tuple], stack: Tuple[str, ...]) -> Tuple[str, ...]:
    """The ``record_function`` markers open after ``events`` (a pass dropped
    unbuilt: the setup before a Recorder's first pass), from those open before."""
    out = list(stack)
    for ev in events:
        info = BY_INDEX[ev[E_INFO]]
        if info.annotation:
            annotate(out, info, _args(info, ev[E_ARGS], ev[E_KW]))
    return tuple(out)


def _outputs(mode: Any, events: List[tuple], alive: Dict[int, Any], nodes: List[Node]) -> List[int]:
    """What the traced call returned; for plain tensor code, the values still
    alive at the end that no later op consumed (autograd's own detach of a saved
    output neither consumes it nor is one)."""
    if mode.outputs:
        seen, out = set(), []
        for v in mode.outputs:
            if v not in seen:
                seen.add(v)
                out.append(v)
        return out
    user = [ev for ev, n in zip(events, nodes) if "autograd_internal" not in n.tags]
    consumed = {v for ev in user for v in ev[E_INS]}
    # (and not a value a write superseded: a view read after a write reads its newer version, aliases.py)
    consumed.update(rec[V_ORIGIN][1] for rec in mode.vmeta if rec[V_ORIGIN] is not None and rec[V_ORIGIN][0] == "ver")
    produced = [v for ev in user if ev[E_PHASE] == 0 for v in ev[E_OUTS]]
    return [v for v in produced if v not in consumed and alive.get(v) is not None]
