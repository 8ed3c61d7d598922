"""Which ops are the optimizer's: ``Optimizer.step``'s ``record_function``
markers (open across passes: LBFGS's closure calls the model inside the step),
the steps running on the stack, and the loss a closure computes inside a step.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Set, Tuple

import torch

from ..ir import Value
from .mode import E_ICODE, E_INS, E_OUTS

OPTIMIZER_PREFIX = "Optimizer.step#"
ZERO_GRAD_PREFIX = "Optimizer.zero_grad#"  # (its ops, `zero_` of each .grad with set_to_none=False: optimizer)


def annotate(stack: List[str], info: Any, args: Dict[str, Any]) -> None:
    """A ``record_function`` marker: enter pushes its name, exit pops."""
    if info.name.startswith("profiler._record_function_enter"):
        stack.append(str(args.get("name", "")))
    elif stack:
        stack.pop()


def open_marks(stack: List[str]) -> Tuple[bool, bool]:
    """Whether an ``Optimizer.step`` and whether an ``Optimizer.zero_grad`` is open."""
    return (any(a.startswith(OPTIMIZER_PREFIX) for a in stack),
            any(a.startswith(ZERO_GRAD_PREFIX) for a in stack))


try:  # GradScaler's own work on the gradients (unscale_, step, update; not scale(): the loss, forward; `get`:
    # the per-device copies of the inverse scale unscale_ makes -- scale() of a list of outputs uses it too)
    import torch.amp.grad_scaler as _grad_scaler
    _SCALER = (_grad_scaler.__file__, frozenset({"unscale_", "_unscale_grads_", "step", "_maybe_opt_step", "update",
                                                     "get"}))
except ImportError:  # pragma: no cover - torch < 2.3
    _SCALER = ("", frozenset())


def scaler_step(code: Any) -> bool:
    """Is ``code`` (an op's innermost frame) ``GradScaler``'s unscaling or update?"""
    return code is not None and code.co_name in _SCALER[1] and code.co_filename == _SCALER[0]


_OPTIM_FILE = sys.modules[torch.optim.Optimizer.__module__].__file__
_OPTIM_DIR = os.path.dirname(_OPTIM_FILE) + os.sep  # the optimizers' own code


def running_steps() -> Tuple[str, ...]:
    """The ``Optimizer.step#...`` markers of the optimizer steps running on this
    thread's stack, outermost first: what is open when a sampled pass follows an
    unsampled one, whose markers were not recorded (a pass that starts in a
    closure inside ``opt.step``, Lightning's and LBFGS's)."""
    out = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "wrapper" and code.co_filename == _OPTIM_FILE:
            name = frame.f_locals.get("profile_name")
            if isinstance(name, str):
                out.append(name)
        frame = frame.f_back
    return tuple(reversed(out))


class ClosureLoss:
    """What a closure's call of the pass's root model (path ``""``) returned inside
    ``Optimizer.step`` (LBFGS, Lightning's automatic optimization), and what is
    computed from it outside any module, reading no gradient, parameter or value
    of the step's own: the loss, forward. Not a step size made from the loss
    (Polyak's), nor what a module the optimizer calls returns."""

    def __init__(self, mcalls: List[tuple], values: List[Value]) -> None:
        self._mcalls, self._values = mcalls, values
        self._in_root: List[bool] = []  # (made when an optimizer step calls a module: most passes never do)
        self.made: Set[int] = set()
        self.stepped: Set[int] = set()  # what the optimizer's own ops made

    def model_op(self, module: int, outs: tuple) -> None:
        if not self._in_root:
            for path, _, _, parent, _, _ in self._mcalls:  # (a parent comes before its children)
                self._in_root.append(path == "" if parent is None else self._in_root[parent])
        if self._in_root[module]:
            self.made.update(outs)

    def is_loss(self, ev: tuple, grads: Set[int]) -> bool:
        ins, code = ev[E_INS], ev[E_ICODE]
        values = self._values
        if not self.made or self.made.isdisjoint(ins) or any(
                v in self.stepped or v in grads or values[v].role == "param" for v in ins if v >= 0):
            return False
        if code is not None and code.co_filename.startswith(_OPTIM_DIR):  # (LBFGS's `float(orig_loss)`)
            return False
        self.made.update(ev[E_OUTS])
        return True
