"""``torchtrace.Recorder``: record the passes of a training loop or script.

A pass starts at each call of a root module (a module with parameters that
is not called from inside another module, nor by backward) and runs until the next one, so
loss, backward and optimizer ops belong to the pass of the forward before
them. Code that never calls such a module is one pass from start to exit;
``torchtrace.mark_step()`` sets boundaries by hand. Every finished pass is
committed to the store at once. Passes that are not sampled (``every``,
``max_passes``) run with no dispatch mode at all.
"""
from __future__ import annotations

import sqlite3
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from ..errors import TorchtraceError, UsageError, exit_error, warn
from ..ir import Graph
from ..store import Store
from .boundary import call_site, drop_events, input_prep, repeated_prep, signature
from .calls import call_kwargs, tensors_in
from .capture import Capture
from .compiled import Uncompiled, is_compiled_in_place
from .frames import caller_name, inside_module_call
from .modelkeys import ModelKeys
from .optimizer import running_steps
from .stepnumber import step_number
from .handcuts import HandCuts, user_frame
from .interrupts import Uninterrupted
from .watch import Watcher, is_model_call
from ..options import capture_options, recorder_options
from ..outdir import hold_against_runs, let_go

_ACTIVE = threading.local()
_task_id = torch._C._current_graph_task_id
DEFAULT_MAX_OPS = 500_000
# Store connections a forked child inherited from a Recorder: kept referenced, never
# closed (SQLite forbids using one across fork; closing the last connection
# checkpoints and removes the WAL file the parent still writes to).
_INHERITED: List[Any] = []


