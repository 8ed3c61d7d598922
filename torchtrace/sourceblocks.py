"""A source file's lines as read here (``linecache``) and its block structure,
read from indentation: the headers of the blocks around a line, where a block
ends, a header's colon, a statement spread over lines. What sourcetext.py and
sourceloops.py read the code with."""
from __future__ import annotations

import linecache
import re
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Node

LOOK_UP = 400  # lines above an op searched for the header of its block
_HEADER = re.compile(r"^\s*(\w+)")


def line_text(n: "Node") -> str:
    """The source line an op was recorded at, as read here ("" when unreadable)."""
    return linecache.getline(n.source.file, n.source.line) if n.source is not None else ""


def header_colon(text: str) -> Optional[int]:
    """The index of the colon that ends a block header (outside brackets and
    strings, not a walrus' ``:=``), or None (a header going on below)."""
    depth, quote, k = 0, "", 0
    while k < len(text):
        c = text[k]
        if quote:
            if c == "\\":
                k += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            return None
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ":" and depth == 0 and text[k + 1:k + 2] != "=":
            return k
        k += 1
    return None


def block_of(lines: List[str], at: int) -> Tuple[int, int]:
    """The lines (first, last) of the block that holds the statement at line ``at``."""
    header = next(headers_around(lines, at), None)
    if header is None:
        return 1, len(lines)
    return header[0] + 2, last_of_block(lines, header[0] + 1)


def statement_at(lines: List[str], k: int) -> Tuple[int, str]:
    """The statement that line index ``k`` ends, when it closes a bracket a line
    above opened (``if (`` ... ``):``): its first line's index and its lines joined."""
    if not lines[k].lstrip().startswith((")", "]", "}")):
        return k, lines[k]
    indent = indent_of(lines[k])
    for j in range(k - 1, max(-1, k - LOOK_UP), -1):
        text = lines[j]
        if not is_blank(text) and indent_of(text) <= indent and not text.lstrip().startswith((")", "]", "}")):
            return j, " ".join(code_of(x).strip() for x in lines[j:k + 1])
    return k, lines[k]


def code_of(text: str) -> str:
    return text.split("#", 1)[0]


def def_of(lines: List[str], line: int) -> int:
    """The index of the ``def`` line of the function that holds ``line``; -1 for none."""
    return next((k for k, text in headers_around(lines, line) if first_word(text) in ("def", "async")), -1)


def first_word(text: str) -> str:
    """The first word of a line (a block header's keyword), or ""."""
    m = _HEADER.match(text)
    return m.group(1) if m is not None else ""


def last_of_block(lines: List[str], line: int) -> int:
    """The last line of the body of the block whose header is at ``line`` (1-based)."""
    indent, last = indent_of(lines[line - 1]), line
    for k in range(line, len(lines)):
        if not is_blank(lines[k]):
            if indent_of(lines[k]) <= indent:
                break
            last = k + 1
    return last


def file_lines(file: str, line: Any) -> Optional[List[str]]:
    """The file's lines as read here, when ``line`` is one of them."""
    lines = linecache.getlines(file)
    return lines if isinstance(line, int) and 0 < line <= len(lines) else None


def headers_around(lines: List[str], line: int, limit: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """(index, text) of the headers of the blocks around ``line`` (1-based),
    innermost first: each line above it indented less than the last one seen
    (within ``limit`` lines)."""
    indent = indent_of(lines[line - 1])
    stop = -1 if limit is None else max(-1, line - 1 - limit)
    for k in range(line - 2, stop, -1):
        if indent == 0:
            return
        text = lines[k]
        if not is_blank(text) and indent_of(text) < indent:
            indent = indent_of(text)
            yield k, text


def indent_of(text: str) -> int:
    return len(text) - len(text.lstrip())


def is_blank(text: str) -> bool:
    """An empty or comment-only line."""
    stripped = text.strip()
    return not stripped or stripped.startswith("#")

