"""The loops around a recorded line, read from the file at diff time
(``linecache``; nothing when the file is not readable here): the ``for``/``while``
whose body holds a line, where its body ends, whether a read gives its count,
and whether an ``if`` leaves it (``break``/``return``)."""
from __future__ import annotations

import ast
import linecache
import operator
import re
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from ._memo import remember
from .sourceblocks import code_of, file_lines, first_word, header_colon, headers_around, last_of_block, line_text
from .sourcetext import _IF, _NAME, names_assigned

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Node

_LOOP = re.compile(r"^\s*(?:async\s+)?(?:for|while)\b")
_WHILE = re.compile(r"^\s*while\b")
_COMPREHENSION = re.compile(r"\bfor\b.+\bin\b")
_RETURN_COUNT = re.compile(r"^\s*return\s+(?:int|round|math\.floor|math\.ceil)\(")


def loop_header(file: str, line: int) -> Optional[Tuple[int, str]]:
    """(line, text) of the ``for``/``while`` whose body holds ``line`` (or that is
    at ``line``), in its function; None when none is, or the file is not readable."""
    lines = file_lines(file, line)
    if lines is None:
        return None
    if _LOOP.match(lines[line - 1]):
        return line, code_of(lines[line - 1])
    for k, text in headers_around(lines, line):
        if first_word(text) in ("def", "class"):
            return None
        if _LOOP.match(text):
            return k + 1, code_of(text)
    return None


def feeds_loop(read: "Node", file: str, line: int) -> bool:
    """Does the read give the loop around ``file:line`` its count: it is at that
    loop's header (``for _ in range(int(n.item())):``), or its line assigns a name
    the header uses (``k = int(n.item())`` ... ``for _ in range(k):``)?"""
    header = loop_header(file, line)
    if header is None or read.source is None or read.source.file != file:
        return False
    if _RETURN_COUNT.match(line_text(read)):  # (a helper that returns the count: `return int(n.item())`)
        return True
    return read.source.line == header[0] or not names_assigned(read).isdisjoint(_NAME.findall(header[1]))


def loop_span(file: str, line: int) -> Optional[Tuple[int, int, str]]:
    """(header line, last line of its body, ``for``/``while``) of the loop at
    ``line`` or the innermost one of its function whose body holds it; None
    when there is none or the file is not readable here."""
    lines = file_lines(file, line)
    header = loop_header(file, line) if lines is not None else None
    if lines is None or header is None:
        return None
    return header[0], last_of_block(lines, header[0]), "while" if _WHILE.match(header[1]) else "for"


_EXIT = re.compile(r"^\s*(?:break|return)\b")
_LEAVES = re.compile(r"(?:^|:)\s*(?:break|return)\b")


def exits_loop(file: str, line: int) -> bool:
    """Is ``line`` an ``if``/``elif`` whose branch leaves the loop around it
    (``if done: break``, ``if k.item() == 0: return x``, on one line or below)?"""
    lines = file_lines(file, line)
    if lines is None or not _IF.match(lines[line - 1]):
        return False
    colon = header_colon(lines[line - 1])
    if colon is not None and code_of(lines[line - 1][colon + 1:]).strip():  # `if c: break` on one line
        return bool(_EXIT.match(lines[line - 1][colon + 1:]))
    inner = None  # the indent of a loop inside the branch: a `break` in its body leaves that loop
    for k in range(line, last_of_block(lines, line)):
        text = code_of(lines[k])
        if not text.strip():
            continue
        indent = len(text) - len(text.lstrip())
        if inner is not None and indent <= inner:
            inner = None
        if _EXIT.match(text) and (inner is None or text.lstrip().startswith("return")):
            return True
        if inner is None and _LOOP.match(text):
            inner = indent
    return False


