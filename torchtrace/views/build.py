"""Assemble a ``View`` from a selection, its group tree and the folds found:
one walk decides every box and frame, then dataflow becomes edges."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from ..ir import Node
from ..textform import node_line, type_str
from . import labels as L
from .facts import boundary, group_params
from .fold import Folder, Item, Run, item_nodes
from .groups import Group
from .model import Box, Cluster, Edge
from .options import ViewOptions
from .select import Selection

Unit = Union[Run, Item, Tuple[Node, ...]]  # a fold, one item, or a chunk of ops


class Assembler:
    """One view at one depth. ``chunk``: at most this many op boxes per
    container (longer runs of ops become chunk boxes); None: no limit."""

    def __init__(self, sel: Selection, top: Group, folder: Folder, opts: ViewOptions, depth: int,
                 chunk: Optional[int] = None) -> None:
        self.sel, self.g, self.top, self.folder = sel, sel.graph, top, folder
        self.opts, self.depth, self.chunk = opts, depth, chunk
        self.boxes: Dict[str, Box] = {}
        self.clusters: List[Cluster] = []
        self.cluster_parent: Dict[str, Optional[str]] = {}
        self.box_of: Dict[str, str] = {}          # representative node id -> box id
        self.alias: Dict[str, str] = {}           # folded node id -> node it maps onto
        self.fold_params: Dict[str, List[str]] = {}  # optimizer op id -> params the ops a fold drew as it update
        self.runs_of: Dict[str, Dict[int, int]] = {}  # node id -> {fold number: piece index}
        self.folds: List[str] = []
        self.rep_names: Dict[str, List[str]] = {}  # group key -> names of the calls a loop fold drew as it
        self.fold_names: Dict[str, List[str]] = {}  # a param/input drawn for a fold -> names of all it stands for
        self.folded_frames: Set[str] = set()  # module frames drawn for folded blocks
        self.collapsed = 0
        self.raised = self.g.raised()
        self.chunked = 0
        self._edges: Optional[Tuple[List[Edge], List[Box]]] = None

    # -- walk ---------------------------------------------------------------
    def run(self) -> "Assembler":
        self._container(self.top, None)
        return self

    def _container(self, grp: Group, cluster: Optional[str]) -> None:
        runs = self.folder.runs(grp.items, cache_key=grp.key) if self.opts.fold else []
        self._items(grp.items, runs, cluster, grp)

    def _items(self, items: Sequence[Item], runs: Sequence[Run], cluster: Optional[str], parent: Group) -> None:
        for unit in self._units(items, runs):
            if isinstance(unit, Run):
                self._fold(items, unit, cluster, parent)
            elif isinstance(unit, tuple):
                self._chunk(unit, cluster)
            elif isinstance(unit, Group):
                self._group(unit, cluster, parent)
            else:
                self._op(unit, cluster)

    def _units(self, items: Sequence[Item], runs: Sequence[Run]) -> List[Unit]:
        run_at = {r.start: r for r in runs}
        units: List[Unit] = []
        i = 0
        while i < len(items):
            r = run_at.get(i)
            units.append(r if r is not None else items[i])
            i = r.stop if r is not None else i + 1
        n_ops = sum(1 for u in units if isinstance(u, Node))
        if self.chunk is None or n_ops <= self.chunk:
            return units
        # a chunk per source line first (consecutive ops of one line: what the code says), an optimizer step's
        # (one line) per module whose parameters they update, then the module around it (`h.0.attn`, `h.0`)
        # while there are too many; then lines together, up to ``size`` ops a chunk (a line's ops kept whole)
        ops = [(u,) if isinstance(u, Node) else u for u in units]
        deepest = max((len(L.module_parts(self.sel.updated_param(u))) for u in units if isinstance(u, Node)),
                      default=0)
        for level in range(deepest, -1, -1):
            out = _merged(ops, lambda a, b: self._chunk_key(a[-1], level) == self._chunk_key(b[0], level) is not None)
            if sum(1 for u in out if isinstance(u, tuple)) <= self.chunk:
                break
        if sum(1 for u in out if isinstance(u, tuple)) > self.chunk:
            size = -(-n_ops // self.chunk)
            out = _merged(out, lambda a, b: len(a) + len(b) <= max(size, len(b)))
        self.chunked += sum(len(u) for u in out if isinstance(u, tuple) and len(u) > 1)
        return [u[0] if isinstance(u, tuple) and len(u) == 1 else u for u in out]

    def _chunk_key(self, n: Node, level: int) -> Optional[tuple]:
        """What one chunk's ops share: their line, the first ``level`` parts of their parameter's module path."""
        line = _line_of(n)
        return None if line is None else (*line, *L.module_parts(self.sel.updated_param(n))[:level])

    def _fold(self, items: Sequence[Item], r: Run, cluster: Optional[str], parent: Group) -> None:
        pieces = [items[r.start + k * r.period: r.start + (k + 1) * r.period] for k in range(r.reps)]
        rep_nodes = [n for it in pieces[0] for n in item_nodes(it)]
        fold_no = len(self.folds)
        for k, piece in enumerate(pieces):
            nodes = [n for it in piece for n in item_nodes(it)]
            for n, n0 in zip(nodes, rep_nodes):
                self.runs_of.setdefault(n.id, {})[fold_no] = k
                if k:
                    self.alias[n.id] = n0.id
                    more = [self.sel.updated_param(n), *self.fold_params.get(n.id, ())]  # (n's own folds' too)
                    self.fold_params.setdefault(n0.id, []).extend(p for p in more if p is not None)
                    self._stands_for(n0, n)
        first = pieces[0][0]
        note = L.args_differ([[n for it in piece for n in item_nodes(it)] for piece in pieces])
        if r.period == 1 and isinstance(first, Group):
            names = [L.relative_path(p[0].path, parent.path) for p in pieces]  # type: ignore[union-attr]
            self.folds.append(f"{L.range_name(names)} {first.type} × {r.reps}" + (f" ({note})" if note else ""))
            self._group(first, cluster, parent, r.reps, names, note)
        elif r.period == 1:
            assert isinstance(first, Node)
            where = "; ".join(x for x in (L.line_span([first]), note) if x)
            self.folds.append(f"{first.short_op} × {r.reps} ({where})")
            self._op(first, cluster, r.reps, note=note)
        else:
            for j, it in enumerate(pieces[0]):  # modules that differ per iteration: name them all
                if isinstance(it, Group):
                    names = [L.relative_path(p[j].path, parent.path) for p in pieces]  # type: ignore[union-attr]
                    if len(set(names)) > 1:
                        self.rep_names[it.key] = names
            cid = base = f"loop.{rep_nodes[0].id}"
            k = 1
            while cid in self.cluster_parent:  # a loop nested in one whose body starts with it: the same op
                k += 1
                cid = f"{base}.{k}"
            own = [it for it in pieces[0] if isinstance(it, Node)]  # (the loop's own lines, not its modules')
            title = L.loop_title(rep_nodes, r.reps, own)
            self.folds.append(title + (f" ({note})" if note else ""))
            self._cluster(Cluster(cid, "loop", title, cluster, rep_nodes[0].phase, r.reps,
                                  tooltip=f"{r.reps} iterations of {len(rep_nodes)} ops; one is drawn",
                                  order=self._order(rep_nodes[0]), note=note))
            self._items(pieces[0], self.folder.runs(pieces[0]), cid, parent)

    def _stands_for(self, n0: Node, n: Node) -> None:
        """Folded op ``n`` is drawn as ``n0``: the parameters and inputs it reads are
        named with those ``n0`` reads (an optimizer's loop over parameters: `0…3.weight`;
        one encoder applied to inputs `a`..`d`: `a (+3 more)`)."""
        for v0, v in zip(n0.inputs, n.inputs):
            val = self.g.value(v)
            if v != v0 and val.role in ("param", "buffer", "input") and val.name:
                self.fold_names.setdefault(v0, [self.g.value(v0).name or ""]).append(val.name)

    def _cluster(self, c: Cluster) -> None:
        self.clusters.append(c)
        if c.repeat > 1 and c.kind == "module":
            self.folded_frames.add(c.id)
        self.cluster_parent[c.id] = c.parent

    def _order(self, n: Node) -> int:
        return 2 * self.sel.pos[n.id]

    def _op(self, n: Node, cluster: Optional[str], repeat: int = 1, module: str = "", note: str = "") -> None:
        """An op box; ``module`` names the one-op module call it stands for;
        ``note`` says which arguments differ between the repeats it stands for."""
        shapes = L.type_list(self.g, n.outputs)
        lines = [f"{n.short_op} → {shapes}" if module and shapes else n.short_op if module else shapes]
        if n.witness is not None:
            lines.append(f"read {n.witness.describe()}")
        if n.id in self.raised:  # the op that failed: what it said
            lines.append(f"!! raised {self.raised[n.id]}")
        if (n.witness is not None or n.id in self.raised) and n.source is not None:
            lines.append(n.source.short())
        title = (module or n.short_op) + (f" × {repeat}" if repeat > 1 else "")
        self.boxes[n.id] = Box(n.id, "op", title, tuple(x for x in (*lines, note) if x), cluster, n.phase, repeat,
                               n.witness is not None, node_line(self.g, n), (n.id,), self._order(n))
        self.box_of[n.id] = n.id

    def _chunk(self, nodes: Tuple[Node, ...], cluster: Optional[str]) -> None:
        bid = f"chunk.{nodes[0].id}"
        params = [p for n in nodes for p in (self.sel.updated_param(n), *self.fold_params.get(n.id, ())) if p]
        lines = [L.updates(params), L.op_mix(nodes), L.line_span(nodes), *L.witness_lines(nodes)]
        self.boxes[bid] = Box(bid, "chunk", L.ops_word(len(nodes)), tuple(x for x in lines if x), cluster,
                              nodes[0].phase, 1, any(n.witness is not None for n in nodes),
                              f"ops {nodes[0].id}…{nodes[-1].id}", tuple(n.id for n in nodes), self._order(nodes[0]))
        for n in nodes:
            self.box_of[n.id] = bid

    def _group(self, grp: Group, cluster: Optional[str], parent: Group, repeat: int = 1,
               names: Optional[List[str]] = None, note: str = "") -> None:
        names = names or self.rep_names.get(grp.key)
        name = L.range_name(names) if names else L.relative_path(grp.path, parent.path if parent.call else None)
        name_type = " · ".join(x for x in (name, grp.type) if x)
        title = name_type + (f" × {repeat}" if repeat > 1 else "")
        phase_note = "" if grp.phase == "forward" else grp.phase
        tip = f"{grp.path or '<root>'} ({grp.type}, call {grp.call.call if grp.call else 0}, {grp.phase})"
        if len(grp.items) == 1 and isinstance(grp.items[0], Node):
            # a frame around one op says nothing the op box cannot say
            self._op(grp.items[0], cluster, repeat, module=name_type, note=note)
            return
        if grp.depth >= self.depth:
            self.collapsed += 1
            ins, outs = boundary(self.sel, grp.nodes)
            params = group_params(self.g, grp)
            counts = L.ops_word(len(grp.nodes)) + (f" · {L.human(params)} params" if params else "")
            flow = " → ".join(x for x in (L.type_list(self.g, ins), L.type_list(self.g, outs)) if x)
            lines = [counts, flow, *L.witness_lines(grp.nodes), phase_note, note]
            self.boxes[grp.key] = Box(grp.key, "module", title, tuple(x for x in lines if x), cluster, grp.phase,
                                      repeat, any(n.witness is not None for n in grp.nodes),
                                      tip + "\n" + L.op_mix(grp.nodes, 6), tuple(n.id for n in grp.nodes),
                                      self._order(grp.nodes[0]))
            for n in grp.nodes:
                self.box_of[n.id] = grp.key
            return
        if phase_note:
            title += f" · {phase_note}"
        self._cluster(Cluster(grp.key, "module", title, cluster, grp.phase, repeat, tip, self._order(grp.nodes[0]),
                              note))
        self._container(grp, grp.key)

    # -- edges ----------------------------------------------------------------
    def final(self, nid: str) -> str:
        while nid in self.alias:
            nid = self.alias[nid]
        return nid

    def _runs_path(self, nid: str) -> Dict[int, int]:
        chain = [nid]
        while chain[-1] in self.alias:
            chain.append(self.alias[chain[-1]])
        out: Dict[int, int] = {}
        for x in reversed(chain):
            out.update(self.runs_of.get(x, {}))
        return out

    def edges(self) -> Tuple[List[Edge], List[Box]]:
        """Edges between boxes, plus the source and output boxes they need."""
        if self._edges is None:
            self._edges = self._make_edges()
        return self._edges

    def size(self) -> int:
        """Boxes drawn, sources and outputs included."""
        return len(self.boxes) + len(self.edges()[1])

    def _make_edges(self) -> Tuple[List[Edge], List[Box]]:
        flows: Dict[Tuple[str, str], List[str]] = {}
        phase_of: Dict[Tuple[str, str], str] = {}
        sources: Dict[str, List[str]] = {}  # value id -> consumer box ids
        for n in self.sel.nodes:
            dst = self.box_of[self.final(n.id)]
            path_n: Optional[Dict[int, int]] = None
            for nid, vid in self.sel.inputs(n):
                if path_n is None:
                    path_n = self._runs_path(n.id)
                if nid is not None:
                    pu = self._runs_path(nid)
                    if any(r in path_n and path_n[r] != k for r, k in pu.items()):
                        continue  # between two iterations of one fold: drawn once as the fold
                    src = self.box_of[self.final(nid)]
                else:
                    if (any(path_n.values()) and self._drawn_as_first(n, vid)) or not self._wants_source(vid, dst):
                        continue  # (a later iteration's: the first's source stands for it, `a (+3 more)`)
                    src = "v:" + vid
                    sources.setdefault(vid, []).append(dst)
                if src != dst:
                    flows.setdefault((src, dst), []).append(vid)
                    phase_of.setdefault((src, dst), n.phase)
        extra: List[Box] = []
        for k, (vid, title) in enumerate(self._outputs()):
            val = self.g.value(vid)
            box = Box(f"out:{vid}", "output", title or (val.name if val.role == "activation" else None) or "output",
                      (type_str(val),), None, "forward", tooltip=f"output {vid}: {type_str(val)}", order=10**9 + k)
            extra.append(box)
            origins = self.sel.origins(vid)
            made = next(((nid, v) for nid, v in origins if nid is not None), None)
            if made is not None:
                flows.setdefault((self.box_of[self.final(made[0])], box.id), []).append(made[1])
                continue
            v = origins[0][1] if origins else vid  # (seen through hidden ops: `x.view(-1)` with views hidden)
            if self.g.value(v).role == "activation":  # (made outside the view: outside the focus, which
                extra.pop()                           # may read it, `encoder_hidden_states`: no output of its)
                continue
            if v not in sources:
                sources[v] = []  # (an input or parameter returned as it came in: its own box)
            flows.setdefault(("v:" + v, box.id), []).append(v)
        extra[:0] = [self._source_box(vid, consumers) for vid, consumers in sources.items()]
        edges = [Edge(s, d, tuple(dict.fromkeys(vs)), L.type_list(self.g, dict.fromkeys(vs)),
                      phase_of.get((s, d), "forward")) for (s, d), vs in flows.items()]
        return edges, list({b.id: b for b in extra}.values())

    def _drawn_as_first(self, n: Node, vid: str) -> bool:
        """Is outside value ``vid``, read by ``n`` in a later piece of a fold, drawn
        through the op that stands for ``n`` (which reads an outside value there
        too)? Not when that op reads an activation there (the encoder of `h`, `2h`,
        `3h`, then of an input `b`: `b` must be drawn)."""
        n0 = self.g.node(self.final(n.id))
        for v0, v in zip(n0.inputs, n.inputs):
            if v == vid:
                return all(nid is None for nid, _ in self.sel.origins(v0))
        return True

    def _outputs(self) -> List[Tuple[str, Optional[str]]]:
        """(value id, title) of the output boxes: what the traced calls returned,
        where the view shows the forward; in a focus, also what the focused
        calls made that ops outside them read ("to `decoder`")."""
        out: List[Tuple[str, Optional[str]]] = []
        if self.sel.shows("forward"):
            out = [(vid, None) for vid in self.g.outputs]
        if self.sel.focus_calls:
            said = {vid for vid, _ in out}
            # (the op drawn, which output) -> the value drawn, the parameters whose .grad AccumulateGrad
            # makes of it (`h.0.fc.weight`), where else it goes: a folded call's iterations make one box
            drawn: Dict[Tuple[str, int], Tuple[str, List[str], List[Optional[str]]]] = {}
            for vid, grads, paths in self.sel.leaving():
                if vid not in said:
                    made = self.sel.producer(vid)
                    key = (self.final(made), self.g.node(made).outputs.index(vid))
                    _, all_grads, all_paths = drawn.setdefault(key, (vid, [], []))
                    all_grads.extend(grads)
                    all_paths.extend(paths)
            for vid, grads, paths in drawn.values():
                grad = f"{L.range_name(list(dict.fromkeys(grads)))}.grad" if grads else ""
                out.append((vid, ", ".join(x for x in (grad, L.to_readers(paths) if paths else "") if x)))
        return out

    def _wants_source(self, vid: str, consumer: str) -> bool:
        val = self.g.value(vid)
        if val.role == "input" or (val.role == "activation" and self.sel.other_phase(vid) is None):
            return True  # a traced input, or an input of the focused module
        return self.opts.params and self.boxes[consumer].kind == "op"

    def _source_box(self, vid: str, consumers: List[str]) -> Box:
        val = self.g.value(vid)
        clusters = [self.boxes[c].cluster for c in consumers]
        order = min((self.boxes[c].order for c in consumers), default=10**9) - 1
        kind = val.role if val.role in ("input", "param", "buffer", "constant") else "input"
        if val.role == "activation":
            ph = self.sel.other_phase(vid)
            title = f"{ph} value" if ph else "input"
            cluster = None
        elif val.role == "input":  # (a fold's: every input it stands for, `a (+3 more)`)
            title, cluster = self._fold_name(vid) or val.name or "input", None
            order -= 10**9  # traced inputs come first
        else:
            cluster = self._common_cluster(clusters)
            base = self._cluster_path(cluster)
            # (drawn in the frame of the folded blocks, `0…3 · Block × 4`, that frame names the fold; in a
            # frame around them, `body`, around folded one-op blocks, the name does: `0…3.weight`)
            inside = bool(base and val.name and val.name.startswith(base + ".")) and self._folded_frame(cluster)
            name = (None if inside else self._fold_name(vid)) or val.name
            title = L.relative_path(name, base) if name else val.role
        return Box("v:" + vid, kind, title, (type_str(val),), cluster, "forward",
                   tooltip=f"{val.role} {vid}: {type_str(val)}" + (f" {val.name}" if val.name else ""), order=order)

    def _fold_name(self, vid: str) -> Optional[str]:
        """The names of every value a fold's source box ``vid`` stands for (``_stands_for``)."""
        names = self.fold_names.get(vid)
        return L.range_name(list(dict.fromkeys(names))) if names else None

    def _folded_frame(self, cid: Optional[str]) -> bool:
        """Is the frame ``cid``, or a module frame around it, one drawn for folded blocks?"""
        while cid is not None:
            if cid in self.folded_frames:
                return True
            cid = self.cluster_parent.get(cid)
        return False

    def _cluster_path(self, cid: Optional[str]) -> Optional[str]:
        while cid is not None and cid.startswith("loop."):
            cid = self.cluster_parent.get(cid)
        if cid is None:
            return None
        mid = cid.split(".", 1)[0]
        return self.g.module(mid).path

    def _common_cluster(self, clusters: List[Optional[str]]) -> Optional[str]:
        def chain(c: Optional[str]) -> List[Optional[str]]:
            out: List[Optional[str]] = []
            while c is not None and c not in out:  # (never a cycle: each cluster id is given once)
                out.append(c)
                c = self.cluster_parent.get(c)
            return out[::-1]

        chains = [chain(c) for c in clusters]
        common: Optional[str] = None
        for level in zip(*chains):
            if len(set(level)) != 1:
                break
            common = level[0]
        return common


def _line_of(n: Node) -> Optional[tuple]:
    """(file, line, phase) of an op, for chunks by line (None: no source line)."""
    return None if n.source is None else (n.source.file, n.source.line, n.phase)


def _merged(units: List[Unit], joins: Callable[[tuple, tuple], bool]) -> List[Unit]:
    """``units`` with each run of op tuples that ``joins`` (the last so far, the next) made one tuple."""
    out: List[Unit] = []
    for u in units:
        if out and isinstance(u, tuple) and isinstance(out[-1], tuple) and joins(out[-1], u):
            out[-1] = out[-1] + u
        else:
            out.append(u)
    return out
