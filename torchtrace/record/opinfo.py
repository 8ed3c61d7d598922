"""What the recorder needs to know about one aten overload, computed once.

Everything is read from the schema and tags (``func._schema``, ``func.tags``)
the first time an overload is seen and cached on the overload object, so the
per-op hot path does a single dict lookup.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .dataread import take_handed

# Argument kinds, aligned with the schema: how to find tensors in an argument.
NONTENSOR, TENSOR, TENSOR_LIST, TENSOR_LIST_LIST = 0, 1, 2, 3

_COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional", "_dtensor")
_ANNOTATION_NAMESPACES = ("profiler",)


_OpOverload = torch._ops.OpOverload
# OpOverload.__call__ is `return self._op(*args, **kwargs)` (torch 2.x); check rather than assume
_CALL_IS_OP = getattr(getattr(_OpOverload.__call__, "__code__", None), "co_names", None) == ("_op",)


def _tag(name: str) -> Optional[object]:
    return getattr(torch.Tag, name, None)  # feature-detect: tags come and go between releases


_DATA_DEPENDENT = _tag("data_dependent_output")
_DYNAMIC_SHAPE = _tag("dynamic_output_shape")
# ops whose output shape comes from tensor data that torch does not tag so: pack_padded_sequence
# reads the lengths in C++ (a GRU over packed batches runs as many steps as the longest one)
_SHAPE_FROM_DATA = frozenset({"aten._pack_padded_sequence.default"})
# ops that hand Python a value read from tensor data that torch does not tag so: TransformerEncoder's
# fast path branches on whether its padding mask is left-aligned
_VALUE_FROM_DATA = frozenset({"aten.is_nonzero.default", "aten._nested_tensor_from_mask_left_aligned.default"})
_RANDOM = _tag("nondeterministic_seeded")
_INPLACE = _tag("inplace")
# dispatch keys below a mode's: the backend (CPU, CUDA, SparseCPU, ...) is the highest of them
_BELOW_PYTHON = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)


def _kind(type_str: str) -> int:
    if "Tensor" not in type_str:
        return NONTENSOR
    depth = type_str.count("List[") + type_str.count("[]")
    return (TENSOR, TENSOR_LIST, TENSOR_LIST_LIST)[min(depth, 2)]


# op -> (position of its `training` flag, or None: always; positions of the running statistics)
_STAT_WRITES = {"aten::native_batch_norm": (5, (3, 4)), "aten::cudnn_batch_norm": (5, (3, 4)),
                "aten::miopen_batch_norm": (5, (3, 4)), "aten::batch_norm_update_stats": (None, (1, 2))}


class OpInfo:
    """Facts about one overload; slots for fast attribute access on the hot path."""

    __slots__ = ("index", "name", "arg_names", "kinds", "kw_kinds", "mutates", "view", "tags", "whole",
                 "no_kernel", "witness", "is_detach", "is_seed", "annotation", "scalar_args", "func", "call",
                 "readers", "objects", "stat_writes", "handed")

    def __init__(self, func: "torch._ops.OpOverload") -> None:
        schema = func._schema
        self.func = func  # held: _CACHE is keyed by id(func), which must not be reused
        # what func(*args) runs, minus OpOverload.__call__'s Python frame (`return self._op(...)`)
        self.call = func._op if type(func) is _OpOverload and _CALL_IS_OP else func
        self.index = -1  # set by op_info()
        self.name = str(func)
        namespace = getattr(func, "namespace", self.name.split(".", 1)[0])
        args = schema.arguments
        self.arg_names: Tuple[str, ...] = tuple(a.name for a in args)
        self.kinds: Tuple[int, ...] = tuple(_kind(str(a.type)) for a in args)
        self.kw_kinds: Dict[str, int] = {a.name: k for a, k in zip(args, self.kinds)}
        written = [i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write]
        collective = namespace in _COLLECTIVE_NAMESPACES
        if collective and namespace == "c10d" and not written:
            # c10d ops write their tensor arguments but carry no alias annotation
            written = [i for i, k in enumerate(self.kinds) if k != NONTENSOR][:1]
        self.mutates: Tuple[int, ...] = tuple(written)
        if self.name.startswith("aten._foreach_") and written and self.kinds[written[0]] == TENSOR_LIST:
            self.call = _versioned(self.call, written[0])
        # batch norm's running statistics: written in training, with no alias annotation
        self.stat_writes: Optional[Tuple[Optional[int], Tuple[int, ...]]] = _STAT_WRITES.get(schema.name)
        # a return that aliases an input without writing it: a view (view, t, select, split, detach)
        self.view = not written and any(r.alias_info is not None and not r.alias_info.is_write
                                        for r in schema.returns)
        tags = []
        if self.view:
            tags.append("view")
        if written and not any(a.is_out for a in args) and (_INPLACE in func.tags or 0 in written):
            tags.append("inplace")
        if any(a.is_out for a in args):
            tags.append("out")
        if _RANDOM is not None and _RANDOM in func.tags:
            tags.append("random")
        if all(k == NONTENSOR for k in self.kinds) and namespace not in _ANNOTATION_NAMESPACES:
            tags.append("factory")
        if collective:
            tags.append("collective")
        if namespace in _ANNOTATION_NAMESPACES:
            tags.append("annotation")
        self.witness: Optional[str] = None
        if (_DATA_DEPENDENT is not None and _DATA_DEPENDENT in func.tags) or self.name in _VALUE_FROM_DATA:
            self.witness = "value"
        elif (_DYNAMIC_SHAPE is not None and _DYNAMIC_SHAPE in func.tags) or self.name in _SHAPE_FROM_DATA:
            self.witness = "shape"
        # torchtrace's own ops (dataread): a tolist()/numpy() read; what it handed Python comes from the wrapper
        self.handed = take_handed if namespace == "torchtrace" else None
        if self.handed is not None:
            self.witness = "value"
        if self.witness is not None:
            tags.append("witness")
        self.tags: Tuple[str, ...] = tuple(tags)
        self.annotation = "annotation" in tags
        # (position, name) of arguments that may hold a non-tensor (for the IR's args)
        self.scalar_args: Tuple[Tuple[int, str], ...] = tuple(
            (i, a.name) for i, (a, k) in enumerate(zip(args, self.kinds)) if k in (NONTENSOR, TENSOR))
        # Under inference_mode composite ops reach us whole; the mode runs them in
        # pieces so every grad mode records the same vocabulary (composite.run_whole).
        try:
            self.whole = bool(torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "CompositeImplicitAutograd"))
        except Exception:  # pragma: no cover - very old torch
            self.whole = False
        self.no_kernel: Dict[Any, bool] = {}  # dispatch key -> no kernel of its own for it (lacks_kernel)
        self.is_detach = self.name in ("aten.detach.default", "aten.detach_.default")
        # autograd seeds backward with ones_like(loss) from torch.autograd._make_grads
        self.is_seed = self.name == "aten.ones_like.default"
        self.readers: Dict[int, Any] = {}  # len(args) -> generated reader, or False (see reader())
        # an argument of a TorchScript class (a c10d ProcessGroup): the event keeps its description,
        # never the object (RecordingMode._read_args)
        self.objects = any("__torch__" in str(a.type) for a in args)

    def lacks_kernel(self, key: Any) -> bool:
        """Has this op no kernel of its own for dispatch key ``key``? For an
        autocast key: autocast passes the op through. (Memoised per key.)"""
        hit = self.no_kernel.get(key)
        if hit is None:
            try:
                hit = not torch._C._dispatch_has_kernel_for_dispatch_key(self.func.name(), key)
            except Exception:  # pragma: no cover - a key torch cannot look up: leave the op as it runs
                hit = False
            self.no_kernel[key] = hit
        return hit

    def runs_composite(self, args: tuple) -> bool:
        """Would eager run this op's CompositeImplicitAutograd kernel for these
        arguments? Only where the op has no kernel of its own for their backend:
        ``silu_backward`` has a CPU kernel and a composite one for the other
        backends, and the two round differently."""
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if t is None:  # no tensor to tell the backend: a factory op
            return True
        return self.lacks_kernel((torch._C._dispatch_keys(t) & _BELOW_PYTHON).highestPriorityTypeId())

    def stats_written(self, args: tuple, kwargs: dict) -> List[Any]:
        """The running statistics this call updates (``stat_writes``: batch norm in training)."""
        flag, stats = self.stat_writes
        if flag is not None and not (args[flag] if flag < len(args) else kwargs.get(self.arg_names[flag])):
            return []
        return [args[i] for i in stats if i < len(args) and isinstance(args[i], torch.Tensor)]

    def reader(self, n: int) -> Any:
        """The positional-argument reader for calls with ``n`` args, made once."""
        r = self.readers.get(n)
        if r is None:  # (none for TorchScript-object arguments: _read_args describes them)
            r = self.readers[n] = _make_reader(self.kinds[:n]) if n <= len(self.kinds) and not self.objects else False
        return r


def _versioned(call: Any, slot: int) -> Any:
    """``call`` of an in-place foreach op, bumping the version of each tensor it
    wrote as eager does: its kernel writes them below the dispatch mode, where
    autograd's ADInplaceOrView key is off (under any mode, versions stayed put,
    and autograd missed "modified by an inplace operation" after ``opt.step()``)."""
    def run(*args: Any, **kwargs: Any) -> Any:
        tensors = [t for t in (args[slot] if slot < len(args) else ()) if isinstance(t, torch.Tensor)
                   and not t.is_inference()]
        before = [t._version for t in tensors]
        out = call(*args, **kwargs)
        stale = [t for t, v in zip(tensors, before) if t._version == v]
        if stale:
            torch.autograd.graph.increment_version(stale)
        return out
    return run


def _make_reader(kinds: Tuple[int, ...]) -> Any:
    """Straight-line code for the common call: every Tensor slot holds a tensor,
    every other slot a plain value. ``read(args, vget, vrefs, ext, frame,
    info)`` returns ``(input value ids, args with None in Tensor slots)`` --
    what ``RecordingMode._read_args`` returns -- or None when a Tensor slot
    holds anything else (None, a number): the general loop takes over. A
    tensor this pass has not seen yet gets its value from ``ext(tensor,
    frame, info)`` (``RecordingMode._external``), in argument order as in the
    general loop. False for schemas with tensor lists (always the general loop).

    Like torch.fx's generated ``forward``: per schema, not per op, so the
    loop over kinds, its branches and the list appends are paid once."""
    if any(k not in (NONTENSOR, TENSOR) for k in kinds):
        return False
    n = len(kinds)
    names = [f"a{i}" for i in range(n)]
    body = [f"    {', '.join(names)}{',' if n == 1 else ''} = args"] if n else []
    ins, argv = [], []
    for i, k in enumerate(kinds):
        if k == TENSOR:
            body += [f"    v{i} = vget(id(a{i}))",
                     f"    if v{i} is None or vrefs[v{i}]() is not a{i}:",
                     f"        if not isinstance(a{i}, Tensor):",
                     "            return None",
                     f"        v{i} = ext(a{i}, frame, info)"]
            ins.append(f"v{i}")
            argv.append("None")
        else:  # a list (int[] sizes) as a tuple: events of atomic values leave the GC's scans
            argv.append(f"(tuple(a{i}) if type(a{i}) is list else a{i})")
    scalars = f"({', '.join(argv)},)" if NONTENSOR in kinds else "()"
    body.append(f"    return ({', '.join(ins)}{',' if ins else ''}), {scalars}")
    ns: Dict[str, Any] = {}
    code = "def read(args, vget, vrefs, ext, frame, info):\n" + "\n".join(body)
    exec(compile(code, "<torchtrace reader>", "exec"), {"Tensor": torch.Tensor}, ns)
    return ns["read"]


# Keyed by id(func): OpOverload.__hash__ is a Python method (hash(self._op)),
# an int key skips that call on every op. The OpInfo holds func alive.
_CACHE: Dict[int, OpInfo] = {}
# Events store ``info.index`` (an int) rather than the object: records made only
# of ints/tuples are untracked by the cyclic GC, whose scans otherwise cost
# ~3.5 µs per recorded op (measured; see bench/README.md).
BY_INDEX: List[OpInfo] = []


class HigherOrderInfo:
    """A higher-order operator (``torch.cond``, ``while_loop``, ...): it reaches
    the mode whole; ``composite.run_higher_order`` runs what it stands for."""

    __slots__ = ("index", "name", "func", "call", "whole", "op_name")

    def __init__(self, func: Any) -> None:
        self.func = self.call = func
        self.op_name = func.name()
        self.name = f"higher_order.{self.op_name}"
        self.index = -1
        self.whole = True  # reaches the mode whole (composite.run_whole)


def op_info(func: "torch._ops.OpOverload") -> Any:
    info = _CACHE.get(id(func))
    if info is None:
        info = _CACHE[id(func)] = (HigherOrderInfo(func) if isinstance(func, torch._ops.HigherOrderOperator)
                                   else OpInfo(func))
        info.index = len(BY_INDEX)
        BY_INDEX.append(info)
    return info


def describe_objects(values: Any) -> Any:
    """``values`` (a tuple or a dict of op arguments) with each TorchScript object
    replaced by what the IR keeps of it: a process group's size, rank and name."""
    if isinstance(values, dict):
        return {k: describe_object(v) if isinstance(v, torch.ScriptObject) else v for k, v in values.items()}
    return tuple(describe_object(v) if isinstance(v, torch.ScriptObject) else v for v in values)


def describe_object(x: Any) -> Any:
    name = x._type().qualified_name() if hasattr(x, "_type") else type(x).__name__
    try:  # a c10d ProcessGroup and ReduceOp: what a rank report needs
        import torch.distributed as dist

        if name.endswith("c10d.ReduceOp"):  # "SUM", "MAX"...: ranks that reduce otherwise hang or diverge
            code = x.op()
            return next((k for k, v in dist.ReduceOp.RedOpType.__members__.items() if int(v) == code), str(code))
        pg = dist.ProcessGroup.unbox(x)
        return {"group_size": pg.size(), "group_rank": pg.rank(), "group_name": getattr(pg, "group_name", "")}
    except Exception:
        return f"<{name}>"
