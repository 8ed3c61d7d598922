"""The canonical text form of a Graph: one line per op, like a jaxpr.

    n1  v3:f32[2,3] = aten.addmm v2 v0 v1 {beta=1}        # fc  model.py:12

Also the short names used by every renderer (``f32[2,3]``).
"""
from __future__ import annotations

import json
import re
import unicodedata
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph, Node, Value

_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")


_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean(text: object) -> str:
    """Any object as printable text: line breaks normalised to ``\\n``, tabs to
    spaces, other control characters, lone surrogates and the bidirectional
    overrides and isolates (which would draw the rest of a label reversed) to U+FFFD."""
    s = _NEWLINES.sub("\n", str(text)).replace("\t", " ")
    out = []
    for c in s:
        if c == "\n" or c.isprintable() or c == " ":
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") or c in _BIDI:
            out.append("\ufffd")
        else:  # format characters (zero-width joiners…) and separators are harmless
            out.append(c)
    return "".join(out)


def one_line(text: object) -> str:
    """``clean`` text for one line of a terminal tree or table cell: a line break
    (a ``ModuleDict`` key may hold one) shows as ⏎ instead of breaking the layout."""
    return clean(text).replace("\n", "\u23ce")


DTYPE_SHORT = {
    "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8",
    "bool": "b8", "complex64": "c64", "complex128": "c128",
    "float8_e4m3fn": "f8e4m3", "float8_e5m2": "f8e5m2",
}


def plural(k: int, word: str) -> str:
    """``1 op``, ``2 ops``, ``3 hunks``, ``2 witness reads``."""
    return f"{k} {word}{'' if k == 1 else ('es' if word.endswith(('ch', 'sh', 's', 'x')) else 's')}"


def listed(changes: Sequence[Any], k: int, noun: str) -> List[str]:
    """The first ``k`` of ``changes`` described, then how many more (``1 more arg change``)."""
    return [c.describe() for c in changes[:k]] + ([f"{plural(len(changes) - k, f'more {noun}')}"]
                                                   if len(changes) > k else [])


def where(file: str, line: int) -> str:
    """```model.py:42```: a source line, by its file's name."""
    return f"`{file.replace(chr(92), '/').rsplit('/', 1)[-1]}:{line}`"


def number_ranges(numbers: Iterable[int], most: int = 3) -> str:
    """``0–1, 3`` for 0, 1, 3; ``4`` for 4 alone; past ``most`` runs (and one more),
    the rest as ``… (+2 more)``."""
    runs: List[List[int]] = []
    for k in sorted(set(numbers)):
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    shown = runs if len(runs) <= most + 1 else runs[:most]
    text = ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in shown)
    return text + (f", … (+{len(runs) - most} more)" if len(shown) < len(runs) else "")


def ordinal(k: int) -> str:
    """``1st``, ``2nd``, ``11th``."""
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def dtype_short(dtype: str) -> str:
    return DTYPE_SHORT.get(dtype, dtype)


def shape_str(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def type_str(v: "Value") -> str:
    """``f32[2,3]``"""
    return type_text(v.dtype, v.shape)


def type_text(dtype: str, shape: Iterable[int]) -> str:
    """``f32[2,3]`` from an IR dtype and shape."""
    return f"{dtype_short(dtype)}{shape_str(shape)}"


def ir_name(x: Any) -> str:
    """A torch dtype or device as the IR writes it (``float32``, ``cuda:0``)."""
    return str(x).replace("torch.", "")


def op_str(op: str) -> str:
    """``aten.addmm.default`` -> ``aten.addmm``; other overloads stay."""
    return op[: -len(".default")] if op.endswith(".default") else op


def args_str(args: Any) -> str:
    if not args:
        return ""
    return "{" + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items()) + "}"


def node_line(g: "Graph", n: "Node") -> str:
    outs = ", ".join(f"{v}:{type_str(g.value(v))}" for v in n.outputs)
    lhs = f"{outs} = " if outs else ""
    rhs = " ".join([op_str(n.op), *n.inputs])
    extra = args_str(n.args)
    if extra:
        rhs += " " + extra
    if n.witness is not None:
        rhs += f" -> {n.witness.describe()}"
    flags = [n.phase] if n.phase != "forward" else []
    flags += [t for t in n.tags if t != "witness" and t != n.phase] + (["witness"] if n.witness is not None else [])
    if flags:
        rhs += "  [" + ",".join(flags) + "]"
    if n.id in g.raised():
        rhs += f"  !! raised {g.raised()[n.id]}"
    where = []
    if n.module is not None:
        where.append(one_line(g.module(n.module).path or "<root>"))
    if n.source is not None:
        where.append(n.source.short())
    line = f"{n.id:<5} {lhs}{rhs}"
    return f"{line:<72}  # {'  '.join(where)}" if where else line


def cut_off_note(g: "Graph") -> str:
    """What a pass cut off at ``max_ops`` is missing ("" for a whole pass)."""
    if not g.meta.get("truncated"):
        return ""
    return f"recording stopped after {len(g.nodes)} ops (max_ops); later ops are missing"


def unrecorded_note(g: "Graph") -> str:
    """What the recorder could not read in a pass (``meta.record_errors``), "" if nothing."""
    errs = g.meta.get("record_errors")
    if not isinstance(errs, dict) or not errs.get("count"):
        return ""
    return f"{errs['count']} op(s) not fully recorded (meta.record_errors), first: {one_line(str(errs.get('first')))}"


def format_graph(g: "Graph") -> str:
    meta = g.meta
    head = [f"torchtrace.graph {len(g.nodes)} ops"]
    for key in ("label", "step", "rank", "grad_mode"):
        if meta.get(key) is not None:
            head.append(f"{key}={one_line(meta[key])}")
    if meta.get("truncated"):
        head.append("TRUNCATED")
    if meta.get("error"):  # (the ops before the raise only)
        head.append(f"ENDED WITH {one_line(str(meta['error']))}")
    lines: List[str] = ["# " + " ".join(head)]
    if unrecorded_note(g):
        lines.append(f"# {unrecorded_note(g)}")
    for v in g.values:
        if v.role != "activation" and v.version_of is None:
            name = f" {one_line(v.name)}" if v.name else ""
            lines.append(f"{v.role:<8} {v.id}:{type_str(v)}{name}")
    lines.extend(node_line(g, n) for n in g.nodes)
    if g.outputs:
        lines.append("return " + " ".join(g.outputs))
    return "\n".join(lines)


def common_module(paths: Iterable[str]) -> str:
    """The deepest module path that contains all ``paths`` (``""`` = root)."""
    parts: Optional[List[str]] = None
    for p in paths:
        ps = p.split(".") if p else []
        if parts is None:
            parts = ps
        else:
            k = 0
            while k < len(parts) and k < len(ps) and parts[k] == ps[k]:
                k += 1
            parts = parts[:k]
    return ".".join(parts or [])
