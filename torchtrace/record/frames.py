"""Which Python frames are "user code": the first frame outside torch/,
torchtrace/, the standard library and any prefix the user adds (e.g.
``transformers/``).

The answer is cached per code object, so the per-op walk costs a few dict
lookups; ``traceback.extract_stack`` would cost 40-100 µs per op.
"""
from __future__ import annotations

import bisect
import dis
import os
import sys
import sysconfig
from types import CodeType
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from .._memo import remember
from .framelocals import local_name, local_value

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_AUTOGRAD_DIR = os.path.join(_TORCH_DIR, "autograd") + os.sep
# The standard library (copy, contextlib, functools, multiprocessing, ...) is never the
# line a user wants to see: `copy.deepcopy(model)` belongs to the line that called it.
# Third-party packages installed under it (site-packages) are user code unless skipped.
_STDLIB = tuple(sorted({os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}))
_PACKAGES = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
_FROZEN = "<frozen "  # frozen stdlib modules (runpy, importlib)


def _stdlib(filename: str) -> bool:
    return (filename.startswith(_FROZEN) or filename.endswith(_TYPING_BACKPORT)
            or (filename.startswith(_STDLIB) and not any(p in filename for p in _PACKAGES)))


# typing's backport, installed as a package: its `@deprecated` wraps torch's own functions
# (`all_gather_into_tensor` on torch 2.13), and the line is the caller's
_TYPING_BACKPORT = os.sep + "typing_extensions.py"


# functions the standard library writes as text and runs with exec (a dataclass's `__eq__`, `__init__`:
# ``__create_fn__.<locals>.__eq__``, file "<string>"): the line is the one that compared or built it
_GENERATED = "__create_fn__."


def _normalise(prefix: str) -> str:
    return prefix if prefix.endswith(("/", os.sep)) or prefix.endswith(".py") else prefix + os.sep


class FrameFilter:
    """Classifies code objects as internal (skipped) or user code."""

    def __init__(self, skip: Iterable[str] = ()) -> None:
        absolute, segments = [_TORCH_DIR, OWN_DIR], []
        for s in skip:
            s = _normalise(str(s))
            (absolute if os.path.isabs(s) else segments).append(s)
        self.absolute: Tuple[str, ...] = tuple(absolute)
        # "transformers/" matches any path with a "/transformers/" component
        self.segments: Tuple[str, ...] = tuple(os.sep + s.lstrip("./" + os.sep) for s in segments)
        # id(code) -> internal? Keyed by id: a code object's hash is recomputed on every
        # call (~30 ns more per lookup). ``held`` keeps each keyed code object alive, so
        # its id cannot be reused while the cache knows it.
        self.cache: Dict[int, bool] = {}
        self.held: List[CodeType] = []

    def internal(self, code: CodeType) -> bool:
        hit = self.cache.get(id(code))
        if hit is None:
            name = code.co_filename
            hit = name.startswith(self.absolute) or any(s in name for s in self.segments) or _stdlib(name) or \
                code.co_name == _MODE_HANDLER or (  # (another dispatch mode's or a subclass's: the op is the caller's)
                    name == "<string>" and getattr(code, "co_qualname", "").startswith(_GENERATED))
            if len(self.held) >= _MAX_CODES:  # code made on the fly (exec, recompiles): start over
                self.cache.clear()
                self.held.clear()
            self.held.append(code)
            self.cache[id(code)] = hit
        return hit

    def user_frame_of(self, thread: int) -> Tuple[Optional[CodeType], int]:
        """(code, f_lasti) of thread ``thread``'s innermost user frame now, or (None, -1)."""
        f = sys._current_frames().get(thread)
        while f is not None and self.internal(f.f_code):
            f = f.f_back
        return (f.f_code, f.f_lasti) if f is not None else (None, -1)


_MAX_CODES = 20000
_FILTERS: Dict[Tuple[str, ...], FrameFilter] = {}


