"""Scratch folders named after the process that owns them, so the next process can remove those a kill left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

OWNER_FILE = ".owner"  # the owner's pid, for a folder made before its owner was started (a server's TMPDIR)
UNOWNED_GRACE_S = 900  # a folder still without an owner this long after it was made lost it before it started


def owner_pid(folder: Path, prefix: str) -> int | None:
    """The pid in a scratch folder's name (`<prefix><pid>-...`), else in its OWNER_FILE; None if it names none."""
    pid = folder.name.removeprefix(prefix).split("-", 1)[0]
    if folder.name.startswith(prefix) and pid.isdigit():
        return int(pid)
    recorded = folder / OWNER_FILE
    return int(recorded.read_text()) if recorded.is_file() and recorded.read_text().strip().isdigit() else None


def sweep(parent: Path, prefix: str) -> int:
    """Remove the scratch folders under `parent` whose owning process is gone; how many were removed."""
    removed = 0
    for old in parent.glob(f"{prefix}*") if parent.is_dir() else ():
        pid = owner_pid(old, prefix)
        orphan = pid is None and time.time() - old.stat().st_mtime > UNOWNED_GRACE_S
        if old.is_dir() and (orphan or pid is not None and not psutil.pid_exists(pid)):
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
