"""The index's dependency graphs, as the indexer writes them: includes and references resolved under C's visibility
rules, decl links, metrics (agent.index.reader reads them)."""

from __future__ import annotations

import posixpath
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

from agent.index.symbols import (
    ASM_MACRO,
    ASM_USE,
    CALL,
    ENUM,
    ENUM_CONSTANT,
    FUNCTION,
    GLOBAL,
    LABEL,
    MACRO,
    MACRO_FUNCTION,
    MACRO_USE,
    PROTOTYPE,
    STRUCT,
    TYPE_USE,
    TYPEDEF,
    UNION,
    VALUE,
)

# =============================================================================================
# The rules, in one place.
# =============================================================================================

# A quoted include is looked up in the including file's directory, then in INCLUDE_DIRS (pret builds with
# `-I include`, and gas `.include` searches the repository root), then as the indexed path that ends with the
# target (nearest to the including file first). A system include (<...>) skips the including file's directory.
INCLUDE_DIRS = ("include", ".")

# Where a definition may sit to be seen from a reference in file P:
VISIBLE = "visible"    # in P's translation unit: P itself or a file P includes, transitively
INCLUDER = "includer"  # in a file that includes P: a header's references seen from the TUs that include it
EXTERN = "extern"      # anywhere, with external linkage (not static)
ANYWHERE = "anywhere"  # anywhere: a fallback for TU-scoped names when the include graph misses their header

# Pseudo reference kinds resolved by the same machinery: declarations (decl_links) and definitions.
DECL = "decl"                # a non-static prototype
DECL_STATIC = "decl_static"  # a static prototype (a forward declaration in a .c file)
DECL_DATA = "decl_data"      # an `extern` variable declaration
LOOKUP = "lookup"            # definitions: any definition, as seen from a file
EXTERN_DETAIL = "extern"     # parse.py marks `extern` variable declarations with this detail: not definitions

_TYPES = (STRUCT, UNION, ENUM, TYPEDEF)
_ANY_DEF = (FUNCTION, MACRO_FUNCTION, MACRO, *_TYPES, GLOBAL, ENUM_CONSTANT, LABEL, ASM_MACRO)
Tier = tuple[tuple[str, ...], str]  # (definition kinds, the preferred kind first; scope)

# For each reference kind, the tiers tried in order: the first tier holding a definition wins. Within a file
# the first definition wins (#if/#else duplicates such as BUGFIX or NONMATCHING branches count once); among
# files, CANDIDATE_NARROWING picks; `refs.candidates` is how many files are left.
RESOLUTION_ORDER: dict[str, tuple[Tier, ...]] = {
    CALL: (
        ((MACRO_FUNCTION, MACRO), VISIBLE),  # cpp runs first: a visible macro wins (INCBIN_U8 = INCBIN)
        ((FUNCTION,), VISIBLE),              # a static (or own) definition in the TU
        ((MACRO_FUNCTION, MACRO), INCLUDER),
        ((FUNCTION,), INCLUDER),
        ((FUNCTION,), EXTERN),               # external linkage; never a prototype (decl_links hold those)
        ((LABEL,), EXTERN),                  # a function implemented in assembly
        ((MACRO_FUNCTION, MACRO), ANYWHERE),
    ),
    # A name used as a value: functions first (callback tables, SetMainCallback2(CB2_Foo)), then data, so that
    # table-driven dispatch stays connected (code -> gScriptCmdTable -> ScrCmd_*). Locals, parameters and
    # fields match nothing and stay unresolved.
    VALUE: (
        ((FUNCTION, GLOBAL), VISIBLE),
        ((FUNCTION, GLOBAL), INCLUDER),
        ((FUNCTION, GLOBAL), EXTERN),
        ((LABEL,), EXTERN),                  # assembly functions and data (event scripts, tables)
    ),
    MACRO_USE: (
        ((MACRO, MACRO_FUNCTION), VISIBLE),
        ((MACRO, MACRO_FUNCTION), INCLUDER),
        ((ENUM_CONSTANT,), VISIBLE),         # a CAPS name the parser cannot tell from a macro
        ((ENUM_CONSTANT,), INCLUDER),
        ((MACRO, MACRO_FUNCTION), ANYWHERE),
        ((ENUM_CONSTANT,), ANYWHERE),
    ),
    TYPE_USE: ((_TYPES, VISIBLE), (_TYPES, INCLUDER), (_TYPES, ANYWHERE)),
    ASM_USE: (
        ((LABEL, ASM_MACRO), VISIBLE),
        ((LABEL,), EXTERN),
        ((FUNCTION, GLOBAL), EXTERN),        # `bl AgbMain`, `.4byte Task_Foo`: C named from assembly
        ((MACRO, ENUM_CONSTANT), VISIBLE),   # .s files go through cpp and include C constant headers
        ((ASM_MACRO, LABEL), ANYWHERE),      # .inc fragments use the macros of the .s file that includes them
        ((MACRO, ENUM_CONSTANT), ANYWHERE),
    ),
    DECL: (((FUNCTION,), VISIBLE), ((FUNCTION,), INCLUDER), ((FUNCTION,), EXTERN), ((LABEL,), EXTERN)),
    DECL_STATIC: (((FUNCTION,), VISIBLE), ((FUNCTION,), INCLUDER)),
    DECL_DATA: (((GLOBAL,), VISIBLE), ((GLOBAL,), INCLUDER), ((GLOBAL,), EXTERN), ((LABEL,), EXTERN)),
    LOOKUP: ((_ANY_DEF, VISIBLE), (_ANY_DEF, INCLUDER), ((FUNCTION, GLOBAL, LABEL), EXTERN), (_ANY_DEF, ANYWHERE)),
}

# When several files hold a winning definition, keep, in turn: those inside the reference's TU context (a
# header or .inc fragment is compiled inside the files that include it: the union of their closures), those
# in compiled files (a TU, or a file a TU includes: a header nothing includes is dead text), then the nearest
# to the reference (same file, then most leading directories shared: tools/gbagfx/ before src/). Identical
# definitions left (same kind, signature, detail and body hash: a macro defined alike in two headers, a
# function copied into two files) count once.
CANDIDATE_NARROWING = ("tu_context", "compiled", "nearest", "identical_once")
TU_SUFFIXES = (".c", ".s", ".S")  # files compiled on their own (the roots of translation units)

# Nodes of the symbol graph; every resolved reference between two of them is an edge.
GRAPH_NODE_KINDS = (FUNCTION, MACRO, MACRO_FUNCTION, GLOBAL, *_TYPES, ENUM_CONSTANT, LABEL, ASM_MACRO)
# Cross-file references that become file-graph edges (with every resolved include), weighted by symbol pairs.
FILE_EDGE_REF_KINDS = (CALL, VALUE, ASM_USE)

# Entry points: a function named in ENTRY_NAMES (the ROM's AgbMain, the tools' main), or a function that no
# other symbol calls but that a function takes as a value (SetMainCallback2(CB2_Foo), CreateTask(Task_Foo, 0),
# gMain.vblankCallback = VBlankCB): the engine calls it through a pointer. Functions listed only in data
# tables are not entry points: they are reached through their table.
ENTRY_NAMES = frozenset({"AgbMain", "main"})

