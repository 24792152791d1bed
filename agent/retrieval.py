"""Hybrid ranking of files and symbols: the one place where text, vector, graph and history signals are fused."""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from agent.config import ProjectPaths
from agent.errors import InvalidInput
from agent.index import history
from agent.index.build import IndexState, open_index
from agent.index.reader import IndexReader, neighbors
from agent.index.symbols import PROTOTYPE, SYMBOL_KINDS
from agent.index.tokens import code_tokens
from agent.ranker import Fitted
from agent.ranker import load as load_ranker


@dataclass(frozen=True)
class Weights:
    """How much each signal counts; every signal is normalised to [0, 1] before weighting."""

    # Tuned on the localization benchmark (cra eval localize) on pokeemerald's newest 200 tasks, checked on pokeruby's:
    # commit subjects are terse, so the repository's history carries the most weight, then the identifiers and file
    # names a subject spells out and the working set of the last commits. The compact snapshot's BM25 adds nothing
    # on top of whole-file BM25 and file names, so it is off by default (and not searched when off).
    file_text: float = 0.0        # BM25 over a file's compact snapshot (path, symbol names, includes)
    file_content: float = 1.0     # BM25 over a file's whole text
    file_symbols: float = 0.5     # a file's best symbol by BM25
    file_vector: float = 1.0      # cosine of the query to the file snapshot
    file_symbol_vector: float = 0.7  # a file's best symbol by cosine
    file_neighborhood: float = 0.5   # a file's best symbol within two graph hops of the top text hits
    symbol_text: float = 1.0      # symbols: BM25 over symbol documents
    symbol_vector: float = 0.5    # symbols: cosine of the query to symbol documents
    neighborhood: float = 0.3     # symbols: within two graph hops of the top text hits
    pagerank: float = 0.2         # structural prior, for files and symbols
    identifier: float = 1.5       # BM25 over whole files for the identifiers the query spells out (gFoo, MAX_BAR)
    file_name: float = 1.5        # share of a file name's words that the query uses
    history: float = 2.0          # files changed by past commits with similar descriptions
    cochange: float = 0.2         # files that change together with the top candidates
    header_pair: float = 0.3      # foo.h given foo.c ranks high, and the other way round
    recent: float = 1.5           # the working set: files the last few commits changed


WEIGHTS = Weights()
# Each signal and the weight that counts it by default. Signals without a weight here (a file's churn, whether it
# is a header; a symbol's file rank and name matches) are read by a fitted ranker only.
FILE_SIGNALS = {
    "text": "file_text", "content": "file_content", "symbols": "file_symbols", "vector": "file_vector",
    "symbol_vector": "file_symbol_vector", "graph": "file_neighborhood", "identifier": "identifier",
    "file_name": "file_name", "history": "history", "recent": "recent", "cochange": "cochange",
    "pair": "header_pair", "pagerank": "pagerank",
}
SYMBOL_SIGNALS = {"text": "symbol_text", "vector": "symbol_vector", "graph": "neighborhood", "pagerank": "pagerank"}
FILE_FEATURES = (*FILE_SIGNALS, "churn", "header")
SYMBOL_FEATURES = (*SYMBOL_SIGNALS, "file_rank", "name", "name_words", "function", "identifier", "body",
                   "body_identifier", "lines", "file_share")
CANDIDATES = 200        # hits taken from each text or vector list before fusion
SYMBOL_FILES = 20       # a fitted ranker scores every function of this many of its best files
MAX_SYMBOL_CANDIDATES = 5000  # and at most this many symbols in all (LightGBM ranks up to 10,000 per query)
BODY_K1, BODY_B = 1.2, 0.75  # BM25 over the bodies of the best files' functions
LONG_FUNCTION = 1000    # lines: a function this long reads 1 on the size feature (log scale)
SEED_HITS = 10          # top text hits whose graph neighbourhood is boosted
PAIR_SEEDS = 10         # top files whose header/source partner is boosted
MAX_PARTNERS = 4        # a name shared by more .c/.h files than this (main.c, ...) pairs nothing
RANKERS = ("hybrid", "learned", "bm25")
HIDDEN_KINDS = frozenset({PROTOTYPE})  # declarations repeat their definitions; shown only when asked for by --kind
MIN_CONSTANT_CHARS = 4  # an all-capitals word this long (TRUE, MAX_...) is taken for a constant's name

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CODE_SHAPE = re.compile(r"[A-Za-z0-9]_[A-Za-z0-9]|[a-z][A-Z]|[A-Za-z][0-9]")


