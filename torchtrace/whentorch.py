"""Start recording when the script imports torch, for ``torchtrace run``.

A script may set what torch reads when it is first imported
(``os.environ["OMP_NUM_THREADS"] = "1"`` above ``import torch``): importing
torch before the script runs would change its results. So when torch is not
imported yet, the recorder starts right after the script's own first
``import torch`` has run torch's ``__init__`` (a finder on ``sys.meta_path``
wraps torch's loader for that one import; the module's ``__loader__`` and
``__spec__.loader`` stay torch's own).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, ContextManager, Optional

from .errors import warn


class WhenTorch:
    """A context manager around the script's run: ``make()`` (a Recorder) is
    entered now if torch is imported, else when the script first imports it
    (in the thread that runs the script), and exited with the block."""

    def __init__(self, make: Callable[[], ContextManager[Any]]) -> None:
        self.make = make
        self.entered: Optional[ContextManager[Any]] = None
        self._finder: Optional[_TorchFinder] = None
        self._thread, self._pid = threading.get_ident(), os.getpid()

    def __enter__(self) -> "WhenTorch":
        if "torch" in sys.modules:
            self._start()  # (its errors are ours to say: the script has not started)
        else:
            self._finder = _TorchFinder(self._on_import)
            sys.meta_path.insert(0, self._finder)
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._remove_finder()
        if self.entered is None:
            return False
        return bool(self.entered.__exit__(*exc))

    def _start(self) -> None:
        cm = self.make()
        cm.__enter__()
        self.entered = cm

    def _on_import(self) -> None:
        self._remove_finder()
        if os.getpid() != self._pid:  # (a forked child, a DataLoader worker: records nothing, as the design says)
            return
        if threading.get_ident() != self._thread:  # (the recording is the main thread's: its mode is thread-local)
            warn("torchtrace: the script imported torch first in another thread; nothing is recorded "
                 "(import torch in the main thread first)")
            return
        try:
            self._start()
        except Exception as e:  # (never into the script's `import torch`)
            warn(f"torchtrace: recording could not start ({type(e).__name__}: {e}); the script runs on unrecorded")

    def _remove_finder(self) -> None:
        if self._finder is not None:
            try:
                sys.meta_path.remove(self._finder)
            except ValueError:
                pass
            self._finder = None


class _TorchFinder:
    """Finds ``torch`` as the finders after it do, and wraps its loader so that
    ``on_import`` runs once torch's ``__init__`` has."""

    def __init__(self, on_import: Callable[[], None]) -> None:
        self.on_import = on_import

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self.on_import)
                return spec
        return None


class _Loader:
    def __init__(self, real: Any, on_import: Callable[[], None]) -> None:
        self.real, self.on_import = real, on_import

    def create_module(self, spec: Any) -> Any:
        return self.real.create_module(spec) if hasattr(self.real, "create_module") else None

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.real  # (torch's own loader, seen by its __init__ and after)
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.real
        self.real.exec_module(module)
        self.on_import()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