PAGERANK_ALPHA = 0.85
# Incremental refreshes keep the stored PageRank vector while the change provably moves it little: changing
# the out-links of nodes U moves PageRank by at most 2/(1-alpha) * sum(pagerank[U]) in L1 (Ng, Zheng & Jordan,
# "Link analysis, eigenvectors and stability", 2001). U = every node of a re-read file, every node whose
# references resolved differently, every node added (at the teleport floor). Above this bound: recompute.
PAGERANK_STALE_L1 = 0.02

# The reader's neighbors(): the references walked, and the fan-out above which a node is reached but not walked
# through (CreateTask has hundreds of callers: they are no neighbourhood).
NEIGHBOR_REF_KINDS = (CALL, VALUE, ASM_USE)
NEIGHBOR_MAX_FANOUT = 64

# =============================================================================================

_SELF_REF = (
    "(split_part({t}.src, '::', 2) IN ('macro', 'macro_function')"
    " AND split_part(split_part({t}.src, '::', 3), '#', 1) = {t}.name)"
)  # a name used inside the body of the macro of that name: cpp does not re-expand it
_IS_DECL = f"({{t}}.kind = '{PROTOTYPE}' OR ({{t}}.kind = '{GLOBAL}' AND {{t}}.detail = '{EXTERN_DETAIL}'))"
_DECL_KIND = (
    f"CASE WHEN {{t}}.kind = '{GLOBAL}' THEN '{DECL_DATA}' WHEN {{t}}.is_static THEN '{DECL_STATIC}' ELSE '{DECL}' END"
)
_DECL_KINDS = (DECL, DECL_STATIC, DECL_DATA)


def sql_list(values: Iterable[str]) -> str:
    """A SQL list literal of constant strings."""
    return ", ".join(f"'{v}'" for v in values)


@dataclass
class GraphStats:
    """What one refresh did and how the references resolved."""

    full: bool
    includes: int = 0
    includes_resolved: int = 0
    keys_resolved: int = 0
    refs_updated: int = 0
    refs: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> total, resolved, ambiguous
    decl_links: int = 0
    nodes: int = 0
    edges: int = 0
    entry_points: int = 0
    pagerank: str = ""  # computed | kept (an incremental change moved it provably little) | unchanged
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)


# =============================================================================================
# refresh
# =============================================================================================
def before_replace(con: duckdb.DuckDBPyConnection, paths: set[str]) -> None:
    """Optional, just before the indexer deletes the rows of `paths`: record them for refresh(con, paths).

    With the record, refresh knows the old include lists, definitions and graph edges of those files: it
    re-resolves only what an unchanged include list cannot move and skips the metrics when no edge changed.
    Without it, refresh assumes the worst of the changed files and is as correct, only slower.
    """
    _register(con, "_g_before_paths", pa.table({"path": pa.array(sorted(paths), pa.string())}))
    within = "path IN (SELECT path FROM _g_before_paths)"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _g_before_symbols AS SELECT id, name, kind FROM symbols WHERE {within}")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _g_before_includes AS SELECT path, resolved FROM includes WHERE {within}"
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _g_before_edges AS
        SELECT DISTINCT src, dst, kind FROM refs WHERE {within} AND dst IS NOT NULL"""
    )


_BEFORE_TABLES = ("_g_before_paths", "_g_before_symbols", "_g_before_includes", "_g_before_edges")
_WORK_TABLES = ("_g_closure", "_g_rows", "_g_keys", "_g_names", "_g_res", "_g_upd", "_g_rewired_old", "_g_changed",
                "_g_paths", "_g_moved")


def refresh(con: duckdb.DuckDBPyConnection, changed: set[str] | None) -> GraphStats:
    """Re-resolve the includes, references and decl links `changed` (None: all) can move; update the metrics.

    Runs inside the indexer's transaction, after the rows of `changed` were replaced; exact either way, and
    faster when before_replace(con, changed) ran before those rows were deleted.
    """
    stats = GraphStats(full=changed is None)
    clock = _Clock(stats.timings)
    before = changed is not None and _recorded(con, changed)
    moved_includes = _resolve_includes(con, changed)
    includes = IncludeGraph.load(con)
    _register(con, "_g_closure", includes.table())
    clock.lap("includes")
    scope = None if changed is None else _Scope.of(con, includes, changed, moved_includes, before)
    _affected_keys(con, scope, before)
    clock.lap("keys")
    stats.keys_resolved = _resolve_keys(con, includes)
    clock.lap("resolve")
    stats.refs_updated, rewired = _write_refs(con, scope, before)
    _write_decl_links(con, scope is not None)
    clock.lap("write")
    if scope is None or not (before and not scope.include_changed and _local_metrics(con, stats)):
        _metrics(con, stats, scope, rewired)
    clock.lap("metrics")
    _summarise(con, stats)
    for table in _WORK_TABLES + _BEFORE_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    clock.lap("stats")
    return stats


class _Clock:
    """Per-phase wall times, in seconds."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.t = into, time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the time since the previous lap under `name`."""
        now = time.perf_counter()
        self.into[name] = round(now - self.t, 4)
        self.t = now


