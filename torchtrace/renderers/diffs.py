"""Renderings of a ``GraphDiff``: text (a unified diff, the explanation
first), Markdown, DOT/SVG and Mermaid (added ops green, removed red, changed
amber, unchanged runs collapsed into one box).

``render_diff(diff, fmt, **opts)`` is what ``torchtrace.render`` calls for a
``GraphDiff``. Options: ``context`` (unchanged ops kept around each hunk,
default 3); text/markdown: ``max_ops`` and ``max_changed`` (rows shown per
structural / changed hunk); dot/svg/mermaid: ``direction``, ``level`` (how
much to collapse, see ``diffview``; dot/svg without it: collapsed until at most
``DOT_MAX_EDGES`` edges); mermaid: ``max_edges``, ``max_chars``
(collapse further until the diagram fits); markdown: ``diagram`` (include
the Mermaid drawing, default True). The drawings are a ``views.View``
(``diffview``) drawn by ``dot.digraph`` and ``mermaid.flowchart``; all DOT
and Mermaid escaping comes from ``_escape``.
"""
from __future__ import annotations

import difflib
import json
import textwrap
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import RenderError, UsageError
from ..classify import ABSENT
from ..fingerprint import canonical_json
from ..textform import node_line, op_str, type_str
from ..typechange import changed_what
from ._escape import markdown_text, one_line

if TYPE_CHECKING:  # pragma: no cover
    from ..compare import GraphDiff, Hunk, OpPair
    from ..ir import Graph, Node

ARROW = "\u2192"
COLORS = {  # fill, border: green added, red removed, amber changed
    "only_b": ("#d4f7d4", "#1a7f37"),
    "only_a": ("#fbd5d5", "#cf222e"),
    "changed": ("#fff1c2", "#bf8700"),
    "same": ("#ffffff", "#8c959f"),
    "context": ("#f6f8fa", "#8c959f"),
}


OPTIONS: Dict[str, Tuple[str, ...]] = {
    "text": ("context", "max_ops", "max_changed"),
    "markdown": ("context", "max_ops", "max_changed", "diagram", "direction", "level", "max_edges", "max_chars"),
    "dot": ("context", "direction", "level"),
    "mermaid": ("context", "direction", "level", "max_edges", "max_chars"),
}
for _fmt in ("svg", "png", "pdf"):
    OPTIONS[_fmt] = OPTIONS["dot"]
OPTIONS["terminal"] = OPTIONS["text"]
FORMATS = tuple(OPTIONS)


def render_diff(diff: "GraphDiff", fmt: str = "text", **opts: Any) -> Union[str, bytes]:
    """Draw ``diff`` as ``fmt`` (see ``FORMATS``); bytes for png/pdf."""
    fmt = "markdown" if fmt == "md" else fmt
    if fmt not in OPTIONS:
        near = difflib.get_close_matches(str(fmt), list(OPTIONS), n=1)
        raise UsageError(f"unknown diff format {fmt!r}", expected="one of " + ", ".join(OPTIONS), found=repr(fmt),
                         fix=(f"did you mean {near[0]!r}? " if near else "") + "pass one of the listed formats")
    for name in opts:
        if name not in OPTIONS[fmt]:
            near = difflib.get_close_matches(name, OPTIONS[fmt], n=1)
            raise UsageError(f"unknown option {name!r} for a diff as {fmt!r}", expected="one of "
                             + ", ".join(OPTIONS[fmt]), found=repr(name),
                             fix=(f"did you mean {near[0]!r}? " if near else "") + "pass only the listed options")
    for name in ("context", "max_ops", "max_changed"):  # (counts of rows)
        _count(name, opts.get(name, 0))
    if fmt in ("text", "terminal"):
        return render_text(diff, **opts)
    if fmt == "markdown":
        return render_markdown(diff, **opts)
    if fmt == "mermaid":
        return render_mermaid(diff, **opts)
    from .dot import layout

    dot = digraph(diff, **opts)
    if fmt == "dot":
        return dot.source
    data = layout(dot, fmt)
    return data.decode("utf-8") if fmt == "svg" else data


