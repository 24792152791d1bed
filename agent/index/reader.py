"""The index's read side: one reader per project (`agent.project.Project` owns it) holding one read-only DuckDB
connection, and every question the runtime, the CLI, the benchmarks and bootstrap ask of the index."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
from scipy.sparse import csr_array

from agent import enrichment, store
from agent.enrichment import Enriched
from agent.errors import UnknownSymbol
from agent.index import history, notes
from agent.index.build import open_index
from agent.index.graph import (
    GRAPH_NODE_KINDS,
    NEIGHBOR_MAX_FANOUT,
    NEIGHBOR_REF_KINDS,
    definitions,
    entry_territories,
    positions,
    sql_list,
)

AGENT_KINDS = ("function", "global", "macro_function", "macro", "struct", "union", "enum", "typedef")

# The columns of a Symbol, in its fields' order; `s` is the symbols table, `m` its metrics.
_SYMBOL_COLUMNS = (
    "s.id, s.name, s.kind, s.path, s.start_line, s.end_line, coalesce(s.signature, ''), s.is_static,"
    " coalesce(s.section, ''), coalesce(s.detail, ''), coalesce(m.pagerank, 0)"
)
_SYMBOLS = "symbols s LEFT JOIN symbol_metrics m ON m.id = s.id"


@dataclass(frozen=True)
class Symbol:
    """A symbol of the index: its definition (or declaration), where it is, and its PageRank in the symbol graph."""

    id: str
    name: str
    kind: str
    path: str
    start_line: int
    end_line: int
    signature: str
    is_static: bool
    section: str    # EWRAM_DATA, IWRAM_DATA, ... for globals
    detail: str     # macro value, fields, enum constants
    pagerank: float


@dataclass
class SymbolInfo:
    """A definition with its declarations, and who it calls and is called by."""

    symbol: Symbol
    declarations: list[str]
    callers: list[dict]
    callees: list[dict]
    history: notes.Note | None = None  # what the commits that made and changed it said
    asked_as: str | None = None        # the old name it was looked up by, when it has been renamed since
    enrichment: Enriched | None = None  # a model's account of its current body (`cra enrich`)

    def as_dict(self) -> dict:
        """A JSON-ready view: the definition's place and shape, its declarations, callers, callees and history."""
        s = self.symbol
        return {"id": s.id, "name": s.name, "kind": s.kind, "path": s.path, "start_line": s.start_line,
                "end_line": s.end_line, "signature": s.signature, "is_static": s.is_static,
                "declarations": self.declarations, "callers": self.callers, "callees": self.callees,
                "history": self.history.as_dict() if self.history else None, "asked_as": self.asked_as,
                "enrichment": self.enrichment.as_dict() if self.enrichment else None}


class EdgeRow(NamedTuple):
    """One reference seen from either end, as callers and callees return it (as a dict)."""

    id: str          # the symbol at the other end: the caller (the file path for file-scope uses) or the callee
    name: str
    kind: str        # its kind ('' for a file)
    path: str        # where it is defined
    line: int
    ref_kind: str    # call | value | macro | type | asm
    site_path: str   # where the reference is
    site_line: int
    candidates: int  # definitions the reference could mean; > 1 is ambiguous


def _in(values: Iterable[str]) -> tuple[str, list[str]]:
    values = list(values)
    return ", ".join("?" * len(values)) or "NULL", values


