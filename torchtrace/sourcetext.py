"""What a recorded op's source line says, read from the file at diff time
(``linecache``; nothing when the file is not readable here): whether a read
is logged or tested by an ``if``, which names it is assigned to, and which
names the ``if`` around an op tests (the loops around a line: sourceloops.py;
the lines and blocks both read: sourceblocks.py)."""
from __future__ import annotations

import linecache
import re
from typing import TYPE_CHECKING, Callable, FrozenSet, List, NamedTuple, Optional, Set, Tuple

from .sourceblocks import LOOK_UP, block_of, code_of, def_of, file_lines, first_word, header_colon, headers_around, \
    indent_of, is_blank, last_of_block, line_text, statement_at

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Node

# a statement that is a call (its result unused) converting tensor data in its arguments
_CALL_STATEMENT = re.compile(r"^\s*[A-Za-z_][\w.]*\(.*(\.(item|tolist)\(|\bbool\()")
_BRANCHES = re.compile(r"\b(if|elif|while|for|assert|and|or|not|lambda)\b")


_PRINTED = "torchtrace.repr.default"  # (a tensor's text read: print(t), str(t), f"{t}")


_CALLED = re.compile(r"^\s*[A-Za-z_][\w.]*\(")  # a statement that is a call (`print(h)`, `log.info(...)`)
_GOES_ON = ("(", "[", "{", ",", "\\", "=")  # (a line ending so goes on below)
# a one-line block's header that calls nothing, before its statement (`for row in h: print(row)`)
_HEADER_FIRST = re.compile(r"^\s*(?:(?:if|elif|while|for|with|except)\b[^():]*|else|try|finally):")


def printed_aside(n: "Node") -> bool:
    """Is ``n`` a tensor's text read (``print(h)``, ``log.info("%s", h)``) at a
    statement that is a call, its result unused (a conditional expression around
    it aside): a log, which steers nothing? Also when the line is not readable
    here; not on a line of a longer statement (``text = (`` ... ``str(h)``), a
    test, an assignment or a ``return``."""
    if n.op != _PRINTED:
        return False
    lines = file_lines(n.source.file, n.source.line) if n.source is not None else None
    if lines is None:
        return True
    above = next((code_of(t).rstrip() for t in reversed(lines[:n.source.line - 1]) if code_of(t).strip()), "")
    text = _HEADER_FIRST.sub("", code_of(lines[n.source.line - 1]), count=1)  # (`if self.verbose: print(h)`)
    return bool(_CALLED.match(text)) and not above.endswith(_GOES_ON)


def kept_aside(n: "Node") -> bool:
    """A truth value read in the arguments of a call whose result is unused
    (``log.append(bool(h.mean() > 0))``, ``print(flag.item())``): logged or
    stored, so it may steer nothing. Only when the line is readable here. (A
    read assigned to a name, ``positive = bool(x.sum() > 0)``, is how an ``if``
    below reads it; a helper's read is on its ``return bool(...)``: no call.
    A tensor's printed text: ``printed_aside``.)"""
    w = n.witness
    if w is None or not isinstance(w.value, bool) or n.source is None:
        return False
    text = code_of(line_text(n))
    return bool(_CALL_STATEMENT.match(text)) and not _BRANCHES.search(text)


_IF = re.compile(r"^\s*(if|elif)\b")


def read_by_if(n: "Node") -> bool:
    """Is the read at an ``if``/``elif`` line (``if h.mean() > 0:``), whose
    branch is that statement's body? A read kept in a name (``big = bool(...)``)
    may steer any later ``if``. Only when the line is readable here."""
    return bool(_IF.match(line_text(n)))


def read_by_branch(n: "Node") -> bool:
    """Is the read at an ``if``/``elif``/``while`` line: a decision of the user's code?"""
    return bool(_BRANCH_LINE.match(line_text(n)))


_BRANCH_LINE = re.compile(r"^\s*(if|elif|while)\b")
# (`x = ...`, `a, b = ...`, `x: float = ...`, and augmented: `total += p.item()`)
_ASSIGNED = re.compile(r"^\s*([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(?::[^=]+|\*\*|//|>>|<<|[-+*/%&|^@])?=(?!=)")
_NAME = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_KEYWORDS = frozenset({"if", "elif", "and", "or", "not", "is", "in", "None", "True", "False", "lambda"})