def ended_by(read: "Node") -> Optional[Tuple[int, int, str]]:
    """The loop (as ``loop_span``) that a read in its body can end: the read is
    at an ``if`` that leaves it (``if x.mean() > t: break``), or it assigns a
    name that such an ``if`` below it, or the loop's ``while`` header, tests
    (``delta = d.item()`` ... ``if delta < tol: break``; ``while delta >= tol:``)."""
    src = read.source
    span = loop_span(src.file, src.line) if src is not None else None
    if src is None or span is None or span[0] == src.line:
        return None
    if exits_loop(src.file, src.line):
        return span
    names = names_assigned(read)
    lines = file_lines(src.file, src.line)
    if not names or lines is None:
        return None
    if span[2] == "while" and not names.isdisjoint(_NAME.findall(code_of(lines[span[0] - 1]))):
        return span
    for k in range(src.line + 1, span[1] + 1):
        if _IF.match(lines[k - 1]) and not names.isdisjoint(_NAME.findall(_test(lines[k - 1]))) \
                and exits_loop(src.file, k):
            return span
    return None


def _test(text: str) -> str:
    """The test of an ``if`` line (up to its colon)."""
    colon = header_colon(text)
    return code_of(text if colon is None else text[:colon])


def can_leave(file: str, header: int) -> bool:
    """Can the loop at ``header`` end early: does its body hold a ``break`` or a
    ``return``? (Else a ``for`` ends only when its items run out.)"""
    return _in_body(file, header, _LEAVES)


_YIELD = re.compile(r"^\s*(?:\w+\s*=\s*)?yield\b|[=(]\s*yield\b")  # (a statement or value, not text)


def yields(file: str, header: int) -> bool:
    """Does the body of the loop at ``header`` ``yield`` (a generator: its caller
    runs between two iterations)?"""
    return _in_body(file, header, _YIELD)


def _in_body(file: str, header: int, pattern: "re.Pattern[str]") -> bool:
    """Does a line of the body of the block at ``header`` match ``pattern``?"""
    lines = file_lines(file, header)
    return lines is not None and any(pattern.search(code_of(lines[k]))
                                     for k in range(header, last_of_block(lines, header)))


def in_loop(file: str, line: int) -> Optional[bool]:
    """Is ``line`` inside a ``for``/``while`` of its function (or a comprehension
    on it)? None when the file is not readable here."""
    lines = file_lines(file, line)
    if lines is None:
        return None
    return bool(_COMPREHENSION.search(code_of(lines[line - 1]))) or loop_header(file, line) is not None


def while_end(file: str, line: int) -> int:
    """The last line of the body of the ``while`` at ``line`` (``line`` itself for a
    body on that line); 0 when that line is no ``while`` or the file is not readable here."""
    lines = file_lines(file, line)
    if lines is None or not _WHILE.match(lines[line - 1]):
        return 0
    return last_of_block(lines, line)


_UNKNOWN = object()
_TREES: Dict[str, Tuple[List[str], Optional[ast.Module]]] = {}  # file -> (its lines, their syntax tree)
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Is: operator.is_, ast.IsNot: operator.is_not}


_ACCUMULATES = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\+=|=\s*\1\s*\+)")


def accumulates(read: "Node") -> bool:
    """Does the read's line add what it read to a running total (``total += p.item()``,
    ``total = total + p.item()``), which the loop then tests rather than the read itself,
    in a loop that runs once per call (not inside another loop of its function, which may
    set the total anew before each run: its reads are not one sum)?"""
    src = read.source
    span = loop_span(src.file, src.line) if src is not None else None
    if span is None or not _ACCUMULATES.match(line_text(read)):
        return False
    lines = file_lines(src.file, span[0])
    for _, text in headers_around(lines, span[0]) if lines is not None else ():
        if first_word(text) in ("def", "class"):
            return True
        if _LOOP.match(text):
            return False
    return True


