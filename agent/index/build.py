"""Build and incrementally update a project's index: git state in, DuckDB rows and LanceDB tables out."""

from __future__ import annotations

import gc
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing import current_process, get_context
from pathlib import Path

import duckdb

from agent import enrichment, store
from agent import repo as git_repo
from agent.config import ProjectPaths, project_paths
from agent.errors import MissingObjects, NotIndexed
from agent.index import catalog, graph, history, notes
from agent.index.embed import embedder_name as recorded_embedder_name
from agent.index.lock import index_lock
from agent.index.parse import language_of, parse_file
from agent.index.symbols import PARSER_VERSION, ParsedFile, Skipped
from agent.lifeline import die_with_parent

POOL_MIN_FILES = 64  # below this, parsing in-process beats starting workers
MAX_FILE_BYTES = 8 * 1024 * 1024  # never read more than this from one file

Progress = Callable[[str], None]


@dataclass
class IndexState:
    """What the store says the current index was built from."""

    commit: str
    dirty_paths: list[str]
    generation: int
    symbols_version: int | None
    files_version: int | None
    embedder: str | None
    parser_version: int
    history_notes: bool  # whether symbols' search texts carry their history notes


@dataclass
class IndexReport:
    """What one `index_repo` call did, for the CLI and the benchmarks."""

    repo: Path
    commit: str
    full: bool
    files_seen: int = 0
    parsed: int = 0
    removed: int = 0
    skipped: int = 0
    symbols: int = 0
    embedded: int = 0
    dirty: list[str] = field(default_factory=list)
    c_files: int = 0
    c_files_with_errors: int = 0
    raw_c_files_with_errors: int = 0
    graph: dict = field(default_factory=dict)
    commits_added: int = 0
    commits_unreadable: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether anything in the index was rewritten."""
        return self.full or bool(self.parsed or self.removed or self.skipped)


def read_state(con: duckdb.DuckDBPyConnection) -> IndexState | None:
    """The recorded index state, or None when the project was never indexed."""
    row = con.execute(
        "SELECT commit_sha, dirty_paths, generation, symbols_version, files_version, embedder, parser_version,"
        " history_notes FROM index_state WHERE id = 1"
    ).fetchone()
    return IndexState(row[0], list(row[1] or []), *row[2:]) if row else None


def _write_state(con: duckdb.DuckDBPyConnection, repo: Path, state: IndexState, stats: dict) -> None:
    con.execute("DELETE FROM index_state")
    con.execute(
        "INSERT INTO index_state VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            str(repo), state.commit, state.dirty_paths, state.generation, state.symbols_version,
            state.files_version, state.embedder, state.parser_version, store.utc_now(), json.dumps(stats),
            state.history_notes,
        ],
    )


def _read_source(top: Path, rel: str) -> bytes | Skipped | None:
    """The bytes of a work-tree file, a Skipped for what must not be read, None when it is gone."""
    full = top / rel
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return None
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return Skipped(git_repo.printable_path(rel), "file name is not valid UTF-8: rename it to index it")
    if stat.S_ISLNK(st.st_mode):
        return Skipped(rel, f"symlink to {os.readlink(full)!r}: not followed")
    if not stat.S_ISREG(st.st_mode):
        return Skipped(rel, "not a regular file")
    if language_of(rel) is None:
        return Skipped(rel, "unsupported file type")
    if not os.path.realpath(full).startswith(str(top) + os.sep):
        return Skipped(rel, "resolves outside the repository: not followed")
    if st.st_size > MAX_FILE_BYTES:
        return Skipped(rel, f"{st.st_size} bytes: larger than {MAX_FILE_BYTES}, likely generated")
    with open(full, "rb") as fh:
        return fh.read()


def _parse_or_skip(path: str, data: bytes) -> ParsedFile | Skipped:
    """Parse one file; a parser failure skips that file with the reason instead of ending the whole run."""
    try:
        return parse_file(path, data)
    except (RecursionError, ValueError, UnicodeError, MemoryError) as exc:
        return Skipped(path, f"parser failed: {type(exc).__name__}: {str(exc)[:200]}")


def _parse_all(jobs: list[tuple[str, bytes]], workers: int) -> list[ParsedFile | Skipped]:
    # A daemonic process (a Dask worker deriving one slice of history) may not start children: its cluster is
    # what runs in parallel, so it parses in-process.
    if workers <= 1 or len(jobs) < POOL_MIN_FILES or current_process().daemon:
        return [_parse_or_skip(p, d) for p, d in jobs]
    # Largest first keeps both workers busy to the end.
    jobs = sorted(jobs, key=lambda j: -len(j[1]))
    # Forking is instant, but LanceDB calls its fork support experimental (a deadlock is possible if its runtime
    # was mid-operation): in a process that has loaded it (one that searched or indexed before), the workers come
    # from a fresh forkserver instead.
    method = "forkserver" if "lancedb" in sys.modules else "fork"
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        return list(pool.map(_parse_or_skip, [p for p, _ in jobs], [d for _, d in jobs], chunksize=8))


def _candidates(
    top: Path, state: IndexState | None, full: bool, indexed: set[str], head: str, dirty: set[str]
) -> set[str]:
    if full or state is None:
        return set(git_repo.work_tree_files(top))
    try:
        since = dirty if state.commit == head else git_repo.changed_since(top, state.commit)
        return since | set(state.dirty_paths)
    except (MissingObjects, git_repo.GitError):
        # The indexed commit is gone (history rewritten, gc'd): every file now here, and every file indexed before.
        return set(git_repo.work_tree_files(top)) | indexed


def index_repo(
    repo: Path,
    *,
    home: Path | str | None = None,
    embed: bool = True,
    embedder: str | None = None,
    history_notes: bool = True,
    refresh: Iterable[str] = (),
    full: bool = False,
    wait_s: float = 60.0,
    workers: int | None = None,
    on_progress: Progress | None = None,
    keep_versions: timedelta | None = None,
) -> IndexReport:
    """Index `repo` (HEAD plus uncommitted edits); incremental when an index exists, full otherwise.

    With `history_notes`, each symbol's search text carries what the commits that made and changed it said (see
    agent/index/notes.py); an index built the other way is rebuilt in full. A function's text also carries the
    summary `cra enrich` wrote for its body. The files in `refresh` are indexed again even when unchanged (their
    enrichments are new).

    Search-table versions older than `keep_versions` (default tables.KEEP_VERSIONS) are deleted once they pile up:
    zero suits an index no other process reads.
    """
    say = on_progress or (lambda _msg: None)
    top = git_repo.require_repo(repo)
    head = git_repo.head_commit(top)
    paths = project_paths(top, home)
    paths.root.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    with index_lock(paths.index_lock, wait_s), _collector_paused():
        with store.opened(paths.store, read_only=True) as con:
            state = read_state(con)
            old_shas = catalog.indexed_shas(con) if state else {}
        embedder_name = recorded_embedder_name(embedder) if embed else None
        full = (full or state is None or state.parser_version != PARSER_VERSION or state.embedder != embedder_name
                or state.history_notes != history_notes)
        report = IndexReport(repo=top, commit=head, full=full)
        dirty = git_repo.dirty_files(top)
        refresh = set(refresh)
        candidates = _candidates(top, state, full, set(old_shas), head, dirty) | (refresh & set(old_shas))
        report.files_seen = len(candidates)
        t = lap("list", t0)

        jobs: list[tuple[str, bytes]] = []
        removed: set[str] = set()
        read_skips: list[Skipped] = []
        for rel in sorted(candidates):
            data = _read_source(top, rel)
            if data is None:
                if rel in old_shas:
                    removed.add(rel)
            elif isinstance(data, Skipped):
                read_skips.append(data)
            elif full or rel in refresh or old_shas.get(rel) != git_repo.blob_sha(data):
                jobs.append((rel, data))
        t = lap("read", t)

        say(f"parsing {len(jobs)} files")
        results = _parse_all(jobs, workers)
        parsed = [r for r in results if isinstance(r, ParsedFile)]
        skipped = read_skips + [r for r in results if isinstance(r, Skipped)]
        t = lap("parse", t)

        touched = {p for p, _ in jobs} | {s.path for s in read_skips} | removed
        report.parsed, report.skipped, report.removed = len(parsed), len(skipped), len(removed)
        report.dirty = sorted(p for p in dirty if language_of(p) is not None)
        if not full and not touched and state.commit == head and state.dirty_paths == report.dirty:
            timings["total"] = round(time.perf_counter() - t0, 3)
            report.timings = timings
            return report

        from agent.index import (
            tables,  # lancedb is imported after the parse pool has forked, and only when needed
        )

        search = tables.SearchTables(paths.lance, embedder_name, repo=str(top), models=paths.models, on_progress=say,
                                     keep_versions=tables.KEEP_VERSIONS if keep_versions is None else keep_versions)
        known = {}
        if not full:
            search.open(state.generation, state.symbols_version, state.files_version)
            known = search.known_vectors(pf.path for pf in parsed)
        with store.opened(paths.store) as con, store.transaction(con):
            update = history.update_history(con, top, head)
            undiffable = notes.update_changes(con, top, update)
            found = notes.notes_for(con, ((sym.name, pf.path) for pf in parsed for sym in pf.symbols)) if history_notes else {}
        report.commits_added = len(update.added)
        report.commits_unreadable = [f"{bad.sha[:10]}: {bad.reason}" for bad in update.unreadable] + [
            f"{sha[:10]}: its diff is unreadable, so no history notes come from it" for sha in undiffable]
        t = lap("history", t)
        annotations: dict[tuple[str, str], list[str]] = {}
        for key, note in found.items():
            annotations[key] = [tables.ANNOTATIONS[kind] + part for kind, part in
                                (("history", note.origin()), ("changes", note.changes())) if part]
        for key, enriched in enrichment.of_parsed(home, paths.root.name, parsed).items():
            annotations.setdefault((key[1], key[0]), []).append(tables.ANNOTATIONS["summary"] + enriched.text())
        docs = search.prepare(parsed, known, annotations)  # compact texts and vectors, before the store is locked
        report.embedded = docs.embedded
        t = lap("embed", t)

        with store.opened(paths.store) as con, store.transaction(con):
            if not full:
                graph.before_replace(con, touched)  # lets refresh see the old edges of what is replaced
            catalog.delete_paths(con, None if full else touched)
            catalog.insert_parsed(con, parsed, skipped)
            t = lap("store", t)
            report.graph = graph.refresh(con, None if full else touched).as_dict()
            t = lap("graph", t)
            generation = (state.generation + 1) if (full and state) else (state.generation if state else 1)
            if full:
                versions = search.build(generation, con, docs)
            else:
                versions = search.replace_paths(con, touched, docs)
            t = lap("tables", t)
            new_state = IndexState(
                head, report.dirty, generation, versions[0], versions[1], embedder_name, PARSER_VERSION, history_notes
            )
            c_rows = con.execute(
                "SELECT count(*), count(*) FILTER (error_nodes > 0), count(*) FILTER (raw_error_nodes > 0)"
                " FROM files WHERE lang = 'c'"
            ).fetchone()
            report.c_files, report.c_files_with_errors, report.raw_c_files_with_errors = c_rows
            report.symbols = con.execute("SELECT count(*) FROM symbols").fetchone()[0]
            _write_state(con, top, new_state, {"c_files": c_rows[0], "c_files_with_errors": c_rows[1]})
        if full:
            search.drop_other_generations(generation)
        lap("total", t0)
        report.timings = timings
        return report


def update_index(repo: Path, home: Path | str | None = None, on_progress: Progress | None = None) -> IndexReport:
    """Bring the index of `repo` up to its checkout the way it was built (embeddings, history notes); build it with
    both when there is none."""
    say = on_progress or (lambda _msg: None)
    try:
        _, state = open_index(repo, home)
        embed, history_notes = state.embedder is not None, state.history_notes
    except NotIndexed:
        embed, history_notes = True, True
        say("no index yet: building it (once per checkout)")
    return index_repo(repo, home=home, embed=embed, history_notes=history_notes, on_progress=say)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: an index allocates millions of acyclic objects (symbols, references,
    rows), and the collector's repeated passes over them cost a fifth of a full index (pokeemerald: 17.2 s with it,
    13.9 s without, the same peak memory). Reference counting still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def open_index(repo: Path, home: Path | str | None = None) -> tuple[ProjectPaths, IndexState]:
    """The project's paths and recorded index state; NotIndexed when there is none."""
    top = git_repo.require_repo(repo)
    paths = project_paths(top, home)
    if not paths.store.exists():
        raise NotIndexed(f"{top} is not indexed yet; run `cra index {top}` first")
    with store.opened(paths.store, read_only=True) as con:
        state = read_state(con)
    if state is None:
        raise NotIndexed(f"{top} is not indexed yet; run `cra index {top}` first")
    return paths, state
