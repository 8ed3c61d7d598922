"""torch.compile under a trace.

With a dispatch mode on the stack Dynamo does not compile: compiled code runs
eagerly, and that is what the trace records (``meta.compiled_regions_ran_eager``).
But on torch builds without the fix of pytorch/pytorch#190286 Dynamo also marks
every code object it skipped because of the mode as "skip" *for good*: after one
traced pass a compiled model ran eagerly for the rest of the process (slower, and
with other numerics). So while a Capture records, the compiler stance is
``"force_eager"``: compiled regions run eagerly without Dynamo seeing their
frames, and the user's own stance comes back when recording stops.

The module hooks tell compiled modules apart: a ``torch.compile`` wrapper
(``OptimizedModule``) and a module compiled in place (``nn.Module.compile()``).
A compiled *function* has no module call to see, and Dynamo's cache sits on the
code object, which every uncompiled call of that function shares. What tells
its calls apart is Dynamo's own entry: every call of compiled code asks
``eval_frame._callback_from_stance`` for its callback (a compiler; ``None`` or
``False`` for code that only disables Dynamo). While a Capture is started that
function is wrapped to note such calls (``watch``), and put back when the last
started Capture stops.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Dict, Optional

EVAL_FRAME = "torch._dynamo.eval_frame"
COMPILED_WRAPPER = "OptimizedModule"  # the type name of torch.compile(module)'s wrapper


def force_eager() -> Optional[Any]:
    """Set the stance ``"force_eager"``; returns what to hand to ``restore``
    (None: nothing was changed)."""
    ef = sys.modules.get(EVAL_FRAME)
    if ef is None:  # Dynamo never loaded: nothing in this process was compiled
        return None
    try:
        prior = ef._set_stance(ef.DynamoStance("force_eager"))
        return prior, ef._stance
    except Exception:  # torch < 2.6 (no stances), or called inside a compiled region
        return None


def restore(held: Optional[Any]) -> None:
    """Put back the stance ``force_eager`` found, unless the user set one since
    (``torch.compiler.set_stance`` inside the block): theirs stays."""
    if held is None:
        return
    prior, ours = held
    ef = sys.modules[EVAL_FRAME]
    try:
        if getattr(ef, "_stance", ours) is ours:
            ef._set_stance(prior)
    except Exception:  # pragma: no cover - only inside a compiled region, which force_eager keeps out
        pass


_WATCHERS: Dict[int, Callable[[], None]] = {}  # id(capture) -> its note "a compiled region ran"
_WATCH: list = []  # (eval_frame module, Dynamo's function, ours) while any capture watches


def watch(key: int, on_call: Callable[[], None]) -> None:
    """Call ``on_call`` whenever compiled code is entered, until ``unwatch(key)``."""
    _WATCHERS[key] = on_call
    ef = sys.modules.get(EVAL_FRAME)
    original = getattr(ef, "_callback_from_stance", None)
    if _WATCH or original is None:  # watched already, or no Dynamo (loaded: nothing compiled yet)
        return

    def _callback_from_stance(callback: Any) -> Any:
        if callback is not None and callback is not False:  # a compiler: compiled code is entered
            for note in list(_WATCHERS.values()):
                note()
        return original(callback)

    ef._callback_from_stance = _callback_from_stance
    _WATCH.append((ef, original, _callback_from_stance))


def unwatch(key: int) -> None:
    _WATCHERS.pop(key, None)
    if _WATCHERS or not _WATCH:
        return
    ef, original, ours = _WATCH.pop()
    if ef._callback_from_stance is ours:  # (else someone wrapped it after us: ours stays, a pass-through)
        ef._callback_from_stance = original


# the guards holding "force_eager" and the user's stance they found: captures may overlap
# in any order (two traces exited out of order, two threads), and only the last one out
# puts the user's stance back
_HELD: Dict[str, Any] = {"count": 0, "prior": None}
_LOCK = threading.Lock()


class CompileGuard:
    """One Capture's stance and watch (``force_eager``, ``watch``) while it is
    started. Dynamo may load only after that (the first ``torch.compile`` inside
    the block, always so under `torchtrace run`): ``again()``, at each root call
    and compiled module's call, sets them once it is there."""

    def __init__(self, on_compiled_code: Callable[[], None]) -> None:
        self.note = on_compiled_code
        self.holding = False     # counted in _HELD
        self.guarded = True      # set, or tried with Dynamo loaded

    def start(self) -> None:
        self.guarded = False
        self.again()

    def again(self) -> None:
        if self.guarded or EVAL_FRAME not in sys.modules:
            return
        self.guarded = True
        with _LOCK:
            if _HELD["count"] == 0:
                _HELD["prior"] = force_eager()
            _HELD["count"] += 1
            self.holding = True
        watch(id(self), self.note)

    def stop(self) -> None:
        unwatch(id(self))
        with _LOCK:
            if self.holding:
                self.holding = False
                _HELD["count"] -= 1
                if _HELD["count"] == 0:
                    restore(_HELD["prior"])
                    _HELD["prior"] = None
        self.guarded = True