def first_test_reads_nothing(file: str, line: int) -> bool:
    """Does the ``while`` at ``line`` enter its first iteration on Python values
    alone: its test is decided by constants assigned above it in its block
    (``done = False`` ... ``while not done:``; ``k = 0`` ... ``while k < 1 or x.norm() <= t:``)?
    Then its reads, one per later test, are as many as its iterations, not one more."""
    lines = file_lines(file, line)
    if lines is None or not _WHILE.match(lines[line - 1]):
        return False
    tree = _TREES.get(file)
    if tree is None or tree[0] is not lines:  # (the file's text as linecache holds it now)
        try:
            parsed: Optional[ast.Module] = ast.parse("".join(lines))
        except (SyntaxError, ValueError):
            parsed = None
        tree = remember(_TREES, file, (lines, parsed), limit=32)
    if tree[1] is None:
        return False
    for body in _bodies(tree[1]):
        at = next((k for k, s in enumerate(body) if isinstance(s, ast.While) and s.lineno == line), None)
        if at is not None:
            known = _constants_before(body[:at])
            value = _constant(body[at].test, known)
            return value is not _UNKNOWN and bool(value)
    return False


def _bodies(tree: ast.AST) -> Iterator[List[ast.stmt]]:
    """Every statement list (block body) in ``tree``."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield block


def _constants_before(stmts: List[ast.stmt]) -> Dict[str, Any]:
    """Names that the statements ``stmts`` leave bound to a constant (``done = False``)."""
    known: Dict[str, Any] = {}
    for s in stmts:
        const = s.value if isinstance(s, (ast.Assign, ast.AnnAssign)) and isinstance(s.value, ast.Constant) else None
        targets = s.targets if isinstance(s, ast.Assign) else [s.target] if isinstance(s, ast.AnnAssign) else []
        for n in ast.walk(s):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                known[n.id] = _UNKNOWN  # (assigned otherwise, or in a block: not known)
        if const is not None and all(isinstance(t, ast.Name) for t in targets):
            known.update((t.id, const.value) for t in targets)
    return known


def _constant(e: ast.expr, known: Dict[str, Any]) -> Any:
    """The value of test ``e`` when Python values alone decide it, else ``_UNKNOWN``."""
    if isinstance(e, ast.Constant):
        return e.value
    if isinstance(e, ast.Name):
        return known.get(e.id, _UNKNOWN)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
        v = _constant(e.operand, known)
        return v if v is _UNKNOWN else not v
    if isinstance(e, ast.BoolOp):  # (short-circuits: `k < 1 or x.norm() <= t` with k = 0)
        for operand in e.values:
            v = _constant(operand, known)
            if v is _UNKNOWN or bool(v) == isinstance(e.op, ast.Or):
                return v
        return v
    if isinstance(e, ast.Compare) and all(type(op) in _COMPARE for op in e.ops):
        left = _constant(e.left, known)
        for op, right in zip(e.ops, e.comparators):
            right = _constant(right, known)
            if left is _UNKNOWN or right is _UNKNOWN:
                return _UNKNOWN
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:
                return _UNKNOWN
            left = right
        return True
    return _UNKNOWN


def keyword_at(file: str, line: int) -> Optional[str]:
    """``while``/``for``/``if`` when the source line is readable here, for wording only."""
    text = linecache.getline(file, line).strip()
    word = text.split(" ", 1)[0].rstrip(":") if text else ""
    return word if word in ("while", "for", "if", "elif", "assert") else None


def if_statement_end(file: str, header: int) -> int:
    """The last line of the ``if`` statement at ``header``, its ``elif``/``else``
    arms included; ``header`` when the file is not readable here."""
    lines = file_lines(file, header)
    if lines is None:
        return header
    indent, end = len(lines[header - 1]) - len(lines[header - 1].lstrip()), last_of_block(lines, header)
    k = end
    while k < len(lines):
        text = lines[k]
        if not text.strip() or text.lstrip().startswith("#"):
            k += 1
            continue
        if len(text) - len(text.lstrip()) != indent or first_word(text) not in ("elif", "else"):
            break
        end = k = last_of_block(lines, k + 1)
    return end
