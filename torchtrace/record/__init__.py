"""Capture: the only layer that imports torch at import time."""
from .trace import Trace, trace

__all__ = ["Trace", "trace"]