def names_assigned(n: "Node", file: str = None, function: str = None) -> FrozenSet[str]:
    """The plain names the line of ``n`` assigns (``has_pad = bool(...)``:
    ``has_pad``; ``a, b = ...``: both); none for attributes or subscripts.
    With ``file``/``function``: the line of ``n`` there, or else of the
    innermost caller there that led to the read (``flag = check(x)``, with
    ``check`` reading: ``flag``); none when neither is in that function."""
    if file is None or n.source is not None and (n.source.file, n.source.function) == (file, function):
        text = line_text(n)
    else:
        caller = next((f for f in (n.witness.called_from if n.witness is not None else ())
                       if (f.file, f.function) == (file, function)), None)
        text = linecache.getline(file, caller.line) if caller is not None else ""
    return names_at(text)


def names_at(text: str) -> FrozenSet[str]:
    """The plain names the statement ``text`` assigns."""
    m = _ASSIGNED.match(text)
    return frozenset(x.strip() for x in m.group(1).split(",")) if m else frozenset()


# a test of a tensor's shape or type: what Python sees of an input without reading its data
_SHAPE_TEST = re.compile(r"\.(?:(?:shape|ndim|dtype)\b|(?:size|dim|numel|is_floating_point|is_complex)\()")
_TERNARY = re.compile(r"\bif\b.+\belse\b")


def guard_names(n: "Node") -> Tuple[FrozenSet[str], int, int, int]:
    """The plain names tested by the ``if``/``elif`` around the line of ``n`` (the
    nearest header above it, through ``with``/``try``/``for``/``while`` blocks in
    its branch; for an ``else``, the tests of its ``if`` chain), the lines
    (first, last) of that branch, and the line of that ``if`` (0: none):
    ``if has_pad and x.dim() > 2:`` gives ``has_pad`` and ``x``; attribute reads
    (``self.flag``) give only their object."""
    lines = file_lines(n.source.file, n.source.line) if n.source is not None else None
    found = _if_test(lines, n.source.line, _THROUGH) if lines else None
    if found is None:
        return frozenset(), 0, -1, 0
    return frozenset(_NAME.findall(found[1])) - _KEYWORDS, found[2], found[3], found[0]


_BLOCKS = ("with", "try", "except", "finally")
_THROUGH = _BLOCKS + ("for", "while", "async")  # (the blocks a guard's branch may hold around an op)
_TRAINING = re.compile(r"\b(?:is_)?train(?:ing)?\b")  # (`self.training`, a `train` or `is_training` argument)
# a string compared (`mode == "train"`): no read of training (`kw["training"]` is one)
_STRING = re.compile(r"(?:==|!=)\s*(?:'[^']*'|\"[^\"]*\")|(?:'[^']*'|\"[^\"]*\")\s*(?:==|!=)")


def _reads_training(text: str) -> bool:
    """Does code ``text`` read ``training`` (not a string compared: ``mode == "train"``)?"""
    return bool(_TRAINING.search(_STRING.sub("==", text)))


def tests_training(n: "Node") -> bool:
    """Does ``training`` decide whether, or how, the line of ``n`` runs: the
    line reads it (``F.dropout(x, training=self.training)``, ``a if self.training
    else b``), or an ``if``/``elif`` around it tests it (at any depth of its
    function, through other blocks; an ``else`` of such an ``if`` too)? False
    when the line is not readable here."""
    return _tested_by(n, _reads_training) is not None


# grad mode, or an activation's flag that follows it (`h.requires_grad`; not a parameter's: always on)
_GRAD_MODE = re.compile(r"\b(?:is_grad_enabled|is_inference_mode_enabled)\b|(?<!weight)(?<!bias)(?<!param)(?<!\bp)"
                        r"\.requires_grad\b")


def grad_mode_test(n: "Node") -> Optional[Tuple[int, int, int]]:
    """(its line, the first and last line of its branch) of the ``if``/``elif``
    around ``n`` that tests grad mode (``if torch.is_grad_enabled():``, ``if
    h.requires_grad:``), or of ``n``'s own line when that tests it, as
    ``tests_training`` finds one; None when none does, or the line is not readable."""
    return _tested_by(n, lambda text: bool(_GRAD_MODE.search(text)))


def _tested_by(n: "Node", reads: Callable[[str], bool]) -> Optional[Tuple[int, int, int]]:
    """(line, first, last line of its branch) of ``n``'s own line, or of the nearest
    ``if`` around it (through 16), whose text ``reads``."""
    lines = file_lines(n.source.file, n.source.line) if n.source is not None else None
    if lines is None:
        return None
    line = n.source.line
    if reads(code_of(lines[line - 1])):
        return line, line, line
    for _ in range(16):
        found = _if_test(lines, line, _THROUGH)
        if found is None or found[0] >= line:
            return None
        if reads(found[1]):
            return found[0], found[2], found[3]
        line = found[0]
    return None


