"""Ops that reach the dispatch mode whole, and how the recorder runs them so
that the user's results stay what eager gives.

* Composite ops under ``inference_mode`` (autograd, which would have split
  them, is off): the mode runs their CompositeImplicitAutograd kernel with
  itself re-entered, so their pieces are recorded (see ``OpInfo.runs_composite``
  for when eager runs that kernel at all).
* Higher-order ops (``torch.cond``, ``while_loop``, ...).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Optional

import torch

from ..errors import UsageError
from .opinfo import HigherOrderInfo

_C = torch._C
_FORCE_KEYS = getattr(_C, "_ForceDispatchKeyGuard", None)
_SNAPSHOT = getattr(_C, "_RestorePythonTLSSnapshot", None)
_ADIV = _C.DispatchKey.ADInplaceOrView
_AUTOCAST_KEYS = tuple(getattr(_C.DispatchKey, n) for n in (
    "AutocastCPU", "AutocastCUDA", "AutocastXPU", "AutocastMPS", "AutocastHPU", "AutocastXLA", "AutocastIPU",
    "AutocastMTIA", "AutocastPrivateUse1") if hasattr(_C.DispatchKey, n))


def see_autocast(mode: Any) -> None:
    """Note on ``mode`` that autocast is on for some device, if it is: from then
    on its ops go through ``call_under_autocast``. Read outside the handler
    (module pre-hooks, mode push): inside it torch has excluded every autocast key."""
    if not mode.autocast and _C._is_any_autocast_enabled():
        mode.autocast = True


def _autocast_on(mode: Any) -> tuple:
    """The autocast keys that are on where the op being handled was called:
    inside a composite op the mode runs in pieces, what ``run_composite`` set;
    else what the user's call entered the dispatcher with."""
    if mode.autocast_on is not None:
        return mode.autocast_on
    if _SNAPSHOT is None:  # pragma: no cover - torch < 2.1
        return ()
    try:
        with _SNAPSHOT():
            excluded = _C._dispatch_tls_local_exclude_set()
    except RuntimeError:  # no snapshot for this call (not entered through the dispatcher): leave it as it runs
        return ()
    return tuple(k for k in _AUTOCAST_KEYS if not excluded.has(k))


def _passed_through(info: Any, on: tuple) -> tuple:
    """Of the autocast keys ``on``, those autocast passes this op through (it
    has no autocast kernel): they stay on for the ops its kernel calls, as in
    eager (``nn.Transformer``'s fused layer calls ``linear``, which autocast
    casts); an op with an autocast kernel runs its own ops with autocast off."""
    return tuple(k for k in on if info.lacks_kernel(k))


# composite view ops whose views torch gives their metadata as they leave the mode: made again by their
# pieces under ADInplaceOrView, torch refuses them (RuntimeError); other composite views (flatten,
# reshape, movedim...) need it, or they come out as no views (measured on torch 2.13)
_VIEWS_MADE_ONCE = frozenset({"aten.chunk", "aten.narrow"})


def _eager_keys(autocast: tuple, views: Optional[bool]) -> Any:
    """Dispatch the ops a kernel calls with the keys eager gives them.

    A mode's handler runs with every key above Python excluded: turn the
    ``autocast`` keys back on, and with ``views`` ADInplaceOrView (composite
    ops under inference_mode): views made inside a composite kernel otherwise
    lose their autograd metadata, and kernels that read it take another path
    (``matmul`` inside ``gru`` folds to ``mm`` when its weight requires grad
    and runs ``bmm`` otherwise: different bits). ``views=False``: with
    ADInplaceOrView off (``_VIEWS_MADE_ONCE``). ``None``: as it is."""
    if _FORCE_KEYS is None or not (autocast or views is not None):  # (no guard: torch < 2.1)
        return contextlib.nullcontext()
    excluded = _C._dispatch_tls_local_exclude_set()
    for k in autocast + ((_ADIV,) if views else ()):
        excluded = excluded.remove(k)
    if views is False:
        excluded = excluded.add(_ADIV)
    return _FORCE_KEYS(_C._dispatch_tls_local_include_set(), excluded)


def call_under_autocast(mode: Any, info: Any, args: tuple, kwargs: dict) -> Any:
    """Run an op (once the pass has seen autocast on) so that the ops its
    kernel calls get the user's autocast, as in eager."""
    with _eager_keys(_passed_through(info, _autocast_on(mode)), None):
        return info.call(*args, **kwargs)


