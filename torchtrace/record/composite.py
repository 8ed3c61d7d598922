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
from typing import Any

import torch

from ..errors import UsageError

_FORCE_KEYS = getattr(torch._C, "_ForceDispatchKeyGuard", None)


def eager_views() -> Any:
    """While a composite op runs its pieces under the mode: dispatch them as
    eager does. A mode's handler runs with ADInplaceOrView excluded, so views
    made inside a composite kernel lose their autograd metadata there, and
    kernels that read it take another path: ``matmul`` inside ``gru`` or
    ``multi_head_attention`` folds to ``mm`` when its weight requires grad,
    and runs ``bmm`` instead (different bits) when that flag is lost."""
    if _FORCE_KEYS is None:  # pragma: no cover - torch < 2.1
        return contextlib.nullcontext()
    return _FORCE_KEYS(torch._C._dispatch_tls_local_include_set(),
                       torch._C._dispatch_tls_local_exclude_set().remove(torch._C.DispatchKey.ADInplaceOrView))


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
    if torch.is_grad_enabled():
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
