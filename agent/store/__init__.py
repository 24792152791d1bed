"""cra's DuckDB files (a project's index store, the home ledger): ordered migrations applied on open."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from agent.errors import StoreBusy
from agent.store.migrations import INDEX, Schema

DEFAULT_WAIT_S = 30.0


def utc_now() -> datetime:
    """The time as the stores keep it: UTC, without a zone (DuckDB TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    return "lock" in str(exc).lower()


def connect(
    path: Path, *, read_only: bool = False, wait_s: float = DEFAULT_WAIT_S, schema: Schema = INDEX,
) -> duckdb.DuckDBPyConnection:
    """Open a store, waiting while another process holds it; `schema`'s migrations run on every writable open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if read_only and not path.exists():
        read_only = False  # a first open must create the file and its schema
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc) or time.monotonic() >= deadline:
                if _is_lock_conflict(exc):
                    raise StoreBusy(
                        f"the store {path} is held by another cra process; wait for it to finish and retry"
                    ) from exc
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    con.execute("SET enable_progress_bar = false")  # a query over 2 s would draw one on stdout, into `--json` output
    if not read_only:
        schema.migrate(con)
    return con


@contextmanager
def opened(
    path: Path, *, read_only: bool = False, wait_s: float = DEFAULT_WAIT_S, schema: Schema = INDEX,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open a store for the length of a `with` block, closing it (and its file lock) after."""
    con = connect(path, read_only=read_only, wait_s=wait_s, schema=schema)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run a block in one transaction: all of it is written, or none."""
    con.begin()
    try:
        yield con
    except BaseException:
        con.rollback()
        raise
    con.commit()
