"""Forked children (DataLoader workers) of a process that records."""
from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .capture import Capture

# Captures started and not yet stopped. A forked child (a DataLoader worker) stops
# them at once: it inherits the mode stack and the global hooks, but its ops are
# not the traced program's and nothing it recorded would ever be stored. Then each
# capture's ``after_fork`` runs (the Recorder's goes inert there). The at-fork
# callback stays registered for the process (os.register_at_fork has no removal);
# with no capture started it does nothing.
STARTED: "weakref.WeakSet[Capture]" = weakref.WeakSet()


def _stop_in_forked_child() -> None:
    for cap in list(STARTED):
        cap.mode.off = True
        if cap.tid != threading.get_ident():  # its mode is on a thread the child does not have
            cap._mode_pushed = False
        try:
            cap.stop()  # the mode (on the forking thread), the global hooks, autograd pre-hooks
            if cap.after_fork is not None:
                cap.after_fork()
        except Exception:  # pragma: no cover - never break the child over this
            pass
    STARTED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_stop_in_forked_child)