def frame_filter(skip: Iterable[str] = ()) -> FrameFilter:
    """The FrameFilter for these skip prefixes, shared by every trace: a fresh
    cache costs a trace of a transformers GPT-2 ~0.2 ms of classifying (bench/)."""
    key = tuple(str(s) for s in skip)
    f = _FILTERS.get(key)
    return f if f is not None else remember(_FILTERS, key, FrameFilter(key), limit=64)


def is_torch_internal(code: CodeType) -> bool:
    return code.co_filename.startswith(_TORCH_DIR)


def engine_under_modes(frame: Any) -> bool:
    """Is ``frame`` -- past the frames of other dispatch modes (a ``trace()``
    inside a Recorder hands its ops on to the Recorder's mode; a user's
    ``FlopCounterMode`` or logging mode above ours) and torch's own wrappers
    around them -- torch.autograd's?"""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_AUTOGRAD_DIR):
            return True
        if name.startswith(_MODE_DIRS):
            frame = frame.f_back
            continue
        handler = frame  # a mode of the user's own: its handler, maybe through a helper or two
        for _ in range(_HELPERS):
            if handler is None or handler.f_code.co_name == _MODE_HANDLER:
                break
            handler = handler.f_back
        if handler is None or handler.f_code.co_name != _MODE_HANDLER:
            return False
        frame = handler.f_back
    return False


_MODE_DIRS = (OWN_DIR, _TORCH_DIR)
_MODE_HANDLER = "__torch_dispatch__"
_HELPERS = 4  # frames between a mode's handler and the op it hands on


def runs_formula(code: Optional[CodeType]) -> bool:
    """Is a backward op whose innermost Python code is ``code`` autograd's own work
    on its Node: no Python below it (C++, a device thread), torch.autograd's code,
    a dispatch mode above ours that hands it on (its handler, or torch's op call
    ``_ops.py``), or checkpoint's unpack hook? Not a user's hook, nor the torch
    functions a hook calls (``F.normalize``)."""
    return code is None or is_autograd_engine(code) or code.co_filename in _FORMULA_FILES or \
        code.co_name == _MODE_HANDLER  # (a mode's handler that hands the op on by `func._op(...)`)


_FORMULA_FILES = frozenset(os.path.join(_TORCH_DIR, *p) for p in (("_ops.py",), ("utils", "checkpoint.py")))


def is_autograd_engine(code: CodeType) -> bool:
    """Frames of torch.autograd itself: a backward op issued with one of these
    innermost runs a derivative formula (not user code inside backward)."""
    return code.co_filename.startswith(_AUTOGRAD_DIR)


_CHECKPOINT_PY = os.path.join(_TORCH_DIR, "utils", "checkpoint.py")


def in_checkpoint(frame: Any) -> bool:
    """Is ``frame`` (an op issued in backward with grad enabled) under
    ``torch.utils.checkpoint``, re-running forward code? Else it is backward
    code of the user's (a custom Function's ``backward``, a tensor hook) in a
    backward that builds a graph (``create_graph=True``)."""
    while frame is not None:
        if frame.f_code.co_filename == _CHECKPOINT_PY:
            return True
        frame = frame.f_back
    return False


def line_of(code: Any, lasti: int) -> int:
    """The line of the instruction at byte offset ``lasti`` (what ``f_lineno``
    gives for a frame stopped there), from ``co_lines()`` (Python 3.10+)."""
    if lasti < 0:
        return 0
    starts, lines = [], []
    for start, _end, line in code.co_lines():
        starts.append(start)
        lines.append(line if line is not None else 0)
    k = bisect.bisect_right(starts, lasti) - 1
    return lines[k] if k >= 0 else code.co_firstlineno


_ENDS_BODY: Dict[Tuple[int, int], Tuple[Any, bool]] = {}


