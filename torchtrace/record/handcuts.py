"""Passes cut by hand: ``mark_step()``, and ``step(i)`` with ``cut="step"``.

A mixin of ``Recorder`` (it uses its pass machinery: ``_begin``, ``_boundary``,
``_build``, ``_trim``, the sampling schedule). With the default cut a model
call starts a pass too: after a ``mark_step()`` the first model call names the
pass the mark began instead of cutting again (``zero_grad()`` between them
made a pass of its own each step), and a ``mark_step()`` at the top of the
first step sets the setup before it aside, dropped when a model call follows.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional

import torch

from .boundary import drop_events, input_prep


class HandCuts:
    capture: Any  # (Recorder's: its Capture, pass state and schedule)
    cut: str
    _root: Optional[str]
    _prelude: bool
    _sampled: bool
    _marked: Any
    _setup: Any
    _seen: Any
    _hand_cut: bool  # a hand cut was made: the loader's last fetch at the block's end is loading too

    def _cut(self, start: bool = False) -> None:
        """Start the next pass here (``cut="step"``). What came before the first
        cut was the setup when ``start`` (``step(i)`` at the top of the loop); a
        model call in it made it the first step (``mark_step()`` at its end), a
        pass; plain tensor code before a first ``mark_step()`` is set aside as
        the default cut does (stored as the first pass unless a model call
        follows). A DataLoader's fetch before a cut is data loading: left out."""
        cap = self.capture
        assert cap is not None
        self._drop_fetch()
        self._hand_cut = True
        if start != self._cut_by and self._root is None and not cap.mode.events and not self._prelude:
            # `mark_step()` then `step(i)` (or the other way) with nothing between them: one cut
            self._pass_step = self._step
        elif self._prelude and (start or self._root is None):
            self._prelude = False
            if not start and cap.mode.events and self._sampled:  # plain code's first step, or setup: set aside
                self._set_aside()
            self._begin(root=None)
        else:
            if self._prelude:  # (kept as the first pass: it counts for `every`, as every pass after it)
                self._seen[None] = self._seen.get(None, 0) + 1
            self._prelude = False
            self._boundary(root=None)
        self._cut_by = start

    def mark_step(self) -> None:
        """End the current pass here and start the next one."""
        self._check_open("mark_step")
        if self._outer is not None:
            return self._outer.mark_step()
        if self.capture is None:  # a forked child's copy
            return
        if self.cut == "step":
            return self._cut()
        self._hand_cut = True
        if self._prelude and self._root is None and self._sampled and self.capture.mode.events:
            # at the top of the first step, what came before is setup if a model call follows; plain
            # tensor code cut by hand keeps it as its first pass: built now, stored at the next cut
            self._set_aside()
            self._prelude = False
            self._begin(root=None)
        else:
            self._prelude = False
            self._drop_fetch()
            self._boundary(root=None)
        self._marked = True

    def _set_aside(self) -> None:
        """What ran before the first hand cut: built now, stored as the first pass at the
        next cut unless a model call follows (then it was setup)."""
        self._setup = (self._build(), time.perf_counter() - self._t_start)

    def _drop_fetch(self) -> None:
        """A DataLoader's fetch of the next batch before a cut is data loading: left out
        (`for x, y in loader: ... mark_step()`)."""
        if self._sampled:
            drop_events(self.capture.mode, input_prep(self.capture.mode, ()))

    def _join(self, module: torch.nn.Module, name: Callable[[], Optional[str]], inputs: Iterable[Any],
              frame: Any) -> None:
        """A model call in a pass ``mark_step()`` began: it names the pass, which
        counts as the model's for ``every`` (the mark counted it as no model's);
        where that schedule samples otherwise, the pass starts again here."""
        key = self._model_key(module)
        self._seen[None] = max(self._seen.get(None, 1) - 1, 0)
        k = self._seen.get(key, 0)
        if self._samples(k) != self._sampled:
            return self._begin(root=type(module).__name__, name=name, model=module)
        self._seen[key] = k + 1
        self._trim(inputs, frame)
        self._name_root(type(module).__name__, name)
        self._pass_step = self._step  # (`rec.step(i)` since the mark: the step of the call)
