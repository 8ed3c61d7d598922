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


class PreHook:
    """A forward pre-hook ``fn(module, args, frame)``, given the frame of torch's
    call (``_call_impl``), as a hook called by torch would read it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Tuple[Any, ...], Any], None]) -> None:
        self.fn = fn

    def __call__(self, module: Any, args: Tuple[Any, ...]) -> None:
        return self.fn(module, args, sys._getframe(1))

    def __deepcopy__(self, memo: Any) -> Inert:
        return Inert(_PRE)

    def __reduce__(self) -> Tuple[Any, ...]:
        return _PRE


class ForwardHook:
    """A forward hook ``fn(module, args, output)``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Tuple[Any, ...], Any], None]) -> None:
        self.fn = fn

    def __call__(self, module: Any, args: Tuple[Any, ...], output: Any) -> None:
        return self.fn(module, args, output)

    def __deepcopy__(self, memo: Any) -> Inert:
        return Inert(_FORWARD)

    def __reduce__(self) -> Tuple[Any, ...]:
        return _FORWARD