def ends_loop_body(code: Any, lasti: int) -> bool:
    """Is the call at instruction ``lasti`` the last statement of a ``for`` loop's body:
    is its result dropped and the loop's jump back to its top next? (Anything else in
    between, a test, a ``with``'s exit, an operator, says nothing: False.)"""
    key = (id(code), lasti)
    hit = _ENDS_BODY.get(key)
    if hit is None or hit[0] is not code:
        found = False
        for ins in dis.get_instructions(code):
            if ins.offset <= lasti or ins.opname in ("POP_TOP", "NOP", "CACHE", "EXTENDED_ARG"):
                continue
            found = ins.opname in ("JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP_ABSOLUTE") and \
                isinstance(ins.argval, int) and ins.argval <= lasti
            break
        hit = _ENDS_BODY[key] = (code, found)
        if len(_ENDS_BODY) > 4096:
            _ENDS_BODY.clear()
    return hit[1]


def outside_torch(frame: Any) -> Any:
    """``frame``, or the first frame that called it from outside torch (None: none did)."""
    while frame is not None and is_torch_internal(frame.f_code):
        frame = frame.f_back
    return frame


def caller_name(obj: Any, frame: Any) -> Optional[str]:
    """What the first frame outside torch calls ``obj``: a local variable
    (``netG``) or an attribute of that frame's ``self`` (``self.critic``)."""
    frame = outside_torch(frame)
    name = local_name(obj, frame)
    if name is None and frame is not None:
        try:
            attrs = getattr(local_value(frame, "self"), "__dict__", None)
            for k, v in (attrs.items() if isinstance(attrs, dict) else ()):
                if v is obj:
                    return f"self.{k}"
        except Exception:  # pragma: no cover - an exotic self
            return None
    return name


_TRUTH_TESTS = frozenset(i for i, name in enumerate(dis.opname) if name in {
    "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE",
    "POP_JUMP_BACKWARD_IF_FALSE", "POP_JUMP_BACKWARD_IF_TRUE", "JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP",
    "UNARY_NOT", "TO_BOOL"})


def truth_tested(code: Any, lasti: int) -> bool:
    """Is the instruction at ``lasti`` -- of the frame that issued the read, not
    the user frame it is shown at: a library's ``__bool__`` may read a number
    and compare it -- a truth test (``if t:``, ``while t:``, ``not t``,
    ``t and x``, ``assert t``)? Then Python read ``bool(t)``, not the number
    ``_local_scalar_dense`` returned. (``bool(t)`` is a call: its number stays.
    ``co_code`` is the code as compiled, without specialised or instrumented forms.)"""
    try:
        return code is not None and lasti >= 0 and code.co_code[lasti] in _TRUTH_TESTS
    except (AttributeError, IndexError, TypeError):
        return False


_MODULE_PY = os.path.abspath(torch.nn.modules.module.__file__)


def called_by_torch(frame: Any) -> bool:
    """Was the module call whose hook frame is ``frame`` made by torch itself
    (reentrant checkpoint runs the forward under ``no_grad``) rather than by
    user code? ``nn.Module``'s own call frames are looked past."""
    while frame is not None and frame.f_code.co_filename == _MODULE_PY:
        frame = frame.f_back
    return frame is not None and is_torch_internal(frame.f_code)


def inside_module_call(frame: Any) -> bool:
    """Is ``frame`` (or a frame below it) running inside a module's call (its
    forward, a hook of it)? ``nn.Module``'s own call frames tell."""
    while frame is not None:
        if frame.f_code.co_filename == _MODULE_PY and frame.f_code.co_name in _CALL_FRAMES:
            return True
        frame = frame.f_back
    return False


_CALL_FRAMES = frozenset({"_call_impl", "_wrapped_call_impl", "inner"})

CALLERS = 2  # user frames kept above a read of tensor data (a helper's callers)


def callers_of(frame: Any, internal: Any) -> Tuple[Tuple[CodeType, int], ...]:
    """(code, f_lasti) of up to ``CALLERS`` user frames that called ``frame``
    directly (``internal(code)``: not user code), innermost first: the call
    sites of a helper function. A forward called through ``Module.__call__``,
    a custom Function's backward run by the engine, a script's top level: none."""
    out: List[Tuple[CodeType, int]] = []
    frame = frame.f_back
    while frame is not None and len(out) < CALLERS and not internal(frame.f_code):
        out.append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    return tuple(out)