# -- text ------------------------------------------------------------------

def _label(g: "Graph", name: str = "") -> str:
    """``A calm (28 ops, structure 93a6…, shapes 06f5…)``; without ``name``: from the label on."""
    label = g.meta.get("label")
    fp = g.fingerprints
    head = " ".join(x for x in (name, None if label is None else one_line(label)) if x)
    counts = f"({len(g.nodes)} ops, structure {fp.get('structure', '?')}, shapes {fp.get('shapes', '?')})"
    return f"{head} {counts}" if head else counts


def detail_lines(diff: "GraphDiff") -> List[str]:
    lines = []
    if diff.types:
        lines.append(f"{changed_what(diff.types)}: " + "; ".join(t.describe() for t in diff.types[:6])
                     + (f"; {len(diff.types) - 6} more" if len(diff.types) > 6 else ""))
    if diff.args:
        lines.append("args: " + "; ".join(a.describe() for a in diff.args[:6])
                     + (f"; {len(diff.args) - 6} more" if len(diff.args) > 6 else ""))
    if diff.inputs:
        lines.append("inputs: " + "; ".join(i.describe() for i in diff.inputs))
    said = diff.other_reads()
    if said:
        lines.append("other reads that differ: " + "; ".join(said[:4])
                     + (f"; {len(said) - 4} more" if len(said) > 4 else ""))
    if any(diff.ignored):
        lines.append(f"left out: {diff.ignored[0]} bookkeeping op{'' if diff.ignored[0] == 1 else 's'} in A, "
                     f"{diff.ignored[1]} in B (autograd_internal)")
    return lines


def render_text(diff: "GraphDiff", *, context: int = 3, max_ops: int = 40, max_changed: int = 8,
                **_: Any) -> str:
    out = [f"--- {_label(diff.a, 'A')}", f"+++ {_label(diff.b, 'B')}", diff.summary()]
    why = diff.why()
    if why:
        out += ["", "why:"]
        out.extend(f"  {one_line(line)}" for line in why)
    details = detail_lines(diff)
    if details:
        out.append("")
        out.extend(one_line(x) for x in details)
    if diff.kind != "identical" and not diff.hunks and not (diff.returned or diff.types or diff.args or diff.inputs):
        out.append("the fingerprints differ but every op matches: the returned values differ")
    out.extend(body_lines(diff, context=context, max_ops=max_ops, max_changed=max_changed))
    return "\n".join(out) + "\n"


STYLES = {"+": "green", "-": "red", "~": "yellow", "!": "bold yellow", "#": "bold", "@": "cyan"}


def render_rich(diff: "GraphDiff", **opts: Any) -> Any:
    """The text rendering as a ``rich.text.Text``: added lines green, removed
    red, changed amber, explanations bold (what ``rich.print(diff)`` shows)."""
    from rich.text import Text

    out = Text()
    for line in render_text(diff, **opts).splitlines():
        header = line.startswith(("--- ", "+++ ")) or line == "why:"
        out.append(line + "\n", style="bold" if header else STYLES.get(line[:1], ""))
    out.rstrip()  # print() adds the last newline
    return out


def _span(nodes: Sequence[Optional["Node"]]) -> str:
    ids = [n.id for n in nodes if n is not None]
    if not ids:
        return "-"
    return ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"


def blocks(diff: "GraphDiff", context: int) -> List[Tuple[int, int, List["Hunk"]]]:
    """Hunks whose context windows touch, merged into one displayed block
    ``(first row, end row, hunks)`` -- as a unified diff merges its hunks."""
    out: List[Tuple[int, int, List["Hunk"]]] = []
    for h in diff.hunks:
        lo, hi = max(0, h.span[0] - context), min(len(diff.ops), h.span[1] + context)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi), out[-1][2] + [h])
        else:
            out.append((lo, hi, [h]))
    return out