@dataclass
class FileHit:
    """A ranked file, with the weighted contribution of each signal."""

    path: str
    score: float
    why: dict[str, float] = field(default_factory=dict)


@dataclass
class SymbolHit:
    """A ranked symbol, with the weighted contribution of each signal."""

    id: str
    name: str
    kind: str
    path: str
    line: int
    score: float
    why: dict[str, float] = field(default_factory=dict)
    history: str = ""  # its history note: the commits that made, renamed and changed it
    summary: str = ""  # a model's one-line summary (model-written), where `cra enrich` wrote one


@dataclass
class SearchResults:
    """Ranked files and symbols for one query."""

    query: str
    files: list[FileHit]
    symbols: list[SymbolHit]
    elapsed_ms: float
    ranker: str = "hybrid"  # which ranker ordered them: hybrid (the named weights), learned (fitted) or bm25

    def as_dict(self) -> dict:
        """A JSON-ready view."""
        return asdict(self)


@dataclass
class Signals:
    """One query's candidates with their raw signals, each normalised to [0, 1], before any weighting."""

    files: dict[str, dict[str, float]]
    symbols: dict[str, dict[str, float]]


def weighted(raw: dict[str, float], signals: dict[str, str], weights: Weights) -> dict[str, float]:
    """Each weighted signal's contribution under `weights` (signals without a weight are left out)."""
    return {name: value * getattr(weights, signals[name]) for name, value in raw.items() if name in signals}


def _by_score(rows: dict[str, dict[str, float]], model: Fitted) -> list[tuple[str, float]]:
    """Candidates best first under a fitted model (ties by key), each scored by the logistic of the model's output:
    in (0, 1) like the default weights' shares, so that the stages' "share of the best" rules read both."""
    keys = list(rows)
    scores = 1.0 / (1.0 + np.exp(-model.scores([rows[key] for key in keys])))
    return sorted(((key, float(s)) for key, s in zip(keys, scores)), key=lambda t: (-t[1], t[0]))


def _normalise(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values(), default=0.0)
    return {key: value / top for key, value in scores.items()} if top > 0 else {}


def _body_bm25(terms: Sequence[str], bodies: dict[str, Counter[str]]) -> dict[str, float]:
    """BM25 of the query's terms over the given bodies (document frequencies among them), normalised to [0, 1]."""
    wanted = set(terms)
    if not wanted or not bodies:
        return {}
    df = Counter(t for body in bodies.values() for t in wanted if t in body)
    n = len(bodies)
    idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    length = {sid: body.total() for sid, body in bodies.items()}
    avg = sum(length.values()) / n or 1.0
    scores = {}
    for sid, body in bodies.items():
        norm = BODY_K1 * (1 - BODY_B + BODY_B * length[sid] / avg)
        score = sum(idf[t] * body[t] * (BODY_K1 + 1) / (body[t] + norm) for t in idf if t in body)
        if score > 0:
            scores[sid] = score
    return _normalise(scores)


def _best_per_file(scores: dict[str, float], path_of: dict[str, str]) -> dict[str, float]:
    best: dict[str, float] = {}
    for sid, value in scores.items():
        path = path_of.get(sid)
        if path is not None and value > best.get(path, 0.0):
            best[path] = value
    return best


