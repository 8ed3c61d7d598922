"""The terminal report (``torchtrace show``): a rich tree of module calls
with op counts, parameters, output types and saved-for-backward bytes;
an op histogram; the witnesses with the values Python read and where.

``renderable(graph, **view_options)`` returns a rich renderable; all text
goes into ``rich.text.Text`` objects, never markup, so names like
``[bold]`` or ``a]b`` print as they are.
"""
from __future__ import annotations

import io
from collections import Counter
from typing import Any, List, Optional, Sequence

from rich.console import Console, Group as RichGroup, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..errors import UsageError
from ..ir import Graph, Node
from ..textform import cut_off_note, plural, unrecorded_note
from ..views import Prepared, ViewOptions, ended_by, view_options
from ..views import labels as L
from ..views.facts import boundary, group_params, saved_bytes
from ..views.fold import item_nodes
from ..views.groups import Group
from ._escape import one_line

HISTOGRAM_ROWS = 15


def renderable(graph: Graph, options: Optional[ViewOptions] = None, **opts: Any) -> RenderableType:
    """Header, module tree, op histogram and witness table, as one rich Group.
    View options: ``depth`` limits the tree (default: all levels), ``fold``,
    ``phase``, ``focus``, ``hide`` as for the diagrams."""
    o = options if options is not None else view_options(**opts)
    prep = Prepared(graph, o.with_(max_boxes=None))
    if not prep.sel.nodes:  # (as the diagrams say it: no empty tree and table)
        return RichGroup(_header(prep), Text("nothing to draw: no ops in this view", style="bold"))
    tree = _tree(prep, o.depth)  # (no heading over nothing: optimizer ops run outside any module call)
    parts: List[RenderableType] = [_header(prep), *([tree] if tree.children else []),
                                   _histogram(prep.sel.nodes, prep.sel.phase)]
    wit = [n for n in prep.sel.nodes if n.witness is not None]
    if wit:
        parts.append(_witnesses(graph, wit))
    return RichGroup(*parts)


terminal_view = renderable  # the name `torchtrace show` imports


def _header(prep: Prepared) -> Text:
    g, sel = prep.graph, prep.sel
    phases = Counter(n.phase for n in g.nodes)
    label = g.meta.get("label")
    t = Text()
    t.append("torchtrace graph", style="bold")
    if label:
        t.append(f" {one_line(label)}", style="bold cyan")
    split = " (" + ", ".join(f"{c} {p}" for p, c in phases.items()) + ")" if phases else ""
    t.append(f" · {len(g.nodes)} ops{split}\n")
    facts = [plural(len(g.values), "value"), plural(len(g.modules), "module call")]
    facts += [f"{key} {one_line(g.meta[key])}" for key in ("grad_mode", "step", "rank") if g.meta.get(key) is not None]
    total_saved = sum(a.saved_bytes for a in g.autograd.nodes)
    if total_saved:
        facts.append(f"saved for backward {L.human_bytes(total_saved)}")
    t.append(" · ".join(facts))
    t.append(f"\nshowing phase {sel.phase}: {len(sel.nodes)} ops")
    if sel.focus_calls:  # (the other ops are left out: say why)
        t.append(f" in focus {one_line(repr(prep.opts.focus))}: {len(sel.focus_calls)} call(s)", style="bold")
    if sel.hidden:
        tags = sorted({tag for n in sel.hidden.values() for tag in n.tags if tag in prep.opts.hide})
        t.append(f" ({plural(len(sel.hidden), 'op')} tagged {', '.join(tags)} hidden)", style="dim")
    if cut_off_note(g):
        t.append(f"\n!! truncated: {cut_off_note(g)}", style="bold red")
    if ended_by(g):  # (else the tree of the ops before the raise reads as a whole step)
        t.append(f"\n!! pass ended with {ended_by(g)}: the ops after the raise did not run", style="bold red")
    if unrecorded_note(g):
        t.append(f"\n!! {unrecorded_note(g)}", style="bold red")
    for nid, error in g.raised().items():  # the op that failed, and what it said
        n = g.node(nid)
        where = f" at {n.source.short()}" if n.source is not None else ""
        t.append(f"\n!! raised {one_line(error)}: `{n.short_op}`{where}", style="bold red")
    return t