def body_lines(diff: "GraphDiff", *, context: int = 3, max_ops: int = 40, max_changed: int = 8) -> List[str]:
    """The hunks as a unified diff: ``-`` only in A, ``+`` only in B, ``~``
    changed (A's op, then what B has), ``!`` a witness that read other data,
    two spaces for context; ``#`` lines explain the hunk below them."""
    out: List[str] = []
    for lo, hi, hunks in blocks(diff, context):
        rows = diff.ops[lo:hi]
        out += ["", f"@@ A {_span([p.a for p in rows])} | B {_span([p.b for p in rows])} @@"]
        starts = {h.span[0]: h for h in hunks}
        k = lo
        while k < hi:
            h = starts.get(k)
            if h is None:
                out.append(_row(diff, diff.ops[k]))
                k += 1
                continue
            out.append(f"# {h.index + 1}. {one_line(h.explanation)}")
            cap = max_changed if h.kind == "changed" else max_ops
            end = h.span[1]
            for p in diff.ops[k:min(end, k + cap)]:
                out.append(_row(diff, p))
            if end - k > cap:
                out.append(f"  ... {end - k - cap} more rows in this hunk")
            k = end
    return out


def _row(diff: "GraphDiff", p: "OpPair") -> str:
    if p.status == "only_a":
        return "- " + node_line(diff.a, p.a)
    if p.status == "only_b":
        return "+ " + node_line(diff.b, p.b)
    assert p.a is not None and p.b is not None
    if p.status == "same":
        return "  " + node_line(diff.a, p.a)
    if set(p.what) <= {"value", "line"}:  # not a change of its own: a read, or another call site
        notes = [f"B read {p.b.witness.describe()}"] if "value" in p.what and p.b.witness is not None else []
        if "line" in p.what and p.b.source is not None:  # another line, or the same helper line called from another
            wb = p.b.witness
            same = p.a.source is not None and p.a.source.short() == p.b.source.short()
            notes += [f"B called from {wb.called_from[0].short()}" if same and wb is not None and wb.called_from
                      else f"B at {p.b.source.short()}"]
        return ("! " if "value" in p.what else "  ") + node_line(diff.a, p.a) + "  | " + ", ".join(notes)
    return "~ " + _changed_line(diff, p)


def _changed_line(diff: "GraphDiff", p: "OpPair") -> str:
    """``n9 aten.addmm  f32[8,96] -> f32[1,96]  [shape]   # module  file:line``"""
    assert p.a is not None and p.b is not None
    a, b = p.a, p.b
    ta = ", ".join(type_str(diff.a.value(v)) for v in a.outputs)
    tb = ", ".join(type_str(diff.b.value(v)) for v in b.outputs)
    if ta == tb:  # outputs alike: the inputs changed
        ta = "(" + ", ".join(type_str(diff.a.value(v)) for v in a.inputs) + ")"
        tb = "(" + ", ".join(type_str(diff.b.value(v)) for v in b.inputs) + ")"
    parts = [f"{a.id:<5} {op_str(a.op)}", f"{ta} {ARROW} {tb}" if ta != tb else ta]
    if "args" in p.what:
        for k in sorted(set(a.args) | set(b.args)):
            va, vb = a.args.get(k, ABSENT), b.args.get(k, ABSENT)
            if (va is ABSENT) != (vb is ABSENT) or va is not ABSENT and canonical_json(va) != canonical_json(vb):
                parts.append(f"{k}={_arg(va)} {ARROW} {_arg(vb)}")
    if "wiring" in p.what:
        parts.append(f"inputs {' '.join(a.inputs)} {ARROW} B {' '.join(b.inputs)}")
    if "value" in p.what and a.witness is not None and b.witness is not None:
        parts.append(f"read {a.witness.describe()} {ARROW} {b.witness.describe()}")
    line = "  ".join(parts) + f"  [{','.join(p.what)}]"
    where = [one_line(diff.a.module_path(a.module) or "<root>")] if a.module is not None else []
    if a.source is not None:
        where.append(a.source.short())
    return f"{line:<72}  # {'  '.join(where)}" if where else line


