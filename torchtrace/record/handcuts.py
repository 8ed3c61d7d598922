"""Passes cut by hand: ``mark_step()``, and ``step(i)`` with ``cut="step"``.

A mixin of ``Recorder`` (it uses its pass machinery: ``_begin``, ``_boundary``,
``_build``, ``_trim``, the sampling schedule). With the default cut a model
call starts a pass too: after a ``mark_step()`` the first model call names the
pass the mark began instead of cutting again (``zero_grad()`` between them
made a pass of its own each step), and a ``mark_step()`` at the top of the
first step sets the setup before it aside, dropped when a model call follows.

Two cuts with nothing between them (``mark_step()`` at the top and at the end
of each step, ``step(i)`` and ``mark_step()``, the next batch's fetch between
them) leave an empty gap: no pass, and not counted for ``every``. A pass that is
not sampled runs with no dispatch mode, so whether it was empty is not seen:
the Recorder remembers, per cut (its call site), whether the last gap begun
there was empty, and the first time one begun at a new cut is not sampled,
records it anyway to see (``_trial``: never stored).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch

from .boundary import drop_events, input_prep
from .frames import _OWN_DIR

Site = Tuple[Tuple[Any, int], ...]
_DEPTH, _MAX_SITES = 4, 1000


def cut_site() -> Site:
    """Where a cut was made: (code, f_lasti) of the innermost frames outside
    torchtrace (a helper that cuts, called from two lines, is two cuts)."""
    f, out = sys._getframe(1), []
    while f is not None and len(out) < _DEPTH:
        if not f.f_code.co_filename.startswith(_OWN_DIR):
            out.append((f.f_code, f.f_lasti))
        f = f.f_back
    return tuple(out)


class HandCuts:
    capture: Any  # (Recorder's: its Capture, pass state and schedule)
    cut: str
    _root: Optional[str]
    _prelude: bool
    _sampled: bool
    _marked: Any
    _setup: Any
    _seen: Any
    _from: Optional[Site]  # the cut that began the pass in flight (None: a model call, the block's start)
    _gap: bool  # the pass in flight was begun as a gap (its cut's last one was empty): not counted
    _trial: bool  # the pass in flight is recorded only to see whether it is empty (never stored)
    _gaps: Dict[Site, bool]  # per cut: was the last pass begun there empty?

    def _cut(self, start: bool = False) -> None:
        """Start the next pass here (``cut="step"``). What came before the first
        cut was the setup when ``start`` (``step(i)`` at the top of the loop); a
        model call in it made it the first step (``mark_step()`` at its end), a
        pass; plain tensor code before a first ``mark_step()`` is kept as its
        first pass (it may hold the first step), not counted for ``every``."""
        cap = self.capture
        assert cap is not None
        site = cut_site()
        if self._prelude and (start or self._root is None):
            self._prelude = False
            if not start and cap.mode.events and self._sampled:
                self._set_aside_setup()
            return self._begin(root=None, cut=site)
        if self._prelude:  # (kept as the first pass: it counts for `every`, as every pass after it)
            self._seen[None] = self._seen.get(None, 0) + 1
        self._prelude = False
        self._settle()
        self._boundary(root=None, cut=site)

    def mark_step(self) -> None:
        """End the current pass here and start the next one."""
        self._check_open("mark_step")
        if self._outer is not None:
            return self._outer.mark_step()
        if self.capture is None:  # a forked child's copy
            return
        if self.cut == "step":
            return self._cut()
        site = cut_site()
        if self._prelude and self._root is None and self._sampled and self.capture.mode.events:
            # at the top of the first step, what came before is setup if a model call follows; plain
            # tensor code cut by hand keeps it as its first pass: built now, stored at the next cut
            self._set_aside_setup()
            self._prelude = False
            self._begin(root=None, cut=site)
        else:
            self._prelude = False
            self._settle()
            self._boundary(root=None, cut=site)
        self._marked = True

    def _set_aside_setup(self) -> None:
        self._setup = (self._build(), time.perf_counter() - self._t_start)

    def _settle(self) -> None:
        """At a cut, before the pass in flight ends: leave out the batch fetched
        for the next step (``for x, y in loader``: data loading), then, where
        it is known whether the pass was empty, note it for the cut that began it
        and count it for ``every`` as it was (a gap that held ops, or a pass that
        held none)."""
        cap = self.capture
        if self._sampled:
            drop_events(cap.mode, input_prep(cap.mode, ()))
        elif self._root is None:
            return  # (not recorded, no model call: unknown)
        empty = self._root is None and not cap.mode.events
        if self._from is None:
            return
        if len(self._gaps) >= _MAX_SITES:  # (code made on the fly: start over)
            self._gaps.clear()
        self._gaps[self._from] = empty
        if empty != self._gap:
            self._seen[None] = self._seen.get(None, 0) + (-1 if empty else 1)
            self._gap = empty

    def _join(self, module: torch.nn.Module, name: Callable[[], Optional[str]], inputs: Iterable[Any],
              frame: Any) -> None:
        """A model call in a pass ``mark_step()`` began: it names the pass, which
        counts as the model's for ``every`` (the mark counted it as no model's,
        unless it began as a gap); where that schedule samples otherwise, the
        pass starts again here."""
        key = self._model_key(module)
        if not self._gap:
            self._seen[None] = max(self._seen.get(None, 1) - 1, 0)
        self._gap = False
        k = self._seen.get(key, 0)
        if self._samples(k) != self._sampled:
            return self._begin(root=type(module).__name__, name=name, model=module, cut=self._from)
        self._trial = False  # (recorded to see whether it was empty: the model's schedule samples it)
        self._seen[key] = k + 1
        self._trim(inputs, frame)
        self._name_root(type(module).__name__, name)
        self._pass_step = self._step  # (`rec.step(i)` since the mark: the step of the call)
