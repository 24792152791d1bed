"""Schema histories of cra's DuckDB files, top to bottom; applied names are recorded in `_migrations`."""

from __future__ import annotations

import threading
from collections.abc import Callable

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]
# One migrator at a time in this process: threads' connections to one file share its database, and two of them
# creating the same table conflict (other processes are kept out by DuckDB's file lock).
_MIGRATING = threading.Lock()


class Schema:
    """An ordered list of migrations for one kind of DuckDB file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Migration] = []

    def migration(self, step: Migration) -> Migration:
        """Register `step` as the next migration (a decorator); its name is what a file records once it ran."""
        if any(s.__name__ == step.__name__ for s in self.steps):
            raise ValueError(f"{self.name}: a migration named {step.__name__} is registered twice")
        self.steps.append(step)
        return step

    def pending(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """The names of the registered migrations `con`'s file has not recorded (works on a read-only open)."""
        if not con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = '_migrations'").fetchone():
            return [step.__name__ for step in self.steps]
        done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
        return [step.__name__ for step in self.steps if step.__name__ not in done]

    def migrate(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Apply every migration not yet recorded, in order, each in its own transaction; return their names."""
        with _MIGRATING:
            return self._migrate(con)

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        con.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMP DEFAULT now())")
        pending = set(self.pending(con))
        applied = []
        for step in self.steps:
            if step.__name__ not in pending:
                continue
            con.begin()
            try:
                step(con)
                con.execute("INSERT INTO _migrations (name) VALUES (?)", [step.__name__])
            except BaseException:
                con.rollback()
                raise
            con.commit()
            applied.append(step.__name__)
        return applied


INDEX = Schema("project index")
migration = INDEX.migration


@migration
def m001_index(con: duckdb.DuckDBPyConnection) -> None:
    """The code index: files, symbols, includes, references and graph metrics."""
    con.execute(
        """
        CREATE TABLE index_state (
            id INTEGER PRIMARY KEY,          -- always 1: one index per project store
            repo TEXT NOT NULL,
            commit_sha TEXT,                 -- HEAD the index was built from
            dirty_paths TEXT[],              -- uncommitted files indexed from the work tree
            generation INTEGER NOT NULL,     -- bumped by every full build; names the LanceDB tables
            symbols_version BIGINT,          -- LanceDB table versions matching these rows
            files_version BIGINT,
            embedder TEXT,                   -- NULL when built with --no-embed
            parser_version INTEGER NOT NULL,
            indexed_at TIMESTAMP NOT NULL,
            stats JSON
        )
        """
    )
    con.execute(
        """
        CREATE TABLE files (
            path TEXT PRIMARY KEY,
            lang TEXT NOT NULL,              -- c | h | asm | text
            module TEXT NOT NULL,            -- directory of the file
            sha TEXT NOT NULL,               -- git blob id of the indexed content
            size BIGINT NOT NULL,
            n_lines INTEGER NOT NULL,
            error_nodes INTEGER NOT NULL,    -- tree-sitter ERROR nodes left after decomp-aware parsing
            raw_error_nodes INTEGER NOT NULL -- ERROR nodes plain tree-sitter-c reports
        )
        """
    )
    con.execute("CREATE TABLE skipped_files (path TEXT PRIMARY KEY, reason TEXT NOT NULL)")
    con.execute(
        """
        CREATE TABLE symbols (
            id TEXT PRIMARY KEY,             -- path::kind::name[#n], stable across line shifts
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            signature TEXT,
            start_line INTEGER NOT NULL,
            end_line INTEGER NOT NULL,
            is_static BOOLEAN NOT NULL,
            body_hash TEXT,
            section TEXT,                    -- EWRAM_DATA, IWRAM_DATA, ... for globals
            detail TEXT                      -- macro value, fields, enum constants: text for search
        )
        """
    )
    con.execute("CREATE INDEX symbols_name ON symbols(name)")
    con.execute("CREATE INDEX symbols_path ON symbols(path)")
    con.execute(
        "CREATE TABLE includes (path TEXT NOT NULL, target TEXT NOT NULL, resolved TEXT, line INTEGER, system BOOLEAN)"
    )
    con.execute(
        """
        CREATE TABLE refs (
            src TEXT NOT NULL,               -- symbol id of the enclosing definition, or the file path
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,              -- call | value | macro | type
            line INTEGER NOT NULL,
            recovered BOOLEAN NOT NULL,      -- found inside a region plain tree-sitter marks ERROR
            dst TEXT,                        -- resolved symbol id, NULL when unresolved (libc, ...)
            candidates INTEGER NOT NULL      -- definitions the name could mean; >1 is ambiguous
        )
        """
    )
    con.execute("CREATE INDEX refs_path ON refs(path)")
    con.execute("CREATE INDEX refs_name ON refs(name)")
    con.execute("CREATE TABLE decl_links (decl TEXT NOT NULL, defn TEXT NOT NULL)")
    con.execute(
        """
        CREATE TABLE symbol_metrics (
            id TEXT PRIMARY KEY,
            pagerank DOUBLE, in_degree INTEGER, out_degree INTEGER,
            betweenness DOUBLE, entry_distance INTEGER, is_entry BOOLEAN
        )
        """
    )
    con.execute("CREATE TABLE file_metrics (path TEXT PRIMARY KEY, pagerank DOUBLE, in_degree INTEGER, out_degree INTEGER)")


@migration
def m002_history(con: duckdb.DuckDBPyConnection) -> None:
    """The repository's history as a search signal: the commits reachable from the indexed HEAD."""
    con.execute("CREATE TABLE history_state (id INTEGER PRIMARY KEY, head TEXT NOT NULL, n_commits INTEGER, updated_at TIMESTAMP)")
    con.execute(
        """
        CREATE TABLE commits (
            sha TEXT PRIMARY KEY,
            committed_at BIGINT NOT NULL,    -- committer date, unix seconds
            seq INTEGER,                     -- 1 = oldest; renumbered on every update
            subject TEXT NOT NULL,
            body_title TEXT,                 -- first line of the body that is not a trailer
            tokens TEXT[] NOT NULL,          -- search terms of subject and body title
            n_files INTEGER NOT NULL,        -- for a merge: the files its branch changed (diff to the first parent)
            is_merge BOOLEAN NOT NULL
        )
        """
    )
    con.execute(
        "CREATE TABLE commit_files (sha TEXT NOT NULL, path TEXT NOT NULL, status TEXT NOT NULL, old_path TEXT)"
    )  # status: git's letter (M, A, D, R, ...); old_path: the path before a rename
    con.execute("CREATE INDEX commit_files_path ON commit_files(path)")
    con.execute("CREATE TABLE commit_terms (sha TEXT NOT NULL, term TEXT NOT NULL, tf INTEGER NOT NULL)")
    con.execute("CREATE INDEX commit_terms_term ON commit_terms(term)")


@migration
def m003_symbol_changes(con: duckdb.DuckDBPyConnection) -> None:
    """History notes: which commits created, renamed or changed each symbol; the history is read again to fill them."""
    con.execute(
        """
        CREATE TABLE symbol_changes (
            sha TEXT NOT NULL,
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            event TEXT NOT NULL,             -- created | renamed | changed
            old_name TEXT                    -- renamed: the name it had before
        )
        """
    )
    con.execute("CREATE INDEX symbol_changes_name ON symbol_changes(name)")
    con.execute("CREATE INDEX symbol_changes_old_name ON symbol_changes(old_name)")
    con.execute("ALTER TABLE index_state ADD COLUMN history_notes BOOLEAN DEFAULT false")
    for table in ("commit_terms", "commit_files", "commits", "history_state"):
        con.execute(f"DELETE FROM {table}")
