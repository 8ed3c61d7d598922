"""The words on boxes and frames: names, counts, type lists, witness lines.
Plain text only; renderers escape it."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

from ..ir import Graph, Node
from ..textform import type_str

_INDEXED = re.compile(r"^(.*?)(\d+)$")


def human(n: int) -> str:
    """``1234`` -> ``1.2k``; ``3_100_000`` -> ``3.1M``."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            v = n / size
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def type_list(g: Graph, vids: Iterable[str], limit: int = 2) -> str:
    """``f32[1,8,32], i64[8] +3``: distinct types in order."""
    types: List[str] = []
    for v in vids:
        t = type_str(g.value(v))
        if t not in types:
            types.append(t)
    if not types:
        return ""
    more = f" +{len(types) - limit}" if len(types) > limit else ""
    return ", ".join(types[:limit]) + more


def relative_path(path: str, parent_path: Optional[str]) -> str:
    """``transformer.h.0.attn`` under ``transformer.h.0`` -> ``attn``."""
    if parent_path and path.startswith(parent_path + "."):
        return path[len(parent_path) + 1:]
    return path


def range_name(names: Sequence[str]) -> str:
    """Names of folded instances: ``h.0``…``h.47`` -> ``h.0…47``; equal names
    (one module called in a loop) stay one name; runs of such names one after
    another are listed (``enc.0…2, dec``), up to three, else the first and a count."""
    if not names:
        return ""
    runs: List[List[str]] = []
    for n in names:  # (a run that compresses goes on when its last two names and the next one do: linear)
        if runs and _compress([*runs[-1][-2:], n]) is not None:
            runs[-1].append(n)
        else:
            runs.append([n])
    said = [_compress(r) or r[0] for r in runs]
    if len(said) <= 3:
        return ", ".join(said)
    return f"{said[0]} (+{len(runs) - 1} more)"  # (more names, or runs of names, after the first)


def _compress(names: Sequence[str]) -> Optional[str]:
    """One name for ``names`` when they are one name or one counted range, else None."""
    if len(set(names)) == 1:
        return names[0]
    dotted = [n.split(".") for n in names]  # (one dotted part that counts: `0.weight`..`3.weight` -> `0…3.weight`)
    if len({len(d) for d in dotted}) == 1:
        cols = [k for k in range(len(dotted[0])) if len({d[k] for d in dotted}) > 1]
        if len(cols) == 1 and all(d[cols[0]].isdigit() for d in dotted) and cols[0] < len(dotted[0]) - 1:
            idx = [int(d[cols[0]]) for d in dotted]
            if _consecutive(idx):
                return ".".join([*dotted[0][:cols[0]], f"{idx[0]}…{idx[-1]}", *dotted[0][cols[0] + 1:]])
    parts = [_INDEXED.match(n) for n in names]
    if all(parts) and len({m.group(1) for m in parts}) == 1:  # type: ignore[union-attr]
        idx = [int(m.group(2)) for m in parts]  # type: ignore[union-attr]
        if _consecutive(idx):
            return f"{names[0]}…{idx[-1]}"
    return None


def _consecutive(idx: List[int]) -> bool:
    """Indices one apart, up (0, 1, 2) or down (backward runs: 2, 1, 0)?"""
    step = 1 if len(idx) < 2 or idx[1] > idx[0] else -1
    return idx == list(range(idx[0], idx[0] + step * len(idx), step))


def to_readers(paths: Sequence[Optional[str]], limit: int = 3) -> str:
    """Where a value leaving a focus goes: the module paths of the ops that read it (None:
    code outside any module, the caller). ``to decoder``; a reader inside another one is
    said by it (``to h.1``, not ``to h.1.ln_1, h.1``); several under one module are named
    under it, a few of them: ``to layer.0: attn.q, attn.k, attn.v (+2 more)``."""
    named = list(dict.fromkeys(p for p in paths if p is not None))
    named = ["<root>"] if "" in named else [p for p in named if not any(p.startswith(q + ".") for q in named)]
    one = _compress(named) if len(named) > 1 else None  # (`h.0…2`)
    parts = [n.split(".") for n in ([one] if one else named)]
    common = len(_common(parts)) if len(parts) > 1 else 0
    if common and common == min(map(len, parts)):  # (each keeps a name of its own after it)
        common -= 1
    head = ".".join(parts[0][:common]) + ": " if common else ""
    said = [".".join(x[common:]) for x in parts] + (["the caller"] if None in paths else [])
    more = ""
    if len(said) > limit + 1:
        said, more = said[:limit], f" (+{len(said) - limit} more)"
    return f"to {head}{', '.join(said)}{more}"


