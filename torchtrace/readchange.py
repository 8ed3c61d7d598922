"""A read that returned other data in A and B (``WitnessChange``), and how it
is said: "`model.py:42` read True in A, False in B", with the call site of a
helper, the call of a module called several times, and the hedges of a guess."""
from __future__ import annotations

import linecache
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from .textform import ordinal, shape_str, where

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Node, Witness


def read_str(w: "Witness") -> str:
    if w.shape is not None:
        return "shape " + shape_str(w.shape)
    v = w.value
    if isinstance(v, float):  # 6 digits; a whole number keeps its point (a float read is no count)
        text = f"{v:.6g}"
        return f"{text}.0" if text.lstrip("-").isdigit() else text
    return v if isinstance(v, str) else repr(v)  # (text: a tolist() read, "nan")


@dataclass(frozen=True)
class WitnessChange:
    """A data read at the same line (the same aligned op) that returned
    different data in A and B: the branch it steered went different ways."""

    file: str
    line: int
    function: str
    a: "Witness"
    b: "Witness"
    node_a: str
    node_b: str
    weak: bool = False
    call: Optional[Tuple[str, int, int]] = None  # a module called more than once: (path, call in A, call in B)
    via: Optional[Tuple[str, str]] = None  # a helper read from several call sites: (call site in A, in B)
    also: Tuple["WitnessChange", ...] = ()  # other reads that differ just as near (nothing only in A or B since)
    others: Tuple["WitnessChange", ...] = ()  # the reads kept in names other `if`s of the hunk's ops test
    merged: bool = False  # weak because the branch it decided ended before: both passes ran the same ops since
    passed: Optional[str] = None  # the changed op argument its values are (``topk`` k=3 -> 2 after ``k = int(...)``)
    named: bool = False  # kept in the name that the `if` around the hunk tests (``_named_by_guard``)
    at_b: Optional[Tuple[str, int]] = None  # B's (file, line) where the aligned read ran at another line
    steered: bool = False  # weak: the nearest before ops that read other tensors or args, the same ops since

    @property
    def where(self) -> str:
        return where(self.file, self.line)

    def describe(self) -> str:
        text = f"{self.where}{self.called_from()}{self._call()}{self._reads()}"
        if self.passed:
            text += f" (passed on as {self.passed})"
        if self.also:
            text += f" (or, read earlier, {' or '.join(w.short() for w in self.also)})"
        if self.others:
            text += f" (and, for other ops of these, {' and '.join(w.short() for w in self.others)})"
        if not self.weak:
            return text
        if self.named:
            return f"{text} (a float kept in the name the `if` around these ops tests: maybe not the cause)"
        why = "its `if` ended before these ops, and both passes ran the same ops since" if self.merged else \
            "both passes ran the same ops since" if self.steered else \
            "a float" if isinstance(self.a.value, float) else "read into a call whose result is unused"
        return f"{text} ({why}: the nearest read that differs, maybe not the cause)"

    def short(self) -> str:
        """"`m.py:9` read False in A, True in B": the read alone (named as an alternative)."""
        return f"{self.where}{self.called_from()}{self._reads()}"

    def _reads(self) -> str:
        if self.at_b is not None:  # ("`r.py:11` read 3.0 in A, `r.py:13` read 1.0 in B": each side's line)
            return f" read {read_str(self.a)} in A, {where(*self.at_b)} read {read_str(self.b)} in B"
        return f" read {read_str(self.a)} in A, {read_str(self.b)} in B"

    def called_from(self) -> str:
        """" (called from `model.py:40`)": the call site of a helper function that
        read the data, when the pass read that line from more than one."""
        if self.via is None:
            return ""
        ta, tb = self.via
        return f" (called from {ta})" if ta == tb else f" (called from {ta} in A, {tb} in B)"

    def _call(self) -> str:
        """" (2nd call of `gate`)": which call of a module called several times per pass read it."""
        if self.call is None:
            return ""
        path, a, b = self.call
        path = path or "<root>"
        if a == b:
            return f" ({ordinal(a + 1)} call of `{path}`)"
        return f" (call {a + 1} of `{path}` in A, {b + 1} in B)"

    def mirror(self) -> "WitnessChange":
        call = (self.call[0], self.call[2], self.call[1]) if self.call else None
        via = (self.via[1], self.via[0]) if self.via else None
        at = dict(file=self.at_b[0], line=self.at_b[1], at_b=(self.file, self.line)) if self.at_b else {}
        return replace(self, a=self.b, b=self.a, node_a=self.node_b, node_b=self.node_a, call=call, via=via,
                       also=tuple(w.mirror() for w in self.also), others=tuple(w.mirror() for w in self.others),
                       **at)

    def to_dict(self) -> Dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function,
                "a": self.a.read(), "b": self.b.read(),
                "node_a": self.node_a, "node_b": self.node_b, "weak": self.weak, "merged": self.merged,
                "call": list(self.call) if self.call else None, "via": list(self.via) if self.via else None,
                "also": [w.short() for w in self.also], "others": [w.short() for w in self.others],
                "passed": self.passed, "named": self.named,
                "steered": self.steered,
                "at_b": {"file": self.at_b[0], "line": self.at_b[1]} if self.at_b else None}


def decisive(w: "Witness") -> bool:
    """A read that steers control flow by itself: a bool (``if``/``while``),
    an int or an integral float (a count), a data-dependent shape. Other
    floats (a logged loss) differ every step and decide nothing on their own."""
    if w.shape is not None or not isinstance(w.value, float):
        return True
    return w.value.is_integer()


def same_read(a: "Node", b: "Node") -> bool:
    """Are reads ``a`` and ``b``, aligned, one read: at one line, or at lines of two
    functions (a skipped library's read, named by the two callers' lines), or of one
    text? Not two statements of one function (two arms of an `if`, each reading)."""
    sa, sb = a.source, b.source
    if sa is None or sb is None or (sa.file, sa.line) == (sb.file, sb.line) or sa.function != sb.function:
        return True
    text = linecache.getline(sa.file, sa.line).strip()
    return bool(text) and text == linecache.getline(sb.file, sb.line).strip()