def _partners(paths: Iterable[str]) -> dict[str, list[str]]:
    """Header/source partners by file name alone (foo.c and foo.h wherever they live), for unambiguous names."""
    by_stem: dict[str, dict[str, list[str]]] = defaultdict(lambda: {".c": [], ".h": []})
    for path in paths:
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext in (".c", ".h"):
            by_stem[stem][ext].append(path)
    partners: dict[str, list[str]] = {}
    for group in by_stem.values():
        sources, headers = group[".c"], group[".h"]
        if sources and headers and len(sources) * len(headers) <= MAX_PARTNERS:
            for path in sources:
                partners[path] = headers
            for path in headers:
                partners[path] = sources
    return partners


def query_identifiers(query: str) -> list[str]:
    """The code identifiers a query spells out, as whole search tokens: snake_case, camelCase, NAME2, CONSTANTS."""
    out: dict[str, None] = {}
    for word in _IDENTIFIER.findall(query):
        core = word.strip("_")
        if _CODE_SHAPE.search(core) or (core.isupper() and len(core) >= MIN_CONSTANT_CHARS):
            whole = core.lower()
            if whole in code_tokens(word):
                out[whole] = None
    return list(out)


def name_words(path: str) -> tuple[str, ...]:
    """The words of a file's name without directory and extension: src/battle_dome.c -> (battle, dome)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return tuple(dict.fromkeys(history.tokenize(stem)))


def file_name_scores(query: str, words_of: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """For each file, the share of its name's words that the query uses (plurals folded)."""
    wanted = set(history.tokenize(query))
    scores = {}
    for fpath, words in words_of.items():
        hits = sum(1 for w in words if w in wanted)
        if hits:
            scores[fpath] = hits / len(words)
    return scores


