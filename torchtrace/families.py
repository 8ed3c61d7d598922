"""``torchtrace.variants(graphs)``: many passes grouped into the few programs
they ran.

Graphs with equal ``fingerprints["structure"]`` form a variant; inside it,
equal ``fingerprints["shapes"]`` form a shape variant (the decode steps of a
KV-cache model: one variant, one shape variant per cache length). Each new
variant is explained against the graph just before its first appearance
(``diff(graphs[first - 1], graphs[first])``): the witness or loop that made
step 812 take another path.

    vs = torchtrace.variants(graphs)
    for v in vs: v.index, v.count, v.first, v.last, v.graph, v.why, v.witness
    print(vs)          # a text table; rich.print(vs) draws a rich Table
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import PurePath
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ._memo import Lazy
from .compare import GraphDiff, diff
from .errors import UsageError
from .explain import LoopChange, WitnessChange, plural
from .fingerprint import fingerprints
from .ir import Graph

__all__ = ["variants", "Variants", "Variant", "ShapeVariant"]


class _Indexed:
    """``count``, ``first`` and ``last`` of the input positions in ``indices``."""

    indices: Tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def first(self) -> int:
        return self.indices[0]

    @property
    def last(self) -> int:
        return self.indices[-1]


@dataclass(frozen=True)
class ShapeVariant(_Indexed):
    """Graphs of one variant that also ran on the same tensor types.
    ``graph`` is the first of them; ``why`` says what changed against the graph
    before its first one. Both are made on first access: a training run with
    Adam has a shape variant per step (its floats), and a store's graphs are
    read only when asked for."""

    shapes: str
    indices: Tuple[int, ...]
    _graph: Callable[[], Graph] = field(repr=False, compare=False)
    _why: Callable[[], Optional[str]] = field(repr=False, compare=False)

    @cached_property
    def graph(self) -> Graph:
        return self._graph()

    @cached_property
    def why(self) -> Optional[str]:
        return self._why()


@dataclass(frozen=True)
class Variant(_Indexed):
    """Graphs that ran the same program (equal structure fingerprint), in
    order of first appearance. ``graph`` is the first of them. ``previous``
    is the index of the graph just before the first one (``None`` for the
    very first graph); ``why``/``witness``/``loop`` explain the difference
    from it, ``against`` is that graph's variant index."""

    index: int
    structure: str
    indices: Tuple[int, ...]
    shapes: Tuple[ShapeVariant, ...]
    graph: Graph
    previous: Optional[int] = None
    against: Optional[int] = None
    why: Optional[str] = None
    witness: Optional[WitnessChange] = None
    loop: Optional[LoopChange] = None


@dataclass(frozen=True)
class Variants:
    """The result of :func:`variants`: a sequence of :class:`Variant`."""

    variants: Tuple[Variant, ...]
    total: int
    of: Tuple[int, ...]  # variant index of each input graph

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def __len__(self) -> int:
        return len(self.variants)

    def __getitem__(self, k: int) -> Variant:
        return self.variants[k]

    def variant_of(self, graph_index: int) -> Variant:
        return self.variants[self.of[graph_index]]

    def rows(self) -> List[Tuple[str, ...]]:
        """The summary table as text cells, header first."""
        out = [("variant", "structure", "graphs", "first", "last", "shapes", "why (vs the graph before its first)")]
        for v in self.variants:
            why = "" if v.previous is None else f"vs graph {v.previous} (variant {v.against}): {v.why}"
            out.append((str(v.index), v.structure, str(v.count), str(v.first), str(v.last), str(len(v.shapes)), why))
        return out

    def __str__(self) -> str:
        rows = self.rows()
        head = (f"{plural(len(self.variants), 'variant')} in {plural(self.total, 'graph')}"
                f" ({plural(sum(len(v.shapes) for v in self.variants), 'shape variant')})")
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
        lines = [head]
        for r in rows:
            cells = [r[c].rjust(widths[c]) if c != 1 else r[c].ljust(widths[c]) for c in range(len(widths))]
            lines.append(("  ".join(cells) + "  " + r[-1]).rstrip())
        for v in self.variants:
            if len(v.shapes) > 1:
                lines.append(f"variant {v.index} shapes:")
                for s in v.shapes:
                    why = f"  {s.why}" if s.why else ""
                    lines.append(f"  {s.shapes}  {plural(s.count, 'graph')}, first {s.first}, last {s.last}{why}")
        return "\n".join(lines)

    def __rich__(self) -> Any:
        return self.table()

    def table(self) -> Any:
        """The summary as a ``rich.table.Table`` (what ``torchtrace variants`` prints)."""
        from rich.table import Table
        from rich.text import Text

        rows = self.rows()
        table = Table(title=f"{plural(len(self.variants), 'variant')} in {plural(self.total, 'graph')}")
        for c, name in enumerate(rows[0]):
            table.add_column(name, justify="right" if c in (0, 2, 3, 4, 5) else "left",
                             overflow="fold", no_wrap=c == 1)
        for r in rows[1:]:
            table.add_row(*(Text(c) for c in r))  # Text: "[...]" in shapes is not markup
        return table


GraphLike = Union[Graph, Dict[str, Any], str, "os.PathLike[str]"]


def variants(graphs: Iterable[GraphLike]) -> Variants:
    """Group passes by fingerprint; see :class:`Variants`."""
    if isinstance(graphs, (Graph, str, PurePath, dict)) or not isinstance(graphs, Iterable):
        raise UsageError("variants() takes a list of passes", expected="a list of torchtrace.Graph objects, "
                         "IR dicts or paths", found=f"one {type(graphs).__name__}",
                         fix="pass e.g. variants([g1, g2, g3]); for a trace store use `torchtrace variants trace.db`")
    gs = [_graph(g, k) for k, g in enumerate(graphs)]
    models = [model_of(g.meta.get("label"), g.meta.get("root")) for g in gs]
    return grouped([_fps(g) for g in gs], gs.__getitem__, models)


