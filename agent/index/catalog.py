"""The relational half of the index in DuckDB: parsed files in, rows out."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

import duckdb
import numpy as np
import pyarrow as pa

from agent.index.symbols import ParsedFile, Skipped

PER_PATH_TABLES = ("files", "symbols", "includes", "refs", "skipped_files")


def module_of(path: str) -> str:
    """The module of a file: its directory ('.' at the top level)."""
    return posixpath.dirname(path) or "."


FILES = pa.schema(
    [
        ("path", pa.string()), ("lang", pa.string()), ("module", pa.string()), ("sha", pa.string()),
        ("size", pa.int64()), ("n_lines", pa.int32()), ("error_nodes", pa.int32()), ("raw_error_nodes", pa.int32()),
    ]
)
SYMBOLS = pa.schema(
    [
        ("id", pa.string()), ("path", pa.string()), ("name", pa.string()), ("kind", pa.string()),
        ("signature", pa.string()), ("start_line", pa.int32()), ("end_line", pa.int32()),
        ("is_static", pa.bool_()), ("body_hash", pa.string()), ("section", pa.string()), ("detail", pa.string()),
    ]
)
INCLUDES = pa.schema(
    [("path", pa.string()), ("target", pa.string()), ("resolved", pa.string()), ("line", pa.int32()), ("system", pa.bool_())]
)
REFS = pa.schema(
    [
        ("src", pa.string()), ("path", pa.string()), ("name", pa.string()), ("kind", pa.string()),
        ("line", pa.int32()), ("recovered", pa.bool_()), ("dst", pa.string()), ("candidates", pa.int32()),
    ]
)
SKIPPED = pa.schema([("path", pa.string()), ("reason", pa.string())])


def delete_paths(con: duckdb.DuckDBPyConnection, paths: Iterable[str] | None) -> None:
    """Remove every row of the given paths (all rows when `paths` is None)."""
    if paths is None:
        for table in PER_PATH_TABLES:
            con.execute(f"DELETE FROM {table}")
        con.execute("DELETE FROM decl_links")
        return
    batch = pa.table({"path": pa.array(sorted(set(paths)), pa.string())})
    if not batch.num_rows:
        return
    con.register("_gone", batch)
    try:
        for table in PER_PATH_TABLES:
            con.execute(f"DELETE FROM {table} WHERE path IN (SELECT path FROM _gone)")
        con.execute(
            "DELETE FROM decl_links WHERE split_part(decl, '::', 1) IN (SELECT path FROM _gone)"
            " OR split_part(defn, '::', 1) IN (SELECT path FROM _gone)"
        )
    finally:
        con.unregister("_gone")


def insert_parsed(con: duckdb.DuckDBPyConnection, parsed: list[ParsedFile], skipped: list[Skipped]) -> None:
    """Insert the rows of freshly parsed files (their old rows must already be deleted)."""
    symbols = [(pf.path, s) for pf in parsed for s in pf.symbols]
    includes = [(pf.path, i) for pf in parsed for i in pf.includes]
    refs = [(pf.path, r) for pf in parsed for r in pf.refs]
    # Column by column, one table at a time: a row dict per reference would cost pokeemerald's 485k refs ~200 MB.
    _insert(con, "files", FILES, {
        "path": [pf.path for pf in parsed], "lang": [pf.lang for pf in parsed],
        "module": [module_of(pf.path) for pf in parsed], "sha": [pf.sha for pf in parsed],
        "size": [pf.size for pf in parsed], "n_lines": [pf.n_lines for pf in parsed],
        "error_nodes": [pf.error_nodes for pf in parsed], "raw_error_nodes": [pf.raw_error_nodes for pf in parsed],
    })
    _insert(con, "symbols", SYMBOLS, {
        "id": [s.id for _, s in symbols], "path": [p for p, _ in symbols], "name": [s.name for _, s in symbols],
        "kind": [s.kind for _, s in symbols], "signature": [s.signature for _, s in symbols],
        "start_line": [s.start_line for _, s in symbols], "end_line": [s.end_line for _, s in symbols],
        "is_static": [s.is_static for _, s in symbols], "body_hash": [s.body_hash for _, s in symbols],
        "section": [s.section for _, s in symbols], "detail": [s.detail for _, s in symbols],
    })
    _insert(con, "includes", INCLUDES, {
        "path": [p for p, _ in includes], "target": [i.target for _, i in includes],
        "resolved": pa.nulls(len(includes), pa.string()), "line": [i.line for _, i in includes],
        "system": [i.system for _, i in includes],
    })
    _insert(con, "refs", REFS, {
        "src": [r.src for _, r in refs], "path": [p for p, _ in refs], "name": [r.name for _, r in refs],
        "kind": [r.kind for _, r in refs], "line": [r.line for _, r in refs],
        "recovered": [r.recovered for _, r in refs], "dst": pa.nulls(len(refs), pa.string()),
        "candidates": pa.array(np.zeros(len(refs), np.int32)),
    })
    _insert(con, "skipped_files", SKIPPED, {"path": [s.path for s in skipped], "reason": [s.reason for s in skipped]})


def _insert(con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, columns: dict[str, list | pa.Array]) -> None:
    """Append `columns` (one list or array per field of `schema`) to `table`."""
    data = pa.Table.from_pydict(columns, schema=schema)
    if not data.num_rows:
        return
    con.register("_rows", data)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
    finally:
        con.unregister("_rows")


def indexed_shas(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Path → blob sha of every indexed file, skipped ones included as ''."""
    shas = dict(con.execute("SELECT path, sha FROM files").fetchall())
    for (path,) in con.execute("SELECT path FROM skipped_files").fetchall():
        shas.setdefault(path, "")
    return shas
