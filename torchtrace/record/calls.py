"""What a module call passed and returned, as the recorder reads it: arguments
by parameter name, keyword arguments from the hook's frame, the tensors in a
nested output."""
from __future__ import annotations

import dataclasses
import inspect
import weakref
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from ..textform import ir_name
from .mode import V_ORIGIN

# held weakly: a forward set on the instance (accelerate's `functools.partial(new_forward, module)`, a
# closure) holds its module, which a plain dict kept alive with its parameters and gradients for good
_SIGNATURES: "weakref.WeakKeyDictionary[Any, Optional[Tuple[inspect.Signature, Tuple[str, ...]]]]" = \
    weakref.WeakKeyDictionary()


def _signature(fn: Any) -> Optional[Tuple[inspect.Signature, Tuple[str, ...]]]:
    """(signature, names of the leading plain positional parameters), per function."""
    key = getattr(fn, "__func__", fn)
    try:
        return _SIGNATURES[key]
    except KeyError:
        pass
    except TypeError:  # (not weakly referable: read each time)
        key = None
    try:
        sig = inspect.signature(fn)
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names = []
        for p in sig.parameters.values():
            if p.kind not in plain:
                break
            names.append(p.name)
        found: Optional[Tuple[inspect.Signature, Tuple[str, ...]]] = (sig, tuple(names))
    except (TypeError, ValueError):
        found = None
    if key is not None:
        _SIGNATURES[key] = found
    return found