def store_variants(store: Any, rank: int = 0) -> Tuple[List[Any], Variants]:
    """A store's passes of ``rank`` and their variants, grouped by the
    fingerprints the store keeps: only the graphs an explanation needs are read
    (a shape variant's ``graph`` and ``why`` read the store when first asked for:
    while it is open)."""
    records = store.passes(rank)
    graphs = Lazy(lambda k: store.graph(records[k].idx, records[k].rank))
    return records, grouped([(p.structure_fp, p.shapes_fp) for p in records], graphs.__getitem__,
                            [model_of(p.label, p.root) for p in records])


def model_of(label: Optional[str], root: Optional[str]) -> Optional[str]:
    """The model a Recorder pass ran, from its label (``netD (Sequential) 3``:
    ``netD (Sequential)``) or its root class; ``None`` when neither says."""
    if label and root and label.rsplit(" ", 1)[-1].isdigit() and f"({root})" in label:
        return label.rsplit(" ", 1)[0]
    return root


def grouped(keys: Sequence[Tuple[str, str]], graph_at: Callable[[int], Graph],
            models: Sequence[Optional[str]] = ()) -> Variants:
    """Variants from each graph's (structure, shapes) fingerprints; ``graph_at(k)``
    gives graph ``k`` when an explanation needs it. ``models``: the model each
    graph ran (``model_of``): a new variant is explained against the last graph
    before it of the same model (a GAN's discriminator against its own previous
    step, not the generator's), and the first graph of a model says so."""
    models = list(models) or [None] * len(keys)
    order: Dict[str, List[int]] = {}
    for k, (structure, _) in enumerate(keys):
        order.setdefault(structure, []).append(k)
    of = [0] * len(keys)
    for vi, idx in enumerate(order.values()):
        for k in idx:
            of[k] = vi
    out: List[Variant] = []
    for vi, (structure, idx) in enumerate(order.items()):
        shapes: Dict[str, List[int]] = {}
        for k in idx:
            shapes.setdefault(keys[k][1], []).append(k)
        svs = [ShapeVariant(fp, tuple(sidx), partial(graph_at, sidx[0]),
                            partial(_shape_why, graph_at, _previous_in(sidx[0], idx), sidx[0]))
               for fp, sidx in shapes.items()]
        first = idx[0]
        v = Variant(vi, structure, tuple(idx), tuple(svs), graph_at(first))
        if first > 0:
            model = models[first]
            prev = next((k for k in range(first - 1, -1, -1) if models[k] == model), None) if model else first - 1
            if prev is None:  # (the same model called through another name: `net` in an evaluate() helper)
                prev = _same_params(graph_at, models, first)
            if prev is None:  # the first pass of this model: another program than the one before it
                before = f"ran `{models[first - 1]}`" if models[first - 1] else "ran no model"
                why, witness, loop = f"the first pass of `{model}` (the one before {before})", None, None
                prev = first - 1
            else:
                why, witness, loop = _explain(diff(graph_at(prev), graph_at(first)))
            v = Variant(vi, structure, tuple(idx), tuple(svs), graph_at(first), prev, of[prev], why, witness, loop)
        out.append(v)
    return Variants(tuple(out), len(keys), tuple(of))


def _params(g: Graph) -> frozenset:
    """A model's parameters as (name, shape): the same model, whatever the caller called it."""
    return frozenset((v.name, v.shape) for v in g.values if v.role == "param")


def _same_params(graph_at: Callable[[int], Graph], models: Sequence[Optional[str]], first: int) -> Optional[int]:
    """The last graph before ``first`` whose model has its parameters, looking at
    the last graph of each other model only (a store reads no more graphs)."""
    mine, seen = _params(graph_at(first)), set()
    for k in range(first - 1, -1, -1):
        if models[k] not in seen:
            seen.add(models[k])
            if _params(graph_at(k)) == mine:
                return k
    return None


def _shape_why(graph_at: Callable[[int], Graph], prev: Optional[int], k: int) -> Optional[str]:
    return diff(graph_at(prev), graph_at(k)).summary() if prev is not None else None


def _previous_in(k: int, idx: Sequence[int]) -> Optional[int]:
    """The last graph of the same variant before graph ``k``."""
    before = [i for i in idx if i < k]
    return before[-1] if before else None


def _explain(d: GraphDiff) -> Tuple[str, Optional[WitnessChange], Optional[LoopChange]]:
    """The diff's explanation lines, and the witness (or loop) of the first
    hunk that has one."""
    why = "; ".join(d.why()) or d.summary()
    for h in d.structural_hunks:
        if h.witness is not None or h.loop is not None:
            return why, h.witness, h.loop
    return why, None, None


def _fps(g: Graph) -> Tuple[str, str]:
    fp = g.fingerprints or fingerprints(g)
    return fp["structure"], fp["shapes"]


def _graph(x: GraphLike, k: int) -> Graph:
    if isinstance(x, Graph):
        return x
    if isinstance(x, dict):
        return Graph.from_dict(x, where=f"graphs[{k}]")
    if isinstance(x, (str, os.PathLike)):
        from .serialize import load

        return load(x)
    raise UsageError(f"variants() got {type(x).__name__} at graphs[{k}]",
                     expected="torchtrace.Graph objects, IR dicts or paths", found=type(x).__name__,
                     fix="pass a list of recorded graphs (t.graph) or saved .json files")
