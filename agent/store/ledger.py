"""The cra home's ledger: one DuckDB file for what spans projects, opened one way.

Each table's migrations are declared, with `@LEDGER.migration`, by the module that writes the table (the call log,
the run log, the adapter registry, curation, bootstrapping), and only that module queries it: the others use its
functions. A module registers its migrations when it is imported, so they are applied before its own functions
open the ledger; owners' tables do not depend on each other, so the order modules are imported in does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from agent.config import ledger_path
from agent.store import connect
from agent.store.migrations import Schema

LEDGER = Schema("cra ledger")


@contextmanager
def ledger(home: str | Path | None, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the home ledger for a `with` block, every registered migration applied (a read-only open too), then close it."""
    path = ledger_path(home)
    con = connect(path, read_only=read_only, schema=LEDGER)
    try:
        if read_only and LEDGER.pending(con):  # last written by a process that had not imported some table's owner
            con.close()
            con = connect(path, schema=LEDGER)
        yield con
    finally:
        con.close()