def updates(params: Sequence[str]) -> str:
    """The parameters an optimizer's ops update: ``updates h.0.attn.c_attn.weight``,
    ``updates 12 params of h.0``, a loop's ``updates 96 params of h.0…47.ln_1``."""
    params = list(dict.fromkeys(params))
    if len(params) < 2:
        return f"updates {params[0]}" if params else ""
    mods = list(dict.fromkeys(".".join(module_parts(p)) for p in params))
    where = _compress(mods) or ".".join(_common([m.split(".") for m in mods]))
    return f"updates {len(params)} params" + (f" of {where}" if where else "")


def module_parts(param: Optional[str]) -> List[str]:
    """``h.0.attn.c_attn.weight`` -> ``["h", "0", "attn", "c_attn"]``: the path of its module."""
    return param.split(".")[:-1] if param else []


def _common(parts: Sequence[Sequence[str]]) -> List[str]:
    """The parts all of ``parts`` begin with."""
    out: List[str] = []
    for col in zip(*parts):
        if len(set(col)) > 1:
            break
        out.append(col[0])
    return out


def witness_line(n: Node) -> str:
    where = f" at {n.source.short()}" if n.source is not None else ""
    assert n.witness is not None
    return f"read {n.witness.describe()}{where}"


def witness_lines(nodes: Iterable[Node], limit: int = 1) -> List[str]:
    ws = [n for n in nodes if n.witness is not None]
    lines = [witness_line(n) for n in ws[:limit]]
    if len(ws) > limit:
        lines.append(f"+{len(ws) - limit} more witnesses")
    return lines


def op_mix(nodes: Sequence[Node], limit: int = 3) -> str:
    """The most frequent ops: ``mm ×4, add, tanh…``."""
    counts = Counter(n.short_op for n in nodes)
    top = [f"{op} ×{c}" if c > 1 else op for op, c in counts.most_common(limit)]
    return ", ".join(top) + ("…" if len(counts) > limit else "")


def args_differ(pieces: Sequence[Sequence[Node]], limit: int = 3) -> str:
    """``dilation, padding differ``: the non-tensor arguments that are not
    the same in every folded piece (a loop's index, a conv stack's dilations),
    or "" when the pieces ran with the same ones."""
    keys: Dict[str, None] = {}
    for nodes in zip(*pieces):
        first = nodes[0].args
        for n in nodes[1:]:
            if n.args != first:
                keys.update(dict.fromkeys(k for k in (*first, *n.args) if first.get(k) != n.args.get(k)))
    if not keys:
        return ""
    names = list(keys)
    return f"{', '.join(names[:limit])}{'…' if len(names) > limit else ''} differ{'s' if len(names) == 1 else ''}"


def loop_title(nodes: Sequence[Node], reps: int, own: Sequence[Node] = ()) -> str:
    """``loop model.py:31 × 50``, at the lines of ``own`` (the ops run by the
    loop's code itself, outside the module calls in it) when there are any; a
    repeat of backward (and recompute) ops is the backward of that code run
    again, not a loop at its lines: ``backward of model.py:7 × 3`` (reentrant
    checkpoint's recompute-then-backward per block, or the backward of a
    forward loop)."""
    span = line_span(own) or line_span(nodes)
    if not any(n.phase in ("backward", "recompute") for n in nodes):
        return f"loop {span} × {reps}" if span else f"loop × {reps}"
    return f"backward of {span} × {reps}" if span else f"backward × {reps}"


def line_span(nodes: Sequence[Node]) -> str:
    """``model.py:16`` or ``model.py:16–18`` for ops from one file."""
    srcs = [n.source for n in nodes if n.source is not None]
    if not srcs:
        return ""
    first = srcs[0]
    lines = sorted({s.line for s in srcs if s.file == first.file})
    name = first.short().rsplit(":", 1)[0]
    return f"{name}:{lines[0]}" if len(lines) == 1 else f"{name}:{lines[0]}–{lines[-1]}"


def ops_word(n: int) -> str:
    return f"{n} op" if n == 1 else f"{n} ops"
