"""Passes cut by hand: ``mark_step()``, and ``step(i)`` with ``cut="step"``.

A mixin of ``Recorder`` (it uses its pass machinery: ``_begin``, ``_boundary``,
``_build``, ``_trim``, the sampling schedule). With the default cut a model
call starts a pass too: after a ``mark_step()`` the first model call names the
pass the mark began instead of cutting again (``zero_grad()`` between them
made a pass of its own each step), and a ``mark_step()`` at the top of the
first step sets the setup before it aside, dropped when a model call follows.

Two cuts with nothing run between them are one (``mark_step()`` at the end of a
step and again at the top of the next, ``step(i)`` after a closing mark). A pass
that is not sampled records nothing, so what ran between two cuts is learnt
from the sampled passes, per pair of call sites; until one was seen, the way
back to the top of a loop (a cut at an earlier instruction of the same frame
than the one before) is taken to run nothing of its own.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch

from .._memo import remember
from .boundary import drop_events, input_prep, loader_fetch
from .framelocals import local_name
from .frames import OWN_DIR, ends_loop_body
from .mode import E_CODE, E_INS, E_LINE, E_OUTS, V_ORIGIN

Site = Tuple[int, Any, int]  # (id of the frame, its code, f_lasti) of the user's call of a cut


def user_frame() -> Any:
    """The innermost frame outside torchtrace: the user's call of ``mark_step()`` or ``step(i)``."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(OWN_DIR):
        f = f.f_back
    return f


