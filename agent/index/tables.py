"""The LanceDB search tables: BM25 and vector search over symbol nodes and file snapshots.

DuckDB holds the relational index; LanceDB holds only what is searched. A full build writes tables named
by a generation (`symbols_g7`, `files_g7`, `symbol_vectors_g7`) beside the live ones; the indexer records
the generation and the versions of `symbols` and `files` in DuckDB, and readers open the tables at
exactly those versions. Symbol vectors live in their own table, holding only the embedded symbols (a
fifth of them): null vector slots would make every scan read them and trip LanceDB's index updates. Its
version is tied to the symbols version by a tag (`s<version>`), written with every symbols write.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, BTree, IvfFlat

from agent.errors import InvalidInput, NotIndexed
from agent.index.catalog import module_of
from agent.index.embed import (
    BULK_MIN_TEXTS,
    Embedder,
    embed_isolated,
    load_query_embedder,
)
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
    PROTOTYPE,
    STRUCT,
    TYPEDEF,
    UNION,
    VALUE,
    ParsedFile,
    Symbol,
)
from agent.index.tokens import code_tokens, token_text

SYMBOLS = "symbols"
# The lines a symbol's text may end with, by what they hold. The vector reads all but the last changes: a commit that
# changes a function changes those again, and re-embedding every changed function would make each index move slow.
ANNOTATIONS = {"history": "history: ", "changes": "changes: ", "summary": "summary (model-written): "}
UNEMBEDDED = ("changes",)
FILES = "files"
VECTORS = "symbol_vectors"
TABLE_NAME = re.compile(r"^(symbols|files|symbol_vectors)_g(\d+)$")
VECTOR_TAG = "s{}"  # the tag on the symbol_vectors version that goes with symbols version {}
KEEP_VECTOR_TAGS = 16  # older tags are deleted so that old versions can be cleaned up

# ---------------------------------------------------------------------------------------------
# The embed rule: what gets a vector. Every file snapshot does; of the symbols, the definitions a
# question in words is about: functions, function-like macros, types, assembler macros (script
# commands) and mutable globals (game state). Constants (object-like macros, enum constants), const
# data tables, extern declarations, prototypes and assembly labels are most of a decomp's symbols
# (pokeemerald: ~90k of 112k); BM25 finds them by name and the snapshot of their file lists them.
# ---------------------------------------------------------------------------------------------
EMBED_KINDS = frozenset({FUNCTION, MACRO_FUNCTION, STRUCT, UNION, ENUM, TYPEDEF, ASM_MACRO})
_CONST = re.compile(r"\bconst\b")


def embeds(kind: str, signature: str, detail: str = "") -> bool:
    """Whether a symbol gets a vector: an EMBED_KINDS definition, or a global that is neither const nor extern."""
    if kind in EMBED_KINDS:
        return True
    if kind != GLOBAL:
        return False
    declarator = signature.split("=", 1)[0]
    return detail != "extern" and not declarator.startswith("extern") and not _CONST.search(declarator)


# Compact texts: what is shown, BM25-indexed and (for embedded rows) embedded.
MAX_TEXT_DETAIL = 240  # characters of a symbol's detail kept in its text
MAX_FILE_NAMES = 400   # symbol names listed in a file snapshot
MAX_FILE_COMMENT = 400  # characters of a file's leading comment kept
MAX_FILE_HEAD = 300    # characters of the head of a file with no names and no comment, kept instead
# Order of names in a file snapshot: what a reader looks for first (embedders truncate the tail).
FILE_NAME_ORDER = (FUNCTION, MACRO_FUNCTION, STRUCT, UNION, ENUM, TYPEDEF, GLOBAL, ASM_MACRO, MACRO,
                   ENUM_CONSTANT, LABEL, PROTOTYPE)
_LEADING_COMMENT = re.compile(r"\A\s*((?:/\*.*?\*/\s*|(?://|@|;|#(?!\s*(?:include|define|if)))[^\n]*\n\s*)+)", re.S)

# Graph fields copied from the DuckDB store onto symbol rows.
GRAPH_REF_KINDS = (CALL, VALUE, ASM_USE)  # references that make a caller and a callee
MAX_GRAPH_NAMES = 64                      # caller and callee names kept per symbol
PAGERANK_SYNC_TOLERANCE = 0.1             # relative PageRank drift that rewrites an untouched row
SYNC_REWRITE_ROWS = 2_000                 # above this many, untouched rows are updated by merge_insert

# LanceDB indexes. FTS columns hold token_text output already: split on spaces, nothing else. BM25 is
# LanceDB's (k1 = 1.2, b = 0.75). Vector indexes are IVF_FLAT searched in every partition: exact cosine
# search (one partition works too but makes LanceDB log warnings on every optimize).
FTS_CONFIG = dict(base_tokenizer="whitespace", lower_case=False, stem=False, remove_stop_words=False,
                  ascii_folding=False, with_position=False, max_token_length=None)
FTS_COLUMNS = {SYMBOLS: ("tokens",), FILES: ("tokens", "content_tokens")}
KEY_COLUMN = {SYMBOLS: "id", FILES: "path", VECTORS: "id"}  # BTREE-indexed: merge_insert by id needs it
PATH_COLUMN = {SYMBOLS: "file_path", FILES: "path", VECTORS: "file_path"}
VECTOR_PARTITIONS = 4
# Rows added since the last optimize are searched unindexed (flat) until they pass this many. A file row holds a
# whole file's tokens: on pokeruby, 444 of them searched flat took BM25 over contents from 11 to 750 ms, and an
# optimize that folded them in took 5 s; a one-file edit stays under the bar and pays nothing.
OPTIMIZE_UNINDEXED_ROWS = {SYMBOLS: 5_000, FILES: 32, VECTORS: 5_000}
# Every write makes table versions, each keeping the files it replaced (~20 MB a pokeemerald commit). Once
# more than MAX_OLD_VERSIONS are older than the keep window, an optimize deletes them. A reader that opened
# the index within KEEP_VERSIONS keeps its version; a walk with no other reader keeps none.
KEEP_VERSIONS = timedelta(hours=1)
MAX_OLD_VERSIONS = 64
# LanceDB deletes versions older than its clock at cleanup time minus the window; the cleanup comes after the
# compaction (seconds on a large table), so a needed version gets this much more than its age as the window.
CLEANUP_MARGIN = timedelta(minutes=1)

Progress = Callable[[str], None]

_SYMBOL_FIELDS = [
    ("id", pa.string()), ("name", pa.string()), ("kind", pa.string()), ("repo", pa.string()),
    ("module", pa.string()), ("file_path", pa.string()), ("lang", pa.string()), ("line", pa.int32()),
    ("signature", pa.string()), ("text", pa.string()), ("tokens", pa.string()),
]
_VECTOR_KEYS = ["id", "file_path", "module", "lang", "kind"]  # symbol columns copied for prefilters
_FILE_FIELDS = [
    ("path", pa.string()), ("repo", pa.string()), ("module", pa.string()), ("lang", pa.string()),
    ("text", pa.string()), ("tokens", pa.string()), ("content_tokens", pa.string()),
]
GRAPH_SCHEMA = pa.schema([
    ("id", pa.string()), ("callers", pa.list_(pa.string())), ("callees", pa.list_(pa.string())),
    ("entry_distance", pa.int32()), ("pagerank", pa.float64()),
])
_GRAPH_DEFAULTS = {"callers": [], "callees": [], "entry_distance": -1, "pagerank": 0.0}


def vector_field(dim: int) -> pa.Field:
    """The fixed-size vector column."""
    return pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)


def symbols_schema() -> pa.Schema:
    """Columns of the symbols table."""
    return pa.schema(_SYMBOL_FIELDS + list(GRAPH_SCHEMA)[1:])


def table_name(kind: str, generation: int) -> str:
    """The LanceDB table holding `kind` rows ('symbols', 'files' or 'symbol_vectors') of one generation."""
    return f"{kind}_g{generation}"


# ---------------------------------------------------------------------------------------------
# Row texts
# ---------------------------------------------------------------------------------------------
def symbol_text(sym: Symbol, annotations: Sequence[str] = ()) -> str:
    """The compact text of a symbol: kind, name, file, signature, detail, then its annotations (history note, a
    model's summary), each a line starting with one of ANNOTATIONS."""
    lines = [f"{sym.kind} {sym.name}  {sym.path}"]
    if sym.signature and sym.signature != sym.name:
        lines.append(sym.signature)
    if sym.detail:
        lines.append(sym.detail[:MAX_TEXT_DETAIL])
    lines.extend(annotations)
    return "\n".join(lines)


def embed_input(name: str, text: str) -> str:
    """What the embedder reads for a row: the words of its name (models read `InitWallClock` poorly), then its text
    without the UNEMBEDDED annotations."""
    skipped = tuple(ANNOTATIONS[kind] for kind in UNEMBEDDED)
    if any(prefix in text for prefix in skipped):
        text = "\n".join(line for line in text.split("\n") if not line.startswith(skipped))
    words = [t for t in code_tokens(name) if t != name.lower().strip("_")]
    return f"{' '.join(words)}\n{text}" if words else text


def leading_comment(text: str) -> str:
    """The comment block a file opens with (C, assembler or make syntax), whitespace-collapsed."""
    m = _LEADING_COMMENT.match(text)
    return " ".join(m.group(1).split())[:MAX_FILE_COMMENT] if m else ""


def file_text(parsed: ParsedFile) -> str:
    """The compact snapshot of a file: path, leading comment, the names it defines and its includes."""
    rank = {kind: i for i, kind in enumerate(FILE_NAME_ORDER)}
    ordered = sorted(parsed.symbols, key=lambda s: (rank.get(s.kind, len(rank)), s.start_line))
    names = list(dict.fromkeys(s.name for s in ordered if s.name != parsed.path))[:MAX_FILE_NAMES]
    lines = [f"file {parsed.path}"]
    comment = leading_comment(parsed.text)
    if comment:
        lines.append(comment)
    if names:
        lines.append("defines: " + " ".join(names))
    elif not comment:
        lines.append(" ".join(parsed.text[:MAX_FILE_HEAD].split()))
    if parsed.includes:
        lines.append("includes: " + " ".join(dict.fromkeys(i.target for i in parsed.includes)))
    return "\n".join(lines)


@dataclass
class Prepared:
    """Search rows of some parsed files, ready to write: graph fields are joined on writing."""

    symbols: pa.Table
    files: pa.Table
    vectors: pa.Table | None  # the embedded symbols' vectors; None without an embedder
    embedded: int


@dataclass(frozen=True)
class Filters:
    """Metadata prefilters shared by every search: path prefix, module, languages and (symbols only) kinds."""

    path: str | None = None
    module: str | None = None
    langs: Sequence[str] | None = None
    kinds: Sequence[str] | None = None

    def where(self, path_column: str) -> str | None:
        """The SQL predicate for a table whose path column is `path_column`, None when nothing is filtered."""
        parts = []
        if self.path:
            parts.append(f"starts_with({path_column}, {_quote(self.path)})")
        if self.module:
            parts.append(f"module = {_quote(self.module.rstrip('/') or '.')}")
        if self.langs:
            parts.append(f"lang IN ({_quote_list(self.langs)})")
        if self.kinds:
            parts.append(f"kind IN ({_quote_list(self.kinds)})")
        return " AND ".join(parts) or None


# ---------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------
class SearchTables:
    """One project's LanceDB search tables: written by the indexer, read at recorded versions by search."""

    def __init__(self, lance_dir: Path, embedder: str | Embedder | None = None, *, repo: str = "",
                 models: Path | None = None, on_progress: Progress | None = None,
                 keep_versions: timedelta = KEEP_VERSIONS) -> None:
        """Tables under `lance_dir`; `embedder` is an embedder name, a loaded Embedder, or None for none; `models`
        caches the query model's ONNX export (see load_query_embedder); writes delete versions older than
        `keep_versions` once they pile up."""
        lance_dir.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(lance_dir))
        self.repo = repo
        self.keep_versions = keep_versions
        self.models = models
        self.say = on_progress or (lambda _msg: None)
        self._embedder_spec = embedder
        self._embedder = None if embedder is None or isinstance(embedder, str) else embedder
        self.generation: int | None = None
        self._pinned: dict[str, int | None] = {}
        self._read: dict[str, lancedb.table.Table] = {}

    # ------------------------------------------------------------------ embedding
    @property
    def embedder(self) -> Embedder | None:
        """The embedder for queries and small updates, loaded on first use; None for a text-only index."""
        if self._embedder is None and isinstance(self._embedder_spec, str):
            self._embedder = load_query_embedder(self._embedder_spec, self.models)
        return self._embedder

    def embed_query(self, query: str) -> np.ndarray:
        """The query's vector, shape (dim,)."""
        if self.embedder is None:
            raise InvalidInput("this index was built without embeddings; vector search is unavailable")
        return self.embedder.embed([query])[0]

    def known_vectors(self, paths: Iterable[str]) -> dict[str, np.ndarray]:
        """Embedded text → vector for the rows of `paths` in the open tables, so unchanged texts skip the model."""
        paths = sorted(set(paths))
        if not paths or VECTORS not in self._read:
            return {}
        in_paths = f"IN ({_quote_list(paths)})"
        texts = self._table(SYMBOLS).search().where(f"file_path {in_paths}").select(["id", "name", "text"])
        texts = texts.limit(None).to_arrow().to_pylist()
        vectors = self._table(VECTORS).search().where(f"file_path {in_paths}").select(["id", "vector"])
        by_id = {row["id"]: row["vector"] for row in vectors.limit(None).to_arrow().to_pylist()}
        known = {embed_input(r["name"], r["text"]): np.asarray(by_id[r["id"]], np.float32)
                 for r in texts if r["id"] in by_id}
        files = self._table(FILES).search().where(f"path {in_paths}").select(["text", "vector"]).limit(None)
        for row in files.to_arrow().to_pylist():
            if row["vector"] is not None:
                known[row["text"]] = np.asarray(row["vector"], np.float32)
        return known

    def prepare(self, parsed: Iterable[ParsedFile], known: dict[str, np.ndarray] | None = None,
                annotations: dict[tuple[str, str], list[str]] | None = None) -> Prepared:
        """Compact texts, tokens and vectors (by the embed rule) of the symbols and files of `parsed`, each symbol's
        text ending with its `annotations` lines (by name and path).

        Texts in `known` (see known_vectors) keep their vector; only the others go through the embedder.
        """
        parsed = list(parsed)
        annotations = annotations or {}
        pairs = [(pf, sym) for pf in parsed for sym in pf.symbols]
        texts = [symbol_text(sym, annotations.get((sym.name, pf.path), ())) for pf, sym in pairs]
        wanted = [i for i, (_, sym) in enumerate(pairs) if embeds(sym.kind, sym.signature, sym.detail)]
        to_embed = [embed_input(pairs[i][1].name, texts[i]) for i in wanted]
        modules = {pf.path: module_of(pf.path) for pf in parsed}
        # Column by column: a dict per row would cost pokeemerald's 112k symbols a few hundred MB at the peak.
        symbols = pa.Table.from_pydict({
            "id": [sym.id for _, sym in pairs], "name": [sym.name for _, sym in pairs],
            "kind": [sym.kind for _, sym in pairs], "repo": [self.repo] * len(pairs),
            "module": [modules[pf.path] for pf, _ in pairs], "file_path": [pf.path for pf, _ in pairs],
            "lang": [pf.lang for pf, _ in pairs], "line": [sym.start_line for _, sym in pairs],
            "signature": [sym.signature for _, sym in pairs], "text": texts, "tokens": [token_text(t) for t in texts],
        }, schema=pa.schema(_SYMBOL_FIELDS))
        file_texts = [file_text(pf) for pf in parsed]
        files = pa.Table.from_pydict({
            "path": [pf.path for pf in parsed], "repo": [self.repo] * len(parsed),
            "module": [modules[pf.path] for pf in parsed], "lang": [pf.lang for pf in parsed], "text": file_texts,
            "tokens": [token_text(t) for t in file_texts], "content_tokens": [pf.tokens for pf in parsed],
        }, schema=pa.schema(_FILE_FIELDS))
        if self._embedder_spec is None:
            return Prepared(symbols, files, None, 0)
        to_embed += file_texts
        known = known or {}
        fresh = list(dict.fromkeys(t for t in to_embed if t not in known))
        self.say(f"embedding {len(fresh)} texts ({len(to_embed) - len(fresh)} unchanged)")
        if fresh:
            known = {**known, **dict(zip(fresh, self._embed_many(fresh), strict=True))}
        dim = next(iter(known.values())).shape[0] if known else self.embedder.dim
        vectors = np.stack([known[t] for t in to_embed]) if to_embed else np.zeros((0, dim), np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        n_sym = len(wanted)
        sym_vectors = symbols.select(_VECTOR_KEYS).take(pa.array(wanted, pa.int64()))
        sym_vectors = sym_vectors.append_column(vector_field(dim), column[:n_sym])
        files = files.append_column(vector_field(dim), column[n_sym:])
        return Prepared(symbols, files, sym_vectors, len(fresh))

    def _embed_many(self, texts: list[str]) -> np.ndarray:
        """Vectors of `texts`: in a worker process for a bulk of them by name, else with this process's embedder."""
        if self._embedder is None and isinstance(self._embedder_spec, str) and len(texts) >= BULK_MIN_TEXTS:
            return embed_isolated(self._embedder_spec, texts, self.models)
        return self.embedder.embed(texts)

    # ------------------------------------------------------------------ writing
    def build(self, generation: int, con: duckdb.DuckDBPyConnection | None, docs: Prepared) -> tuple[int, int]:
        """Write the tables of `generation` from scratch (graph fields from `con`); return (symbols, files) versions."""
        graph = graph_fields(con, docs.symbols.column("id")) if con is not None else None
        symbols = _with_graph(docs.symbols, graph)
        self.say(f"writing {symbols.num_rows} symbol rows and {docs.files.num_rows} file rows")
        written = {}
        for kind, data in ((SYMBOLS, symbols), (FILES, docs.files), (VECTORS, docs.vectors)):
            name = table_name(kind, generation)
            self.db.drop_table(name, ignore_missing=True)  # a build of this generation that died half-way
            if data is None:
                continue
            table = self.db.create_table(name, data=data)
            for column in FTS_COLUMNS.get(kind, ()):
                table.create_index(column, config=FTS(**FTS_CONFIG))
            table.create_index(KEY_COLUMN[kind], config=BTree())
            if "vector" in data.column_names and data.num_rows:
                table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=VECTOR_PARTITIONS))
            written[kind] = table
        self.generation, self._read = generation, written
        self._pinned = dict.fromkeys(written)
        _link_vectors(written[SYMBOLS], written.get(VECTORS))
        return self.versions

    def replace_paths(self, con: duckdb.DuckDBPyConnection | None, paths: Iterable[str],
                      docs: Prepared) -> tuple[int, int]:
        """Delete every row of `paths` (and of the files in `docs`), add the rows of `docs`; return the new versions.

        With the store `con`, new rows get their graph fields from it, and untouched rows whose callers
        may have changed, or whose entry distance or PageRank drifted, are rewritten too.
        """
        tables = {kind: self._writer(kind) for kind in self._read}
        if (VECTORS in tables) != (docs.vectors is not None):
            raise InvalidInput("these rows were prepared with a different embedder than the index was built with")
        gone = sorted(set(paths) | set(docs.files.column("path").to_pylist()))
        names: set[str] = set()
        if gone:
            in_gone = f"IN ({_quote_list(gone)})"
            if con is not None:
                old = tables[SYMBOLS].search().where(f"file_path {in_gone}").select(["callees"]).limit(None).to_arrow()
                names.update(_flat_names(old.column("callees")))
            for kind, table in tables.items():
                table.delete(f"{PATH_COLUMN[kind]} {in_gone}")
        symbols = _with_graph(docs.symbols, graph_fields(con, docs.symbols.column("id")) if con is not None else None)
        for kind, data in ((SYMBOLS, symbols), (FILES, docs.files), (VECTORS, docs.vectors)):
            if data is not None and data.num_rows:
                tables[kind].add(data)
        if con is not None:
            names.update(_flat_names(symbols.column("callees")))
            self._sync_graph(con, tables[SYMBOLS], names, gone)
        for kind, table in tables.items():
            self._optimize_if_stale(kind, table)
        _link_vectors(tables[SYMBOLS], tables.get(VECTORS))
        self._pinned, self._read = dict.fromkeys(tables), tables
        return self.versions

    def update_graph_fields(self, rows: pa.Table | list[dict]) -> int:
        """Set callers, callees, entry_distance and pagerank of symbol rows by id; return the symbols version."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA)
        sym = self._writer(SYMBOLS)
        vectors = self._writer(VECTORS) if VECTORS in self._read else None
        if table.num_rows:
            sym.merge_insert("id").when_matched_update_all().execute(table.select(GRAPH_SCHEMA.names))
            self._optimize_if_stale(SYMBOLS, sym)
        _link_vectors(sym, vectors)
        for kind, table in ((SYMBOLS, sym), (VECTORS, vectors)):
            if table is not None:
                self._pinned[kind], self._read[kind] = None, table
        return sym.version

    def _sync_graph(self, con: duckdb.DuckDBPyConnection, sym: lancedb.table.Table, names: set[str],
                    gone: list[str]) -> None:
        """Rewrite the graph fields of untouched rows that `names` may call, or whose metrics drifted."""
        current = sym.search().select(["id", "entry_distance", "pagerank"]).limit(None).to_arrow()
        views = {
            "_t_cur": current,
            "_t_names": pa.table({"name": pa.array(sorted(names), pa.string())}),
            "_t_gone": pa.table({"path": pa.array(gone, pa.string())}),
        }
        for view, data in views.items():
            con.register(view, data)
        try:
            ids = con.sql(
                f"""SELECT c.id FROM _t_cur c JOIN symbol_metrics m USING (id)
                WHERE c.entry_distance <> m.entry_distance
                   OR abs(c.pagerank - m.pagerank) > {PAGERANK_SYNC_TOLERANCE} * m.pagerank
                UNION
                SELECT id FROM symbols
                WHERE name IN (SELECT name FROM _t_names) AND path NOT IN (SELECT path FROM _t_gone)"""
            ).to_arrow_table().column("id")
        finally:
            for view in views:
                con.unregister(view)
        if not len(ids):
            return
        if len(ids) > SYNC_REWRITE_ROWS:
            sym.merge_insert("id").when_matched_update_all().execute(graph_fields(con, ids))
            return
        # Few rows: deleted and re-added whole, since a column-only merge_insert leaves the id index stale.
        in_ids = f"id IN ({_quote_list(ids.to_pylist())})"
        rows = sym.search().where(in_ids).limit(None).to_arrow().drop_columns(GRAPH_SCHEMA.names[1:])
        sym.delete(in_ids)
        sym.add(_with_graph(rows, graph_fields(con, rows.column("id"))))

    def _writer(self, kind: str) -> lancedb.table.Table:
        """The latest version of a table, rolled back first to the opened version if a later write went unrecorded."""
        if self.generation is None:
            raise NotIndexed("no search tables are open; build them or open a generation first")
        table = self.db.open_table(table_name(kind, self.generation))
        pinned = self._pinned.get(kind)
        if pinned is not None and table.version != pinned:
            table.restore(pinned)
        return table

    def _optimize_if_stale(self, kind: str, table: lancedb.table.Table) -> None:
        """Fold new rows into the indexes, compact, and delete old versions, once either has piled up.

        Versions still needed survive whatever their age: tagged ones (the vectors of a symbols version; LanceDB
        refuses to delete them) and the recorded one that a failed write rolls back to.
        """
        versions = table.list_versions()
        needed = {tag["version"] for tag in table.tags.list().values()} | {self._pinned.get(kind)}
        now = datetime.now()  # LanceDB's version timestamps are naive local time
        keep = max([self.keep_versions] + [now - v["timestamp"] + CLEANUP_MARGIN for v in versions if v["version"] in needed])
        old = sum(now - v["timestamp"] > keep for v in versions)
        stats = (table.index_stats(index.name) for index in table.list_indices())
        unindexed = max((s.num_unindexed_rows for s in stats if s is not None), default=0)
        if old > MAX_OLD_VERSIONS or unindexed > OPTIMIZE_UNINDEXED_ROWS[kind]:
            with warnings.catch_warnings():  # LanceDB warns that a zero window fails other readers: the caller has none
                warnings.filterwarnings("ignore", r"optimize\(cleanup_older_than=0\)")
                table.optimize(cleanup_older_than=keep)

    def drop_other_generations(self, keep: int) -> list[str]:
        """Drop the tables of every generation but `keep`; return their names."""
        dropped = []
        for name in _list_tables(self.db):
            m = TABLE_NAME.match(name)
            if m and int(m.group(2)) != keep:
                self.db.drop_table(name)
                dropped.append(name)
        return dropped

    # ------------------------------------------------------------------ reading
    def open(self, generation: int, symbols_version: int | None = None, files_version: int | None = None) -> None:
        """Open the tables of `generation` at the recorded versions (None: latest) for reading."""
        self.generation, self._pinned, self._read = generation, {}, {}
        for kind, version in ((SYMBOLS, symbols_version), (FILES, files_version)):
            self._read[kind] = self._open_at(kind, version)
            self._pinned[kind] = version
        if table_name(VECTORS, generation) in _list_tables(self.db):
            tag = VECTOR_TAG.format(symbols_version) if symbols_version is not None else None
            self._read[VECTORS] = self._open_at(VECTORS, tag)
            self._pinned[VECTORS] = self._read[VECTORS].version if tag else None

    def _open_at(self, kind: str, version: int | str | None) -> lancedb.table.Table:
        """One table of the open generation at a version or tag (None: latest)."""
        name = table_name(kind, self.generation)
        try:
            table = self.db.open_table(name)
            if version is not None:
                table.checkout(version)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise NotIndexed(f"search table {name} at {version} is missing; rebuild with `cra index --full`") from exc
        return table

    def checkout(self, symbols_version: int, files_version: int) -> None:
        """Read the tables of the open generation at these versions."""
        if self.generation is None:
            raise NotIndexed("no search tables are open; open a generation first")
        self.open(self.generation, symbols_version, files_version)

    @property
    def versions(self) -> tuple[int, int]:
        """The versions of the symbols and files tables as read now (what DuckDB records)."""
        return self._table(SYMBOLS).version, self._table(FILES).version

    @property
    def has_vectors(self) -> bool:
        """Whether the open tables carry vectors (the index was built with an embedder)."""
        return VECTORS in self._read

    def search_symbols(self, terms: str, limit: int = 10, *, kinds: Sequence[str] | None = None,
                       path: str | None = None, module: str | None = None,
                       langs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """BM25 over symbol texts: (symbol id, score), best first; `terms` is token_text output."""
        return self._fts(SYMBOLS, "tokens", terms, limit, Filters(path, module, langs, kinds))

    def search_files(self, terms: str, limit: int = 10, *, path: str | None = None, module: str | None = None,
                     langs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """BM25 over file snapshots: (path, score), best first."""
        return self._fts(FILES, "tokens", terms, limit, Filters(path, module, langs))

    def search_content(self, terms: str, limit: int = 10, *, path: str | None = None, module: str | None = None,
                       langs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """BM25 over whole file contents (the plain baseline): (path, score), best first."""
        return self._fts(FILES, "content_tokens", terms, limit, Filters(path, module, langs))

    def nearest_symbols(self, vector: np.ndarray, limit: int = 10, *, kinds: Sequence[str] | None = None,
                        path: str | None = None, module: str | None = None,
                        langs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Embedded symbols nearest to `vector`: (symbol id, cosine similarity), best first."""
        return self._nearest(VECTORS, vector, limit, Filters(path, module, langs, kinds))

    def nearest_files(self, vector: np.ndarray, limit: int = 10, *, path: str | None = None,
                      module: str | None = None, langs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """File snapshots nearest to `vector`: (path, cosine similarity), best first."""
        return self._nearest(FILES, vector, limit, Filters(path, module, langs))

    def symbol_annotations(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The annotations in the search texts of the symbols `ids`: id -> {"history": ..., "summary": ...}."""
        if not ids:
            return {}
        rows = self._table(SYMBOLS).search().where(f"id IN ({_quote_list(ids)})").select(["id", "text"])
        found: dict[str, dict[str, str]] = {}
        for row in rows.limit(None).to_arrow().to_pylist():
            for line in row["text"].split("\n"):
                for kind, prefix in ANNOTATIONS.items():
                    if line.startswith(prefix):
                        found.setdefault(row["id"], {})[kind] = line.removeprefix(prefix)
        return found

    def _table(self, kind: str) -> lancedb.table.Table:
        """The open read handle of a table."""
        if kind not in self._read:
            raise NotIndexed("no search tables are open; open a generation first")
        return self._read[kind]

    def _fts(self, kind: str, column: str, terms: str, limit: int, filters: Filters) -> list[tuple[str, float]]:
        """Full-text (BM25) search of one column, prefiltered."""
        terms = " ".join(terms.split())
        if not terms:
            return []
        key = KEY_COLUMN[kind]
        query = self._table(kind).search(terms, query_type="fts", fts_columns=column)
        where = filters.where(PATH_COLUMN[kind])
        if where:
            query = query.where(where, prefilter=True)
        result = query.select([key, "_score"]).limit(limit).to_arrow()
        return list(zip(result.column(key).to_pylist(), result.column("_score").to_pylist(), strict=True))

    def _nearest(self, kind: str, vector: np.ndarray, limit: int, filters: Filters) -> list[tuple[str, float]]:
        """Exact cosine nearest neighbours, prefiltered."""
        if not self.has_vectors:
            raise InvalidInput("this index was built without embeddings; vector search is unavailable")
        key = KEY_COLUMN[kind]
        query = (self._table(kind).search(np.asarray(vector, np.float32), vector_column_name="vector",
                                          query_type="vector")
                 .distance_type("cosine").nprobes(VECTOR_PARTITIONS))
        where = filters.where(PATH_COLUMN[kind])
        if where:
            query = query.where(where, prefilter=True)
        result = query.select([key, "_distance"]).limit(limit).to_arrow()
        keys, distances = result.column(key).to_pylist(), result.column("_distance").to_pylist()
        return [(k, 1.0 - d) for k, d in zip(keys, distances, strict=True)]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
_GRAPH_SQL = """
WITH callees AS (
    SELECT src AS id, list_sort(list(DISTINCT name))[1:{cap}] AS callees FROM refs
    WHERE kind IN ({kinds}) AND src IN (SELECT id FROM _t_ids) GROUP BY src),
callers AS (
    SELECT r.dst AS id, list_sort(list(DISTINCT s.name))[1:{cap}] AS callers
    FROM refs r JOIN symbols s ON s.id = r.src
    WHERE r.kind IN ({kinds}) AND r.dst IN (SELECT id FROM _t_ids) GROUP BY r.dst)
SELECT i.id, coalesce(callers, []) AS callers, coalesce(callees, []) AS callees,
       coalesce(m.entry_distance, -1) AS entry_distance, coalesce(m.pagerank, 0.0) AS pagerank
FROM _t_ids i LEFT JOIN callers USING (id) LEFT JOIN callees USING (id) LEFT JOIN symbol_metrics m USING (id)
"""


def graph_fields(con: duckdb.DuckDBPyConnection, ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Callers and callees (names), entry distance and PageRank of the symbols `ids`, from the DuckDB store."""
    con.register("_t_ids", pa.table({"id": ids}))
    try:
        sql = _GRAPH_SQL.format(cap=MAX_GRAPH_NAMES, kinds=_quote_list(GRAPH_REF_KINDS))
        return con.sql(sql).to_arrow_table().cast(GRAPH_SCHEMA)
    finally:
        con.unregister("_t_ids")


def _with_graph(symbols: pa.Table, graph: pa.Table | None) -> pa.Table:
    """`symbols` with graph fields joined by id (defaults where absent), in table column order."""
    at = pc.index_in(symbols.column("id"), value_set=graph.column("id")) if graph is not None else None
    for name, default in _GRAPH_DEFAULTS.items():
        field = GRAPH_SCHEMA.field(name)
        column = graph.column(name).take(at) if graph is not None else pa.nulls(symbols.num_rows, field.type)
        symbols = symbols.append_column(field, pc.fill_null(column, pa.scalar(default, field.type)))
    return symbols.select(symbols_schema().names)


def _link_vectors(symbols: lancedb.table.Table, vectors: lancedb.table.Table | None) -> None:
    """Tag the vectors table's version with the symbols version it goes with; drop the oldest tags."""
    if vectors is None:
        return
    tag = VECTOR_TAG.format(symbols.version)
    if tag in vectors.tags.list():  # left by a write that was rolled back
        vectors.tags.update(tag, vectors.version)
    else:
        vectors.tags.create(tag, vectors.version)
    tags = sorted(vectors.tags.list().items(), key=lambda item: item[1]["version"])
    for tag, _ in tags[:-KEEP_VECTOR_TAGS]:
        vectors.tags.delete(tag)


def _flat_names(column: pa.ChunkedArray) -> set[str]:
    """Every name in a list<string> column."""
    return set(pc.list_flatten(column).to_pylist())


def _list_tables(db: lancedb.DBConnection) -> list[str]:
    """Every table name in the database, across pages."""
    names: list[str] = []
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return names


def _quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _quote_list(values: Iterable[str]) -> str:
    """A comma-separated list of SQL string literals."""
    return ", ".join(map(_quote, values))
