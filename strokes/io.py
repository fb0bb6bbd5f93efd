"""Atomic writes: a file or a folder appears complete or not at all.

    with atomic_path(out, folder=True) as tmp:   # tmp = out.tmp/, created empty
        ...write into tmp...
    # out now holds what tmp held (a previous out is replaced)

    write_atomic(path, text)                      # the same for one text file

Everything is written under a temporary name beside the target and renamed onto it when the block
completes, so a killed process never leaves a target that looks finished but is not. If the block
raises, the temporary is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_path(path: Path, folder: bool = False) -> Path:
    """Where `atomic_path` writes before the rename: `<name>.tmp` beside a folder (the run
    directory's stage convention, docs/design.md §6); a hidden per-process, per-thread name beside a
    file, so concurrent writers of one file never share a temporary."""
    if folder:
        return path.with_name(path.name + ".tmp")
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextmanager
def atomic_path(path: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`, then rename it onto `path` (module docstring).

    folder=True: the temporary is a fresh empty folder (a stale one from a killed run is removed
    first) and replaces a previous folder at `path`; folder=False: the caller writes the temporary
    file, which replaces a previous file at `path`. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, folder)
    if folder:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    if folder and path.exists():  # a folder cannot be renamed onto a non-empty one: move it aside first
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to the file at `path` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
