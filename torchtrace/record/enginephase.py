"""The phase of an op that runs inside the autograd engine: backward, or
forward code that checkpoint re-runs (recompute); and the user line of an op
issued from C++ in an engine device thread. A mixin of ``RecordingMode``
(mode.py), split out of the hot path's module."""
from __future__ import annotations

import threading
from typing import Any

import torch

from .frames import in_checkpoint, is_autograd_engine
from .opinfo import op_info

FORWARD, BACKWARD, RECOMPUTE = 0, 1, 2

_task_id = torch._C._current_graph_task_id
_grad_enabled = torch.is_grad_enabled
_get_ident = threading.get_ident
_DETACH = torch.ops.aten.detach.default  # stands for autograd's own work in fault reports


class EnginePhase:
    """Backward-phase bookkeeping of the recording mode (its slots hold the state)."""

    __slots__ = ()

    def _frameless(self, anode: Any) -> tuple:
        """(code, f_lasti, phase) of an op whose handler is its thread's bottom
        frame: issued from C++ in a thread that runs no Python code -- the
        autograd engine's device threads, where CUDA runs backward (the engine
        carries the mode stack there). Its line is the user line that started
        the graph task in the thread that records, found once per task."""
        if anode is None:  # no graph task: nothing to attribute it to
            return None, -1, FORWARD
        phase = self._backward_phase(anode, None)
        return (*self._task_user(), phase)

    def _task_user(self) -> tuple:
        """(code, f_lasti) of the user line in the recording thread that started
        this graph task: the line of an op issued in an engine device thread
        whose own frames are all internal (a dispatch mode's above ours, a
        ``trace()`` handing its ops on to a Recorder), or that has none."""
        key = ("frameless", self.task)
        if self.engine_frame != key:
            self.engine_frame = key
            self.engine_user = self.capture.frames.user_frame_of(self.capture.tid)
        return self.engine_user

    def _backward_phase(self, anode: Any, frame: Any) -> int:
        task = _task_id()
        if task != self.task:
            self.task = task
            self.engine_frame = None
            try:
                self.capture.autograd.on_backward_start(anode, self.capture.backward_roots())
            except Exception as e:  # the ops are still recorded; the autograd part is what is missing
                self._fault(op_info(_DETACH), e)
        self.foreign = _get_ident() != self.capture.tid  # an engine device thread (CUDA's backward)
        engine = frame is None or self._is_engine(frame.f_code)  # (None: issued by the engine's own C++)
        # checkpoint re-runs forward code with grad enabled from inside a Node: torch.utils.checkpoint, or a
        # Function of the user's that turns grad on itself (Megatron's); create_graph=True has the engine
        # turn it on for the backward code of a custom Function or a hook, which is no recompute
        return RECOMPUTE if not engine and _grad_enabled() and (
            self.capture.autograd.engine_grad.get(task) is False or in_checkpoint(frame)) else BACKWARD

    def _is_engine(self, code: Any) -> bool:
        """Is ``code`` torch.autograd's own? Keyed by id (a code object's hash is
        recomputed on every lookup); the held code keeps its id from being reused."""
        hit = self.engine_codes.get(id(code))
        if hit is None:
            hit = self.engine_codes[id(code)] = (code, is_autograd_engine(code))
        return hit[1]