def _site(f: Any) -> Site:
    return (0, None, -1) if f is None else (id(f), f.f_code, f.f_lasti)


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
    _cut_at: Optional[Site]  # the cut that began the pass in flight (None: the block's start, a model call)
    _ran: Dict[tuple, tuple]  # (site, site) -> (ran ops between them?, the two codes): learnt from sampled passes
    _step_at: Optional[int]  # the number of ops the pass in flight had run when step(i) was called
    _between: bool  # the pass in flight runs between a step's closing mark and the next step(i) (cut="step")
    _setup_sites: Any  # what the first cut set aside ran: (its ops' sites, its last op's, the codes held)

    def _cut(self, start: bool = False) -> None:
        """Start the next pass here (``cut="step"``). What came before the first
        cut was the setup when ``start`` (``step(i)`` at the top of the loop); a
        model call in it made it the first step (``mark_step()`` at its end), a
        pass; plain tensor code before a first ``mark_step()`` is set aside as
        the default cut does (stored as the first pass unless a model call
        follows). A DataLoader's fetch before a cut is data loading: left out."""
        cap = self.capture
        assert cap is not None
        frame = user_frame()
        site = _site(frame)
        self._drop_fetch(frame)
        self._hand_cut = True
        if self._prelude and (start or self._root is None):
            self._prelude = False
            if not start and cap.mode.events and self._sampled:  # plain code's first step, or setup: set aside
                self._set_aside(frame)
            self._begin(root=None)
            self._cut_by = start
        elif start and self._cut_by is False:  # step(i) after a mark
            if self._between or not self._nothing_since(site):  # a closing one: what ran between them (an
                self._boundary(root=None)                        # evaluation) was a pass of its own
                self._cut_by = start
            else:
                self._again()  # (`mark_step(); rec.step(i)`: one cut)
        elif not self._prelude and self._nothing_since(site):
            self._again()  # (`step(i)` then `mark_step()` with nothing between them: the step began the pass)
        else:
            if self._prelude:  # (kept as the first pass: it counts for `every`, as every pass after it)
                self._seen[None] = self._seen.get(None, 0) + 1
            self._prelude = False
            self._setup_was_a_step()
            # a mark that closes a step step(i) began: what runs until the next step(i) is between two
            # steps, not counted by `every`, and recorded where the step before it was
            self._boundary(root=None, between=not start and self._cut_by is True)
            self._cut_by = start
        self._cut_at = site

    def mark_step(self) -> None:
        """End the current pass here and start the next one."""
        self._check_open("mark_step")
        if self._outer is not None:
            return self._outer.mark_step()
        if self.capture is None:  # a forked child's copy
            return
        if self.cut == "step":
            return self._cut()
        frame = user_frame()
        site = _site(frame)
        self._hand_cut = True
        self._relabel()
        self._drop_fetch(frame)
        if self._prelude and self._root is None and self._sampled and self.capture.mode.events:
            # at the top of the first step, what came before is setup if a model call follows; plain
            # tensor code cut by hand keeps it as its first pass: built now, stored at the next cut
            self._set_aside(frame)
            self._prelude = False
            self._begin(root=None)
        elif not self._prelude and self._nothing_since(site):
            self._again()  # (at the end of a step and again at the top of the next)
        else:
            self._prelude = False
            self._setup_was_a_step()
            self._boundary(root=None)
        self._marked = True
        self._cut_at = site

    def _nothing_since(self, site: Site) -> bool:
        """Did nothing run since the cut that began the pass in flight? A sampled pass's
        records say, and teach the answer for that pair of call sites; an unsampled one
        asks what was learnt, else whether the loop went back to its top (see above)."""
        prev = self._cut_at
        key = (prev and (id(prev[1]), prev[2]), id(site[1]), site[2])
        if self._sampled:
            ran = bool(self.capture.mode.events) or self._root is not None
            remember(self._ran, key, (ran, prev and prev[1], site[1]), 256)  # (codes held: their ids stay theirs)
            return not ran
        if self._root is not None:
            return False
        learnt = self._ran.get(key)
        if learnt is not None:
            return not learnt[0]
        return prev is not None and prev[0] == site[0] and prev[1] is site[1] and site[2] < prev[2]

    def _again(self) -> None:
        """A cut that starts no pass: the pass in flight goes on, with the step given since.
        With ``cut="step"`` a pass that has run nothing yet (`mark_step(); rec.step(i)`)
        is sampled by that step's number, not by the number of the step before."""
        self._pass_step = self._step
        if not self.capture.mode.events:
            self._t_start = time.perf_counter()
            if self.cut == "step" and self._root is None and not self._between and self._step is not None \
                    and self._samples(self._step) != self._sampled:
                self._begin(root=None, count=False)

    def _set_aside(self, frame: Any) -> None:
        """What ran before the first hand cut: built now, stored as the first pass at the
        next cut unless a model call follows (then it was setup). A cut that is the last
        statement of a loop's body ends a step: what it sets aside was step 0, counted
        for ``every`` (a mark at the top leaves the setup outside the schedule); where
        the code does not say, the next cut compares the two passes (``_setup_was_a_step``)."""
        events = self.capture.mode.events
        self._setup_sites = None
        if frame is not None and ends_loop_body(frame.f_code, frame.f_lasti):
            self._seen[None] = self._seen.get(None, 0) + 1
        else:
            self._setup_sites = ({_op_site(ev) for ev in events}, _op_site(events[-1]), [ev[E_CODE] for ev in events])
        self._setup = (self._build(), time.perf_counter() - self._t_start)

    def _setup_was_a_step(self) -> None:
        """What the first cut set aside was step 0, not setup, when the pass in flight,
        the next step, ran the op that ended it and began with an op it ran too (a mark at
        the end of each step; at the top, the setup's last op, a batch made above the
        mark, runs in every step, but the step's first op did not run in the setup). It
        then counts for ``every``, and the pass in flight is dropped where the schedule
        skips that step."""
        sites, self._setup_sites = self._setup_sites, None
        events = self.capture.mode.events
        if sites is None or self._setup is None or self._root is not None or not self._sampled or not events:
            return
        aside, last, _ = sites
        if last not in {_op_site(ev) for ev in events} or _op_site(events[0]) not in aside:
            return
        self._seen[None] = self._seen.get(None, 0) + 1
        if not self._samples(self._seen[None] - 1):
            self._sampled = False
            self.capture.new_pass()

    def _drop_fetch(self, frame: Any) -> None:
        """A DataLoader's fetch of the next batch before a cut is data loading: left out
        (`for x, y in loader: ... mark_step()`), as is the fetch a pass begins with."""
        if self._sampled:
            drop_events(self.capture.mode, input_prep(self.capture.mode, ()))
            self.drop_loading(frame)

    def drop_loading(self, frame: Any) -> None:
        """The DataLoader's fetch of a pass cut by hand (at its start, where a cut at the end
        of each step leaves it) is left out; what it made is the pass's input, named as
        ``frame`` (the loop) names it."""
        mode = self.capture.mode
        head = loader_fetch(mode)
        if not head:
            return
        taken = set(head)
        read = {v for i, ev in enumerate(mode.events) if i not in taken for v in ev[E_INS]}
        for v in (v for i in head for v in mode.events[i][E_OUTS] if v in read):
            t = mode.vrefs[v]()
            name = (local_name(t, frame) if t is not None and frame is not None else None) or mode.next_input_name()
            rec = mode.vmeta[v]
            origin = ("ext", "input", name, t is not None and t.requires_grad)
            mode.vmeta[v] = (*rec[:V_ORIGIN], origin, *rec[V_ORIGIN + 1:])
        drop_events(mode, taken)

    def _relabel(self) -> None:
        """A pass no model call began takes the step ``step(i)`` gave inside it when
        ops ran after that call (`rec.step(i)` at the top, `mark_step()` at the end,
        a batch made by hand between them); `rec.step(i); mark_step()` at the top
        gives the step to the pass the mark begins."""
        if self._step_at is not None and self._root is None and len(self.capture.mode.events) > self._step_at:
            self._pass_step = self._step

    def _join(self, module: torch.nn.Module, name: Callable[[], Optional[str]], inputs: Iterable[Any],
              frame: Any) -> None:
        """A model call in a pass ``mark_step()`` began: it names the pass, which
        counts as the model's for ``every`` (the mark counted it as no model's);
        where that schedule samples otherwise, the pass starts again here."""
        key = self._model_key(module)
        self._seen[None] = max(self._seen.get(None, 1) - 1, 0)
        k = self._seen.get(key, 0)
        if self._samples(self._ordinal(key, k)) != self._sampled:
            return self._begin(root=type(module).__name__, name=name, model=module)
        self._seen[key] = k + 1
        self._trim(inputs, frame)
        self._name_root(type(module).__name__, name)
        self._pass_step = self._step  # (`rec.step(i)` since the mark: the step of the call)


def _op_site(ev: tuple) -> Tuple[int, int]:
    """(id of the user code, instruction) that issued a recorded op."""
    return id(ev[E_CODE]), ev[E_LINE]
