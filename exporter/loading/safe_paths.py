"""Confine every file read from or written into an artifacts folder to that folder, regular files only.

``exporter verify`` is a CI gate that may run on a folder it did not write (a pull request's, a download),
and ``serve``, ``package`` and ``report`` take such folders too: a name in the folder must not make them
hash, unpickle, load, copy or overwrite a file elsewhere on the machine, through an absolute path, a
``..`` or a symlink, nor hang them on a FIFO or a device. Each name is checked before anything is read;
documents are opened without following links and size-capped before they are parsed; files written
into a folder replace the name (a link is replaced, never written through).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path, PurePosixPath

from exporter.errors import UsageError

__all__ = ["DOCUMENT_LIMIT", "SAFE_NAME_PATTERN", "inside_folder", "read_inside", "replace_inside"]

SAFE_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$"
"""A model or recipe name: one path component inside ``--out``, a URL path segment, one log line."""

DOCUMENT_LIMIT = 64 * 1024 * 1024
"""Bytes a JSON document of an artifacts folder may hold (a real manifest or report is well under 1 MB)."""


def inside_folder(folder: Path, name: object, named_by: str) -> Path:
    """``folder / name``, when ``name`` is a relative path to a regular file (or nothing yet) in ``folder``.

    ``named_by`` says who named it (``manifest.json of 'DIR'``) and starts the error message. A missing
    file is allowed: the hash check reports it as missing.

    Raises:
        UsageError: ``name`` is absolute, has ``..``, is or passes through a symlink, resolves outside
            ``folder``, or exists as something other than a regular file.
    """
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise UsageError(f"{named_by} names {repr(name)[:60]}, which is not a file name; refusing it")
    pure = PurePosixPath(name)
    if not name.isprintable():
        name = repr(name)[1:-1]  # keep the error message on one line
    outside = (
        f"{named_by} names '{name}', which is outside the artifacts folder; refusing to read it "
        "(a manifest may only name files inside its folder)"
    )
    if pure.is_absolute() or ".." in pure.parts:
        raise UsageError(outside)
    path = folder
    for part in pure.parts:
        path = path / part
        if path.is_symlink():
            what = (
                "is a symlink"
                if path == folder / pure
                else f"passes through the symlink '{path.relative_to(folder)}'"
            )
            raise UsageError(
                f"{named_by} names '{name}', which {what}; refusing to follow it "
                "(a manifest may only name regular files inside its folder)"
            )
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise UsageError(outside)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as error:
        raise UsageError(f"{named_by} names '{name}', which cannot be inspected: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{named_by} names '{name}', which is not a regular file; refusing to read it "
            "(a manifest may only name regular files inside its folder)"
        )
    return path


def read_inside(folder: Path, name: str, named_by: str, limit: int = DOCUMENT_LIMIT) -> bytes:
    """The bytes of ``folder/name``, a regular file of at most ``limit`` bytes inside ``folder``.

    Opened without following a final symlink and without blocking (a FIFO would block ``open`` until a
    writer came), then checked on the open descriptor, so what is read is what was checked.

    Raises:
        FileNotFoundError: no such file (callers say what it means for them).
        UsageError: the name leaves the folder, is a link, a FIFO, a device or a folder, or is too big.
    """
    path = inside_folder(folder, name, named_by)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise FileNotFoundError(path) from None
        raise UsageError(f"{named_by}: '{name}' cannot be opened: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{named_by}: '{name}' is not a regular file; refusing to read it")
        if info.st_size > limit:
            raise UsageError(
                f"{named_by}: '{name}' holds {info.st_size} bytes, over the {limit} a document of "
                "exporter may hold; refusing to read it"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{named_by}: '{name}' grew past {limit} bytes while read; refusing it")
    return data


def replace_inside(folder: Path, name: str, data: bytes, named_by: str) -> Path:
    """Write ``data`` as ``folder/name`` by replacing the name, never writing through what it points at.

    The bytes go to a private temporary file in the same folder, which ``os.replace`` then renames over
    the name: a symlink (or hard link) planted there is replaced, and its target is left untouched.
    """
    path = _top_level_for_write(folder, name, named_by)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    staged = Path(temporary)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        staged.chmod(0o644)
        staged.replace(path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return path


def _top_level_for_write(folder: Path, name: str, named_by: str) -> Path:
    """``folder/name`` for a top-level file about to be replaced; a symlink there is fine (it is
    replaced, not followed), a folder is not."""
    if PurePosixPath(name).name != name or name in ("", ".", ".."):
        raise UsageError(f"{named_by}: '{name}' is not a file name at the top of the folder")
    path = folder / name
    if not path.is_symlink() and path.is_dir():
        raise UsageError(f"{named_by}: '{name}' is a folder; refusing to replace it")
    return path
