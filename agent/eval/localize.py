"""The localization benchmark: from a past commit's subject, find the files and functions it changed.

Each task is scored against the code as it was at the task's parent: the index lives in a temporary git
worktree and is moved from one task's parent to the next, so neither the code nor the history a ranker sees
comes from the task itself or its future. The user's checkout is never touched.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from agent import repo as git_repo
from agent import store
from agent.config import project_paths
from agent.errors import CraError, InvalidInput
from agent.localization import Task, is_code, touched_functions
from agent.scratch import scratch_folder

TOP = 10
RANKERS = ("hybrid", "learned", "bm25", "minilm", "bm25+minilm")
INDEXED = ("hybrid", "learned")  # the rankers that read the index's every signal (and its embeddings)
# Which commits each ranker was fitted on ("learned": the fit's own record, added by the run).
FITTED_ON = {
    "hybrid": "the named default weights (agent/retrieval.py), set by hand on pokeemerald's newest 200 tasks "
              "of 2026-12 and checked on pokeruby's: not held out from those tasks",
    "bm25": "nothing: BM25 over whole files",
    "minilm": "nothing from this repository: the pretrained all-MiniLM-L6-v2",
    "bm25+minilm": "nothing from this repository: reciprocal-rank fusion of bm25 and minilm",
}
RRF_K = 60
CHUNK_LINES = 40
POOL = 200  # ranked files taken from each baseline before fusing or cutting to TOP
LANGS = ["c", "h"]

Progress = Callable[[str], None]


SCRATCH_PREFIX = "cra-eval-localize-"


# ---------------------------------------------------------------------------------------------------------
# Metrics: pure functions over one ranked list and one gold set


def first_gold_rank(ranked: Sequence[str], gold: Iterable[str]) -> int | None:
    """The 1-based rank of the first gold item, or None when none is ranked."""
    wanted = set(gold)
    return next((i + 1 for i, item in enumerate(ranked) if item in wanted), None)


def all_in_top(ranked: Sequence[str], gold: Iterable[str], k: int) -> bool:
    """Whether every gold item is among the first k."""
    wanted = set(gold)
    return bool(wanted) and wanted <= set(ranked[:k])


def recall_at(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    """The share of gold items among the first k."""
    wanted = set(gold)
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: Iterable[str]) -> float:
    """1 / the rank of the first gold item (0 when none is ranked)."""
    rank = first_gold_rank(ranked, gold)
    return 1.0 / rank if rank else 0.0


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: sum of 1 / (k + rank) over the lists, best first."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for i, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + i + 1)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def summarize(results: Sequence[dict]) -> dict:
    """Aggregate per-task results ({files, gold_files, symbols, gold_functions}) into the summary metrics."""
    n = len(results)
    fn = [r for r in results if r["gold_functions"] and r["symbols"] is not None]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {
        "tasks": n,
        "file_acc@1": mean([all_in_top(r["files"], r["gold_files"], 1) for r in results]),
        "file_acc@5": mean([all_in_top(r["files"], r["gold_files"], 5) for r in results]),
        "file_acc@10": mean([all_in_top(r["files"], r["gold_files"], 10) for r in results]),
        "recall@5": mean([recall_at(r["files"], r["gold_files"], 5) for r in results]),
        "mrr": mean([reciprocal_rank(r["files"], r["gold_files"]) for r in results]),
        "function_acc@5": mean([all_in_top(r["symbols"], r["gold_functions"], 5) for r in fn]),
        "function_tasks": len(fn),
    }


# ---------------------------------------------------------------------------------------------------------
# The MiniLM chunk baseline


class ChunkRanker:
    """Plain MiniLM (the index's embedder) over 40-line chunks of each .c/.h file, cosine, best chunk per file.

    Chunk vectors are cached by blob sha, so a new index state embeds only the files that changed.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._model = None
        self._vectors: dict[str, np.ndarray] = {}
        self._state: tuple[tuple[str, str], ...] = ()
        self._paths: list[str] = []
        self._matrix = np.zeros((0, 384), np.float32)
        self._owner = np.zeros(0, np.int64)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from agent.index.embed import DEFAULT_EMBEDDER, load_embedder

            self._model = load_embedder(DEFAULT_EMBEDDER)
        return self._model.embed(texts)

    def _file_vectors(self, worktree: Path, path: str, sha: str) -> np.ndarray:
        vec = self._vectors.get(sha)
        if vec is not None:
            return vec
        cached = self.cache_dir / f"{sha}.npy"
        if cached.exists():
            vec = np.load(cached)
        else:
            lines = (worktree / path).read_text(encoding="utf-8", errors="replace").splitlines()
            chunks = ["\n".join(lines[i:i + CHUNK_LINES]) for i in range(0, len(lines), CHUNK_LINES)] or [""]
            vec = self._encode(chunks)
            np.save(cached, vec)
        self._vectors[sha] = vec
        return vec

    def sync(self, worktree: Path, files: dict[str, str], on_progress: Progress) -> None:
        """Make the chunk matrix describe `files` (path -> blob sha), embedding only blobs not seen before."""
        state = tuple(sorted(files.items()))
        if state == self._state:
            return
        todo = [sha for sha in files.values() if sha not in self._vectors and not (self.cache_dir / f"{sha}.npy").exists()]
        if todo:
            on_progress(f"minilm: embedding {len(todo)} changed files")
        self._paths = [p for p, _ in state]
        blocks = [self._file_vectors(worktree, p, sha) for p, sha in state]
        self._matrix = np.concatenate(blocks) if blocks else np.zeros((0, 384), np.float32)
        self._owner = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
        self._state = state

    def rank(self, query: str, k: int = POOL) -> list[tuple[str, float]]:
        """The files whose best chunk is nearest the query."""
        if not len(self._matrix):
            return []
        sims = self._matrix @ self._encode([query])[0]
        best = np.full(len(self._paths), -1.0, np.float32)
        np.maximum.at(best, self._owner, sims)
        order = np.argsort(-best, kind="stable")[:k]
        return [(self._paths[i], float(best[i])) for i in order]


# ---------------------------------------------------------------------------------------------------------
# Running the benchmark


def _code_blobs(worktree: Path, commit: str) -> dict[str, str]:
    out = git_repo.git(worktree, "-c", "core.quotePath=false", "ls-tree", "-r", "-z", commit).decode("utf-8", "surrogateescape")
    blobs = {}
    for entry in out.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob" and is_code(path):
            blobs[path] = parts[2]
    return blobs


def _ranked(hits: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(p, s) for p, s in hits if is_code(p)]


def _score_task(
    task: Task, worktree: Path, home: Path, rankers: Sequence[str], chunks: ChunkRanker | None,
    spent: Counter[str],
) -> dict:
    """Rank files (and symbols) for one task with every ranker, at the index state of its parent."""
    from agent import retrieval

    out: dict[str, dict] = {}
    lists: dict[str, list[tuple[str, float]]] = {}
    searched = [r for r in INDEXED if r in rankers]
    if searched:
        t = time.perf_counter()
        found = retrieval.search_with(worktree, searched, task.query, home=home, k=POOL, langs=LANGS)
        spent["+".join(searched)] += time.perf_counter() - t
        for name, res in found.items():
            funcs = [(s.id, s.score) for s in res.symbols if s.kind == "function"]
            out[name] = {"files": _ranked((f.path, f.score) for f in res.files), "symbols": funcs,
                         "why": {f.path: f.why for f in res.files}}
    if "bm25" in rankers or "bm25+minilm" in rankers:
        t = time.perf_counter()
        res = retrieval.search(worktree, task.query, home=home, k=POOL, ranker="bm25", langs=LANGS)
        spent["bm25"] += time.perf_counter() - t
        lists["bm25"] = _ranked((f.path, f.score) for f in res.files)
    if chunks is not None:
        t = time.perf_counter()
        lists["minilm"] = chunks.rank(task.query)
        spent["minilm"] += time.perf_counter() - t
    for name in ("bm25", "minilm"):
        if name in rankers:
            out[name] = {"files": lists[name], "symbols": None}
    if "bm25+minilm" in rankers:
        fused = rrf([[p for p, _ in lists["bm25"]], [p for p, _ in lists["minilm"]]])
        out["bm25+minilm"] = {"files": fused, "symbols": None}
    return out


def _gold_functions(home: Path, worktree: Path, task: Task) -> list[str]:
    paths = project_paths(worktree, home)
    with store.opened(paths.store, read_only=True) as con:
        rows = con.execute(
            "SELECT id, path, start_line, end_line FROM symbols WHERE kind = 'function' AND path IN"
            " (SELECT unnest(?::VARCHAR[]))", [list(task.files)]
        ).fetchall()
    spans: dict[str, list[tuple[str, int, int]]] = {}
    for sid, path, start, end in rows:
        spans.setdefault(path, []).append((sid, start, end))
    return touched_functions(task.hunks, spans)


def _move_index(worktree: Path, home: Path, embed: bool, history_notes: bool, spent: Counter[str]) -> None:
    """Bring the index (and with it the history tables and notes) to the worktree's HEAD, the task's parent."""
    from agent.index.build import index_repo
    from agent.index.embed import DEFAULT_EMBEDDER

    t = time.perf_counter()
    index_repo(worktree, home=home, embed=embed, embedder=DEFAULT_EMBEDDER if embed else None,
               history_notes=history_notes)
    spent["index"] += time.perf_counter() - t


def run_localize(
    repo: Path,
    tasks: Sequence[Task],
    rankers: Sequence[str] = ("hybrid",),
    home: Path | None = None,
    on_progress: Progress | None = None,
    *,
    selection: dict | None = None,
    history_notes: bool = True,
    fit_commits: int | None = None,
    anchor_commits: int | None = None,
) -> dict:
    """Score every ranker on every task at its parent's state; return the JSON-ready report.

    "learned" is first fitted on the past commits reachable from the oldest task's parent (the newest
    `fit_commits` of them, all by default, each read at most `anchor_commits` before it), never on a task; the
    report says which ones.

    `home` keeps the eval's state (index, chunk vectors) between runs; by default a temporary folder is used
    and removed. `selection` (the stats of select_tasks) is copied into the report. `history_notes` puts each
    symbol's history note (only commits reachable from the task's parent) in the index's search texts.
    """
    say = on_progress or (lambda _msg: None)
    unknown = [r for r in rankers if r not in RANKERS]
    if unknown or not rankers:
        raise InvalidInput(f"unknown ranker {', '.join(unknown) or '(none)'}; choose from {', '.join(RANKERS)}")
    top = git_repo.require_repo(repo)
    rankers = list(dict.fromkeys(rankers))
    ordered = _by_parent_date(top, tasks)
    started = time.perf_counter()
    spent: Counter[str] = Counter()
    skipped: list[dict] = []
    rows: list[dict] = []
    with scratch_folder(SCRATCH_PREFIX) as tmp:  # a killed run's is swept by the next
        state_dir = Path(home) if home is not None else Path(tmp)
        state_dir.mkdir(parents=True, exist_ok=True)
        worktree = (state_dir / "worktrees" / top.name) if home is not None else Path(tmp) / "worktree"
        if worktree.exists():
            shutil.rmtree(worktree)
        worktree.parent.mkdir(parents=True, exist_ok=True)
        eval_home = state_dir / "home"
        needs_chunks = any(r in ("minilm", "bm25+minilm") for r in rankers)
        chunks = ChunkRanker(state_dir / "minilm-chunks-v2") if needs_chunks else None
        fitted = (_fit(top, ordered, worktree, eval_home, state_dir, history_notes, fit_commits, anchor_commits, say)
                  if "learned" in rankers and ordered else None)
        with git_repo.temporary_worktree(top, worktree):
            for i, task in enumerate(ordered, 1):
                say(f"[{i}/{len(ordered)}] {task.sha[:10]} {task.query[:60]}")
                reason, detail = "checkout of the parent failed", git_repo.checkout_detached(worktree, task.parent)
                if detail is None:
                    reason, detail = "indexing the parent failed", None
                    try:
                        _move_index(worktree, eval_home, bool(set(INDEXED) & set(rankers)), history_notes, spent)
                        if chunks is not None:
                            t = time.perf_counter()
                            chunks.sync(worktree, _code_blobs(worktree, task.parent), say)
                            spent["minilm_index"] += time.perf_counter() - t
                    except CraError as exc:
                        detail = str(exc)
                if detail is not None:
                    skipped.append({"sha": task.sha, "query": task.query, "reason": reason, "detail": detail})
                    say(f"  skipped: {reason}: {detail}")
                    continue
                gold_functions = _gold_functions(eval_home, worktree, task)
                ranked = _score_task(task, worktree, eval_home, rankers, chunks, spent)
                rows.append(_task_row(task, gold_functions, ranked))
    report = _report(top, rankers, rows, skipped, selection, spent, time.perf_counter() - started)
    fitted_on = {name: FITTED_ON[name] for name in rankers if name != "learned"}
    if fitted is not None:
        fitted_on["learned"] = fitted
    return {**report, "history_notes": history_notes, "fitted_on": fitted_on}


def _fit(repo: Path, ordered: Sequence[Task], worktree: Path, eval_home: Path, state_dir: Path, history_notes: bool,
         fit_commits: int | None, anchor_commits: int | None, say: Progress) -> dict:
    """Fit the learned ranker on the commits before the oldest task's parent, where the eval's searches read it;
    what it was fitted on, checked against the tasks."""
    from bootstrap.ranking import ANCHOR_COMMITS, fit_ranker, stored_commits

    oldest = ordered[0].parent
    folder = project_paths(worktree, eval_home).ranker
    say(f"fitting the learned ranker on the history up to {oldest[:10]}, the oldest task's parent")
    fit = fit_ranker(repo, folder, until=oldest, state=state_dir / "ranker-fit", max_commits=fit_commits,
                     every=anchor_commits or ANCHOR_COMMITS,
                     history_notes=history_notes, exclude={t.sha for t in ordered}, on_progress=say)
    if fit.status != "fitted":
        raise CraError(f"the learned ranker was not fitted ({fit.status}): {fit.validation or fit.dropped}; "
                       "score the other rankers, or give the fit more history")
    trained = stored_commits(folder)
    return {**asdict(fit), "tasks_among_them": len(trained.keys() & {t.sha for t in ordered}),
            "all_older_than_every_task": max(trained.values()) < min(t.committed_at for t in ordered)}


def _by_parent_date(repo: Path, tasks: Sequence[Task]) -> list[Task]:
    """Tasks in the order the index visits their parents: oldest parent first, which keeps the moves small."""
    if not tasks:
        return []
    out = git_repo.git(repo, "log", "--no-walk=unsorted", "--stdin", "--format=%H %ct",
                       input=("\n".join(dict.fromkeys(t.parent for t in tasks)) + "\n").encode()).decode()
    when = {sha: int(ts) for sha, ts in (line.split() for line in out.splitlines() if line)}
    return sorted(tasks, key=lambda t: (when.get(t.parent, 0), t.committed_at, t.sha))


def _entry(path: str, score: float, why: dict[str, float] | None) -> dict:
    entry: dict = {"path": path, "score": round(score, 6)}
    if why:
        entry["why"] = {k: round(v, 4) for k, v in why.items() if v}
    return entry


def _task_row(task: Task, gold_functions: list[str], ranked: dict[str, dict]) -> dict:
    row = {
        "sha": task.sha, "parent": task.parent, "committed_at": task.committed_at, "query": task.query,
        "gold_files": list(task.files), "gold_functions": gold_functions, "rankings": {},
    }
    for name, res in ranked.items():
        files = [p for p, _ in res["files"]]
        symbols = None if res["symbols"] is None else [s for s, _ in res["symbols"]]
        row["rankings"][name] = {
            "files": [_entry(p, s, res.get("why", {}).get(p)) for p, s in res["files"][:TOP]],
            "symbols": None if symbols is None else [{"id": s, "score": round(v, 6)} for s, v in res["symbols"][:TOP]],
            "first_gold_rank": first_gold_rank(files, task.files),
            "all_gold_in_top5": all_in_top(files, task.files, 5),
            "_files": files,
            "_symbols": symbols,
        }
    return row


def _report(
    repo: Path, rankers: list[str], rows: list[dict], skipped: list[dict], selection: dict | None,
    spent: Counter[str], elapsed: float,
) -> dict:
    summary = {}
    for name in rankers:
        per_task = [
            {"files": r["rankings"][name]["_files"], "gold_files": r["gold_files"],
             "symbols": r["rankings"][name]["_symbols"], "gold_functions": r["gold_functions"]}
            for r in rows
        ]
        summary[name] = summarize(per_task)
    for r in rows:
        for res in r["rankings"].values():
            del res["_files"], res["_symbols"]
    return {
        "repo": str(repo),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rankers": rankers,
        "selection": selection,
        "summary": summary,
        "skipped": {"count": len(skipped), "reasons": dict(Counter(s["reason"] for s in skipped)), "tasks": skipped},
        "timing_s": {"total": round(elapsed, 1), **{k: round(v, 1) for k, v in sorted(spent.items())}},
        "tasks": rows,
    }