def bind_args(fn: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Argument name -> value for a call of ``fn``, as ``Signature.bind_partial``
    (positional-only calls, the usual root call, skip it: ~1.5 µs per pass)."""
    sig = _signature(fn)
    if sig is not None:
        if not kwargs and len(args) <= len(sig[1]):
            return dict(zip(sig[1], args))
        try:
            bound = sig[0].bind_partial(*args, **kwargs).arguments
        except TypeError:
            pass
        else:  # `**kwargs` by their own names (transformers passes past_key_values so)
            params = sig[0].parameters
            out: Dict[str, Any] = {}
            for k, v in bound.items():
                if params[k].kind is inspect.Parameter.VAR_KEYWORD and isinstance(v, dict):
                    out.update(v)
                else:
                    out[k] = v
            return out
    bound = {f"arg{i}": a for i, a in enumerate(args)}
    bound.update(kwargs)
    return bound


def call_kwargs(frame: Any) -> dict:
    """The keyword arguments of a module call, from the frame of
    ``Module._call_impl`` (or its ``inner()``) that runs the hooks: global
    pre-hooks get no kwargs. Read only when needed (``f_locals`` builds a dict)."""
    if frame is not None and frame.f_code.co_name in ("_call_impl", "inner"):
        kwargs = frame.f_locals.get("kwargs")
        if isinstance(kwargs, dict):
            return kwargs
    return {}


_FUNCTORCH = getattr(torch._C, "_functorch", None)


def physical(t: torch.Tensor) -> torch.Tensor:
    """The tensor a dispatch mode sees for ``t``: under ``torch.func`` a module
    call's arguments and results are wrappers (vmap's BatchedTensor, with the
    per-example shape; grad's GradTrackingTensor) around it."""
    try:
        while _FUNCTORCH.is_functorch_wrapped_tensor(t):
            t = _FUNCTORCH.get_unwrapped(t)
    except (AttributeError, RuntimeError):  # (no functorch here; a wrapper whose level is gone)
        pass
    return t


def tensors_in(x: Any, depth: int = 0) -> Iterable[torch.Tensor]:
    """The tensors in a call's output (or arguments): in lists, tuples, dicts and
    dataclasses, four levels deep; not in other objects (a KV cache's tensors
    are the model's state, not what the call computed). Each as the mode sees it."""
    if isinstance(x, torch.Tensor):
        yield physical(x)
    elif depth >= 4:
        return
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from tensors_in(v, depth + 1)
    elif isinstance(x, dict):
        for v in x.values():
            yield from tensors_in(v, depth + 1)
    else:
        for _, v in _fields(x):
            yield from tensors_in(v, depth + 1)


_PLAIN_MODULES = frozenset({"builtins", "torch", "numpy", "enum"})  # no tensors to name inside


def named_tensors(value: Any, name: str, depth: int = 0, budget: Optional[List[int]] = None
                  ) -> Iterable[Tuple[torch.Tensor, str]]:
    """The tensors in an argument, by path: in lists, tuples and dicts, and in the
    public attributes of other objects (a transformers Cache:
    ``past_key_values.self_attention_cache.layers[0].keys``), four levels deep,
    at most 512 objects looked into."""
    if budget is None:
        budget = [512]
    budget[0] -= 1
    if isinstance(value, torch.Tensor):
        yield physical(value), name
    elif depth >= 4 or budget[0] < 0:
        return
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from named_tensors(v, f"{name}[{i}]", depth + 1, budget)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from named_tensors(v, f"{name}.{k}", depth + 1, budget)
    elif type(value).__module__ not in _PLAIN_MODULES and not isinstance(value, torch.nn.Module):
        for k, v in _attributes(value)[:64]:
            if not k.startswith("_"):
                yield from named_tensors(v, f"{name}.{k}" if name else k, depth + 1, budget)


def _attributes(value: Any) -> List[Tuple[str, Any]]:
    """An object's attributes: its ``__dict__``, or a slotted dataclass's fields;
    none where reading them raised (a ``__getattr__`` that raises KeyError)."""
    try:
        d = getattr(value, "__dict__", None)
        return list(d.items()) if isinstance(d, dict) else _fields(value)
    except Exception:
        return []


def _fields(value: Any) -> List[Tuple[str, Any]]:
    """A dataclass instance's fields, by name (none for anything else)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value)]
    return []


def unread_inputs(names: Dict[int, Tuple[Any, str]], mode: Any) -> List[Dict[str, Any]]:
    """The named inputs of the pass's root calls that no op read (``meta.unread_inputs``:
    name, shape, dtype): a mask that ``if self.use_mask:`` skipped was passed all the same,
    which a diff against a pass that read it must not take for an input only one pass had."""
    out = []
    for ref, name in names.values():
        t = ref()
        if t is None or mode.vid_of(t) is not None:
            continue
        try:
            shape = [s if s.__class__ is int else -1 for s in t.shape]
        except Exception:  # (a tensor subclass without sizes)
            continue
        out.append({"name": name, "shape": shape, "dtype": ir_name(t.dtype)})
    return out


def name_inputs(bound: Dict[str, Any], names: Dict[int, Tuple[Any, str]], aliases: Dict[str, str],
                mode: Any) -> None:
    """Name the tensors a root call was passed (``bound``: by parameter name) in
    ``names`` (id -> (weakref, path)); a tensor passed as two inputs of this call
    goes in ``aliases`` (`m(x, x)`: the diff says so; not a second call's); one the
    pass read before the call (`m(ids, labels=ids.clone())`) is named by the forward."""
    call: Dict[int, str] = {}
    for t, path in (x for name, value in bound.items() for x in named_tensors(value, name)):
        e = names.get(id(t))
        if e is None or e[0]() is not t:  # new, or an entry left by a dead tensor with this id
            names[id(t)] = (weakref.ref(t), path)
        if call.setdefault(id(t), path) != path:
            aliases.setdefault(path, call[id(t)])
        vid = mode.vid_of(t)
        if vid is not None:
            rec = mode.vmeta[vid]
            origin = rec[V_ORIGIN]
            if origin is not None and origin[0] == "ext" and origin[1] == "input" and len(origin) == 4:
                mode.vmeta[vid] = (*rec[:V_ORIGIN], (*origin[:2], path, origin[3], "signature"), *rec[V_ORIGIN + 1:])
