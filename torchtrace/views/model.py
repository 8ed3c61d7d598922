"""The view model every renderer draws: boxes, edges and clusters.

A ``View`` is small and already decided: which module calls are expanded
(clusters), which are collapsed or folded into one box, which ops are hidden.
Renderers only choose shapes, colours and syntax. View ids (``Box.id``,
``Cluster.id``) are internal keys, not safe for any output format: renderers
map them through ``renderers._escape.IdMaker``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

# Box kinds, closed:
#   op       one recorded op (``repeat`` > 1: a folded chain of equal ops)
#   module   a collapsed module call (``repeat`` > 1: folded identical calls)
#   chunk    consecutive ops grouped only to keep a huge flat graph readable
#   input    a traced input, or a tensor from outside the view (focus, phase)
#   param, buffer, constant   tensors the ops read that no op produced
#   output   a value the traced call returned
BOX_KINDS = ("op", "module", "chunk", "input", "param", "buffer", "constant", "output")
SOURCE_KINDS = ("input", "param", "buffer", "constant")
# Cluster kinds: ``module`` (an expanded module call), ``loop`` (one folded
# iteration of a Python loop, ``repeat`` times).
CLUSTER_KINDS = ("module", "loop")


@dataclass(frozen=True)
class Box:
    """One drawn node. ``title`` is the first line, ``lines`` the rest (shapes,
    op counts, witness values); ``tooltip`` is longer text for hover/SVG."""

    id: str
    kind: str
    title: str
    lines: Tuple[str, ...] = ()
    cluster: Optional[str] = None
    phase: str = "forward"
    repeat: int = 1
    witness: bool = False
    tooltip: str = ""
    nodes: Tuple[str, ...] = ()  # IR node ids drawn by this box (one instance)
    order: int = 0  # position of its first op: boxes and clusters interleave by it


@dataclass(frozen=True)
class Edge:
    """Dataflow from ``src`` to ``dst`` carrying ``values`` (IR value ids);
    ``label`` is their types (``f32[1,8,32]``, ``+2`` when more)."""

    src: str
    dst: str
    values: Tuple[str, ...]
    label: str
    phase: str = "forward"


@dataclass(frozen=True)
class Cluster:
    """An expanded module call (or folded loop iteration) drawn as a frame."""

    id: str
    kind: str
    title: str
    parent: Optional[str] = None
    phase: str = "forward"
    repeat: int = 1
    tooltip: str = ""
    order: int = 0
    note: str = ""  # under the title: which arguments differ between the folded repeats


@dataclass(frozen=True)
class View:
    """What to draw, with ``notes`` saying what was hidden, collapsed or folded
    and ``options`` the resolved view options (``depth`` is a number here).
    ``alerts`` are the notes that say the pass is incomplete (cut off at ``max_ops``,
    ended by an exception): a drawing shows them, where other notes stay comments."""

    boxes: Tuple[Box, ...]
    edges: Tuple[Edge, ...]
    clusters: Tuple[Cluster, ...]
    notes: Tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, int] = field(default_factory=dict)
    alerts: Tuple[str, ...] = ()

    def children(self) -> Dict[Optional[str], Tuple[List[Cluster], List[Box]]]:
        """cluster id (``None`` = top level) -> (child clusters, boxes), in order."""
        out: Dict[Optional[str], Tuple[List[Cluster], List[Box]]] = {None: ([], [])}
        for c in self.clusters:
            out.setdefault(c.id, ([], []))
            out.setdefault(c.parent, ([], []))[0].append(c)
        for b in self.boxes:
            out.setdefault(b.cluster, ([], []))[1].append(b)
        return out

    def box(self, bid: str) -> Box:
        for b in self.boxes:
            if b.id == bid:
                return b
        raise KeyError(bid)

    def walk(self) -> Iterator[Tuple[int, Any]]:
        """Depth-first (depth, Cluster | Box), in execution order; a cluster is
        followed by its contents."""
        kids = self.children()

        def rec(cid: Optional[str], depth: int) -> Iterator[Tuple[int, Any]]:
            clusters, boxes = kids.get(cid, ([], []))
            for item in sorted([*clusters, *boxes], key=lambda x: x.order):
                yield depth, item
                if isinstance(item, Cluster):
                    yield from rec(item.id, depth + 1)

        return rec(None, 0)
