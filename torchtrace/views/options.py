"""View options: one frozen settings object, validated with errors that list
the valid choices."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..errors import UsageError
from ..ir import TAGS

PHASE_CHOICES = ("forward", "backward", "optimizer", "both")
BOOKKEEPING = ("autograd_internal", "annotation")


@dataclass(frozen=True)
class ViewOptions:
    """How to cut a Graph down to something readable.

    * ``depth``: module calls nested deeper than this below the root (or the
      ``focus`` module) are drawn as one box; the root call is depth 0, so
      ``depth=0`` draws the whole model as one box. ``None`` (default): the
      deepest depth whose view fits in ``max_boxes``.
    * ``fold``: fold runs of structurally identical module calls and Python
      loop iterations into one box or frame marked ``× N``.
    * ``phase``: ``forward``, ``backward`` (with activation-checkpoint
      recompute), ``optimizer`` or ``both`` (everything). ``None`` (default):
      ``forward`` when the graph has forward ops, else ``both``.
    * ``focus``: a module path; only that module's calls are drawn (depth
      then counts from it). ``""`` is the root module.
    * ``hide``: node tags whose ops are hidden (dataflow is kept through
      them); default: autograd bookkeeping and profiler annotations.
    * ``params``: draw parameters, buffers and constants read by op boxes.
    * ``max_boxes``: the budget (boxes, sources included) for the automatic
      depth; when even depth 1 is over it, long runs of ops are grouped into
      chunk boxes. ``None``: automatic depth expands everything. An explicit
      ``depth`` is always honoured and never chunked.
    """

    depth: Optional[int] = None
    fold: bool = True
    phase: Optional[str] = None
    focus: Optional[str] = None
    hide: Tuple[str, ...] = BOOKKEEPING
    params: bool = True
    max_boxes: Optional[int] = 50

    def with_(self, **changes: Any) -> "ViewOptions":
        return replace(self, **changes)


VIEW_OPTIONS: Tuple[str, ...] = tuple(f.name for f in fields(ViewOptions))


def _close(word: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {near[0]!r}? " if near else ""


def check_option_names(opts: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    """Reject unknown keyword options, listing the valid ones."""
    allowed = tuple(allowed)
    for name in opts:
        if name not in allowed:
            raise UsageError(f"unknown {what} option {name!r}", expected="one of " + ", ".join(allowed),
                             found=repr(name), fix=f"{_close(name, allowed)}pass one of the listed options")


def _int_or_none(name: str, value: Any, minimum: int) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"bad value for {name}", expected=f"an integer >= {minimum} or None", found=repr(value),
                         fix=f"pass {name}={max(minimum, 3)} or leave it out")
    return value


def view_options(**opts: Any) -> ViewOptions:
    """Build and validate ``ViewOptions`` from keyword arguments."""
    check_option_names(opts, VIEW_OPTIONS, "view")
    o = ViewOptions(**opts)
    depth = _int_or_none("depth", o.depth, 0)
    max_boxes = _int_or_none("max_boxes", o.max_boxes, 1)
    if o.phase is not None and o.phase not in PHASE_CHOICES:
        raise UsageError("bad value for phase", expected="one of " + ", ".join(PHASE_CHOICES),
                         found=repr(o.phase), fix=f"{_close(str(o.phase), PHASE_CHOICES)}pass phase='both' "
                         "to see everything")
    if o.focus is not None and not isinstance(o.focus, str):
        raise UsageError("bad value for focus", expected="a module path such as 'transformer.h.0'",
                         found=repr(o.focus), fix="pass the dotted path of a module call")
    if o.hide is not None and not isinstance(o.hide, (str, list, tuple, set, frozenset)):
        raise UsageError("bad value for hide", expected="a node tag or a list of them: " + ", ".join(TAGS),
                         found=repr(o.hide), fix="pass e.g. hide=['view'], or hide=() to show every op")
    hide = (o.hide,) if isinstance(o.hide, str) else tuple(o.hide or ())
    for tag in hide:
        if not isinstance(tag, str) or tag not in TAGS:
            raise UsageError("bad value in hide", expected="node tags from: " + ", ".join(TAGS), found=repr(tag),
                             fix=f"{_close(str(tag), TAGS)}pass hide=() to show every op")
    for name in ("fold", "params"):
        if not isinstance(getattr(o, name), bool):
            raise UsageError(f"bad value for {name}", expected="True or False", found=repr(getattr(o, name)),
                             fix=f"pass {name}=True or {name}=False")
    return replace(o, depth=depth, max_boxes=max_boxes, hide=hide)


def as_dict(o: ViewOptions) -> Dict[str, Any]:
    return {f.name: getattr(o, f.name) for f in fields(o)}
