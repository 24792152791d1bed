"""Scratch folders named after the process that owns them, so the next process can remove those a kill left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def owner_pid(folder: Path, prefix: str) -> int | None:
    """The pid in a scratch folder's name (`<prefix><pid>-...`), or None for a name of another shape."""
    pid = folder.name.removeprefix(prefix).split("-", 1)[0]
    return int(pid) if folder.name.startswith(prefix) and pid.isdigit() else None


def sweep(parent: Path, prefix: str) -> int:
    """Remove the scratch folders under `parent` whose owning process is gone; how many were removed."""
    removed = 0
    for old in parent.glob(f"{prefix}*-*") if parent.is_dir() else ():
        pid = owner_pid(old, prefix)
        if pid is not None and not psutil.pid_exists(pid):
            shutil.rmtree(old, ignore_errors=True)
            removed += 1
    return removed


@contextmanager
def scratch_folder(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A new folder `<prefix><pid>-...` under `parent` (the temporary folder by default), removed afterwards.

    First, the folders of earlier processes that were killed are swept away.
    """
    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