class ShapeIf(NamedTuple):
    """The ``if`` around an op (``shape_test``): its line (0 when it tests no shape
    or type), the lines of the branch that holds the op, and of the block the
    ``if`` statement is in (its other branches too)."""

    line: int
    branch: Tuple[int, int]
    block: Tuple[int, int]
    top: bool  # the ``if`` is a statement of its function's own body (not nested in another block)
    header: int = 0  # the line of the ``if`` (an ``if`` around it is looked for from there)


def shape_test(n: "Node", line: Optional[int] = None) -> Optional[ShapeIf]:
    """The ``if`` around the line of ``n`` (through ``with``/``try`` blocks in its
    branch; for an ``else``, its ``if`` chain) and whether it tests a shape or a
    type: ``x.shape``, ``x.dim()``, ``x.dtype``..., itself or through a name
    assigned from one in its function (``n = x.shape[0]`` ... ``if n < 8:``).
    None when no ``if`` is around it, the file is not readable here, or the line
    itself decides (``h.relu() if s > 1 else h``). ``line``: another line of
    ``n``'s file to start from (an ``if``'s own, for the one around it)."""
    line = line if line is not None else n.source.line if n.source is not None else 0
    lines = file_lines(n.source.file, line) if n.source is not None else None
    if lines is None or _TERNARY.search(code_of(lines[line - 1])):
        return None
    found = _if_test(lines, line, through=_BLOCKS)
    if found is None:
        return None
    at, test, lo, hi = found
    names = _shape_names(lines, at)

    def shaped(t: str) -> bool:
        return bool(_SHAPE_TEST.search(t)) or not names.isdisjoint(_NAME.findall(t))
    chain = [(k + 1, code_of(t[m.end():])) for k in range(at - 1, lo - 2)  # (an `else`: each test of its chain)
             for t in [lines[k]] for m in [_IF.match(t)] if m is not None and indent_of(t) == indent_of(lines[at - 1])]
    at = next((k for k, t in chain if shaped(t)), at)  # (the `elif` that tests the shape)
    header = next(headers_around(lines, at), None)
    top = header is not None and first_word(header[1]) == "def"
    return ShapeIf(at if shaped(test) else 0, (lo, hi), block_of(lines, at), top, at)


def _if_test(lines: List[str], line: int, through: Tuple[str, ...] = ()) -> Optional[Tuple[int, str, int, int]]:
    """(line, test) of the ``if``/``elif`` around ``line`` and the lines (first,
    last) of its branch that holds it: an ``if`` on the line itself (``if c: x``),
    or the nearest around it, through blocks of the kinds ``through`` names; for
    an ``else``, the chain's first line and all its tests."""
    m = _IF.match(lines[line - 1])
    colon = header_colon(lines[line - 1]) if m is not None else None
    if colon is not None and code_of(lines[line - 1][colon + 1:]).strip():  # `if c: stmt` on one line
        return line, lines[line - 1][m.end():colon], line, line
    for k, text in headers_around(lines, line, LOOK_UP):
        k, text = statement_at(lines, k)
        word = first_word(text)
        m = _IF.match(text)
        if m is not None:
            return k + 1, code_of(text[m.end():]), k + 2, last_of_block(lines, k + 1)
        if word == "else":
            chain = _chain(lines, k)
            if chain is not None:
                return chain[0], chain[1], k + 2, last_of_block(lines, k + 1)
        if word not in through:
            return None
    return None


def _chain(lines: List[str], at: int) -> Optional[Tuple[int, str]]:
    """The first line and the tests of the ``if`` chain of the ``else`` at index
    ``at``; None for a ``for``/``while``/``try``'s ``else``."""
    tests, indent = [], indent_of(lines[at])
    for k in range(at - 1, -1, -1):  # up the chain: `elif`s, then its `if`
        text = lines[k]
        if is_blank(text) or indent_of(text) > indent:
            continue
        k, text = statement_at(lines, k)
        m = _IF.match(text) if indent_of(text) == indent else None
        if m is None:
            return None
        tests.append(code_of(text[m.end():]))
        if m.group(1) == "if":
            return k + 1, " and ".join(reversed(tests))
    return None


def _shape_names(lines: List[str], line: int) -> Set[str]:
    """Names assigned from a shape or type (or from such names) in the lines of
    the function that holds ``line``, above it: ``b, t = x.shape``, ``n = b * t``."""
    return _names_from(lines, line, _SHAPE_TEST)