def _register(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Materialise an Arrow table as a temporary DuckDB table."""
    con.register("_g_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _g_arrow")
    finally:
        con.unregister("_g_arrow")


def _paths_table(paths: Iterable[str]) -> pa.Table:
    """A one-column Arrow table of paths."""
    return pa.table({"path": pa.array(sorted(paths), pa.string())})


def _recorded(con: duckdb.DuckDBPyConnection, changed: set[str]) -> bool:
    """Whether before_replace recorded exactly `changed` in this connection."""
    names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}
    if not set(_BEFORE_TABLES) <= names:
        return False
    return {p for (p,) in con.execute("SELECT path FROM _g_before_paths").fetchall()} == changed


# --------------------------------------------------------------------------------------------- includes
def _resolve_includes(con: duckdb.DuckDBPyConnection, changed: set[str] | None) -> set[str]:
    """Fill includes.resolved where it can have moved; return the unchanged files whose includes now resolve anew."""
    files = [p for (p,) in con.execute("SELECT path FROM files").fetchall()]
    known = set(files)
    by_name: dict[str, list[str]] = defaultdict(list)
    for p in files:
        by_name[posixpath.basename(p)].append(p)
    touched_names = None if changed is None else {posixpath.basename(p) for p in changed}
    updates: dict[str, list] = {"rid": [], "resolved": []}
    moved: set[str] = set()
    for rowid, path, target, system, old in con.execute(
        "SELECT rowid, path, target, system, resolved FROM includes"
    ).fetchall():
        if touched_names is not None and path not in changed and posixpath.basename(target) not in touched_names:
            continue  # only an added or removed file of that name can move this include
        new = resolve_include(path, target, bool(system), known, by_name)
        if new != old:
            updates["rid"].append(rowid)
            updates["resolved"].append(new)
            if changed is not None and path not in changed:
                moved.add(path)
    if updates["rid"]:
        _register(con, "_g_inc", pa.table(updates, schema=pa.schema([("rid", pa.int64()), ("resolved", pa.string())])))
        con.execute("UPDATE includes SET resolved = u.resolved FROM _g_inc u WHERE includes.rowid = u.rid")
        con.execute("DROP TABLE _g_inc")
    return moved


def resolve_include(path: str, target: str, system: bool, known: set[str], by_name: dict[str, list[str]]) -> str | None:
    """The indexed file an include directive in `path` names, or None (libc, generated headers)."""
    bases = ([posixpath.dirname(path)] if not system else []) + list(INCLUDE_DIRS)
    for base in bases:
        cand = posixpath.normpath(posixpath.join(base, target))
        if cand in known:
            return cand
    target = posixpath.normpath(target)
    tails = [p for p in by_name.get(posixpath.basename(target), ()) if p.endswith("/" + target)]
    if not tails:
        return None
    return min(tails, key=lambda p: (-_shared_dirs(path, p), len(p), p))


def _shared_dirs(a: str, b: str) -> int:
    """How many leading directories two repo paths share."""
    n = 0
    for x, y in zip(a.split("/")[:-1], b.split("/")[:-1], strict=False):
        if x != y:
            break
        n += 1
    return n


class IncludeGraph:
    """Resolved includes: each file's transitive closure (itself included) and the TU context of headers."""

    def __init__(self, files: Iterable[str], edges: Iterable[tuple[str, str]]) -> None:
        succ: dict[str, list[str]] = defaultdict(list)
        included: set[str] = set()
        for a, b in edges:
            succ[a].append(b)
            included.add(b)
        self.closure: dict[str, frozenset[str]] = {}
        for f in files:
            seen, todo = {f}, [f]
            while todo:
                for nxt in succ.get(todo.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            self.closure[f] = frozenset(seen)
        self._roots_of: dict[str, list[str]] = defaultdict(list)
        for root in self.closure.keys() - included:
            for inc in self.closure[root]:
                self._roots_of[inc].append(root)
        self.compiled = frozenset().union(*(c for f, c in self.closure.items() if f.endswith(TU_SUFFIXES)))
        self._context: dict[str, frozenset[str]] = {}

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> IncludeGraph:
        """The include graph of the indexed files."""
        files = [p for (p,) in con.execute("SELECT path FROM files").fetchall()]
        edges = con.execute(
            "SELECT DISTINCT path, resolved FROM includes WHERE resolved IS NOT NULL AND resolved <> path"
        ).fetchall()
        return cls(files, edges)

    def table(self) -> pa.Table:
        """(path, inc) rows of every closure."""
        paths, incs = [], []
        for p, c in self.closure.items():
            paths.extend([p] * len(c))
            incs.extend(c)
        return pa.table({"path": paths, "inc": incs}, schema=pa.schema([("path", pa.string()), ("inc", pa.string())]))

    def reaching(self, targets: set[str]) -> set[str]:
        """Files whose closure holds one of `targets`."""
        return {p for p, c in self.closure.items() if not c.isdisjoint(targets)}

    def context(self, path: str) -> frozenset[str]:
        """Every file compiled together with `path`: the union of the closures of the roots (TUs) that include it."""
        if path not in self._context:
            roots = self._roots_of.get(path) or [path]
            self._context[path] = frozenset().union(*(self.closure.get(r, frozenset({r})) for r in roots))
        return self._context[path]


@dataclass
class _Scope:
    """What an incremental refresh must revisit."""

    changed: set[str]          # files whose rows were replaced
    include_changed: set[str]  # files whose resolved include list differs from before
    moved: set[str]            # files whose closure changed: their own and INCLUDER resolutions may move
    paths: set[str]            # files whose every reference is re-resolved

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection, includes: IncludeGraph, changed: set[str], moved_includes: set[str],
           before: bool) -> _Scope:
        """The scope of a refresh of `changed`; exact with a before_replace record, conservative without."""
        _register(con, "_g_changed", _paths_table(changed))
        if before:
            differs = con.execute(
                """WITH now AS (SELECT path, resolved FROM includes WHERE path IN (SELECT path FROM _g_changed))
                SELECT DISTINCT path FROM ((SELECT * FROM now EXCEPT SELECT * FROM _g_before_includes)
                                           UNION ALL (SELECT * FROM _g_before_includes EXCEPT SELECT * FROM now))"""
            ).fetchall()
            include_changed = {p for (p,) in differs} | moved_includes
        else:
            include_changed = set(changed) | moved_includes
        moved = includes.reaching(include_changed) | include_changed
        # A header's TU context is the union of the closures of its roots: it moves under every moved root.
        context_moved = set().union(*(includes.closure.get(p, ()) for p in moved))
        return cls(set(changed), include_changed, moved, set(changed) | moved | context_moved)


# --------------------------------------------------------------------------------------------- resolution
def _rules_table() -> pa.Table:
    """RESOLUTION_ORDER as rows (ref_kind, def_kind, scope, tier, rank)."""
    rows: dict[str, list] = {"ref_kind": [], "def_kind": [], "scope": [], "tier": [], "rank": []}
    for ref_kind, tiers in RESOLUTION_ORDER.items():
        for tier, (kinds, scope) in enumerate(tiers):
            for rank, def_kind in enumerate(kinds):
                for col, val in zip(rows, (ref_kind, def_kind, scope, tier, rank), strict=True):
                    rows[col].append(val)
    return pa.table(rows)


_RULES = _rules_table()


def _affected_keys(con: duckdb.DuckDBPyConnection, scope: _Scope | None, before: bool) -> None:
    """Fill _g_rows (refs rows to re-resolve, by rowid) and _g_keys (their keys plus declarations' keys)."""
    self_ref, is_decl, decl_kind = _SELF_REF.format(t="r"), _IS_DECL.format(t="p"), _DECL_KIND.format(t="p")
    rows = f"SELECT r.rowid AS rid, r.src, r.path, r.name, r.kind, {self_ref} AS self, r.dst, r.candidates FROM refs r"
    decls = f"SELECT DISTINCT p.path, p.name, {decl_kind} AS kind, false AS self FROM symbols p WHERE {is_decl}"
    if scope is None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _g_rows AS {rows}")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _g_keys AS
            SELECT DISTINCT path, name, kind, self FROM _g_rows UNION ALL {decls}"""
        )
        return
    _register(con, "_g_paths", _paths_table(scope.paths))
    _register(con, "_g_moved", _paths_table(scope.changed | scope.moved))
    # A key moves with its file's closure and TU context (_g_paths), with the definitions of its name and with
    # the closures of those definitions' files. Names now defined in changed or moved files are known; the old
    # ones are in before_replace's record, or else show as a dst in those files, or as candidates > 1 (a
    # definition counted but not picked), and declarations lose their link when their definition's file goes.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _g_names AS
        SELECT name FROM symbols WHERE path IN (SELECT path FROM _g_moved)
        {"UNION SELECT name FROM _g_before_symbols" if before else ""}"""
    )
    guesses = "" if before else (
        "OR split_part(r.dst, '::', 1) IN (SELECT path FROM _g_moved) OR r.candidates > 1")
    unlinked = "" if before else (
        "OR p.id NOT IN (SELECT decl FROM decl_links) OR p.id IN (SELECT decl FROM decl_links"
        " WHERE split_part(defn, '::', 1) IN (SELECT path FROM _g_moved))")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _g_rows AS {rows}
        WHERE r.path IN (SELECT path FROM _g_paths) OR r.name IN (SELECT name FROM _g_names) {guesses}"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _g_keys AS
        SELECT DISTINCT path, name, kind, self FROM _g_rows
        UNION ALL {decls}
            AND (p.path IN (SELECT path FROM _g_paths) OR p.name IN (SELECT name FROM _g_names) {unlinked})"""
    )


def _candidates_sql(keys: str, closure: str) -> str:
    """SQL for the winning-tier candidates of every key: one definition per file, with n = files left."""
    return f"""
        WITH c AS (
            SELECT k.path, k.name, k.kind, k.self, s.id, s.path AS dpath, s.start_line, r.tier, r.rank,
                   hash(s.kind, s.signature, s.detail, s.body_hash) AS text
            FROM {keys} k
            JOIN symbols s ON s.name = k.name
            JOIN _g_rules r ON r.ref_kind = k.kind AND r.def_kind = s.kind
            LEFT JOIN {closure} v ON v.path = k.path AND v.inc = s.path
            LEFT JOIN {closure} w ON w.path = s.path AND w.inc = k.path
            WHERE NOT (k.self AND s.kind IN ('{MACRO}', '{MACRO_FUNCTION}'))
              AND NOT (s.kind = '{GLOBAL}' AND s.detail = '{EXTERN_DETAIL}')
              AND CASE r.scope WHEN '{VISIBLE}' THEN v.path IS NOT NULL
                               WHEN '{INCLUDER}' THEN w.path IS NOT NULL
                               WHEN '{EXTERN}' THEN NOT s.is_static
                               ELSE true END
            QUALIFY r.tier = min(r.tier) OVER (PARTITION BY k.path, k.name, k.kind, k.self)
        ), per_file AS (
            SELECT * FROM c
            QUALIFY row_number() OVER (PARTITION BY path, name, kind, self, dpath ORDER BY rank, start_line, id) = 1
        )
        SELECT path, name, kind, self, id, dpath, rank, start_line, text,
               count(*) OVER (PARTITION BY path, name, kind, self) AS n
        FROM per_file"""


def _resolve_keys(con: duckdb.DuckDBPyConnection, includes: IncludeGraph) -> int:
    """Resolve every key of _g_keys into _g_res (path, name, kind, self, dst, n); return the number of keys."""
    con.register("_g_rules", _RULES)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _g_cand AS {_candidates_sql('_g_keys', '_g_closure')}")
    finally:
        con.unregister("_g_rules")
    groups: dict[tuple, list[_Cand]] = defaultdict(list)
    for path, name, kind, self, *cand in con.execute(
        "SELECT path, name, kind, self, id, dpath, rank, start_line, text FROM _g_cand WHERE n > 1"
    ).fetchall():
        groups[(path, name, kind, self)].append(_Cand(*cand))
    narrowed: dict[str, list] = {"path": [], "name": [], "kind": [], "self": [], "dst": [], "n": []}
    for key, cands in groups.items():
        left = _narrow(key[0], cands, includes)
        for col, val in zip(narrowed, (*key, left[0].id, len(left)), strict=True):
            narrowed[col].append(val)
    _register(con, "_g_narrowed", pa.table(narrowed, schema=pa.schema(
        [("path", pa.string()), ("name", pa.string()), ("kind", pa.string()), ("self", pa.bool_()),
         ("dst", pa.string()), ("n", pa.int64())])))
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _g_res AS
        SELECT path, name, kind, self, id AS dst, n FROM _g_cand WHERE n = 1
        UNION ALL SELECT * FROM _g_narrowed"""
    )
    con.execute("DROP TABLE _g_cand")
    con.execute("DROP TABLE _g_narrowed")
    return con.execute("SELECT count(*) FROM _g_keys").fetchall()[0][0]