class IndexReader:
    """Reads of one project's index over one read-only connection, opened at the first read and held until
    `close` (a read after `close` opens a new one: an owner closes between batches of reads so that the indexer,
    which needs the store to itself, is not kept waiting)."""

    def __init__(self, path: Path, repo: Path | None = None) -> None:
        self.path, self.repo = path, repo
        self._con: duckdb.DuckDBPyConnection | None = None
        self._owned = True

    @classmethod
    def over(cls, con: duckdb.DuckDBPyConnection) -> IndexReader:
        """A reader over a connection its caller already holds and closes (a writer's, in the same process)."""
        [(path,)] = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
        reader = cls(Path(path))
        reader._con, reader._owned = con, False
        return reader

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection, opened (waiting while an indexer holds the store) at the first read."""
        if self._con is None:
            self._con = store.connect(self.path, read_only=True)
        return self._con

    def close(self) -> None:
        """Close the connection, if one is open and this reader opened it."""
        if self._con is not None and self._owned:
            self._con.close()
            self._con = None

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- symbols
    def _symbols(self, where: str, params: list, order: str) -> list[Symbol]:
        rows = self.con.execute(f"SELECT {_SYMBOL_COLUMNS} FROM {_SYMBOLS} WHERE {where} ORDER BY {order}",
                                params).fetchall()
        return [Symbol(*row) for row in rows]

    def functions(self) -> list[Symbol]:
        """Every function definition, most central (PageRank) first."""
        return self._symbols("s.kind = 'function'", [], "coalesce(m.pagerank, 0) DESC, s.path, s.start_line")

    def symbols_by_id(self, ids: list[str]) -> list[Symbol]:
        """The symbols of `ids`, in that order."""
        found = {s.id: s for s in self._symbols("s.id IN (SELECT unnest(?))", [ids], "s.id")}
        return [found[i] for i in ids]

    def symbols_in_files(self, paths: Iterable[str], kinds: Iterable[str] = AGENT_KINDS) -> list[Symbol]:
        """Symbols defined in `paths`, most central (PageRank) first."""
        marks, files = _in(paths)
        kind_marks, kind_list = _in(kinds)
        return self._symbols(f"s.path IN ({marks}) AND s.kind IN ({kind_marks})", [*files, *kind_list],
                             "coalesce(m.pagerank, 0) DESC, s.path, s.start_line")

    def defined(self, names: Iterable[str]) -> dict[str, list[str]]:
        """For each name that the index defines (not only declares), the files defining it."""
        marks, values = _in(names)
        return dict(self.con.execute(
            f"SELECT name, list(DISTINCT path ORDER BY path) FROM symbols WHERE name IN ({marks}) AND kind <> 'prototype'"
            " GROUP BY name", values,
        ).fetchall())

    def lookup(self, name: str) -> list[SymbolInfo]:
        """Every definition named `name` (several for pret's reused static names; its declarations when there is
        none), with its declarations and graph neighbours; UnknownSymbol, with the closest names, when none."""
        found = (self._symbols("s.name = ? AND s.kind <> 'prototype'", [name], "s.path, s.start_line")
                 or self._symbols("s.name = ?", [name], "s.path, s.start_line"))
        renamed = None if found else self.renamed_to(name)
        if renamed:
            found = self._symbols("s.name = ? AND s.kind <> 'prototype'", [renamed], "s.path, s.start_line")
        if not found:
            close = [r[0] for r in self.con.execute(
                "SELECT DISTINCT name FROM symbols WHERE name ILIKE ? ORDER BY length(name) LIMIT 5", [f"%{name}%"]
            ).fetchall()]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownSymbol(f"no symbol named {name!r} in the index of {self.repo or self.path}{hint}")
        found_notes = self.notes_of((s.name, s.path) for s in found)
        return [SymbolInfo(s, self.declarations(s.id), self.callers(s.id), self.callees(s.id),
                           found_notes.get((s.name, s.path)), name if renamed else None) for s in found]

    def notes_of(self, symbols: Iterable[tuple[str, str]]) -> dict[tuple[str, str], notes.Note]:
        """The history notes of `symbols` (name, path) that have one."""
        return notes.notes_for(self.con, symbols)

    def renamed_to(self, old_name: str) -> str | None:
        """The name a symbol once called `old_name` has now, following later renames; None when it has none."""
        name, seen = old_name, {old_name}
        while row := self.con.execute(
                "SELECT s.name FROM symbol_changes s JOIN commits c USING (sha) WHERE s.old_name = ? AND "
                "s.event = 'renamed' ORDER BY c.seq DESC LIMIT 1", [name]).fetchone():
            if row[0] in seen:
                break
            name = row[0]
            seen.add(name)
        return name if name != old_name else None

    def declarations(self, symbol_id: str) -> list[str]:
        """Where the definition `symbol_id` is declared (prototypes, `extern`s), as path:line."""
        return [f"{p}:{line}" for p, line in self.con.execute(
            "SELECT s.path, s.start_line FROM decl_links d JOIN symbols s ON s.id = d.decl WHERE d.defn = ? ORDER BY 1",
            [symbol_id],
        ).fetchall()]

    def definition_of(self, name: str, from_path: str | None = None) -> list[Symbol]:
        """Where `name` is defined as seen from `from_path` (its TU first), best first; several when ambiguous."""
        return self.symbols_by_id(definitions(self.con, name, from_path))

    def symbol_ranks(self) -> list[tuple[str, str, str, str, int, float]]:
        """(id, name, kind, path, start_line, pagerank) of every symbol: the searcher's table of them."""
        return self.con.execute(
            "SELECT s.id, s.name, s.kind, s.path, s.start_line, coalesce(m.pagerank, 0) FROM " + _SYMBOLS
        ).fetchall()

    def end_lines(self) -> dict[str, int]:
        """The last line of every symbol, by id."""
        return dict(self.con.execute("SELECT id, end_line FROM symbols").fetchall())

    # ----------------------------------------------------------------------------------------- files
    def indexed_files(self) -> set[str]:
        """Every file path in the index."""
        return set(self.file_langs())

    def file_langs(self) -> dict[str, str]:
        """Every file path in the index, with its language (c, h, asm, text)."""
        return dict(self.con.execute("SELECT path, lang FROM files").fetchall())

    def file_pagerank(self) -> dict[str, float]:
        """Each file's PageRank in the file graph."""
        return dict(self.con.execute("SELECT path, pagerank FROM file_metrics").fetchall())

    def history(self) -> history.History:
        """The repository's history as the search signals read it."""
        return history.load(self.con)

    # ----------------------------------------------------------------------------------------- graph
    def callers(self, symbol_id: str) -> list[dict]:
        """Every reference resolved to `symbol_id`, with the symbol (or file) it sits in: EdgeRow dicts."""
        rows = self.con.execute(
            """SELECT r.src, coalesce(s.name, ''), coalesce(s.kind, ''), coalesce(s.path, r.path),
                      coalesce(s.start_line, r.line), r.kind, r.path, r.line, r.candidates
            FROM refs r LEFT JOIN symbols s ON s.id = r.src WHERE r.dst = ? ORDER BY r.path, r.line, r.src""",
            [symbol_id],
        ).fetchall()
        return [EdgeRow(*row)._asdict() for row in rows]

    def callees(self, symbol_id: str) -> list[dict]:
        """Every resolved reference inside `symbol_id`, with the definition it resolved to: EdgeRow dicts."""
        rows = self.con.execute(
            """SELECT r.dst, s.name, s.kind, s.path, s.start_line, r.kind, r.path, r.line, r.candidates
            FROM refs r JOIN symbols s ON s.id = r.dst WHERE r.src = ? ORDER BY r.line, r.dst""",
            [symbol_id],
        ).fetchall()
        return [EdgeRow(*row)._asdict() for row in rows]

    def top_entry_points(self, n: int = 20) -> list[tuple[Symbol, int]]:
        """The entry points owning the most functions (nearest-entry territories), biggest first, each with how
        many functions it owns."""
        owned = entry_territories(self.con, n)
        return list(zip(self.symbols_by_id([i for i, _ in owned]), [count for _, count in owned], strict=True))

    def adjacent(self, nodes: list[str]) -> dict[str, list[str]]:
        """Adjacency.adjacent, read from the store: for a one-off neighbors() walk."""
        node = f"split_part(src, '::', 2) IN ({sql_list(GRAPH_NODE_KINDS)})"
        out: dict[str, set[str]] = defaultdict(set)
        for a, b in self.con.execute(
            f"""WITH f AS (SELECT unnest(?::VARCHAR[]) AS id)
            SELECT DISTINCT src, dst FROM refs
            WHERE kind IN ({sql_list(NEIGHBOR_REF_KINDS)}) AND dst IS NOT NULL AND src <> dst AND {node}
              AND (src IN (SELECT id FROM f) OR dst IN (SELECT id FROM f))""",
            [nodes],
        ).fetchall():
            out[a].add(b)
            out[b].add(a)
        return {node: list(near) for node, near in out.items()}

    def adjacency(self) -> Adjacency:
        """The graph neighbors() walks, in memory: for a long-lived searcher."""
        nodes = self.con.sql(
            f"SELECT hash(id) AS h, id FROM symbols WHERE kind IN ({sql_list(GRAPH_NODE_KINDS)}) ORDER BY h"
        ).to_arrow_table()
        edges = self.con.execute(
            f"""SELECT DISTINCT hash(src) AS s, hash(dst) AS d FROM refs
            WHERE kind IN ({sql_list(NEIGHBOR_REF_KINDS)}) AND dst IS NOT NULL AND src <> dst"""
        ).fetchnumpy()
        hashes = nodes.column("h").to_numpy()
        si, sok = positions(hashes, np.asarray(edges["s"]))
        di, dok = positions(hashes, np.asarray(edges["d"]))
        keep = sok & dok
        return Adjacency(nodes.column("id").to_pylist(), si[keep], di[keep])


