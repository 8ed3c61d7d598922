"""The hooks torchtrace puts on a user's module itself (a root model's
pre-hook while a Recorder skips a step; the hook that ends a call after the
module's own forward hooks) sit in that module's hook dicts, and
``copy.deepcopy`` and ``torch.save`` copy those. Wrapped here, a copy gets an
inert stand-in made of builtins: it calls nothing of torchtrace's (nor keeps
the recorder alive), and a saved model loads where torchtrace is not installed.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Tuple


class PreHook:
    """A forward pre-hook ``fn(module, args, frame)``, given the frame of torch's
    call (``_call_impl``), as a hook called by torch would read it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Tuple[Any, ...], Any], None]) -> None:
        self.fn = fn

    def __call__(self, module: Any, args: Tuple[Any, ...]) -> None:
        return self.fn(module, args, sys._getframe(1))

    def __reduce__(self) -> Tuple[Any, ...]:
        # {}.pop(module, args) returns args: the call's own arguments, unchanged
        return functools.partial, (dict.pop, {})


class ForwardHook:
    """A forward hook ``fn(module, args, output)``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Tuple[Any, ...], Any], None]) -> None:
        self.fn = fn

    def __call__(self, module: Any, args: Tuple[Any, ...], output: Any) -> None:
        return self.fn(module, args, output)

    def __reduce__(self) -> Tuple[Any, ...]:
        # type.__init__(int, module, args, output): checks that it got 3 arguments, returns None
        return functools.partial, (type.__init__, int)
