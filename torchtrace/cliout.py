"""Where a command's output goes: its format (``-f``, or the one ``-o``'s
extension names), a file written atomically (gzipped for ``.gz``), or
standard output (``-o -``; binary formats only to a pipe)."""
from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console

from .errors import UsageError

err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False)


class Fmt(str, Enum):
    text = "text"
    dot = "dot"
    svg = "svg"
    png = "png"
    pdf = "pdf"
    mermaid = "mermaid"
    markdown = "markdown"
    terminal = "terminal"
    json = "json"


_EXTENSIONS = {".svg": (Fmt.svg,), ".png": (Fmt.png,), ".pdf": (Fmt.pdf,), ".dot": (Fmt.dot,), ".gv": (Fmt.dot,),
               ".mmd": (Fmt.mermaid,), ".mermaid": (Fmt.mermaid,), ".md": (Fmt.markdown,),
               ".txt": (Fmt.text, Fmt.terminal), ".json": (Fmt.json,)}


def _name_for(fmt: Fmt) -> str:
    """``*.md`` for markdown: a file name whose extension selects ``fmt``."""
    return "*" + next((ext for ext, fmts in _EXTENSIONS.items() if fmt in fmts), f".{fmt.value}")


def output_format(given: Optional[Fmt], output: Optional[str], default: Fmt) -> Fmt:
    """The format: ``-f``'s, else the one ``-o``'s extension names (``graph.png``),
    else ``default``; an extension of another format than ``-f`` is refused
    (``-f svg -o graph.png`` would write SVG into a .png)."""
    ext = _extension(output)
    named = _EXTENSIONS.get(ext, ())
    if given is None and ext and not named and default is not Fmt.text:  # (`-o graph.jpg`: SVG would go there)
        raise UsageError(f"-o {output}: no format has the extension {ext}",
                         expected="-o FILE with one of " + " ".join(sorted(_EXTENSIONS)) + " (or -f FORMAT)",
                         found=f"a {ext} file", fix=f"name it {_name_for(default)}, or give -f")
    if given is None and not ext and output not in (None, "-") and default is not Fmt.text and output.strip() \
            and not output.endswith(("/", os.sep)) and not os.path.isdir(output) \
            and not output.startswith(("/dev/", "/proc/")):  # (a folder: said below; `/dev/stdout`: the default)
        raise UsageError(f"-o {output}: the name has no extension to name a format",
                         expected="-o FILE with one of " + " ".join(sorted(_EXTENSIONS)) + " (or -f FORMAT)",
                         found=f"{output!r}", fix=f"name it {_name_for(default).replace('*', output)}, give -f, "
                         "or write to standard output with -o -")
    if given is None:
        return named[0] if named else default
    if named and given not in named:
        raise UsageError(f"-o {output} names another format than -f {given.value}",
                         expected=f"a file name for {given.value} (or no -f: the extension decides)",
                         found=f"a {ext} file", fix=f"drop -f, or name the file {_name_for(given)}")
    return given


def _extension(output: Optional[str]) -> str:
    """``.png`` for ``graph.PNG``, ``.json`` for ``graph.json.gz``; "" for none or ``-``."""
    name = output[:-3] if output and output.lower().endswith(".gz") else output
    return os.path.splitext(name)[1].lower() if name and name != "-" else ""


def _keeps_inputs(output: str, reads: Sequence[str]) -> None:
    """``-o`` naming the store or graph file the command reads, or any trace
    store, would replace it with the output: every pass in it lost."""
    from .passref import ref_file
    from .serialize import is_store

    target = Path(output)
    try:
        if not target.is_file():
            return
        same = next((r for r in reads for f in [ref_file(r)] if f is not None and os.path.samefile(f, target)), None)
        store = is_store(output)  # (or a file of one: its write-ahead log holds its last passes)
    except OSError:  # (not readable: the write says what is wrong)
        return
    if same is not None:
        raise UsageError(f"-o {output} names the file this command reads ({same})", expected="-o another file",
                         found="an input of this command: writing there would replace it",
                         fix="write it elsewhere, e.g. -o graph.svg")
    if store:
        raise UsageError(f"-o {output} names a trace store or one of its files",
                         expected="-o a new file, or an earlier output",
                         found="an SQLite trace store: writing there would lose its passes",
                         fix="write it elsewhere, e.g. -o graph.svg")


def json_name(output: str, ref: str) -> None:
    """``export -o graph.svg`` would write JSON into a file named for a drawing."""
    ext = _extension(output)
    if ext not in ("", ".json"):
        raise UsageError("export writes JSON", expected="-o FILE.json or FILE.json.gz (- for standard output)",
                         found=f"a {ext} file", fix="name it *.json" + (
                             f", or draw it: torchtrace render {ref} -o {output}" if ext in _EXTENSIONS else ""))


def emit(data: Any, output: Optional[str], fmt: str, reads: Sequence[str] = ()) -> None:
    """Write ``data``; ``reads``: the references the command read (``-o`` must
    not replace one of their files)."""
    if output == "-":  # `-o -`: standard output, as other tools take it
        output = None
    if output is not None and not output.strip():
        raise UsageError("an empty output path", expected="-o FILE (or - for standard output)", found=repr(output),
                         fix="name a file, e.g. -o graph.svg")
    if output is not None:
        _keeps_inputs(output, reads)
        from .filewrite import atomic_write

        raw = data if isinstance(data, bytes) else data.encode("utf-8", "backslashreplace")  # (a lone surrogate)
        if output.lower().endswith(".gz"):  # (`-o graph.json.gz`: gzip, as `export` and `torchtrace.save` write it)
            import gzip

            raw = gzip.compress(raw, mtime=0)
        atomic_write(output, raw)
        err.print(f"wrote {output}", markup=False, highlight=False, soft_wrap=True)
    elif isinstance(data, bytes):
        if sys.stdout.isatty():
            raise UsageError(f"{fmt} is binary", expected="--output FILE (or a pipe)", found="a terminal",
                             fix=f"add -o graph.{fmt}")
        sys.stdout.buffer.write(data)
    elif fmt not in ("text", "terminal") and hasattr(sys.stdout, "buffer"):  # a file's content (DOT, JSON,
        sys.stdout.flush()  # Mermaid, Markdown): UTF-8, as -o writes it, whatever the console's encoding (cp1252
        # turned `·` into a byte `dot` refused)
        sys.stdout.buffer.write((data if data.endswith("\n") else data + "\n").encode("utf-8", "backslashreplace"))
        sys.stdout.buffer.flush()
    else:
        text = data if data.endswith("\n") else data + "\n"
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # (a lone surrogate, or a terminal that cannot show the text)
            sys.stdout.flush()
            sys.stdout.buffer.write(text.encode(sys.stdout.encoding or "utf-8", "backslashreplace"))
