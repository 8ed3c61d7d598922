"""Reads of tensor data that reach no dispatcher: ``Tensor.tolist()`` and
``Tensor.numpy()`` (NumPy's ``np.asarray(t)`` calls the latter), and the text
of a tensor (``print(t)``, ``str(t)``: torch reads the data with every mode
off).

``t.item()``, ``bool(t)`` and ``int(t)`` run ``aten._local_scalar_dense``, which
the dispatch mode sees and records as a witness. ``tolist()`` reads the data in
C++ with no op at all, and ``numpy()`` runs only a ``detach``: a branch on
``lengths.tolist()`` or on ``t.numpy()`` was invisible. While a capture is
started both methods are wrapped (``patches.PATCHES``). When a call returns and
every dispatch mode on this thread's stack is a capture's (a mode of the user's
would get an op it never gets without a trace: FakeTensorMode refuses it), the
wrapper issues an op of torchtrace's own, ``torchtrace::tolist`` or
``torchtrace::numpy``: a no-op whose one input is the tensor read. The mode
records it as any op (the value read, module call, source line) and as a witness
whose value is what the call handed to Python (``handed_value``).

The ops are defined once per process, at the first such read. Their autograd
kernel is a fallthrough: no autograd Node is made and the thread's sequence
number does not move (a custom op without one moves it), so the user's autograd
graph is as without the trace. They are issued under
``DisableTorchFunctionSubclass``: a tensor subclass's ``__torch_function__``
never sees them.
"""
from __future__ import annotations

import hashlib
import math
import struct
import sys
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from .fork import STARTED
from .frames import OWN_DIR, outside_torch

_SHOWN = 8  # a read of up to this many numbers keeps them all in its witness; past it, a digest
_MAX_TEXT = 200  # (and past this many characters of text)
_MAX_SHOWN_TEXT = 80  # (a tensor's printed text: the diff shows it whole)
_LOCK = threading.Lock()
_OPS: dict = {}  # method name -> torch.ops.torchtrace.<name>.default, once defined
_LIB: list = []  # the torch.library.Library that holds them (alive for the process)
_INSIDE = threading.local()  # a wrapped method is running on this thread
_HANDED = threading.local()  # the read in flight on this thread (``take_handed``)


def _op(name: str) -> Any:
    op = _OPS.get(name)
    if op is not None:
        return op
    with _LOCK:
        if not hasattr(torch.ops.torchtrace, name):  # (defined already: a reloaded torchtrace)
            if not _LIB:
                _LIB.append(torch.library.Library("torchtrace", "FRAGMENT"))
            lib = _LIB[0]
            lib.define(f"{name}(Tensor self) -> ()")
            lib.impl(name, _nothing, "CompositeExplicitAutograd")
            lib.impl(name, torch.library.fallthrough_kernel, "Autograd")
        op = _OPS[name] = getattr(torch.ops.torchtrace, name).default
    return op


def _nothing(self: torch.Tensor) -> None:
    return None


def take_handed() -> Tuple[Any, Any, int]:
    """(the value, code object and ``f_lasti`` of the frame that called the read) of
    the read whose op the mode is handling: the op is issued where the read was, as
    the ops a method of torch's issues are (None, None, -1: an op of ours issued by
    hand). Nested traces' modes each read it."""
    return getattr(_HANDED, "value", None) or (None, None, -1)


def _digest(data: Any, n: int) -> str:
    return f"<{n} values, sha256 {hashlib.sha256(data).hexdigest()[:12]}>"


def _tensor_data(t: torch.Tensor) -> Any:
    """The numbers of ``t`` as a buffer of bytes (its conjugate and negative bits
    resolved), read with every dispatch mode and subclass handler off (nothing of
    this is recorded) and grad off (no Node is made)."""
    with torch._C._DisableTorchDispatch(), torch.no_grad():
        flat = t.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        return _numpy(flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat)


_numpy = torch._C.TensorBase.numpy  # (torch's own, not the wrapper: this read is ours)
_tolist = torch._C.TensorBase.tolist


def handed_value(t: torch.Tensor, out: Any) -> Any:
    """What a read handed to Python, as a witness value: a 0-dim tensor's number
    (as ``.item()`` reads it); else the numbers as text (``[3, 1, 2]``, floats in the
    fewest digits that give back the same value in the tensor's dtype) for up to 8 of
    them, else their count and a digest of the data that tells two reads apart
    (``<1024 values, sha256 3fa2c1d09e4b>``); past 4 MiB of data, the count alone."""
    n = t.numel()
    if isinstance(out, str):  # the text of a print/str/repr: the numbers it shows, as a tolist() read's
        try:  # (not its autograd note, `grad_fn=<AddmmBackward0>`: no data)
            if t.dim() == 0 or n <= _SHOWN:
                return handed_value(t, _tolist(t))
            return f"<{n} values>" if n * t.element_size() > _MAX_DIGESTED else _digest(_tensor_data(t), n)
        except Exception:  # (no numbers to read: a sparse or quantized tensor's text, on one line)
            text = " ".join(out.split())
            return text if len(text) <= _MAX_SHOWN_TEXT else _digest(text.encode(), n)
    array = hasattr(out, "tobytes")  # (numpy(): a NumPy array)
    if t.dim() == 0 or n <= _SHOWN:
        got = out.tolist() if array else out
        if t.dim() == 0:
            return got
        text = _text(got, _ROUND_TRIP.get(t.dtype))
        if len(text) <= _MAX_TEXT:
            return text
    if n * t.element_size() > _MAX_DIGESTED:
        return f"<{n} values>"
    if array and out.flags.c_contiguous:
        return _digest(out.data, n)
    try:
        return _digest(_tensor_data(t), n)
    except Exception:  # no bytes to read (a wrapper subclass): the text itself
        return _digest(repr(out).encode(), n)


