"""What ``loops.LoopFinder`` finds: a loop that ran a different number of
times in two aligned passes (``LoopChange``), as the diff says it."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence, Tuple

from .textform import ordinal, plural, where

TIMES = "\u00d7"
BRANCHES = ("if", "elif", "assert")

@dataclass(frozen=True)
class LoopChange:
    """A loop that ran a different number of times. ``via="witness"``: the
    loop condition read tensor data at ``line`` (``count`` = reads before the
    exit read); ``via="repeat"``: a block of ``period`` ops starting at ``line``
    repeats (a Python-level loop, no tensor read at its condition)."""

    file: str
    line: int
    function: str
    a: int
    b: int
    via: str
    period: int
    keyword: Optional[str] = None
    run: Optional[Tuple[int, int]] = None  # (k, runs): the loop statement's k-th run of ``runs`` in the pass
    calls: Optional[Tuple[str, str]] = None  # ("encoder.layer.*", "BertLayer"): the block is one module call
    readable: bool = True  # is its source readable here (else: which loop, and its count, are not known)

    def describe(self, called_from: str = "") -> str:
        """``called_from``: the call site of the helper whose condition read it (" (called from `m.py:9`)")."""
        if self.via == "repeat" and self.calls is not None:  # (its first op's line is inside the module)
            head = f"`{self.calls[0]}` ({self.calls[1]}, {plural(self.period, 'op')})"
        elif self.keyword is not None:  # (a repeat's: a `while` that reads its bound each time it tests it)
            head = f"`{self.keyword}` at {where(self.file, self.line)}{called_from}"
        elif not self.readable:  # (`a`, `b`: its reads, the exit's included; a header reads once more)
            run = f" (the {ordinal(self.run[0] + 1)} of its {self.run[1]} runs)" if self.run else ""
            if self.a < 0:  # (a number read: its runs are not told apart by a value that ends them)
                return f"in a loop whose source is not readable here{run}"
            return f"in a loop whose source is not readable here, it read {self.a}{TIMES} in A, " \
                   f"{self.b}{TIMES} in B{run}"
        elif self.via == "witness":
            head = f"the loop at {where(self.file, self.line)}{called_from}"
        else:
            head = f"the block at {where(self.file, self.line)} ({plural(self.period, 'op')})"
        run = f" (the {ordinal(self.run[0] + 1)} of its {self.run[1]} runs)" if self.run else ""
        return f"{head} ran {self.a}{TIMES} in A, {self.b}{TIMES} in B{run}"

    def mirror(self) -> "LoopChange":
        return replace(self, a=self.b, b=self.a)

    def to_dict(self) -> Dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function, "a": self.a, "b": self.b,
                "via": self.via, "period": self.period, "keyword": self.keyword,
                "run": list(self.run) if self.run else None, "calls": list(self.calls) if self.calls else None,
                "readable": self.readable}


def runs_said(cause: str, changes: Sequence[LoopChange]) -> str:
    """``cause`` (said without the loop's run) with the runs of the loop
    statement that ``changes`` (the hunks with that cause) changed: "(the 2nd
    of its 3 runs)", "(the 1st, 3rd and 4th of its 8 runs)", "(each of its 8 runs)"."""
    loops = [lc for lc in changes if lc.run is not None]
    if not loops:
        return cause
    ks = sorted({lc.run[0] for lc in loops})
    total = loops[0].run[1]
    if len(ks) == total > 1:
        text = f"each of its {total} runs"
    else:
        names = [ordinal(k + 1) for k in ks]
        names = names[:5] + [f"{len(names) - 5} more"] if len(names) > 6 else names
        text = "the " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]) + \
            f" of its {total} runs"
    bare = replace(loops[0], run=None).describe()
    return cause.replace(bare, f"{bare} ({text})", 1)