class _Cand(NamedTuple):
    """One file's definition in a key's winning tier."""

    id: str
    file: str
    rank: int
    line: int
    text: int  # hash of kind, signature, detail and body: equal for identical definitions


def _narrow(path: str, cands: list[_Cand], includes: IncludeGraph) -> list[_Cand]:
    """Apply CANDIDATE_NARROWING to one-per-file candidates of a reference in `path`: those left, the pick first."""

    def nearness(c: _Cand) -> tuple[bool, int]:
        return c.file == path, _shared_dirs(path, c.file)

    def nearest(cs: list[_Cand]) -> list[_Cand]:
        top = max(map(nearness, cs))
        return [c for c in cs if nearness(c) == top]

    def identical_once(cs: list[_Cand]) -> list[_Cand]:
        firsts: dict[int, _Cand] = {}
        for c in cs:
            firsts.setdefault(c.text, c)
        return list(firsts.values())

    steps = {
        "tu_context": lambda cs: [c for c in cs if c.file in includes.context(path)],
        "compiled": lambda cs: [c for c in cs if c.file in includes.compiled],
        "nearest": nearest,
        "identical_once": identical_once,
    }
    cands = sorted(cands, key=lambda c: (c.rank, c.file, c.line, c.id))
    for step in CANDIDATE_NARROWING:
        cands = steps[step](cands) or cands
    return cands


def _write_refs(con: duckdb.DuckDBPyConnection, scope: _Scope | None, before: bool) -> tuple[int, set[str]]:
    """Copy _g_res into the dst/candidates of the _g_rows references; return the rows changed and rewired srcs.

    Rewired srcs hold references outside the changed files that now resolve differently.
    """
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _g_upd AS
        SELECT w.rid, w.src, w.path, r.dst, coalesce(r.n, 0)::INTEGER AS n
        FROM _g_rows w LEFT JOIN _g_res r USING (path, name, kind, self)
        WHERE w.dst IS DISTINCT FROM r.dst OR w.candidates <> coalesce(r.n, 0)"""
    )
    rewired: set[str] = set()
    if scope is not None:
        outside = "SELECT src FROM _g_upd WHERE path NOT IN (SELECT path FROM _g_changed)"
        rewired = {src for (src,) in con.execute(f"SELECT DISTINCT src FROM ({outside})").fetchall()}
        if before:  # the old edges of those srcs, for _local_metrics
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _g_rewired_old AS
                SELECT src, dst, kind FROM refs WHERE src IN ({outside}) AND dst IS NOT NULL"""
            )
    count = con.execute("UPDATE refs SET dst = u.dst, candidates = u.n FROM _g_upd u WHERE refs.rowid = u.rid")
    return int(count.fetchall()[0][0]), rewired


