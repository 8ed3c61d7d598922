"""Value versions: what an op wrote (in place, ``out=``, a collective's
buffers, batch norm's running statistics) becomes a new version of the value
it overwrote, and a tensor subclass's ``as_subclass`` re-wrap stands for the
value it re-wraps, before and after a write through it. A mixin of
``RecordingMode`` (mode.py), off the hot path: only ops that write, or return
several tensors or none, come here."""
from __future__ import annotations

import weakref
from typing import Any, List, Optional

import torch

from .autograd import storage_keys

_ref = weakref.ref
_Tensor = torch.Tensor


class Writes:
    """The mode's version and re-wrap bookkeeping (its slots hold the state)."""

    __slots__ = ()

    def _outputs(self, info: Any, args: tuple, kwargs: dict, out: Any, frame: Any = None) -> tuple:
        """Value ids for the outputs of an op that writes, returns several
        tensors, or returns no tensor."""
        outs: List[int] = []
        mutated = self._versions(info, args, kwargs, outs, frame) if info.mutates else ()
        tensors = [out] if isinstance(out, _Tensor) else [
            x for o in out for x in (o if type(o) is list else (o,))  # c10d returns Tensor[][]
        ] if type(out) is tuple or type(out) is list else []
        for t in tensors:
            # written tensors already got their new version; never `in`: it would call Tensor.__eq__
            if isinstance(t, _Tensor) and not (mutated and any(t is m for m in mutated)):
                outs.append(self._add_value(t, None))
        if info.stat_writes is not None:  # batch norm's running statistics: after the outputs it returns
            for t in info.stats_written(args, kwargs):
                self._bump(t, outs, frame)
        return tuple(outs)

    def _rewrap_of(self, t: Any) -> Optional[int]:
        """The value a subclass's re-wrap ``t`` stands for (``note_rewrap``), if it is one."""
        seen = self.rewraps.get(id(t))
        return seen[1] if seen is not None and seen[0]() is t else None

    def _rewrap_source(self, t: Any) -> Any:
        """The tensor whose value the re-wrap ``t`` stands for, while it lives
        (None: ``t`` is no re-wrap, or a value of its own)."""
        v = self._rewrap_of(t) if self.vid_of(t) is None else None
        return self.vrefs[v]() if v is not None else None

    def seen_as(self, t: Any) -> Optional[int]:
        """The value id of ``t``, or of the value its re-wrap stands for; None if unseen."""
        v = self.vid_of(t)
        return self._rewrap_of(t) if v is None else v

    def note_rewrap(self, out: Any, src: Any) -> None:
        """``src.as_subclass(cls)`` made ``out`` (patches.py): the same value."""
        v = self.seen_as(src)
        if v is not None:
            self.rewraps[id(out)] = (_ref(out), v)

    def _bump(self, t: Any, outs: List[int], frame: Any = None) -> None:
        old = self._vid(t, frame, None)  # (a view's base seen first here: named by the user's local, `frame`)
        outs.append(self._add_value(t, ("ver", old), self.vrefs[old] if old >= 0 else None))

    def _versions(self, info: Any, args: tuple, kwargs: dict, outs: List[int], frame: Any = None) -> tuple:
        """In-place / out= / collective writes: each written tensor gets a new
        value version (and so does the base of a written view)."""
        written: List[Any] = []
        names = info.arg_names
        for i in info.mutates:
            a = args[i] if i < len(args) else kwargs.get(names[i])
            if isinstance(a, _Tensor):
                written.append(a)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    if isinstance(x, _Tensor):
                        written.append(x)
                    elif isinstance(x, (list, tuple)):
                        written.extend(y for y in x if isinstance(y, _Tensor))
        for t in written:
            src = self._rewrap_source(t) if self.rewraps else None
            if src is not None:  # a subclass's re-wrap: the write makes its value's next version
                self._bump(src, outs, frame)
                self.rewraps[id(t)] = (_ref(t), outs[-1])
                t = src
            else:
                self._bump(t, outs, frame)
            base = t._base
            if base is not None:  # the write is visible through the base too
                if _shares(t, base):  # (unless either was pointed at another storage since: set_, `.data =`)
                    self._bump(base, outs, frame)
                self.inplace_on_view.add(len(self.events))
        return tuple(written)


def _shares(a: Any, b: Any) -> bool:
    """Do tensors ``a`` and ``b`` share a storage (or is either's unknown)? (On the path of every
    in-place write to a view: plain tensors' keys compared here, 0.5 µs less than ``storage_keys``.)"""
    try:
        return a.untyped_storage()._cdata == b.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, TypeError):  # (a wrapper subclass: the storages it wraps)
        ka, kb = storage_keys(a), storage_keys(b)
        return not ka or not kb or not set(ka).isdisjoint(kb)