def is_compiled_in_place(module: Any) -> bool:
    """Was ``module.compile()`` called on it (torch >= 2.2)?"""
    return module.__dict__.get("_compiled_call_impl") is not None


class Uncompiled:
    """Compiled modules a Recorder runs uncompiled while it is open.

    A compiled call runs the module inside Dynamo's wrapper, which restores the
    thread's dispatch keys when it returns. A pass boundary inside it (the
    Recorder takes its dispatch mode off or puts it on at a root call) would
    leave the keys out of step with the mode stack: the next op then fails in
    torch ("Hit Python dispatch key but no arguments had PyInterpreter"). So
    the first time the hooks see a compiled module, its next calls go straight
    to the module (they would run eagerly anyway); ``restore`` undoes that."""

    def __init__(self) -> None:
        self.saved: list = []  # (module, attribute in its __dict__, value)

    def add(self, module: Any) -> None:
        d = module.__dict__
        if any(m is module for m, _, _ in self.saved):
            return
        if type(module).__name__ == COMPILED_WRAPPER and "forward" in d:  # torch.compile(module)
            self.saved.append((module, "forward", d["forward"]))
            d["forward"] = d["_modules"]["_orig_mod"].__call__
        elif is_compiled_in_place(module):  # module.compile()
            self.saved.append((module, "_compiled_call_impl", d["_compiled_call_impl"]))
            d["_compiled_call_impl"] = module._call_impl  # still "compiled" for the hooks: meta says so

    def restore(self) -> None:
        for module, attr, value in reversed(self.saved):
            module.__dict__[attr] = value
        self.saved = []


def mark_dynamo_skip(code: Any) -> bool:
    """Mark ``code`` "skip, recursively" in Dynamo's eval-frame hook (what
    torch._disable_dynamo's wrapper gives, without its per-call cost); False
    where that private API is missing."""
    try:
        from torch._C._dynamo.eval_frame import _FrameAction, _FrameExecStrategy, set_code_exec_strategy

        set_code_exec_strategy(code, _FrameExecStrategy(_FrameAction.SKIP, _FrameAction.SKIP))
        return True
    except Exception:  # older/newer torch without it: keep torch's own wrapper
        return False


def after_compiled_call(then: Callable[[], None], depth: int = 48) -> None:
    """Call ``then`` when the ``torch.compile(module)`` call running now returns, if
    one is (a one-shot forward hook on its wrapper). Dynamo's frame wrapper puts the
    thread's dispatch keys back as they were when the call began: a mode pushed or
    popped inside (a Recorder's pass boundary at the model inside) leaves them out of
    step with the mode stack, and the next op fails in torch ("Hit Python dispatch key
    but no arguments had PyInterpreter") or skips the mode."""
    if EVAL_FRAME not in sys.modules:  # (no compiled call can be running: no frames to walk)
        return
    f = sys._getframe(1)
    while f is not None and depth:
        if f.f_code.co_name == "_call_impl":
            module = f.f_locals.get("self")
            if type(module).__name__ == COMPILED_WRAPPER:
                handle: Any = None

                def once(*_: Any) -> None:
                    handle.remove()
                    then()
                handle = module.register_forward_hook(once, always_call=True)
                return
        f, depth = f.f_back, depth - 1