def _arg(v: Any) -> str:
    return repr(v) if v is ABSENT else json.dumps(v, ensure_ascii=False)


# -- markdown ----------------------------------------------------------------

def render_markdown(diff: "GraphDiff", *, context: int = 3, max_ops: int = 40, max_changed: int = 8,
                    diagram: bool = True, **opts: Any) -> str:
    out = [f"**torchtrace diff**: {diff.summary()}", ""]
    out.append(f"- A: {markdown_text(_label(diff.a))}")
    out.append(f"- B: {markdown_text(_label(diff.b))}")
    why = diff.why()
    if why:
        out += ["", "**Why**", ""]
        out.extend(f"- {markdown_text(one_line(line))}" for line in why)
    details = detail_lines(diff)
    if details:
        out += ["", "**Details**", ""]
        out.extend(f"- {markdown_text(one_line(line))}" for line in details)
    if diff.hunks:
        text = "\n".join(body_lines(diff, context=context, max_ops=max_ops, max_changed=max_changed)).strip("\n")
        fence = "```"
        while fence in text:
            fence += "`"
        out += ["", fence + "diff", text, fence]
        if diagram:
            out += ["", "```mermaid", render_mermaid(diff, context=context, **opts).rstrip("\n"), "```"]
    return "\n".join(out) + "\n"


# -- drawings ------------------------------------------------------------------

def _title(diff: "GraphDiff", notes: Sequence[str] = ()) -> List[str]:
    lines = ["torchtrace diff: " + diff.summary()]
    why = diff.why()
    lines += why[:4] + ([f"... {len(why) - 4} more causes"] if len(why) > 4 else [])
    return lines + list(notes)


# edges a diff drawn by `dot` may have unless a level is asked for (as many as Mermaid
# allows): a diff of two unrelated 2,000-op graphs at level 0 is ~2,000 edges, which
# `dot` lays out for minutes; at this size it takes under a second
DOT_MAX_EDGES = 500


def digraph(diff: "GraphDiff", *, context: int = 3, direction: str = "TB", level: Optional[int] = None,
            **_: Any) -> Any:
    """The diff as a ``graphviz.Digraph``: ops only in B green, only in A
    red (dashed edges), changed amber, unchanged runs as grey folders. Without
    a ``level``, the most detailed level with at most ``DOT_MAX_EDGES`` edges."""
    from ..diffview import LEVELS, build_diff_view
    from ._escape import dot_text
    from .dot import digraph as view_digraph

    if level is None:  # (the view's notes say how far it collapsed)
        for lv in range(LEVELS):
            dv = build_diff_view(diff, context=context, level=lv)
            if len(dv.view.edges) <= DOT_MAX_EDGES:
                break
    else:
        dv = build_diff_view(diff, context=context, level=_level(level))

    def box(b: Any) -> Dict[str, str]:
        status = dv.status[b.id]
        fill, border = COLORS[status if b.kind != "chunk" or status != "same" else "context"]
        attrs = {"fillcolor": fill, "color": border}
        if status != "same":
            attrs["penwidth"] = "2"
        return attrs

    def edge(e: Any) -> Dict[str, str]:
        status = dv.edge_status[(e.src, e.dst)]
        if status == "same":
            return {}
        return {"color": COLORS[status][1], "style": "dashed" if status == "only_a" else "solid", "penwidth": "1.5"}

    g = view_digraph(dv.view, direction=direction, name="torchtrace_diff", extra_box=box, extra_edge=edge)
    g.attr(label=dot_text("\n".join(_title(diff, dv.view.notes))), labelloc="t", fontsize="11")
    return g


STATUS_CLASS = {"only_b": "added", "only_a": "removed", "changed": "changed", "same": "same",
                "context": "context"}


def _class_defs() -> Dict[str, str]:
    out = {}
    for status, name in STATUS_CLASS.items():
        fill, border = COLORS[status]
        width = "2px" if status in ("only_a", "only_b", "changed") else "1px"
        dash = ",stroke-dasharray:4 2" if status == "context" else ""
        out[name] = f"fill:{fill},stroke:{border},stroke-width:{width},color:#1b2a41{dash}"
    out["note"] = "fill:#f6f8fa,stroke:#d0d7de,color:#1b2a41"
    return out


