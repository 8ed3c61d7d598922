"""All escaping for DOT, Mermaid and HTML output, and the safe ids they use.

Every renderer (and ``renderers/diffs.py``) gets label text and ids from here
and from nowhere else, so one table of hostile inputs (tests/test_escape.py)
covers them all. The rules, each checked against the real tools:

* DOT escString (edge labels, tooltips): ``&`` as ``&amp;`` (dot decodes
  entities there too), backslashes doubled, newlines ``\\n``;
  python-graphviz adds the quotes and escapes the quotes.
* DOT HTML-like labels: ``& < > "`` as entities, newlines as ``<BR/>``.
* Mermaid: every ASCII character outside ``[A-Za-z0-9 ,=]`` becomes
  ``#<decimal>;``; line breaks are raw newlines inside the quotes (not
  ``<br>``), blank lines dropped -- what draws the same text in mermaid 11
  and 12 (no Markdown, KaTeX, HTML or entity surprises).
* Ids: generated, ``[A-Za-z][A-Za-z0-9_]*`` with a prefix, so no reserved
  word (``end``, ``graph``, ``node``…) and no clash between kinds.
"""
from __future__ import annotations

import html
from typing import Dict, Hashable

from graphviz.quoting import nohtml

from ..textform import clean, one_line

__all__ = ["clean", "one_line", "shorten", "dot_text", "dot_tooltip", "dot_html", "mermaid_label", "mermaid_comment",
           "markdown_text", "html_text", "IdMaker", "safe_id"]

_MERMAID_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,=")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut with ``…``."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


# -- DOT ------------------------------------------------------------------
def dot_text(text: object) -> str:
    """A DOT escString (``label=``/``tooltip=`` value) showing ``text`` literally.

    Returned as ``graphviz.nohtml`` so ``<…>`` is never taken for an HTML label;
    python-graphviz quotes it and escapes the quotes."""
    s = clean(text).replace("&", "&amp;").replace("\\", "\\\\").replace("\n", "\\n")
    return nohtml(s)


def dot_tooltip(text: object) -> str:
    """A DOT ``tooltip=`` value showing ``text``. Graphviz (2.43) unescapes a
    tooltip and then still expands ``\\N``/``\\G``/``\\L`` in it, however the
    backslash is escaped: a backslash is shown as U+29F5 (⧵) there."""
    return dot_text(clean(text).replace("\\", "\u29f5"))


def dot_html(text: object) -> str:
    """Text for inside a DOT HTML-like label (``label=<…>``). dot still expands
    ``\\N``/``\\G``… in HTML labels (after entities), so backslashes are doubled."""
    s = html.escape(clean(text), quote=True).replace("\\", "\\\\")
    return s.replace("\n", "<BR/>")


# -- Mermaid --------------------------------------------------------------
def mermaid_label(text: object) -> str:
    """Label text for ``id["…"]``, ``-->|"…"|`` and ``subgraph id ["…"]``
    (without the quotes). Never empty: Mermaid rejects ``[""]``.

    Line breaks stay raw newlines inside the quotes, and blank lines are
    dropped: with ``<br>`` mermaid 11 runs the label through Markdown
    (``__x__`` bold, URLs "Unsupported markdown") and 12 through KaTeX
    (``$$x$$``); a blank line makes 11 join the lines. Checked by rendering
    in both."""
    lines = ("".join(c if c in _MERMAID_SAFE or ord(c) > 127 else f"#{ord(c)};" for c in line)
             for line in clean(text).split("\n"))
    out = "\n".join(line for line in lines if line.strip())
    return out or " "


def mermaid_comment(text: object) -> str:
    """One ``%%`` comment line. Braces become parentheses so a comment can
    never turn into a ``%%{…}%%`` directive (which mermaid finds anywhere)."""
    s = clean(text).replace("\n", " ").replace("{", "(").replace("}", ")")
    return "%% " + s


# -- HTML -----------------------------------------------------------------
def markdown_text(text: str) -> str:
    """Text for a Markdown paragraph or list item: Markdown characters outside
    `code spans` are backslash-escaped; code spans are kept as they are (with
    an unpaired backtick there are none, and it is escaped too)."""
    special = "\\*_[]<>|#"
    parts = text.split("`")
    if len(parts) % 2 == 0:
        return "".join("\\" + c if c in special + "`" else c for c in text)
    return "`".join(p if k % 2 else "".join("\\" + c if c in special else c for c in p)
                    for k, p in enumerate(parts))


def html_text(text: object) -> str:
    """Text for HTML element content or a quoted attribute value."""
    return html.escape(clean(text), quote=True).replace("\n", "<br>")


# -- ids ------------------------------------------------------------------
def safe_id(text: object, prefix: str = "x") -> str:
    """A readable id made from arbitrary text: ``prefix_`` + letters, digits and
    ``_`` (others become ``_``). Not unique: use ``IdMaker`` for that."""
    if not prefix or prefix[0] not in _ID_CHARS or prefix[0].isdigit() or set(prefix) - _ID_CHARS:
        raise ValueError(f"id prefix must match [A-Za-z][A-Za-z0-9_]*, got {prefix!r}")
    body = "".join(c if c in _ID_CHARS else "_" for c in clean(text))
    return f"{prefix}_{body}" if body else prefix


class IdMaker:
    """Deterministic short ids for arbitrary keys: ``n0, n1…`` in order of first
    request. One maker per id namespace prefix; different prefixes never clash,
    and ``[A-Za-z][A-Za-z0-9]*`` with a digit at the end is never a reserved
    word in DOT or Mermaid."""

    def __init__(self, prefix: str) -> None:
        if not prefix.isalpha() or not prefix.isascii():
            raise ValueError(f"id prefix must be ASCII letters, got {prefix!r}")
        self.prefix = prefix
        self._ids: Dict[Hashable, str] = {}

    def __call__(self, key: Hashable) -> str:
        got = self._ids.get(key)
        if got is None:
            got = self._ids[key] = f"{self.prefix}{len(self._ids)}"
        return got

    def __contains__(self, key: Hashable) -> bool:
        return key in self._ids