class Recorder(Watcher, HandCuts):
    """Context manager recording every root pass into a trace store.

    ``store``: a path (created with its folder) or an open ``Store``.
    ``every``: record the steps ``step(i)`` gives whose number is a multiple of k, all
    their passes (without ``step()`` calls: every k-th pass of each root model);
    ``max_passes``: stop after n recorded;
    ``backward=False``: record only up to the root module's return.
    ``on_pass(graph, index)`` is called after each pass is stored.
    ``cut="step"``: passes start at ``step()`` and ``mark_step()`` only, not at
    each root call (a model called twice per step, a cell called per time step).
    """

    def __init__(self, store: Union[str, Path, Store] = "torchtrace-out/trace.db", *, every: int = 1,
                 max_passes: Optional[int] = None, backward: bool = True, skip: Iterable[str] = (),
                 max_ops: Optional[int] = DEFAULT_MAX_OPS,
                 on_pass: Optional[Callable[[Graph, int], None]] = None, cut: str = "root") -> None:
        recorder_options(store, every, max_passes, backward, on_pass, cut)
        self.cut = cut
        self._cut_by: Optional[bool] = None  # what made the last cut: step() (True) or mark_step()
        self._hand_cut = False  # a step() or mark_step() cut a pass (HandCuts)
        self._cut_at = self._step_at = None  # (HandCuts)
        self._between = False
        self._setup_sites = None
        self._ran: Dict[tuple, tuple] = {}
        self._store_arg = store
        self.every, self.max_passes, self.backward = every, max_passes, backward
        self._skip, self._max_ops = capture_options(skip, max_ops)
        self.on_pass = on_pass
        self.store: Optional[Store] = None
        self.capture: Optional[Capture] = None
        self.recorded = 0         # passes stored
        self._step: Optional[int] = None
        # modules seen as roots: id -> (weakref, a model?, its ModelKeys key once a pass
        # began at it). While a pass is not sampled, a pre-hook on each watches it (watch.py)
        self._roots: Dict[int, Tuple[Any, bool, Optional[Tuple[str, int, int]]]] = {}
        self._keys = ModelKeys()
        # the input preparation dropped at the last boundaries (of each call: a step that calls
        # two models, or a validation call, prepares the next batch before one of them only)
        self._prep: Dict[frozenset, None] = {}
        self._init_watcher()  # (watch.py)
        self._last_root: Optional[Tuple[Any, bool, Any]] = None  # the model the last pass began at: its _roots entry
        self.launched = False  # the Recorder of `torchtrace run` (a script's own one then stands aside)
        self._open = False  # inside its `with` block
        self._outer: Optional["Recorder"] = None  # that one, while this one stands aside
        self._hold: Optional[int] = None  # the shared hold on a run folder's lock (outdir.hold_against_runs)

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        outer = getattr(_ACTIVE, "recorder", None)
        if outer is not None and outer.launched:  # the script's own Recorder, under `torchtrace run`
            warn("torchtrace: `torchtrace run` records this script already; this Recorder stores "
                 "nothing (its step() and mark_step() label and cut the run's passes)")
            self._outer = outer
            self._open = True
            return self
        if outer is not None:
            raise UsageError("a Recorder is already active in this thread", fix="nest no Recorders")
        self.store = self._store_arg if isinstance(self._store_arg, Store) else Store(self._store_arg)
        try:  # (after the store opened: a run's store exists already, and a new folder is made)
            self._hold = hold_against_runs(Path(self._store_arg)) if not (
                isinstance(self._store_arg, Store) or self.launched) else None
        except BaseException:
            if not isinstance(self._store_arg, Store):
                self.store.close()
            raise
        self.capture = Capture(skip=self._skip, max_ops=self._max_ops)
        self.capture.on_root = self._on_root
        self.capture.after_root = self._after_root
        self.capture.after_fork = self._detach_after_fork
        # compiled code runs eagerly while the Recorder is open, sampled or not (its Capture is
        # started throughout): a pass boundary inside Dynamo's wrapper would leave the
        # thread's dispatch keys out of step with the mode stack (compiled.py)
        self._uncompiled = Uncompiled()
        self.capture.on_compiled = self._uncompiled.add
        self.index = 0            # the pass in flight, in the sampling schedule
        self._prelude = True      # pass 0 holds the setup until the first root call or mark_step()
        self._setup: Optional[Tuple[Graph, float]] = None  # (built, wall) before a first mark_step (mark_step)
        self._marked = False  # the pass in flight was begun by mark_step(): its first model call names it
        self._seen: Dict[Optional[Tuple[str, int, int]], int] = {}  # passes begun per model (ModelKeys; None: step())
        try:
            self._begin(root=None, count=False)
            self.capture.start(with_mode=self._sampled)
        except BaseException:
            with Uninterrupted():
                self.capture.stop()
                self._uncompiled.restore()
                let_go(self._hold)
                if not isinstance(self._store_arg, Store):  # (one it opened: closed, its lock let go)
                    self.store.close()
            raise
        _ACTIVE.recorder = self
        self._open = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if not self._open:  # (a second exit would end another Recorder's turn in this thread)
            raise UsageError("this Recorder is not open", expected="__exit__ once, after __enter__",
                             found="its block ended already" if self.capture is not None else "never entered",
                             fix="use `with torchtrace.Recorder(...) as rec:`")
        self._open = False
        if self._outer is not None:
            self._outer = None
            return False
        _ACTIVE.recorder = None
        if self.capture is None:  # a forked child's copy (_detach_after_fork): nothing to store
            return False
        try:
            # no next call: drop what repeats the last preparations, and after a hand cut the loader's
            # fetch (`for x, y in loader: ...; mark_step()`: the exhausted iterator's)
            if (self._prep or self._hand_cut) and self._sampled:
                drop_events(self.capture.mode, repeated_prep(self.capture.mode, frozenset().union(*self._prep)))
                if self._hand_cut:
                    self.drop_loading(user_frame())
            # a run that never called a root module is one pass from start to exit
            self._finish(error=exit_error(exc_type, exc), last=True)
        finally:
            with Uninterrupted():  # (a Ctrl-C here is raised once all of it ran)
                self._unwatch()
                self.capture.stop()
                self.capture.dispose()
                self._uncompiled.restore()
                if not isinstance(self._store_arg, Store) and self.store is not None:
                    self.store.close()
                let_go(self._hold)
        return False

    # -- public -------------------------------------------------------------------
    def step(self, n: int) -> None:
        """Label the passes that start from now on with training step ``n`` (with
        ``every=K``: steps whose number is a multiple of K are recorded, all their
        passes; give the training step, not the epoch)."""
        self._check_open("step")
        if self._outer is not None:
            return self._outer.step(n)
        step = step_number(n, self.capture.mode if self.capture is not None else None)
        self._step = step
        if self.cut == "step" and self.capture is not None:
            self._cut(start=True)
        elif self._root is None and self._sampled and self.capture is not None:
            self._step_at = len(self.capture.mode.events)  # (a pass no model call began: see HandCuts._relabel)
        elif not self._sampled and (self._mortal or self._samples(step)) and self._armed is None \
                and not self.capture.scope.handles and _task_id() == -1 and not inside_module_call(sys._getframe(1)):
            # (a model built anew, or a sampled step's first call of a model not seen yet: unwatched; not
            # from inside a model's call or a backward, whose next module call is no model's)
            self._armed = register_module_forward_pre_hook(self._first_call)

    def _check_open(self, what: str) -> None:
        if not self._open:
            raise UsageError(f"{what}() outside the Recorder's block", expected=f"rec.{what}(...) inside `with rec:`",
                             found="a Recorder not entered yet" if self.store is None else "a Recorder closed already",
                             fix=f"call rec.{what}() inside `with torchtrace.Recorder(...) as rec:`")

    # -- passes -------------------------------------------------------------------
    def _begin(self, root: Optional[str], name: Optional[Callable[[], Optional[str]]] = None,
               model: Optional[torch.nn.Module] = None, count: bool = True, between: bool = False) -> None:
        """Start pass ``self.index`` at a call of a ``root`` class; ``name()``
        says what the caller called it (only asked for a recorded pass). ``every``
        counts the passes of each ``model`` (``ModelKeys``) apart: a GAN's
        generator and discriminator steps alternate, and ``every=2`` samples both."""
        cap = self.capture
        assert cap is not None
        self._marked = False  # (mark_step sets it after)
        self._cut_at = self._step_at = None  # (a hand cut sets the first after; step() the second)
        key = None if model is None else self._model_key(model)
        self._last_root = self._roots[id(model)] if model is not None and count else None  # (_unsampled_again)
        k = self._seen.get(key, 0)
        if count:
            self._seen[key] = k + 1
        # (between two steps: not counted, recorded where the step before was)
        self._sampled = self._sampled and self._samples(0) if between else self._samples(self._ordinal(key, k))
        self._between = between
        if self._sampled:
            if cap.mode.off:  # (the markers an unsampled pass opened or closed were not seen)
                cap.open_annotations = running_steps()
            cap.new_pass()
        self._name_root(root, name)
        self._pass_step = self._step
        self._t_start = time.perf_counter()
        cap.mode.off = not self._sampled
        if cap._installed:
            if self._sampled:
                cap.push_mode()
                self._unwatch()
            else:
                cap.pop_mode()
                self._watch()
                if model is not None:
                    self._probe_end(model)

    def _ordinal(self, key: Optional[Tuple[str, int, int]], k: int) -> int:
        """What ``every`` counts for the ``k``-th pass of model ``key``: once
        ``step(i)`` has labelled the steps, the step's number (every pass of steps
        0, K, 2K... is recorded: each micro-batch of a gradient accumulation, an
        evaluation after the step, a GAN's two models; a run resumed at step 1003
        records 1100, 1200...; with ``cut="step"`` each step's pass); before
        that, and for passes no model began in plain code cut by hand
        (``HandCuts``), the model's own passes."""
        return k if self._step is None or (key is None and self.cut != "step") else self._step

    def _samples(self, k: int) -> bool:
        """Is a model's ``k``-th pass (from 0) recorded?"""
        pending = self._setup is not None  # (a setup built, stored at the next cut unless a model call drops it)
        return k % self.every == 0 and (self.max_passes is None or self.recorded + pending < self.max_passes)

    def _unsampled_again(self, module: torch.nn.Module) -> bool:
        """While a pass is not sampled, a call of the model the pass began at that
        begins another one not sampled either: what ``_on_root``, ``_boundary`` and
        ``_begin`` would do, without what cannot change between two such calls
        (~15 µs of a training step that is not sampled). False: take the full way."""
        last = self._last_root
        if last is None or last[0]() is not module or self._root is None or self._prelude or self.cut == "step":
            return False
        cap = self.capture
        assert cap is not None
        if _task_id() != -1 or cap.scope.generators or cap._compiled_root or is_compiled_in_place(module):
            return False
        if any(r() is None for r, has, _ in self._roots.values() if has):
            return False  # (a root died: ``_watch`` notes it, and step() arms a model built anew)
        key = last[2]
        k = self._seen.get(key, 0)
        if self._samples(self._ordinal(key, k)):
            return False  # (this call's pass is sampled)
        cap.compile_guard.again()
        cap.scope.depth = 0
        self._seen[key] = k + 1
        self.index += 1
        self._pass_step = self._step
        self._probe_end(module)
        return True

    def _model_key(self, model: torch.nn.Module) -> Tuple[str, int, int]:
        """``model``'s ``ModelKeys`` key, asked once per model object (at the first
        pass that begins at it, after the pass before was built: see ModelKeys)."""
        ref, has, key = self._roots[id(model)]
        if key is None:
            key = self._keys.key(model)
            self._roots[id(model)] = (ref, has, key)
        return key

    def _name_root(self, root: Optional[str], name: Optional[Callable[[], Optional[str]]]) -> None:
        """The pass's root class and label (`netD (Sequential)`: ``name()`` is
        asked only for a recorded pass)."""
        self._root = root
        called = name() if name is not None and self._sampled else None
        self._root_label = root if called is None else f"{called} ({root})"

    def _build(self, error: Optional[str] = None, last: bool = False) -> Graph:
        label = f"{self._root_label or 'pass'} {self.index}"
        extra = {"last": True} if last and self.index else {}  # ended by the block's end, not by a next step
        return self.capture.finish_pass(step=self._pass_step, root=self._root, error=error, label=label, **extra)

    def _finish(self, *, error: Optional[str] = None, last: bool = False) -> None:
        cap = self.capture
        assert cap is not None and self.store is not None
        setup, self._setup = self._setup, None  # (set aside by a first mark_step(), and no model call came)
        try:
            if setup is not None:
                self.index += 1
                self._store(*setup)
        finally:  # (an on_pass callback that raised: this pass is still stored)
            if self._sampled and (cap.mode.events or self._root is not None):
                wall = time.perf_counter() - self._t_start
                self._store(self._build(error, last), wall)

    def _store(self, graph: Graph, wall: float) -> None:
        assert self.store is not None and self.capture is not None
        try:
            stored = self.store.add(graph, wall_s=wall)
        except (sqlite3.Error, OSError, TorchtraceError) as e:  # (a full disk): not the script's error; stop
            self.max_passes = self.recorded
            warn(f"torchtrace: could not store pass {self.index} in {self.store.path} ({e}); recording stops "
                 "here, the passes stored so far are kept")
            return
        self.recorded += 1
        self.capture.forget_names()  # its modules are let go (a model built anew each step: see ModelKeys)
        if self.on_pass is not None:
            self.on_pass(graph, stored)

    def _boundary(self, root: Optional[str], inputs: Iterable[Any] = (),
                  name: Optional[Callable[[], Optional[str]]] = None,
                  model: Optional[torch.nn.Module] = None, frame: Any = None, between: bool = False) -> None:
        self._trim(inputs, frame)
        # a pass without a model that recorded nothing, or that a model call ends unsampled (the gap
        # between mark_step() and that call), is no pass of its own: it takes no number
        empty = self._root is None and (not self.capture.mode.events if self._sampled  # (unsampled and between
                                        else root is not None or self._between)        # two steps: no number)
        if root is not None:  # (what a first mark_step() set aside was setup: a model call follows it)
            self._setup = None
        try:
            self._finish()
        finally:  # (an on_pass callback that raised: the next pass still starts here)
            self.index += not empty
            self._begin(root, name, model, count=not between, between=between)

    def _trim(self, inputs: Iterable[Any], frame: Any) -> None:
        """Leave out the ops that only built the next call's inputs (data loading)."""
        if self._sampled and inputs:
            prep = input_prep(self.capture.mode, inputs, call_site(frame))
            if prep:
                sig = signature(self.capture.mode, prep)
                self._prep.pop(sig, None)
                self._prep[sig] = None
                if len(self._prep) > 4:
                    del self._prep[next(iter(self._prep))]
            drop_events(self.capture.mode, prep)

    def _on_root(self, module: torch.nn.Module, args: tuple = (), frame: Any = None) -> None:
        if _task_id() != -1:  # called by backward (checkpoint's recompute): part of the step, never a root
            return
        e = self._roots.get(id(module))
        if e is None or e[0]() is not module:
            if len(self._roots) % 64 == 63:  # (models built anew each step, every step sampled: no _watch)
                self._drop_dead_roots()
            e = self._roots[id(module)] = (weakref.ref(module), is_model_call(module), None)
        if not e[1]:  # a loss function, a wrapper without weights, a parametrization: part of the pass
            return
        def name() -> Optional[str]:
            return caller_name(module, frame)

        if self.cut == "step":  # passes start at step(): the first root call of one names it
            if self._root is None:
                self._name_root(type(module).__name__, name)
                self._setup = None  # (what a first mark_step() set aside was setup: a model call follows it)
            return
        if self._prelude:  # setup before the first forward is not a pass: pass 0 starts here
            self._prelude = False
            self._begin(root=type(module).__name__, name=name, model=module)
            return
        # the next call's inputs matter only to trim a recorded pass (kwargs cost an f_locals)
        inputs = tensors_in((args, call_kwargs(frame))) if self._sampled else ()
        if self._marked and self._root is None:  # a pass mark_step() began: the call names it, cuts no more
            self._marked = self._setup = None  # (`zero_grad()` before it made a pass of its own each step;
            return self._join(module, name, inputs, frame)  # what the first mark_step() set aside was setup)
        self._boundary(root=type(module).__name__, inputs=inputs, name=name, model=module, frame=frame)

    def _after_root(self) -> None:
        if not self.backward and self._sampled and self.capture is not None:
            self.capture.mode.off = True
            self.capture.pop_mode()

    def _detach_after_fork(self) -> None:
        """In a forked child (its Capture already stopped): store nothing, ever."""
        _ACTIVE.recorder = None
        self._unhook()  # the child's copies of the root modules' hook dicts
        self._uncompiled.restore()
        if not isinstance(self._store_arg, Store):
            _INHERITED.append(self.store)  # kept referenced: never closed by the child
        self.store = self.capture = None


def mark_step() -> None:
    """End the current pass of the active Recorder (or `torchtrace run`) here.
    Does nothing when no Recorder is active, so scripts may call it always."""
    rec = getattr(_ACTIVE, "recorder", None)
    if rec is not None:
        rec.mark_step()
