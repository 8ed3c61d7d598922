"""Writing a file so that readers see the old one or the new one, never half:
a temporary file in the target folder, fsync, rename -- and a path that is no
regular file (``/dev/stdout``, a FIFO, ``/dev/null``) written in place."""
from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from .errors import WriteError

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half.
    A symlink is followed (the file it names is replaced); a path that is not a
    regular file (``/dev/null``, ``/dev/stdout``, a FIFO) is written in place,
    as ``open(path, "wb")`` would: replacing it would put a file where it was."""
    target = Path(path)
    try:
        if str(path).endswith(("/", os.sep)) and not target.is_dir():  # (`-o newdir/`: Path drops the slash)
            raise WriteError("names a folder", where=str(path), expected="a file path to write",
                             found="a path ending in a slash", fix=f"name a file inside it: {path}NAME")
        _write(target, data)
    except WriteError:
        raise
    except OSError as e:  # (a name too long, checked on the way)
        raise WriteError.of(target, e) from None
    except ValueError as e:  # (a NUL in the name)
        raise WriteError("cannot write there", where=repr(str(target)), expected="a file path", found=str(e),
                         fix="name a file without NUL characters") from None


def _write(target: Path, data: bytes) -> None:
    if target.is_dir():
        raise WriteError("is a folder", where=str(target), expected="a file path to write", found="a folder",
                         fix="name a file inside it")
    fd = _stream_fd(str(target))
    if fd is not None:  # /dev/stdout, /dev/fd/3: the stream the caller opened (a pipe, a file it appends to)
        _write_fd(fd, data, target)
        return
    if target.is_symlink():
        try:
            os.stat(target)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise WriteError.of(target, e) from None
        target = Path(os.path.realpath(target))
    if target.exists() and not target.is_file():  # /dev/null, a FIFO: written as open() would
        try:
            with open(target, "wb") as f:
                f.write(data)
        except OSError as e:
            raise WriteError.of(target, e) from None
        return
    if target.exists() and not os.access(target, os.W_OK):  # (the rename below would pass over it)
        raise WriteError.of(target, PermissionError(errno.EACCES, "the file is read-only", str(target)))
    if ".." in target.parts:  # (mkstemp names its file by abspath, which takes `link/..` as the link's folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target = Path(os.path.realpath(target.parent)) / target.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise WriteError.of(target, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, _file_mode(target))  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # e.g. the disk is full, or the rename is refused
            raise WriteError.of(target, e) from None
        raise


_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/(?:dev|proc/self)/fd/(\d+)")


def _stream_fd(path: str) -> Optional[int]:
    """The file descriptor ``path`` names (``/dev/stdout``, ``/dev/fd/N``), if it does."""
    if path in _STREAMS:
        return _STREAMS[path]
    m = _FD_PATH.fullmatch(path)
    return int(m.group(1)) if m else None


def _write_fd(fd: int, data: bytes, target: Path) -> None:
    if fd == 1:
        sys.stdout.flush()  # (what was printed comes first)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise WriteError.of(target, e) from None


def _file_mode(target: Path) -> int:
    """The mode ``open(target, "w")`` would give: an existing file's own, else 0666 less the umask."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)  # read it: there is no getter
        os.umask(umask)
        return 0o666 & ~umask
