"""A ``GraphDiff`` as text: a unified diff with the explanation first (what
``str(diff)`` prints), in colour for ``rich``, and the rows ``diffs.py``'s
Markdown reuses."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from ..classify import ABSENT
from ..fingerprint import canonical_json
from ..textform import node_line, op_str, type_str
from ..typechange import changed_what
from ._escape import one_line

if TYPE_CHECKING:  # pragma: no cover
    from ..compare import GraphDiff, Hunk, OpPair
    from ..ir import Graph, Node

ARROW = "\u2192"


def label(g: "Graph", name: str = "") -> str:
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
    out = [f"--- {label(diff.a, 'A')}", f"+++ {label(diff.b, 'B')}", diff.summary()]
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
