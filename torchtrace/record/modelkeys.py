"""What ``Recorder(every=K)`` counts passes by: which model a root call ran."""
from __future__ import annotations

import weakref
from typing import Any, Dict, List, Tuple

import torch
from torch.nn.parameter import is_lazy


class ModelKeys:
    """What ``every`` counts passes by: the model's class, size and slot. A GAN's
    two ``Sequential``s differ in size; two models alike in both that are alive
    together (a student and its EMA teacher) take two slots; a model built anew
    each step takes the slot its freed predecessor left (an object's id is no key:
    a new one takes a freed one's address)."""

    def __init__(self) -> None:
        self._slots: Dict[Tuple[str, int], List[Any]] = {}  # (class, size) -> weakrefs, by slot

    def key(self, module: torch.nn.Module) -> Tuple[str, int, int]:
        """Asked once per module object (the Recorder keeps the answer with its
        roots), at a pass boundary after the previous pass was built and its
        modules let go (``Recorder._finish``): a predecessor is free by then."""
        kind = (type(module).__qualname__, sum(0 if is_lazy(p) else p.numel() for p in module.parameters()))
        slots = self._slots.setdefault(kind, [])
        free = next((i for i, ref in enumerate(slots) if ref() is None), None)
        if free is None:
            free = len(slots)
            slots.append(None)
        slots[free] = weakref.ref(module)
        return (*kind, free)