class Searcher:
    """A warm handle on one project's index: the search tables at the recorded versions and the graph."""

    def __init__(self, paths: ProjectPaths, state: IndexState, index: IndexReader):
        from agent.index.tables import SearchTables

        self.paths = paths
        self.state = state
        self.tables = SearchTables(paths.lance, state.embedder, models=paths.models)
        self.tables.open(state.generation, state.symbols_version, state.files_version)
        rows = index.symbol_ranks()
        self.file_pagerank = index.file_pagerank()
        self.files = index.file_langs()
        self.graph = index.adjacency()
        self.history = index.history()
        self.meta = {r[0]: r[1:5] for r in rows}
        self.end_line = index.end_lines()
        self.path_of = {r[0]: r[3] for r in rows}
        self.symbol_pagerank = _normalise({r[0]: r[5] for r in rows})
        self.file_pagerank = _normalise(self.file_pagerank)
        self.partners = _partners(self.files)
        self.name_words = {p: words for p in self.files if (words := name_words(p))}
        self.recent = _normalise(history.recent_files(self.history))
        self.by_path: dict[str, list[str]] = defaultdict(list)
        for sid, (_name, _kind, spath, _line) in self.meta.items():
            self.by_path[spath].append(sid)
        self.fitted = load_ranker(paths.ranker)
        self.name_tokens: dict[str, list[str]] = {}
        self.body_tokens: dict[str, Counter[str]] = {}

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        ranker: str | None = None,
        kinds: list[str] | None = None,
        path: str | None = None,
        module: str | None = None,
        langs: list[str] | None = None,
        weights: Weights = WEIGHTS,
    ) -> SearchResults:
        """Rank files and symbols for `query` under the given filters, with the project's fitted ranker when it has
        one (`ranker` None), the named default weights ("hybrid"), the fitted ranker ("learned") or plain BM25."""
        ranker = ranker or ("learned" if self.fitted else "hybrid")
        return self.search_with([ranker], query, k=k, kinds=kinds, path=path, module=module, langs=langs,
                                weights=weights)[ranker]

    def search_with(
        self,
        rankers: Sequence[str],
        query: str,
        *,
        k: int = 10,
        kinds: list[str] | None = None,
        path: str | None = None,
        module: str | None = None,
        langs: list[str] | None = None,
        weights: Weights = WEIGHTS,
    ) -> dict[str, SearchResults]:
        """The results of several rankers for one query, the signals read once (see search)."""
        start = time.perf_counter()
        if not query.strip():
            raise InvalidInput("the query is empty; describe what to look for")
        if k < 1:
            raise InvalidInput(f"k must be at least 1, not {k}")
        unknown = sorted(set(kinds or ()) - SYMBOL_KINDS)
        if unknown:
            raise InvalidInput(f"unknown symbol kind {', '.join(unknown)}; choose from {', '.join(sorted(SYMBOL_KINDS))}")
        for ranker in rankers:
            if ranker not in RANKERS:
                raise InvalidInput(f"unknown ranker {ranker!r}; choose one of {', '.join(RANKERS)}")
            if ranker == "learned" and self.fitted is None:
                raise InvalidInput("this project has no fitted ranker: run `cra ranker fit` (it learns from the "
                                   "history), or search with --ranker hybrid")
        module = module.rstrip("/") if module else module
        file_filter = {"path": path, "module": module, "langs": langs}
        allowed = self._allowed_files(path, module, langs)
        found = None
        out = {}
        for ranker in rankers:
            if ranker == "bm25":
                hits = self.tables.search_content(" ".join(code_tokens(query)), limit=k, **file_filter)
                out[ranker] = SearchResults(query, [FileHit(p, s, {"bm25": s}) for p, s in hits], [], 0.0, ranker)
                continue
            found = found or self.signals(query, allowed, kinds=kinds, file_filter=file_filter, weights=weights,
                                          learned="learned" in rankers)
            learned = self.fitted.levels if ranker == "learned" else {}
            files = (self._learned_files(found, learned["files"], k) if "files" in learned
                     else self._hybrid_files(found, weights))
            symbols = (self._learned_symbols(query, found, learned["symbols"], files, allowed, kinds, k)
                       if "symbols" in learned else self._hybrid_symbols(found, allowed, kinds, weights))
            files, symbols = files[:k], symbols[:k]
            notes = self.tables.symbol_annotations([h.id for h in symbols])
            for hit in symbols:
                lines = notes.get(hit.id, {})
                hit.history = "; ".join(lines[kind] for kind in ("history", "changes") if lines.get(kind))
                hit.summary = lines.get("summary", "")
            out[ranker] = SearchResults(query, files, symbols, 0.0, ranker)
        elapsed = (time.perf_counter() - start) * 1000
        for res in out.values():
            res.elapsed_ms = elapsed
        return out

    def signals(
        self, query: str, allowed: set[str], *, kinds: list[str] | None = None, file_filter: dict | None = None,
        weights: Weights = WEIGHTS, history_now: history.History | None = None, learned: bool = True,
    ) -> Signals:
        """Every candidate file and symbol of `query` with its raw signals, each normalised to [0, 1].

        `history_now` replaces the index's history (fitting reads each past commit against the history before it);
        the co-change and header-pair signals follow the leaders under `weights`. Without `learned`, the features
        only a fitted ranker reads (churn, header) are left out.
        """
        file_filter = file_filter or {}
        hist = self.history if history_now is None else history_now
        terms = " ".join(code_tokens(query))
        # The searches are independent and LanceDB runs them outside the GIL: issued together, they take about as
        # long as the slowest (the query's embedding is computed meanwhile).
        tables, pool = self.tables, _TABLE_SEARCHES
        pending = {
            "sym_text": pool.submit(tables.search_symbols, terms, limit=CANDIDATES, kinds=kinds, **file_filter),
            "content": pool.submit(tables.search_content, terms, limit=CANDIDATES, **file_filter),
            "identifier": pool.submit(tables.search_content, " ".join(query_identifiers(query)), limit=CANDIDATES,
                                      **file_filter),
        }
        if weights.file_text:
            pending["file_text"] = pool.submit(tables.search_files, terms, limit=CANDIDATES, **file_filter)
        vector = tables.embed_query(query) if self.state.embedder else None
        if vector is not None:
            pending["sym_vec"] = pool.submit(tables.nearest_symbols, vector, limit=CANDIDATES, kinds=kinds,
                                             **file_filter)
            pending["file_vec"] = pool.submit(tables.nearest_files, vector, limit=CANDIDATES, **file_filter)
        hits = {name: dict(future.result()) for name, future in pending.items()}
        sym_text, file_content = _normalise(hits["sym_text"]), _normalise(hits["content"])
        file_text, identifier = _normalise(hits.get("file_text", {})), _normalise(hits["identifier"])
        sym_vec, file_vec = hits.get("sym_vec", {}), hits.get("file_vec", {})
        seeds = sorted(sym_text, key=sym_text.get, reverse=True)[:SEED_HITS]
        # Seeds already carry their text score; their neighbours (one hop: 1/2, two hops: 1/3) get the boost.
        near = {sid: 1.0 / (1 + d) for sid, d in neighbors(self.graph, seeds, hops=2).items()
                if d > 0 and sid in self.meta}

        symbols: dict[str, dict[str, float]] = defaultdict(dict)
        for name, signal in (("text", sym_text), ("vector", sym_vec), ("graph", near)):
            for sid, value in signal.items():
                symbols[sid][name] = value
        for sid, raw in symbols.items():
            raw["pagerank"] = self.symbol_pagerank.get(sid, 0.0)

        recent = self.recent if history_now is None else _normalise(history.recent_files(hist))
        files: dict[str, dict[str, float]] = defaultdict(dict)
        for name, signal in (
            ("text", file_text),
            ("content", file_content),
            ("symbols", _best_per_file(sym_text, self.path_of)),
            ("vector", file_vec),
            ("symbol_vector", _best_per_file(sym_vec, self.path_of)),
            ("graph", _best_per_file(near, self.path_of)),
            ("identifier", identifier),
            ("file_name", file_name_scores(query, self.name_words)),
            ("history", _normalise(history.similar_commit_files(hist, query))),
            ("recent", recent),
        ):
            for fpath, value in signal.items():
                if fpath in allowed:
                    files[fpath][name] = value
        leaders = sorted(files, key=lambda p: -sum(weighted(files[p], FILE_SIGNALS, weights).values()))[:PAIR_SEEDS]
        for fpath, value in _normalise(history.cochange(hist, leaders)).items():
            if fpath in allowed:
                files[fpath]["cochange"] = value
        for rank, fpath in enumerate(leaders):
            for partner in self.partners.get(fpath, ()):
                if partner in allowed:
                    files[partner]["pair"] = max(files[partner].get("pair", 0.0), 1.0 / (1 + rank))
        churn = {}
        if learned:
            counts = self.churn if history_now is None else history.churn(hist, files)
            churn = _normalise({p: counts[p] for p in files if p in counts})
        for fpath, raw in files.items():
            raw["pagerank"] = self.file_pagerank.get(fpath, 0.0)
            if learned:
                raw["churn"] = churn.get(fpath, 0.0)
                raw["header"] = float(fpath.endswith(".h"))
        return Signals(dict(files), dict(symbols))

    def symbol_rows(
        self, query: str, found: Signals, files: Sequence[tuple[str, float]], allowed: set[str],
        kinds: list[str] | None = None,
    ) -> dict[str, dict[str, float]]:
        """The symbol candidates the fitted ranker scores, with their features: the symbols any signal found (the
        query's identifiers included) and the functions (or the symbols of the kinds asked for) of the first files
        of `files` (path and score, best first), at most MAX_SYMBOL_CANDIDATES, each with its file's rank and share
        of the best file's score, how its name meets the query, and how its body does (BM25 and identifiers)."""
        rank = {p: i for i, (p, _score) in enumerate(files)}
        best = max((score for _p, score in files[:1]), default=0.0)
        share = {p: score / best for p, score in files} if best > 0 else {}
        wanted_ids = query_identifiers(query)
        words = set(history.tokenize(query))
        identifier = (_normalise(dict(self.tables.search_symbols(" ".join(wanted_ids), limit=CANDIDATES, kinds=kinds)))
                      if wanted_ids else {})
        rows = {sid: dict(raw) for sid, raw in found.symbols.items() if self._shown(sid, allowed, kinds)}
        rows.update((sid, {"pagerank": self.symbol_pagerank.get(sid, 0.0)}) for sid in identifier
                    if sid not in rows and sid in self.meta and self._shown(sid, allowed, kinds))
        top_files = [p for p, _score in files[:SYMBOL_FILES]]
        added = (sid for fpath in top_files for sid in self.by_path.get(fpath, ())
                 if sid not in rows and self._shown(sid, allowed, kinds) and (kinds or self.meta[sid][1] == "function"))
        for sid in added:
            if len(rows) >= MAX_SYMBOL_CANDIDATES:
                break
            rows[sid] = {"pagerank": self.symbol_pagerank.get(sid, 0.0)}
        bodies = self._bodies(top_files)
        body = _body_bm25(code_tokens(query), {sid: bodies[sid] for sid in rows if sid in bodies})
        for sid, row in rows.items():
            name, kind, spath, line = self.meta[sid]
            own = self.name_tokens.get(sid)
            if own is None:  # cached: a warm searcher tokenizes each name once
                own = self.name_tokens[sid] = history.tokenize(name)
            row["file_rank"] = 1.0 / (1 + rank[spath]) if spath in rank else 0.0
            row["file_share"] = share.get(spath, 0.0)
            row["name"] = float(name.lower() in wanted_ids)
            row["name_words"] = sum(w in words for w in own) / len(own) if own else 0.0
            row["function"] = float(kind == "function")
            row["identifier"] = identifier.get(sid, 0.0)
            row["body"] = body.get(sid, 0.0)
            used = bodies.get(sid)
            row["body_identifier"] = sum(w in used for w in wanted_ids) / len(wanted_ids) if used and wanted_ids else 0.0
            row["lines"] = min(1.0, math.log1p(max(0, self.end_line[sid] - line + 1)) / math.log1p(LONG_FUNCTION))
        return rows

    @cached_property
    def churn(self) -> dict[str, float]:
        """Each file's churn in the index's history, read once per warm searcher (a fitted ranker reads it)."""
        return history.churn(self.history, self.files)

    def _bodies(self, paths: Iterable[str]) -> dict[str, Counter[str]]:
        """The code tokens of every function body in `paths`, read from the checkout (cached per symbol)."""
        out: dict[str, Counter[str]] = {}
        for fpath in paths:
            sids = [sid for sid in self.by_path.get(fpath, ()) if self.meta[sid][1] == "function"]
            missing = [sid for sid in sids if sid not in self.body_tokens]
            if missing:
                try:
                    lines = (self.paths.repo / fpath).read_text(errors="replace").split("\n")
                except OSError:
                    lines = []
                for sid in missing:
                    start = self.meta[sid][3]
                    self.body_tokens[sid] = Counter(code_tokens("\n".join(lines[start - 1:self.end_line[sid]])))
            out.update((sid, self.body_tokens[sid]) for sid in sids)
        return out

    def _hybrid_files(self, found: Signals, weights: Weights) -> list[FileHit]:
        """Files by the weighted sum of their signals, each `why` the weighted signals."""
        files = [FileHit(p, sum(why.values()), why)
                 for p, why in ((p, weighted(raw, FILE_SIGNALS, weights)) for p, raw in found.files.items())]
        return sorted(files, key=lambda h: (-h.score, h.path))

    def _hybrid_symbols(self, found: Signals, allowed: set[str], kinds: list[str] | None,
                        weights: Weights) -> list[SymbolHit]:
        """Symbols by the weighted sum of their signals."""
        symbols = [SymbolHit(sid, *self.meta[sid], sum(why.values()), why)
                   for sid, why in ((sid, weighted(raw, SYMBOL_SIGNALS, weights)) for sid, raw in found.symbols.items())
                   if self._shown(sid, allowed, kinds)]
        return sorted(symbols, key=lambda h: (-h.score, h.id))

    def _learned_files(self, found: Signals, model: Fitted, k: int) -> list[FileHit]:
        """Files in the fitted model's order, the first k with their features' shares of the score as `why`."""
        ranked = _by_score(found.files, model)
        why = model.contributions([found.files[p] for p, _ in ranked[:k]])
        return [FileHit(p, s, why[i] if i < k else {}) for i, (p, s) in enumerate(ranked)]

    def _learned_symbols(self, query: str, found: Signals, model: Fitted, files: list[FileHit],
                         allowed: set[str], kinds: list[str] | None, k: int) -> list[SymbolHit]:
        """The first k symbols in the fitted model's order (those of the best files among them), each with a `why`."""
        rows = self.symbol_rows(query, found, [(h.path, h.score) for h in files], allowed, kinds)
        ranked = _by_score(rows, model)[:k]
        why = model.contributions([rows[sid] for sid, _ in ranked])
        return [SymbolHit(sid, *self.meta[sid], s, why[i]) for i, (sid, s) in enumerate(ranked)]

    def _shown(self, sid: str, allowed: set[str], kinds: list[str] | None) -> bool:
        _name, kind, spath, _line = self.meta[sid]
        return spath in allowed and (kind in kinds if kinds else kind not in HIDDEN_KINDS)

    def _allowed_files(self, path: str | None, module: str | None, langs: list[str] | None) -> set[str]:
        return {
            p
            for p, lang in self.files.items()
            if (not path or p.startswith(path))
            and (not module or os.path.dirname(p) == module)
            and (not langs or lang in langs)
        }