def _write_decl_links(con: duckdb.DuckDBPyConnection, incremental: bool) -> None:
    """Link each keyed declaration (prototype, extern variable) to the definition its key resolved to."""
    is_decl, decl_kind = _IS_DECL.format(t="p"), _DECL_KIND.format(t="p")
    if incremental:
        con.execute(
            f"""DELETE FROM decl_links WHERE decl IN (
                SELECT p.id FROM symbols p JOIN _g_keys k ON k.path = p.path AND k.name = p.name
                 AND k.kind = {decl_kind} WHERE {is_decl})"""
        )
    else:
        con.execute("DELETE FROM decl_links")
    con.execute(
        f"""INSERT INTO decl_links SELECT p.id, x.dst FROM symbols p
        JOIN _g_res x ON x.path = p.path AND x.name = p.name AND x.kind = {decl_kind} WHERE {is_decl}"""
    )


# --------------------------------------------------------------------------------------------- metrics
_CALL_BIT, _VALUE_BIT, _FILE_BIT = 1, 2, 4  # per-edge flags: a call, a value taken by a function, a file edge


class SymbolGraph(NamedTuple):
    """The symbol and file graphs as arrays; nodes and files are ordered by the 64-bit hash of their key."""

    hashes: np.ndarray       # hash of each node's id, ascending
    ids: pa.Array
    is_function: np.ndarray
    file: np.ndarray         # each node's index in `files`
    file_hashes: np.ndarray  # hash of each file's path, ascending
    files: pa.Array
    entries: np.ndarray
    src: np.ndarray          # unique edges, node indices
    dst: np.ndarray
    flags: np.ndarray        # _CALL_BIT | _VALUE_BIT | _FILE_BIT of each edge