def _tree(prep: Prepared, depth: Optional[int]) -> Tree:
    sel, g = prep.sel, prep.graph
    saved = saved_bytes(g)
    root = Tree(Text("module calls", style="bold"), guide_style="dim")

    def describe(grp: Group, parent: Group, names: Sequence[str], repeat: int, note: str = "",
                 members: Sequence[Group] = ()) -> Text:
        name = L.range_name(list(names)) if names else L.relative_path(grp.path, parent.path if parent.call else None)
        t = Text()
        t.append(one_line(name or "<root>"), style="bold")
        t.append(f" {one_line(grp.type)}", style="cyan")
        if repeat > 1:
            t.append(f" × {repeat}", style="bold magenta")
        if grp.phase != "forward":
            t.append(f" [{grp.phase}]", style="yellow")
        facts = [L.ops_word(len(grp.nodes))]
        params = group_params(g, grp)
        if params:
            facts.append(f"{L.human(params)} params")
        outs = L.type_list(g, boundary(sel, grp.nodes)[1])
        if outs:
            facts.append(f"→ {outs}")
        per = sorted({sum(saved.get(n.id, 0) for n in m.nodes) for m in members or (grp,)})
        if per[-1]:  # (a folded run's blocks: the first also saves the input they share, counted once)
            facts.append(f"saved {L.human_bytes(per[-1])}" if len(per) == 1
                         else f"saved {L.human_bytes(per[0])}–{L.human_bytes(per[-1])}")
        wit = sum(1 for n in grp.nodes if n.witness is not None)
        if wit:
            facts.append(f"{wit} witness" + ("es" if wit > 1 else ""))
        t.append("  " + one_line(" · ".join(facts)) + (" each" if repeat > 1 else ""), style="dim")
        if note:
            t.append(f" · {one_line(note)}", style="yellow")
        return t

    def add(tree: Tree, grp: Group) -> None:
        if depth is not None and grp.depth + 1 > depth:
            return
        add_items(tree, grp.items, grp, None)

    def add_items(tree: Tree, items: Sequence[Any], grp: Group, outer: Optional[tuple]) -> None:
        """``items`` of ``grp`` (or of a loop's first iteration: ``outer`` is (the
        items, where the loop starts, its period, its repeats)), folded as the views fold."""
        key = grp.key if outer is None else None
        runs = {r.start: r for r in prep.folder.runs(items, cache_key=key)} if prep.opts.fold else {}
        i = 0
        while i < len(items):
            r = runs.get(i)
            if r is not None and r.period == 1 and isinstance(items[i], Group):
                first = items[i]
                names = [L.relative_path(items[i + k].path, grp.path if grp.call else None) for k in range(r.reps)]
                note = L.args_differ([item_nodes(items[i + k]) for k in range(r.reps)])
                add(tree.add(describe(first, grp, names, r.reps, note, items[i: r.stop])), first)
                i = r.stop
                continue
            if r is not None:  # a loop over several items: its first iteration, marked
                body = items[i: i + r.period]
                nodes = [n for it in body for n in item_nodes(it)]
                note = L.args_differ([[n for it in items[i + k * r.period: i + (k + 1) * r.period]
                                       for n in item_nodes(it)] for k in range(r.reps)])
                loop = tree.add(Text(L.loop_title(nodes, r.reps), style="bold magenta")
                                + Text(f"  {L.ops_word(len(nodes))} each", style="dim")
                                + Text(f" · {note}" if note else "", style="yellow"))
                add_items(loop, body, grp, (items, i, r.period, r.reps))  # (a loop inside it folds too)
                i = r.stop
                continue
            if isinstance(items[i], Group):
                names: Sequence[str] = ()
                if outer is not None:  # modules that differ per iteration: name them all, as the views do
                    every, i0, period, reps = outer
                    names = [L.relative_path(every[i0 + k * period + i].path, grp.path if grp.call else None)
                             for k in range(reps)]
                    names = names if len(set(names)) > 1 else ()
                add(tree.add(describe(items[i], grp, names, 1)), items[i])
            i += 1

    add(root, prep.top)
    return root


def _histogram(nodes: Sequence[Node], phase: str) -> Table:
    counts = Counter(n.short_op for n in nodes)
    table = Table(title=f"ops ({phase})", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    total = max(len(nodes), 1)
    for op, c in counts.most_common(HISTOGRAM_ROWS):
        table.add_row(Text(one_line(op)), str(c), f"{100 * c / total:.1f}%")
    rest = counts.most_common()[HISTOGRAM_ROWS:]
    if rest:
        n = sum(c for _, c in rest)
        table.add_row(Text(f"… {plural(len(rest), 'more op')}", style="dim"), str(n), f"{100 * n / total:.1f}%")
    return table


def _witnesses(g: Graph, nodes: Sequence[Node]) -> Table:
    table = Table(title="witnesses (tensor data read by Python)", title_justify="left", show_edge=False,
                  pad_edge=False)
    for col in ("op", "read", "where", "module"):
        table.add_column(col)
    for n in nodes:
        assert n.witness is not None
        where = f"{n.source.short()} in {n.source.function}" if n.source is not None else "?"
        table.add_row(Text(one_line(n.short_op)), Text(one_line(n.witness.describe()), style="bold red"),
                      Text(one_line(where)),  # (outside any module call: "-", not the root's)
                      Text(one_line("-" if n.module is None else g.module_path(n.module) or "<root>")))
    return table


def render_terminal(graph: Graph, options: ViewOptions, *, width: int = 100) -> str:
    """The report as plain text, ``width`` columns wide."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 40:
        raise UsageError("bad value for width", expected="an integer >= 40", found=repr(width),
                         fix="pass width=100")
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True, force_terminal=False,
                      legacy_windows=False)
    console.print(renderable(graph, options))
    return console.export_text()


def print_graph(graph: Graph, console: Optional[Console] = None, **opts: Any) -> None:
    """Print the report to ``console`` (default: a new rich Console on stdout)."""
    (console or Console()).print(renderable(graph, **opts))