def _names_from(lines: List[str], line: int, read: "re.Pattern[str]") -> Set[str]:
    """Names assigned from an expression ``read`` matches (or from such names) in
    the lines of the function that holds ``line``, above it."""
    start = def_of(lines, line) + 1
    out: Set[str] = set()
    for k in range(start, line - 1):
        m = _ASSIGNED.match(lines[k])
        if m is not None:
            rhs = _STRING.sub("==", code_of(lines[k][m.end():]))
            if read.search(rhs) or not out.isdisjoint(_NAME.findall(rhs)):
                out.update(x.strip() for x in m.group(1).split(","))
    return out


_CALL = re.compile(r"[\w\])]\s*\(")


def decided_by_a_flag(n: "Node") -> bool:
    """Is the line of ``n`` in a branch of the nearest ``if`` around it (through
    other blocks) whose test is a plain flag (``if self.deep:``, ``if not
    use_cache:``): no call in it (a method may read anything), no ``training``
    read, directly or through a name assigned from it above in that function
    (``noisy = self.training and ...``)? False when the line is not readable here."""
    lines, found = _if_around(n)
    return found is not None and _flag_test(lines, found[0], found[1])


def decided_by_a_call(n: "Node") -> bool:
    """Is the line of ``n`` in a branch of an ``if`` whose test calls something
    (``if self._noisy():``: a method may read ``training``)? False when the
    line is not readable here."""
    found = _if_around(n)[1]
    return found is not None and bool(_CALL.search(found[1]))


def _if_around(n: "Node") -> Tuple[Optional[List[str]], Optional[Tuple[int, str, int, int]]]:
    """``n``'s file's lines and ``_if_test`` of its line through other blocks (None: unreadable)."""
    lines = file_lines(n.source.file, n.source.line) if n.source is not None else None
    return lines, _if_test(lines, n.source.line, _THROUGH) if lines else None


def _flag_test(lines: List[str], at: int, test: str) -> bool:
    """Is ``test``, of the ``if`` at line ``at``, a plain flag (``decided_by_a_flag``)?"""
    return not _CALL.search(test) and not _training_test(lines, at, test)


def _training_test(lines: List[str], at: int, test: str) -> bool:
    """Does ``test``, of the ``if`` at line ``at``, read ``training``, directly or
    through a name assigned from it above in its function?"""
    return _reads_training(test) or not _names_from(lines, at, _TRAINING).isdisjoint(
        _NAME.findall(_STRING.sub("==", test)))


def call_guard(file: str, line: int, attr: str) -> Optional[bool]:
    """The ``if`` around the call of ``.attr`` (``self.adapter(x)``) in the
    function that holds ``line``: True when it reads ``training``, False when it
    tests a plain flag (``decided_by_a_flag``); None when there is no such call
    or ``if``, it tests something else, or the file is not readable here."""
    lines = file_lines(file, line)
    start = def_of(lines, line) if lines is not None else -1
    if start < 0:
        return None
    used = re.compile(r"\." + re.escape(attr) + r"\b")
    guards = [_guard(lines, k + 1) for k in range(start + 1, last_of_block(lines, start + 1))
              if used.search(code_of(lines[k]))]  # (each line that may call it: all must say the same)
    return guards[0] if guards and all(g == guards[0] for g in guards) else None


def _guard(lines: List[str], at: int) -> Optional[bool]:
    """``call_guard`` of the ``if`` around line ``at``."""
    found = _if_test(lines, at, _THROUGH)
    if found is None:
        return None
    return True if _training_test(lines, found[0], found[1]) else None if _CALL.search(found[1]) else False


_HANDLERS = ("except", "else", "finally")


def except_bodies(file: str, line: int) -> Tuple[int, int]:
    """The lines (first, last) of the ``except`` clauses of the ``try`` whose body
    holds ``line``; (0, -1) when there is none, or the file is not readable here."""
    lines = file_lines(file, line)
    for at, text in headers_around(lines, line) if lines else ():  # (not past a def or class)
        word = first_word(text)
        if word in ("", "def", "class"):
            break
        if word == "try":
            return _handlers(lines, at, indent_of(text))
    return 0, -1


def _handlers(lines: List[str], at: int, indent: int) -> Tuple[int, int]:
    first, last, inside = 0, -1, False
    for k in range(at + 1, len(lines)):
        text = lines[k]
        if is_blank(text):
            continue
        if indent_of(text) <= indent:
            word = first_word(text)
            if word not in _HANDLERS:
                break
            inside = word == "except"
            first = first or (k + 1 if inside else 0)
        elif inside:
            last = k + 1
    return first, last