_TABLE_SEARCHES: ThreadPoolExecutor


def _new_table_searches() -> None:
    """Threads for one query's table searches, issued together (started on first use, shared by every searcher)."""
    global _TABLE_SEARCHES
    _TABLE_SEARCHES = ThreadPoolExecutor(max_workers=6, thread_name_prefix="cra-search")


_new_table_searches()
os.register_at_fork(after_in_child=_new_table_searches)  # a fork copies the pool but none of its threads


_SEARCHERS: dict[Path, tuple[tuple, Searcher]] = {}


def _store_stamp(paths: ProjectPaths) -> tuple:
    stamps = []
    for p in (paths.store, paths.store.with_name(paths.store.name + ".wal")):
        try:
            st = p.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


def searcher(paths: ProjectPaths, state: IndexState, index: IndexReader) -> Searcher:
    """A warm searcher for the project at `paths`, reused until its index changes on disk (`index` loads a new one)."""
    stamp = _store_stamp(paths)
    cached = _SEARCHERS.get(paths.root)
    if cached and cached[0] == stamp:
        return cached[1]
    warm = Searcher(paths, state, index)
    _SEARCHERS[paths.root] = (stamp, warm)
    return warm


def search(repo: Path, query: str, *, home: Path | str | None = None, **options) -> SearchResults:
    """Search the index of `repo` (a `Project`'s search, for callers with only a path); see Searcher.search."""
    paths, state = open_index(repo, home)
    with IndexReader(paths.store, paths.repo) as index:
        return searcher(paths, state, index).search(query, **options)


def search_with(repo: Path, rankers: Sequence[str], query: str, *, home: Path | str | None = None,
                **options) -> dict[str, SearchResults]:
    """Several rankers' results for one query on the index of `repo`, the signals read once; see Searcher.search."""
    paths, state = open_index(repo, home)
    with IndexReader(paths.store, paths.repo) as index:
        return searcher(paths, state, index).search_with(rankers, query, **options)