def positions(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `keys` in `sorted_keys`, and which were found."""
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    found = sorted_keys[pos] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
    return pos, found


def symbol_graph(con: duckdb.DuckDBPyConnection) -> SymbolGraph:
    """Load the graphs, ids matched by hash (no string joins), and mark the entry points (ENTRY_NAMES rule)."""
    files = con.sql("SELECT hash(path) AS h, path FROM files ORDER BY h").to_arrow_table()
    nodes = con.sql(
        f"""SELECT hash(id) AS h, id, hash(path) AS fh, kind = '{FUNCTION}' AS fn,
                   name IN ({sql_list(ENTRY_NAMES)}) AS named
        FROM symbols WHERE kind IN ({sql_list(GRAPH_NODE_KINDS)}) ORDER BY h"""
    ).to_arrow_table()
    refs = con.execute(
        f"""SELECT hash(src) AS s, hash(dst) AS d,
                   (kind = '{CALL}')::UTINYINT * {_CALL_BIT} + (kind = '{VALUE}')::UTINYINT * {_VALUE_BIT}
                   + (kind IN ({sql_list(FILE_EDGE_REF_KINDS)}))::UTINYINT * {_FILE_BIT} AS f
        FROM refs WHERE dst IS NOT NULL AND src <> dst"""
    ).fetchnumpy()
    hashes, file_hashes = nodes.column("h").to_numpy(), files.column("h").to_numpy()
    if (hashes[1:] == hashes[:-1]).any() or (file_hashes[1:] == file_hashes[:-1]).any():
        raise RuntimeError("two symbol ids or paths share a 64-bit hash; the graph cannot be loaded by hash")
    fn = nodes.column("fn").to_numpy(zero_copy_only=False)
    n = len(hashes)
    si, sok = positions(hashes, np.asarray(refs["s"]))
    di, dok = positions(hashes, np.asarray(refs["d"]))
    keep = sok & dok  # sources that are no graph node (prototypes, file scope) drop out
    si, di, bits = si[keep], di[keep], np.asarray(refs["f"])[keep]
    bits = np.where(fn[si], bits, bits & ~np.uint8(_VALUE_BIT))  # only a function taking a value registers a callback
    key = si.astype(np.int64) * n + di
    order = np.argsort(key)
    key, bits = key[order], bits[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    flags = np.bitwise_or.reduceat(bits, starts) if len(key) else np.zeros(0, np.uint8)
    src, dst = key[starts] // max(n, 1), key[starts] % max(n, 1)
    called = np.zeros(n, bool)
    called[dst[(flags & _CALL_BIT) != 0]] = True
    taken = np.zeros(n, bool)
    taken[dst[(flags & _VALUE_BIT) != 0]] = True
    named = nodes.column("named").to_numpy(zero_copy_only=False)
    file, _ = positions(file_hashes, nodes.column("fh").to_numpy())
    return SymbolGraph(hashes, nodes.column("id").combine_chunks(), fn, file, file_hashes,
                       files.column("path").combine_chunks(), fn & (named | (taken & ~called)), src, dst, flags)


def _entry_distance(n: int, src: np.ndarray, dst: np.ndarray, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hops from the nearest entry point (-1: unreachable) and each node's predecessor on that path (-1 at roots)."""
    roots = np.flatnonzero(entries)
    rows = np.concatenate([src, np.full(len(roots), n)])
    cols = np.concatenate([dst, roots])
    adj = csr_array((np.ones(len(rows)), (rows, cols)), shape=(n + 1, n + 1))
    dist, pred = dijkstra(adj, directed=True, indices=n, unweighted=True, return_predecessors=True)
    dist = dist[:n] - 1
    pred = np.where(pred[:n] == n, -1, pred[:n])
    return np.where(np.isfinite(dist), dist, -1).astype(np.int32), pred


def _pagerank(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """PageRank by igraph (PRPACK, solved exactly) over nodes 0..n-1."""
    import igraph  # imported here: only full metric passes need it

    g = igraph.Graph(n=n, edges=np.column_stack([src, dst]).tolist(), directed=True)
    return np.asarray(g.pagerank(damping=PAGERANK_ALPHA, weights=None if weight is None else weight.tolist()), float)


class _Stored(NamedTuple):
    """A metrics table's rows aligned to the current keys (by hash)."""

    columns: dict[str, np.ndarray]
    present: np.ndarray      # the key has a stored row
    removed_pagerank: float  # PageRank mass of stored rows whose key is gone
    removed: bool


def _stored(con: duckdb.DuckDBPyConnection, table: str, key: str, hashes: np.ndarray, cols: list[str]) -> _Stored:
    """The stored rows of `table`, aligned to `hashes`."""
    old = con.execute(f"SELECT hash({key}) AS h, {', '.join(cols)} FROM {table}").fetchnumpy()
    pos, found = positions(hashes, np.asarray(old["h"]))
    present = np.zeros(len(hashes), bool)
    present[pos[found]] = True
    columns = {}
    for c in cols:
        values = np.ma.filled(old[c], 0) if np.ma.isMaskedArray(old[c]) else np.asarray(old[c])
        aligned = np.zeros(len(hashes), values.dtype)
        aligned[pos[found]] = values[found]
        columns[c] = aligned
    pr = np.asarray(old["pagerank"], float)
    return _Stored(columns, present, float(pr[~found].sum()), bool((~found).any()))


def _kept_pagerank(stored: _Stored, moved: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The stored PageRank when the PAGERANK_STALE_L1 bound allows keeping it (else None), and the bound.

    `moved` marks the nodes whose out-links may have changed.
    """
    n = len(moved)
    floor = (1 - PAGERANK_ALPHA) / max(n, 1)
    pr = stored.columns["pagerank"]
    mass = pr[moved & stored.present].sum() + stored.removed_pagerank + (~stored.present).sum() * floor
    bound = 2 / (1 - PAGERANK_ALPHA) * mass
    if bound > PAGERANK_STALE_L1:
        return None, bound
    return np.where(stored.present, pr, floor), bound


def _write_metrics(con: duckdb.DuckDBPyConnection, table: str, key: str, keys: pa.Array, values: dict[str, np.ndarray],
                   stored: _Stored, live: str) -> None:
    """Write the rows whose values differ from `stored`; delete the rows of keys no longer in `live` (SQL)."""
    differs = ~stored.present
    for c, v in values.items():
        differs |= v != stored.columns[c]
    if stored.removed:
        con.execute(f"DELETE FROM {table} WHERE {key} NOT IN ({live})")
    if not differs.any():
        return
    rows = pa.table({key: keys.filter(pa.array(differs)), **{c: v[differs] for c, v in values.items()},
                     "_new": ~stored.present[differs]})
    cols = list(values)
    con.register("_g_metric_rows", rows)
    try:
        con.execute(
            f"""UPDATE {table} AS t SET {", ".join(f"{c} = n.{c}" for c in cols)}
            FROM _g_metric_rows n WHERE t.{key} = n.{key} AND NOT n._new"""
        )
        con.execute(f"INSERT INTO {table} BY NAME SELECT {key}, {', '.join(cols)} FROM _g_metric_rows WHERE _new")
    finally:
        con.unregister("_g_metric_rows")


def _metrics(con: duckdb.DuckDBPyConnection, stats: GraphStats, scope: _Scope | None, rewired: set[str]) -> None:
    """Update symbol_metrics and file_metrics from the current graphs (PageRank kept within its bound)."""
    g = symbol_graph(con)
    n, nf = len(g.hashes), len(g.file_hashes)
    sym_cols = ["pagerank", "in_degree", "out_degree", "entry_distance", "is_entry"]
    old = _stored(con, "symbol_metrics", "id", g.hashes, sym_cols)
    old_files = _stored(con, "file_metrics", "path", g.file_hashes, ["pagerank", "in_degree", "out_degree"])

    pagerank = file_pagerank = None
    if scope is not None:
        moved_files = np.isin(g.files.to_numpy(zero_copy_only=False), np.array(sorted(scope.changed | scope.moved)))
        rewired_hashes = np.array([h for (h,) in con.execute(
            "SELECT hash(unnest(?::VARCHAR[]))", [sorted(rewired)]).fetchall()], np.uint64)
        rewired_files = np.zeros(nf, bool)
        rewired_files[g.file[np.isin(g.hashes, rewired_hashes)]] = True
        pagerank, bound = _kept_pagerank(old, moved_files[g.file] | np.isin(g.hashes, rewired_hashes))
        file_pagerank, _ = _kept_pagerank(old_files, moved_files | rewired_files)
        stats.pagerank = f"kept: L1 change bound {bound:.4f}" if pagerank is not None else "computed"
    else:
        stats.pagerank = "computed"
    if pagerank is None:
        pagerank = _pagerank(n, g.src, g.dst)
    distance, _pred = _entry_distance(n, g.src, g.dst, g.entries)
    _write_metrics(con, "symbol_metrics", "id", g.ids, {
        "pagerank": pagerank,
        "in_degree": np.bincount(g.dst, minlength=n).astype(np.int32),
        "out_degree": np.bincount(g.src, minlength=n).astype(np.int32),
        "entry_distance": distance,
        "is_entry": g.entries,
    }, old, f"SELECT id FROM symbols WHERE kind IN ({sql_list(GRAPH_NODE_KINDS)})")
    _file_metrics(con, g, old_files, file_pagerank)
    stats.nodes, stats.edges, stats.entry_points = n, len(g.src), int(g.entries.sum())


def _file_metrics(con: duckdb.DuckDBPyConnection, g: SymbolGraph, stored: _Stored,
                  pagerank: np.ndarray | None) -> None:
    """Write file_metrics over the file graph: cross-file FILE_EDGE_REF_KINDS edges weighted by symbol pairs, plus
    one per include; PageRank computed unless given."""
    nf = len(g.file_hashes)
    inc_pairs = con.execute(
        "SELECT hash(path) AS a, hash(resolved) AS b FROM includes WHERE resolved IS NOT NULL AND resolved <> path"
    ).fetchnumpy()
    ia, _ = positions(g.file_hashes, np.asarray(inc_pairs["a"]))
    ib, _ = positions(g.file_hashes, np.asarray(inc_pairs["b"]))
    file_edge = (g.flags & _FILE_BIT) != 0
    fa, fb = g.file[g.src[file_edge]], g.file[g.dst[file_edge]]
    cross = fa != fb
    pairs = np.concatenate([fa[cross] * nf + fb[cross], np.unique(ia.astype(np.int64) * nf + ib)])
    keys, weight = np.unique(pairs, return_counts=True)
    src, dst = keys // max(nf, 1), keys % max(nf, 1)
    _write_metrics(con, "file_metrics", "path", g.files, {
        "pagerank": _pagerank(nf, src, dst, weight.astype(float)) if pagerank is None else pagerank,
        "in_degree": np.bincount(dst, minlength=nf).astype(np.int32),
        "out_degree": np.bincount(src, minlength=nf).astype(np.int32),
    }, stored, "SELECT path FROM files")


def _edge_flags(t: str) -> str:
    """SQL for the _CALL_BIT | _VALUE_BIT | _FILE_BIT flags of the reference rows aliased `t`."""
    return (f"(({t}.kind = '{CALL}')::UTINYINT * {_CALL_BIT}"
            f" + ({t}.kind = '{VALUE}' AND split_part({t}.src, '::', 2) = '{FUNCTION}')::UTINYINT * {_VALUE_BIT}"
            f" + ({t}.kind IN ({sql_list(FILE_EDGE_REF_KINDS)}))::UTINYINT * {_FILE_BIT})")


def _local_metrics(con: duckdb.DuckDBPyConnection, stats: GraphStats) -> bool:
    """Apply the edge changes of a recorded refresh to the stored metrics, exactly; False when that is not sound.

    Degrees and entry points change only around changed edges. Entry distances stay when no entry point flips,
    every node that lost its shortest-path edge keeps another from one hop nearer, and no added edge shortens
    the distance of a node that was there (added nodes take theirs from their incoming edges); PageRank stays
    within PAGERANK_STALE_L1. Otherwise the caller recomputes everything (_metrics).
    """
    node = f"split_part(t.src, '::', 2) IN ({sql_list(GRAPH_NODE_KINDS)}) AND t.src <> t.dst"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _g_delta AS
        WITH old_rows AS (SELECT src, dst, kind FROM _g_before_edges
                          UNION ALL SELECT src, dst, kind FROM _g_rewired_old),
             new_rows AS (SELECT src, dst, kind FROM refs WHERE dst IS NOT NULL
                          AND (path IN (SELECT path FROM _g_changed) OR src IN (SELECT src FROM _g_rewired_old))),
             old_e AS (SELECT src, dst, bit_or({_edge_flags('t')}) AS f FROM old_rows t WHERE {node} GROUP BY ALL),
             new_e AS (SELECT src, dst, bit_or({_edge_flags('t')}) AS f FROM new_rows t WHERE {node} GROUP BY ALL)
        SELECT src, dst, o.f AS old_f, n.f AS new_f FROM old_e o FULL JOIN new_e n USING (src, dst)
        WHERE o.f IS DISTINCT FROM n.f"""
    )
    kinds = sql_list(GRAPH_NODE_KINDS)
    added = {i for (i,) in con.execute(
        f"""SELECT id FROM symbols WHERE path IN (SELECT path FROM _g_changed) AND kind IN ({kinds})
        EXCEPT SELECT id FROM _g_before_symbols WHERE kind IN ({kinds})""").fetchall()}
    removed = {i for (i,) in con.execute(
        f"""SELECT id FROM _g_before_symbols WHERE kind IN ({kinds})
        EXCEPT SELECT id FROM symbols WHERE path IN (SELECT path FROM _g_changed) AND kind IN ({kinds})""").fetchall()}
    delta = con.execute("SELECT src, dst, old_f, new_f FROM _g_delta").fetchall()
    con.execute("DROP TABLE _g_delta")
    files_kept = con.execute(
        """SELECT (SELECT count(*) FROM files WHERE path IN (SELECT path FROM _g_changed))
                = (SELECT count(*) FROM file_metrics WHERE path IN (SELECT path FROM _g_changed))"""
    ).fetchall()[0][0]
    if not files_kept:  # a file came or went: file_metrics needs its row
        return False
    if not delta and not added and not removed:
        stats.pagerank = "unchanged: no graph edge changed"
        _count_graph(con, stats)
        return True
    gained = [(a, b, f) for a, b, o, f in delta if o is None]
    lost = [(a, b, o) for a, b, o, f in delta if f is None]
    srcs = {a for a, *_ in delta}
    dsts = {b for _, b, *_ in delta}
    involved = srcs | dsts | added | removed
    stored = {r[0]: r[1:] for r in con.execute(
        "SELECT id, pagerank, in_degree, out_degree, entry_distance, is_entry FROM symbol_metrics"
        " WHERE id IN (SELECT unnest(?::VARCHAR[]))", [sorted(involved)]).fetchall()}
    zero = (0.0, 0, 0, -1, False)
    old = {i: stored.get(i, zero) for i in involved}

    # Entry points around the changed edges, from every reference into them.
    entry_of = {i: False for i in (dsts | added) - removed}
    for dst, is_fn, named, called, taken in con.execute(
        f"""SELECT i.id, split_part(i.id, '::', 2) = '{FUNCTION}', s.name IN ({sql_list(ENTRY_NAMES)}),
                   coalesce(bool_or(t.kind = '{CALL}' AND {node}), false),
                   coalesce(bool_or(t.kind = '{VALUE}' AND split_part(t.src, '::', 2) = '{FUNCTION}' AND {node}), false)
        FROM (SELECT unnest(?::VARCHAR[]) AS id) i JOIN symbols s ON s.id = i.id
        LEFT JOIN refs t ON t.dst = i.id GROUP BY ALL""", [sorted(entry_of)]).fetchall():
        entry_of[dst] = bool(is_fn and (named or (taken and not called)))
    if any(entry_of[i] != old[i][4] for i in entry_of) or any(old[i][4] for i in removed):
        return False
    dist = {i: old[i][3] for i in involved}
    relaxed = True
    while relaxed:  # added nodes take their distance from the edges into them (new functions, renames)
        relaxed = False
        for a, b, _ in gained:
            if b in added and dist[a] >= 0 and (dist[b] < 0 or dist[a] + 1 < dist[b]):
                dist[b], relaxed = dist[a] + 1, True
    if any(dist[a] >= 0 and (dist[b] < 0 or dist[a] + 1 < dist[b]) for a, b, _ in gained if b not in added):
        return False
    # A node that lost the edge of its shortest path keeps its distance when an edge from a node one hop nearer,
    # whose own distance held, still reaches it: settled nearest first, by induction over distances.
    unsupported = {b for a, b, _ in lost if b not in removed and dist[a] >= 0 and dist[a] + 1 == dist[b]}
    if unsupported:
        into: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for b, x, d in con.execute(
            f"""SELECT t.dst, t.src, m.entry_distance FROM refs t LEFT JOIN symbol_metrics m ON m.id = t.src
            WHERE t.dst IN (SELECT unnest(?::VARCHAR[])) AND {node}""", [sorted(unsupported)]).fetchall():
            into[b].append((x, dist.get(x, d)))
        for b in sorted(unsupported, key=dist.__getitem__):
            if any(x not in unsupported and d == dist[b] - 1 for x, d in into[b]):
                unsupported.discard(b)
        if unsupported:
            return False

    n = con.execute("SELECT count(*) FROM symbol_metrics").fetchall()[0][0] + len(added) - len(removed)
    floor = (1 - PAGERANK_ALPHA) / max(n, 1)
    bound = 2 / (1 - PAGERANK_ALPHA) * (sum(old[i][0] for i in srcs | removed) + len(added) * floor)
    if bound > PAGERANK_STALE_L1:
        return False

    # Write: the nodes around the changes, the nodes added and removed, the files whose pairs moved.
    out_now = dict(con.execute(
        f"""SELECT t.src, count(DISTINCT t.dst) FROM refs t
        WHERE t.path IN (SELECT DISTINCT split_part(unnest(?::VARCHAR[]), '::', 1))
          AND t.src IN (SELECT unnest(?::VARCHAR[]))
          AND t.dst IS NOT NULL AND {node} GROUP BY 1""", [sorted(srcs), sorted(srcs)]).fetchall())
    in_step: dict[str, int] = defaultdict(int)
    for _, b, _ in gained:
        in_step[b] += 1
    for _, b, _ in lost:
        in_step[b] -= 1
    rows: dict[str, list] = {c: [] for c in ("id", "pagerank", "in_degree", "out_degree", "entry_distance",
                                             "is_entry", "_new")}
    for i in sorted(involved - removed):
        pr, ind, outd, _dist, entry = old[i]
        new = i not in stored
        values = (i, floor if new else pr, ind + in_step.get(i, 0), out_now.get(i, 0) if i in srcs else outd,
                  dist[i], entry_of.get(i, entry), new)
        for col, v in zip(rows, values, strict=True):
            rows[col].append(v)
    con.register("_g_local", pa.table(rows, schema=pa.schema([
        ("id", pa.string()), ("pagerank", pa.float64()), ("in_degree", pa.int32()), ("out_degree", pa.int32()),
        ("entry_distance", pa.int32()), ("is_entry", pa.bool_()), ("_new", pa.bool_())])))
    try:
        con.execute("DELETE FROM symbol_metrics WHERE id IN (SELECT unnest(?::VARCHAR[]))", [sorted(removed)])
        con.execute(
            """UPDATE symbol_metrics AS t SET in_degree = n.in_degree, out_degree = n.out_degree,
                   is_entry = n.is_entry FROM _g_local n
            WHERE t.id = n.id AND NOT n._new
              AND (t.in_degree <> n.in_degree OR t.out_degree <> n.out_degree OR t.is_entry <> n.is_entry)"""
        )
        con.execute(
            """INSERT INTO symbol_metrics BY NAME
            SELECT id, pagerank, in_degree, out_degree, entry_distance, is_entry FROM _g_local WHERE _new"""
        )
    finally:
        con.unregister("_g_local")
    _local_file_metrics(con, delta, node)
    stats.pagerank = f"kept: local update, L1 change bound {bound:.4f}"
    _count_graph(con, stats)
    return True


def _local_file_metrics(con: duckdb.DuckDBPyConnection, delta: list[tuple[str, str, int | None, int | None]],
                        node: str) -> None:
    """Apply symbol-edge changes to the file graph: degrees move where a file pair's edge count crosses zero;
    PageRank stays within PAGERANK_STALE_L1, else the (small) file graph is recomputed whole."""
    pair_delta: dict[tuple[str, str], int] = defaultdict(int)
    for a, b, old, new in delta:
        fa, fb = a.split("::", 1)[0], b.split("::", 1)[0]
        step = bool((new or 0) & _FILE_BIT) - bool((old or 0) & _FILE_BIT)
        if fa != fb and step:
            pair_delta[(fa, fb)] += step
    pairs = sorted(k for k, v in pair_delta.items() if v)
    if not pairs:
        return
    files = sorted({f for pair in pairs for f in pair})
    stored = {r[0]: r[1:] for r in con.execute(
        "SELECT path, pagerank, in_degree, out_degree FROM file_metrics WHERE path IN (SELECT unnest(?::VARCHAR[]))",
        [files]).fetchall()}
    if 2 / (1 - PAGERANK_ALPHA) * sum(stored[a][0] for a in {a for a, _ in pairs}) > PAGERANK_STALE_L1:
        g = symbol_graph(con)
        _file_metrics(con, g, _stored(con, "file_metrics", "path", g.file_hashes,
                                      ["pagerank", "in_degree", "out_degree"]), None)
        return
    degree = {f: list(stored[f][1:]) for f in files}
    for a, b, weight in con.execute(
        f"""WITH p AS (SELECT unnest(?::VARCHAR[]) AS a, unnest(?::VARCHAR[]) AS b)
        SELECT p.a, p.b, (SELECT count(DISTINCT (t.src, t.dst)) FROM refs t
                          WHERE t.path = p.a AND t.dst IS NOT NULL AND split_part(t.dst, '::', 1) = p.b
                            AND t.kind IN ({sql_list(FILE_EDGE_REF_KINDS)}) AND {node})
                    + (SELECT count(*) > 0 FROM includes i WHERE i.path = p.a AND i.resolved = p.b)::INTEGER
        FROM p""", [[a for a, _ in pairs], [b for _, b in pairs]]).fetchall():
        step = (weight > 0) - (weight - pair_delta[(a, b)] > 0)
        degree[a][1] += step
        degree[b][0] += step
    for path, (ind, outd) in degree.items():
        con.execute("UPDATE file_metrics SET in_degree = ?, out_degree = ? WHERE path = ?", [ind, outd, path])


def _count_graph(con: duckdb.DuckDBPyConnection, stats: GraphStats) -> None:
    """GraphStats' node, edge and entry-point counts, from symbol_metrics."""
    stats.nodes, stats.edges, stats.entry_points = (int(v or 0) for v in con.execute(
        "SELECT count(*), sum(out_degree), count(*) FILTER (is_entry) FROM symbol_metrics").fetchall()[0])


def _summarise(con: duckdb.DuckDBPyConnection, stats: GraphStats) -> None:
    """Counts for GraphStats: includes, references by kind, decl links."""
    stats.includes, stats.includes_resolved = con.execute(
        "SELECT count(*), count(resolved) FROM includes").fetchall()[0]
    for kind, total, resolved, ambiguous in con.execute(
        "SELECT kind, count(*), count(dst), count(*) FILTER (candidates > 1) FROM refs GROUP BY 1 ORDER BY 1"
    ).fetchall():
        stats.refs[kind] = {"total": total, "resolved": resolved, "ambiguous": ambiguous}
    stats.decl_links = con.execute("SELECT count(*) FROM decl_links").fetchall()[0][0]


# =============================================================================================
# Answers the reader (agent.index.reader) turns into records
# =============================================================================================
def entry_territories(con: duckdb.DuckDBPyConnection, n: int = 20) -> list[tuple[str, int]]:
    """The `n` entry points owning the most functions (nearest-entry territories of one BFS), biggest first, with
    how many functions each owns."""
    g = symbol_graph(con)
    _dist, pred = _entry_distance(len(g.ids), g.src, g.dst, g.entries)
    owner = np.where(g.entries, np.arange(len(g.ids)), pred)
    while True:  # pointer jumping: follow predecessors until every reached node points at its entry point
        nxt = np.where(owner >= 0, owner[np.maximum(owner, 0)], -1)
        if np.array_equal(nxt, owner):
            break
        owner = nxt
    counts = np.bincount(owner[(owner >= 0) & g.is_function], minlength=len(g.ids))
    best = sorted(np.flatnonzero(g.entries).tolist(), key=lambda i: -counts[i])[:n]
    return [(g.ids[i].as_py(), int(counts[i])) for i in best]


def definitions(con: duckdb.DuckDBPyConnection, name: str, from_path: str | None = None) -> list[str]:
    """The ids of the definitions of `name` as seen from `from_path` (its TU first), best first; several when
    ambiguous. Without `from_path`: every definition, external linkage and the likelier kinds first."""
    if from_path is None:
        return [r[0] for r in con.execute(
            f"""SELECT id FROM symbols WHERE name = ? AND kind IN ({sql_list(_ANY_DEF)})
              AND NOT (kind = '{GLOBAL}' AND detail = '{EXTERN_DETAIL}')
            ORDER BY is_static, list_position([{sql_list(_ANY_DEF)}], kind), path, start_line""",
            [name],
        ).fetchall()]
    includes = IncludeGraph.load(con)
    pairs = [(from_path, inc) for inc in includes.closure.get(from_path, {from_path})]
    pairs += [(p, from_path) for p, c in includes.closure.items() if from_path in c and p != from_path]
    closure = pa.table({"path": [p for p, _ in pairs], "inc": [i for _, i in pairs]},
                       schema=pa.schema([("path", pa.string()), ("inc", pa.string())]))
    keys = pa.table({"path": [from_path], "name": [name], "kind": [LOOKUP], "self": [False]})
    for view, table in (("_g_lookup_closure", closure), ("_g_lookup_keys", keys), ("_g_rules", _RULES)):
        con.register(view, table)
    try:
        cands = [_Cand(*c) for c in con.execute(
            f"SELECT id, dpath, rank, start_line, text FROM ({_candidates_sql('_g_lookup_keys', '_g_lookup_closure')})"
        ).fetchall()]
    finally:
        for view in ("_g_lookup_closure", "_g_lookup_keys", "_g_rules"):
            con.unregister(view)
    return [c.id for c in _narrow(from_path, cands, includes)] if cands else []
