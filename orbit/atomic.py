"""Files and directories that appear under their final name only when complete.

A writer fills a temporary sibling (`<name>.tmp-<id>`) and `move_into_place` renames it onto the
final name, keeping an older version until the new one is in place: a kill at any moment leaves
the previous result or a `*.tmp-*` leftover, never a half-written store, prediction or checkpoint.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def remove(path: Path) -> None:
    """Delete a file or a directory tree, if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` onto `path`; an older `path` is removed only afterwards."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f"{path.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(path, old)
    os.replace(tmp, path)
    remove(old)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """`write(tmp)` into a temporary sibling of `path`, then move it into place (a failed write
    leaves `path` untouched). Without `overwrite`, a `path` that exists (or appears meanwhile) is an error."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{str(path)!r} appeared while writing; pass overwrite=True to replace it")
        move_into_place(tmp, path)
    finally:
        if tmp.exists():
            remove(tmp)
    return path
