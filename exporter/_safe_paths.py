"""Confine the paths an artifacts folder's manifest names to that folder.

``exporter verify`` is a CI gate that may run on a folder it did not write (a pull request's, a download):
its manifest must not make the gate hash, unpickle or load a file elsewhere on the machine, through an
absolute path, a ``..`` or a symlink. Each name is checked before anything is read.
"""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

from exporter.errors import UsageError

__all__ = ["inside_folder"]


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
