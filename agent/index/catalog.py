"""The relational half of the index in DuckDB: parsed files in, rows out."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

import duckdb
import pyarrow as pa

from agent.index.symbols import ParsedFile, Skipped

PER_PATH_TABLES = ("files", "symbols", "includes", "refs", "skipped_files")


def module_of(path: str) -> str:
    """The module of a file: its directory ('.' at the top level)."""
    return posixpath.dirname(path) or "."


def _arrow(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


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
    files, symbols, includes, refs = [], [], [], []
    for pf in parsed:
        files.append(
            {"path": pf.path, "lang": pf.lang, "module": module_of(pf.path), "sha": pf.sha, "size": pf.size,
             "n_lines": pf.n_lines, "error_nodes": pf.error_nodes, "raw_error_nodes": pf.raw_error_nodes}
        )
        for s in pf.symbols:
            symbols.append(
                {"id": s.id, "path": pf.path, "name": s.name, "kind": s.kind, "signature": s.signature,
                 "start_line": s.start_line, "end_line": s.end_line, "is_static": s.is_static,
                 "body_hash": s.body_hash, "section": s.section, "detail": s.detail}
            )
        for inc in pf.includes:
            includes.append({"path": pf.path, "target": inc.target, "resolved": None, "line": inc.line, "system": inc.system})
        for r in pf.refs:
            refs.append(
                {"src": r.src, "path": pf.path, "name": r.name, "kind": r.kind, "line": r.line,
                 "recovered": r.recovered, "dst": None, "candidates": 0}
            )
    for table, rows, schema in (
        ("files", files, FILES),
        ("symbols", symbols, SYMBOLS),
        ("includes", includes, INCLUDES),
        ("refs", refs, REFS),
        ("skipped_files", [{"path": s.path, "reason": s.reason} for s in skipped], SKIPPED),
    ):
        if rows:
            data = _arrow(rows, schema)
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