_MAX_DIGESTED = 4 << 20  # bytes: sha256 takes a few ms for them


def _bf16(x: float) -> int:
    """The bits of ``x`` rounded to bfloat16 (through float32, nearest even, as torch rounds it)."""
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    return (b + 0x7FFF + ((b >> 16) & 1)) >> 16


# what a float is once stored in these dtypes: two floats that give the same are one number to it
_ROUND_TRIP: Dict[torch.dtype, Callable[[float], Any]] = {
    torch.float32: lambda x: struct.pack("<f", x), torch.float16: lambda x: struct.pack("<e", x),
    torch.bfloat16: _bf16}
_ROUND_TRIP.update({torch.complex64: _ROUND_TRIP[torch.float32], torch.complex32: _ROUND_TRIP[torch.float16]})


def _text(x: Any, stored: Optional[Callable[[float], Any]]) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(_text(i, stored) for i in x) + "]"
    if stored is not None and type(x) is complex:  # (as Python writes it, each part in its dtype's digits)
        real, imag = (t[:-2] if t.endswith(".0") else t for t in (_text(p, stored) for p in (x.real, x.imag)))
        if x.real == 0 and math.copysign(1, x.real) > 0:
            return f"{imag}j"
        return f"({real}{'' if imag.startswith('-') else '+'}{imag}j)"
    if stored is None or type(x) is not float or not math.isfinite(x):
        return repr(x)
    exact = stored(x)

    def back(digits: int) -> bool:
        try:
            return stored(float(f"{x:.{digits}g}")) == exact
        except OverflowError:  # (float16's 65504 as 7e+04)
            return False

    # the shortest text that reads back as the same number of the dtype: found by halving, as
    # a text of more digits is as near to ``x`` at least; one by one from 1 for a power of two,
    # whose neighbour below is nearer than the one above (a text past it may miss)
    if math.frexp(x)[0] in (0.5, -0.5):
        digits = next((d for d in range(1, 10) if back(d)), 0)
    else:
        lo, hi = 1, 9
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if back(mid) else (mid + 1, hi)
        digits = lo if back(lo) else 0
    if not digits:
        return repr(x)
    text = f"{x:.{digits}g}"
    return text if any(c in text for c in ".e") else text + ".0"


def _note(name: str, t: Any, out: Any, caller: Any) -> None:
    """Issue ``torchtrace::<name>`` on ``t`` if a started capture records on this thread."""
    ours = {id(cap.mode) for cap in list(STARTED)}
    modes = _get_current_dispatch_mode_stack()
    if not modes or not isinstance(t, torch.Tensor) or any(id(m) not in ours for m in modes) \
            or caller.f_code.co_filename.startswith(OWN_DIR):
        return  # (only our modes on the stack: a mode of the user's would get an op it never gets without us;
        # and not torchtrace's own read, a trace's handler reading a NestedTensor's sizes)
    try:
        value = handed_value(t, out)
    except Exception:  # (never fail the user's read over its witness value)
        value = None
    _HANDED.value = (value, caller.f_code, caller.f_lasti)
    try:
        with torch._C.DisableTorchFunctionSubclass():
            _op(name)(t)
    except Exception:  # (nor over recording it)
        pass
    finally:
        _HANDED.value = None


def noting_text(orig: Any) -> Optional[Callable[..., Any]]:
    """``make`` for a patch of ``torch._tensor_str._str``, which ``Tensor.__repr__``
    calls (so ``print(t)``, ``str(t)``, ``f"{t}"``): the text, then the read noted
    as ``torchtrace::repr`` at the first caller outside torch. Not for a meta
    tensor (no data to read)."""
    if orig is None:
        return None

    def _str(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, *args, **kwargs)
        if STARTED and type(out) is str and not getattr(_INSIDE, "on", False) and not self.is_meta \
                and getattr(self, "fake_mode", None) is None:  # (a FakeTensor printed outside its mode: no data)
            f = outside_torch(sys._getframe(1))
            if f is not None:
                _note("repr", self, out, f)
        return out
    return _str


def noting_reads(name: str) -> Callable[[Any], Optional[Callable[..., Any]]]:
    """``make`` for a ``ClassPatch`` of ``torch.Tensor.<name>``: the method, then the read noted."""
    def make(orig: Any) -> Optional[Callable[..., Any]]:
        if orig is None:
            return None

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if getattr(_INSIDE, "on", False):  # (a subclass's __torch_function__ calls this again inside)
                return orig(self, *args, **kwargs)
            _INSIDE.on = True
            try:
                out = orig(self, *args, **kwargs)
            finally:
                _INSIDE.on = False
            if STARTED:
                _note(name, self, out, sys._getframe(1))
            return out
        read.__name__ = read.__qualname__ = name
        read.__doc__ = getattr(orig, "__doc__", None)
        return read
    return make
