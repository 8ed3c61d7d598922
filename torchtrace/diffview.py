"""A ``GraphDiff`` as a ``views.View`` for the drawing renderers: one box per
op that differs (or surrounds a difference), unchanged runs collapsed into
one box, module paths as nested clusters, and a status per box and edge
(``only_a`` removed, ``only_b`` added, ``changed``, ``same``).

``level`` trades detail for size (Mermaid refuses > 500 edges or > 50,000
characters): 0 keeps ``context`` unchanged ops around each hunk, 1 none,
2 draws each changed hunk as one box, 3 also each side of a structural
hunk, 4 also keeps only the first ``max_hunks`` hunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

from .side import is_bookkeeping
from .explain import ARROW, common_module, plural
from .textform import op_str, type_str
from .views import Box, Cluster, Edge, View

if TYPE_CHECKING:  # pragma: no cover
    from .compare import GraphDiff, Hunk, OpPair
    from .ir import Graph

LEVELS = 5


@dataclass(frozen=True)
class DiffView:
    """``view`` to draw; ``status`` of each box id and of each edge
    ``(src, dst)``; ``notes`` what was collapsed."""

    view: View
    status: Dict[str, str]
    edge_status: Dict[Tuple[str, str], str]
    level: int


def build_diff_view(diff: "GraphDiff", *, context: int = 3, level: int = 0, max_hunks: int = 20) -> DiffView:
    return _Builder(diff, context if level == 0 else 0, level, max_hunks).run()


class _Builder:
    def __init__(self, diff: "GraphDiff", context: int, level: int, max_hunks: int) -> None:
        self.d, self.context, self.level, self.max_hunks = diff, context, level, max_hunks
        self.boxes: List[Box] = []
        self.status: Dict[str, str] = {}
        self.box_of_row: Dict[int, str] = {}
        self.clusters: Dict[str, Cluster] = {}
        self.notes: List[str] = []

    def run(self) -> DiffView:
        d = self.d
        hunks = list(d.hunks)
        if self.level >= 4 and len(hunks) > self.max_hunks:
            self.notes.append(f"only the first {self.max_hunks} of {len(hunks)} hunks are drawn")
            hunks = hunks[:self.max_hunks]
        keep: Set[int] = set()
        for h in hunks:
            keep.update(range(max(0, h.span[0] - self.context), min(len(d.ops), h.span[1] + self.context)))
        grouped: Dict[int, "Hunk"] = {}
        for h in hunks:
            if h.kind == "changed" and self.level >= 2 or h.kind == "structural" and self.level >= 3:
                grouped.update((k, h) for k in range(*h.span))
        k = 0
        while k < len(d.ops):
            h = grouped.get(k)
            if h is not None:
                self._hunk_boxes(h)
                k = h.span[1]
            elif k in keep:
                self._row_box(k)
                k += 1
            else:
                k1 = k
                while k1 < len(d.ops) and k1 not in keep and k1 not in grouped:
                    k1 += 1
                self._chunk(k, k1, "same", f"{plural(k1 - k, 'unchanged op')}", ())
                k = k1
        if self.level:
            self.notes.append(f"collapsed to level {self.level} to fit")
        edges, edge_status = self._edges()
        view = View(tuple(self.boxes), tuple(edges), tuple(sorted(self.clusters.values(), key=lambda c: c.order)),
                    tuple(self.notes))
        return DiffView(view, self.status, edge_status, self.level)

    # -- boxes ---------------------------------------------------------------
    def _row_box(self, k: int) -> None:
        p = self.d.ops[k]
        node = p.a if p.a is not None else p.b
        g = self.d.a if p.a is not None else self.d.b
        assert node is not None
        lines: List[str] = [_types(self.d, p)]
        if node.witness is not None:
            lines.append(_reads(p))
        src = node.source.short() if node.source is not None else ""
        box = Box(id=f"r{k}", kind="op", title=op_str(node.op), lines=tuple(x for x in lines if x),
                  cluster=self._cluster(g.module_path(node.module), k), phase=node.phase,
                  witness=node.witness is not None, tooltip=f"{_ids(p)}  {src}".strip(), nodes=(node.id,), order=k)
        moved_only = p.status == "changed" and set(p.what) <= {"line"}
        self._add(box, "same" if moved_only else p.status, [k])

    def _hunk_boxes(self, h: "Hunk") -> None:
        k0, k1 = h.span
        if h.kind == "changed":
            self._chunk(k0, k1, "changed", f"{plural(len(h.changed), 'op')} changed", (h.detail(),))
            return
        for side, status in (("a", "only_a"), ("b", "only_b")):
            rows = [k for k in range(k0, k1) if self.d.ops[k].status == status]
            if rows:
                nodes = [getattr(self.d.ops[k], side) for k in rows]
                ops = ", ".join(dict.fromkeys(n.short_op for n in nodes))
                title = f"{plural(len(rows), 'op')} only in {side.upper()}"
                self._chunk(rows[0], rows[-1] + 1, status, title, (ops, h.cause), rows=rows)

    def _chunk(self, k0: int, k1: int, status: str, title: str, lines: Tuple[str, ...],
               rows: Optional[List[int]] = None) -> None:
        rows = rows if rows is not None else list(range(k0, k1))
        paths = [self._path(k) for k in rows]
        box = Box(id=f"c{k0}", kind="chunk", title=title, lines=tuple(x for x in lines if x),
                  cluster=self._cluster(common_module(paths), k0), tooltip=title, order=k0)
        self._add(box, status, rows)

    def _add(self, box: Box, status: str, rows: List[int]) -> None:
        self.boxes.append(box)
        self.status[box.id] = status
        for k in rows:
            self.box_of_row[k] = box.id

    def _path(self, k: int) -> str:
        p = self.d.ops[k]
        if p.a is not None:
            return self.d.a.module_path(p.a.module)
        assert p.b is not None
        return self.d.b.module_path(p.b.module)

    def _cluster(self, path: str, order: int) -> Optional[str]:
        """The cluster of module ``path`` (and its parents), made on first use."""
        if not path:
            return None
        parts = path.split(".")
        parent: Optional[str] = None
        for depth in range(1, len(parts) + 1):
            sub = ".".join(parts[:depth])
            cid = "m:" + sub
            if cid not in self.clusters:
                self.clusters[cid] = Cluster(id=cid, kind="module", title=sub, parent=parent, tooltip=sub, order=order)
            parent = cid
        return parent

    # -- edges ---------------------------------------------------------------
    def _edges(self) -> Tuple[List[Edge], Dict[Tuple[str, str], str]]:
        sides: Dict[Tuple[str, str], Set[str]] = {}
        labels: Dict[Tuple[str, str], Tuple[str, ...]] = {}
        for side, g in (("a", self.d.a), ("b", self.d.b)):
            row_of = {getattr(p, side).id: k for k, p in enumerate(self.d.ops) if getattr(p, side) is not None}
            made = _producers(g)
            for k, p in enumerate(self.d.ops):
                n = getattr(p, side)
                dst = self.box_of_row.get(k)
                if n is None or dst is None:
                    continue
                for v in n.inputs:
                    prod = made.get(v)
                    src = self.box_of_row.get(row_of[prod]) if prod in row_of else None
                    if src is None or src == dst:
                        continue
                    sides.setdefault((src, dst), set()).add(side)
                    labels.setdefault((src, dst), (v, type_str(g.value(v))))
        edges, status = [], {}
        for key, got in sides.items():
            v, label = labels[key]
            edges.append(Edge(key[0], key[1], (v,), label))
            status[key] = "same" if got == {"a", "b"} else "only_a" if got == {"a"} else "only_b"
        return edges, status


def _producers(g: "Graph") -> Dict[str, str]:
    """value id -> id of the op that made it; bookkeeping ops pass through."""
    out: Dict[str, str] = {}
    for n in g.nodes:
        for v in n.outputs:
            out[v] = out.get(n.inputs[0], n.id) if is_bookkeeping(n) and n.inputs else n.id
    return out


def _types(d: "GraphDiff", p: "OpPair") -> str:
    ta = ", ".join(type_str(d.a.value(v)) for v in p.a.outputs) if p.a is not None else None
    tb = ", ".join(type_str(d.b.value(v)) for v in p.b.outputs) if p.b is not None else None
    if ta is None or tb is None or ta == tb:
        return (ta if ta is not None else tb) or ""
    return f"{ta} {ARROW} {tb}"


def _reads(p: "OpPair") -> str:
    wa = p.a.witness.describe() if p.a is not None and p.a.witness is not None else None
    wb = p.b.witness.describe() if p.b is not None and p.b.witness is not None else None
    if wa is not None and wb is not None and wa != wb:
        return f"read {wa} in A, {wb} in B"
    return f"read {wa if wa is not None else wb}"


def _ids(p: "OpPair") -> str:
    return " / ".join(x for x in (f"A {p.a.id}" if p.a else "", f"B {p.b.id}" if p.b else "") if x)