def render_mermaid(diff: "GraphDiff", *, context: int = 3, direction: str = "TB", level: int = 0,
                   max_edges: Optional[int] = None, max_chars: Optional[int] = None, **_: Any) -> str:
    """A Mermaid flowchart (``mermaid.flowchart`` over the diff's view),
    collapsed level by level until it has at most ``max_edges`` edges and
    ``max_chars`` characters (Mermaid's defaults, which Markdown hosts
    cannot raise). Removed edges are dashed red, added ones green."""
    from ..diffview import LEVELS, build_diff_view
    from .mermaid import MAX_CHARS, MAX_EDGES, text_size

    max_edges = MAX_EDGES if max_edges is None else _positive("max_edges", max_edges)
    max_chars = MAX_CHARS if max_chars is None else _positive("max_chars", max_chars)
    for lv in range(_level(level), LEVELS):
        dv = build_diff_view(diff, context=context, level=lv)
        text = _mermaid(diff, dv, direction, edge_labels=lv == 0)
        if len(dv.view.edges) <= max_edges and text_size(text) <= max_chars:
            return text
    raise RenderError("the diff does not fit in one Mermaid diagram",
                      expected=f"at most {max_edges} edges and {max_chars} characters",
                      found=f"{len(dv.view.edges)} edges, {text_size(text)} characters after collapsing",
                      fix="render it as 'svg' or 'dot', or compare smaller graphs")


def _mermaid(diff: "GraphDiff", dv: Any, direction: str, edge_labels: bool) -> str:
    from ..views import Box, View
    from .mermaid import flowchart

    note = Box(id="why", kind="chunk", title=diff.summary(), lines=_wrapped(diff.why()[:4]), order=-1)
    view = View((note, *dv.view.boxes), dv.view.edges, dv.view.clusters, dv.view.notes)

    def class_of(b: Any) -> str:
        if b.id == "why":
            return "note"
        status = dv.status[b.id]
        return STATUS_CLASS["context" if b.kind == "chunk" and status == "same" else status]

    text = flowchart(view, direction=direction, edge_labels=edge_labels, comments=tuple(_title(diff, dv.view.notes)),
                     class_of=class_of, class_defs=_class_defs())
    links: Dict[str, List[str]] = {}
    for k, e in enumerate(view.edges):  # flowchart writes the edges in this order
        status = dv.edge_status[(e.src, e.dst)]
        if status != "same":
            links.setdefault(status, []).append(str(k))
    for status, idx in links.items():
        dash = ",stroke-dasharray:4 3" if status == "only_a" else ""
        text += f"  linkStyle {','.join(idx)} stroke:{COLORS[status][1]},stroke-width:2px{dash}\n"
    return text


def _wrapped(lines: Sequence[str], most: int = 12) -> Tuple[str, ...]:
    """Lines of at most LINE_WIDTH characters (a label cuts longer ones), the
    continuation indented; at most ``most`` of them."""
    from .dot import LINE_WIDTH

    out = [piece for line in lines for piece in
           (textwrap.wrap(line, LINE_WIDTH, subsequent_indent="  ", break_on_hyphens=False) or [""])]
    return tuple(out if len(out) <= most else out[: most - 1] + ["…"])


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"bad value for {name}", expected="a positive integer", found=repr(value),
                         fix=f"leave {name} out to use Mermaid's default limit")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"bad value for {name}", expected="an integer, 0 or more", found=repr(value),
                         fix=f"pass e.g. {name}=3, or leave it out")
    return value


def _level(value: Any) -> int:
    from ..diffview import LEVELS

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < LEVELS:
        raise UsageError("bad value for level", expected=f"an integer from 0 to {LEVELS - 1}", found=repr(value),
                         fix="pass level=0 for the most detail; higher levels collapse more")
    return value
