"""One writer per project index: an advisory file lock that waits, then fails clearly."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import IndexBusy


@contextmanager
def index_lock(path: Path, wait_s: float = 60.0) -> Iterator[None]:
    """Hold the exclusive index lock at `path`, waiting up to `wait_s` for another indexer to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise IndexBusy(
                        f"another cra indexer (pid {holder}) is writing this project's index; "
                        f"waited {wait_s:.0f} s. Retry when it finishes, or raise --wait."
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