NOT_WHOLE = object()  # run_whole's answer for an op eager runs as its own kernel


def run_whole(mode: Any, info: Any, func: Any, args: tuple, kwargs: dict) -> Any:
    """An op that may reach the mode whole (``info.whole``): a higher-order op,
    or a composite op that skipped autograd (inference_mode), whose pieces are
    recorded. ``NOT_WHOLE`` where eager runs the op's own kernel for these
    arguments (see ``OpInfo.runs_composite``): the mode records it as any op."""
    if type(info) is HigherOrderInfo:  # even when the mode is off: see run_higher_order
        return run_higher_order(mode, info, args, kwargs)
    if not info.runs_composite(args):
        return NOT_WHOLE
    return run_composite(mode, info, func, args, kwargs)  # (off too: its pieces run as in eager, unrecorded)


def run_composite(mode: Any, info: Any, func: Any, args: tuple, kwargs: dict) -> Any:
    """Run a composite op's CompositeImplicitAutograd kernel (the C++ one eager
    runs: ``OpOverload.decompose`` would prefer Python decompositions, e.g.
    ``dropout(train=False) -> clone``) with the mode re-entered, so its pieces
    are recorded, under the keys eager gives them."""
    inner = _passed_through(info, _autocast_on(mode)) if mode.autocast else ()
    outer, mode.autocast_on = mode.autocast_on, inner  # the autocast keys on for its pieces
    try:
        with mode, _eager_keys(inner, info.name.rsplit(".", 1)[0] not in _VIEWS_MADE_ONCE):
            return func._op_dk(_C.DispatchKey.CompositeImplicitAutograd, *args, **kwargs)
    finally:
        mode.autocast_on = outer


def run_higher_order(mode: Any, info: Any, args: tuple, kwargs: dict) -> Any:
    """Run a higher-order op that reached ``mode``'s handler.

    Without autograd, ``cond`` runs the branch its predicate picks with the
    mode on, as its dense kernel does (which refuses to run under a mode): the
    branch's ops are recorded and reading the predicate is a witness, as for a
    Python ``if``. Other higher-order ops run unchanged, their inner ops
    unrecorded (``meta.record_errors`` says so).

    With autograd on, eager ``torch.cond`` goes through ``torch.compile``,
    which lifts the parameters a branch uses into its operands; under any
    dispatch mode Dynamo does not compile, and those parameters would get no
    gradient (measured with an empty mode). Rather than change the user's
    training silently, say so."""
    if torch.is_grad_enabled() or _for_autograd():
        raise UsageError(
            f"cannot trace {info.name} with autograd on",
            expected="torch.cond / torch higher-order ops traced under torch.no_grad() or inference_mode",
            found=f"a call of torch.ops.higher_order.{info.op_name} while grad mode is enabled",
            fix="trace that pass under torch.no_grad(); with autograd on, torch runs such ops through "
                "torch.compile, which does not run under a dispatch mode (its gradients would be lost)")
    if info.op_name == "cond" and len(args) == 4 and not kwargs:
        pred, true_fn, false_fn, operands = args
        with mode:
            return (true_fn if pred else false_fn)(*operands)
    mode._fault(info, NotImplementedError("its inner ops are not recorded"))
    return info.call(*args, **kwargs)


def _for_autograd(depth: int = 16) -> bool:
    """Is this call inside the forward of a higher-order op's own autograd Function
    (``CondAutogradOp``, which runs it with grad off) for a graph autograd records:
    one that needs an input's gradient (``ctx.needs_input_grad``; all False when the
    op was called under ``no_grad``)?"""
    f = sys._getframe(2)
    while f is not None and depth:
        code = f.f_code
        if code.co_name == "forward" and "ctx" in code.co_varnames:  # (the nearest Function's forward)
            needs = getattr(f.f_locals.get("ctx"), "needs_input_grad", None)
            # (torch's own, not a Function of the user's that calls torch.cond in its forward, grad off)
            return _HOPS in code.co_filename and isinstance(needs, tuple) and any(needs)
        f, depth = f.f_back, depth - 1
    return False


_HOPS = os.path.join("torch", "_higher_order_ops", "")