class Adjacency:
    """The symbol graph's NEIGHBOR_REF_KINDS edges in memory, both directions: for many neighbors() calls."""

    def __init__(self, ids: list[str], src: np.ndarray, dst: np.ndarray) -> None:
        self.ids = ids
        self.index = {s: i for i, s in enumerate(ids)}
        n = len(ids)
        both = csr_array((np.ones(2 * len(src), bool), (np.r_[src, dst], np.r_[dst, src])), shape=(n, n))
        self.indptr, self.indices = both.indptr, both.indices

    def adjacent(self, nodes: list[str]) -> dict[str, list[str]]:
        """The neighbours of each of `nodes` that is in the graph."""
        out = {}
        for node in nodes:
            i = self.index.get(node)
            if i is not None:
                out[node] = [self.ids[j] for j in self.indices[self.indptr[i]:self.indptr[i + 1]]]
        return out


def neighbors(graph: Adjacency | IndexReader, symbol_ids: Iterable[str], hops: int = 2,
              max_fanout: int = NEIGHBOR_MAX_FANOUT) -> dict[str, int]:
    """Symbols within `hops` NEIGHBOR_REF_KINDS references of `symbol_ids`, either way, to their distance.

    Seeds are at 0. A node past the seeds with more than `max_fanout` neighbours is reached but not walked
    through. `graph` is a loaded Adjacency, or the reader itself for a one-off query.
    """
    dist = {s: 0 for s in symbol_ids}
    frontier = list(dist)
    for hop in range(1, hops + 1):
        if not frontier:
            break
        near_of = graph.adjacent(frontier)
        nxt = []
        for node in frontier:
            near = near_of.get(node, ())
            if hop > 1 and len(near) > max_fanout:
                continue  # a hub: reached, but no path to a neighbourhood
            for other in near:
                if other not in dist:
                    dist[other] = hop
                    nxt.append(other)
        frontier = nxt
    return dist


def lookup_symbol(repo: Path, name: str, *, home: Path | str | None = None) -> list[SymbolInfo]:
    """Every definition named `name` in the index of `repo`, with a model's account where `cra enrich` wrote one (a
    `Project`'s lookup, for callers with only a path)."""
    paths, _state = open_index(repo, home)
    with IndexReader(paths.store, paths.repo) as index:
        infos = index.lookup(name)
    found = enrichment.of_symbols(home, paths.root.name, paths.repo,
                                  ((i.symbol.path, i.symbol.name, i.symbol.start_line, i.symbol.end_line)
                                   for i in infos if i.symbol.kind == "function"))
    for info in infos:
        info.enrichment = found.get((info.symbol.path, info.symbol.name))
    return infos
