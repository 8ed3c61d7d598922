"""The hooks torchtrace puts on a user's module itself (a root model's
pre-hook while a Recorder skips a step; the hook that ends a call after the
module's own forward hooks) sit in that module's hook dicts, and
``copy.deepcopy`` and ``torch.save`` copy those. Wrapped here, a copy gets an
inert stand-in made of builtins: it calls nothing of torchtrace's (nor keeps
the recorder alive), and a saved model loads where torchtrace is not installed.
A deep copy gets an ``Inert`` (``torch.compile`` traces it; it does not trace
``type.__init__``).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Tuple


class Inert:
    """What a deep copy of the module holds in place of torchtrace's hook: a
    no-op that ``torch.compile`` traces, and that pickles as ``builtins``."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: Tuple[Any, ...]) -> None:
        self.reduced = reduced

    def __call__(self, *args: Any) -> None:
        return None

    def __reduce__(self) -> Tuple[Any, ...]:
        return self.reduced

    def __deepcopy__(self, memo: Any) -> "Inert":
        return self


# {}.pop(module, args) returns args: the call's own arguments, unchanged
_PRE = (functools.partial, (dict.pop, {}))
# type.__init__(int, module, args, output): checks that it got 3 arguments, returns None
_FORWARD = (functools.partial, (type.__init__, int))


class _Hook:
    """One of torchtrace's hooks on a user's module: a deep copy or a pickle of
    it is the no-op ``reduced`` makes."""

    __slots__ = ("fn",)
    reduced: Tuple[Any, ...] = ()

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __deepcopy__(self, memo: Any) -> Inert:
        return Inert(self.reduced)

    def __reduce__(self) -> Tuple[Any, ...]:
        return self.reduced


class PreHook(_Hook):
    """A forward pre-hook ``fn(module, args, frame)``, given the frame of torch's
    call (``_call_impl``), as a hook called by torch would read it."""

    __slots__ = ()
    reduced = _PRE

    def __call__(self, module: Any, args: Tuple[Any, ...]) -> None:
        return self.fn(module, args, sys._getframe(1))


class ForwardHook(_Hook):
    """A forward hook ``fn(module, args, output)``."""

    __slots__ = ()
    reduced = _FORWARD

    def __call__(self, module: Any, args: Tuple[Any, ...], output: Any) -> None:
        return self.fn(module, args, output)
