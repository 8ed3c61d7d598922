"""torchtrace: record, show and explain the graphs PyTorch actually builds.

Importing the package does not import torch: ``trace``/``Recorder`` load the
recorder on first use, so ``render``/``diff``/``show`` work on saved graphs in
a process without torch.
"""
from importlib import import_module
from typing import Any

from .errors import TorchtraceError
from .ir import Graph
from .serialize import load, save

__version__ = "0.1.0"

_LAZY = {
    "trace": "torchtrace.record.trace",
    "Recorder": "torchtrace.record.recorder",
    "mark_step": "torchtrace.record.recorder",
    "render": "torchtrace.renderers",
    "diff": "torchtrace.compare",
    "GraphDiff": "torchtrace.compare",
    "variants": "torchtrace.families",
}

__all__ = ["Graph", "TorchtraceError", "load", "save", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchtrace' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
