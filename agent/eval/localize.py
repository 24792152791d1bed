"""The localization benchmark: from a past commit's subject, find the files and functions it changed.

Each task is scored against the code as it was at the task's parent: the index lives in a temporary git
worktree and is moved from one task's parent to the next, so neither the code nor the history a ranker sees
comes from the task itself or its future. The user's checkout is never touched.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from agent import repo as git_repo
from agent import store
from agent.config import project_paths
from agent.errors import CraError, InvalidInput
from agent.index import history
from agent.index.history import BadCommit, CommitRecord, strip_pr_suffix
from agent.scratch import scratch_folder

CODE_SUFFIXES = (".c", ".h")
MAX_GOLD_FILES = 5
MAX_CHANGED_LINES = 200  # over every text file of the commit
MIN_WORDS = 3
TOP = 10
RANKERS = ("hybrid", "bm25", "minilm", "bm25+minilm")
RRF_K = 60
CHUNK_LINES = 40
POOL = 200  # ranked files taken from each baseline before fusing or cutting to TOP
LANGS = ["c", "h"]

# Subjects that describe no change a reader could localize: git's own messages, bots, review churn, formatting.
_AUTOMATED = re.compile(
    r"^merge (branch|pull request|remote-tracking|tag|commit|upstream|master|main)\b|^merge ['\"]"
    r"|^revert \"|^(auto(mated|matic)?|bump|wip)\b|^initial commit\b"
    r"|\[(bot|skip ci|ci skip)\]"
    r"|^(apply|applied|address(ed)?|incorporate[ds]?) .*\b(suggestions?|review|feedback|comments?)\b"
    r"|^(review|pr) (changes|comments?|feedback)\b"
    r"|^(run |ran )?(clang-format|reformat|format(ting)?|whitespace|lint)( fix(es)?| changes?| and clean ?up)?\W*$",
    re.IGNORECASE,
)

Progress = Callable[[str], None]


SCRATCH_PREFIX = "cra-eval-localize-"


@dataclass(frozen=True, slots=True)
class Hunk:
    """An old-side line range a commit rewrote: `count` lines from `start` (0 lines: inserted after `start`)."""

    path: str
    start: int
    count: int


@dataclass(frozen=True, slots=True)
class Task:
    """One localization task: a query, and the existing .c/.h files (and their hunks) the commit changed."""

    sha: str
    parent: str
    committed_at: int
    query: str
    files: tuple[str, ...]
    hunks: tuple[Hunk, ...] = ()
    changed_lines: int = 0


# ---------------------------------------------------------------------------------------------------------
# Choosing tasks


def is_code(path: str) -> bool:
    """Whether `path` is a C source or header, the only kind of file a task's gold holds."""
    return path.endswith(CODE_SUFFIXES)


def subject_reason(subject: str, author: str = "") -> str | None:
    """Why a subject is no task description (too short, automated, trivial), or None when it is one."""
    text = strip_pr_suffix(subject)
    if author.endswith("[bot]") or _AUTOMATED.search(text):
        return "automated or trivial subject"
    if len(text.split()) < MIN_WORDS:
        return f"subject under {MIN_WORDS} words"
    return None


def drop_reason(rec: CommitRecord, *, chosen: bool = False) -> str | None:
    """Why a commit is no task, or None; `chosen` commits (named by the user) skip the subject and size rules."""
    if len(rec.parents) != 1:
        return "merge commit" if rec.parents else "root commit"
    code = [f for f in rec.files if is_code(f.path)]
    if not chosen:
        reason = subject_reason(rec.subject, rec.author)
        if reason:
            return reason
    if not any(f.status == "M" for f in code):
        return "modifies no existing .c/.h file"
    if chosen:
        return None
    if any(f.status != "M" for f in code):
        return "adds, deletes or renames .c/.h files"
    if len(code) > MAX_GOLD_FILES:
        return f"more than {MAX_GOLD_FILES} .c/.h files"
    if sum((f.added or 0) + (f.deleted or 0) for f in rec.files) >= MAX_CHANGED_LINES:
        return f"{MAX_CHANGED_LINES}+ changed lines"
    return None


def _task(rec: CommitRecord) -> Task:
    files = tuple(sorted(f.path for f in rec.files if is_code(f.path) and f.status == "M"))
    lines = sum((f.added or 0) + (f.deleted or 0) for f in rec.files)
    return Task(rec.sha, rec.parents[0], rec.committed_at, strip_pr_suffix(rec.subject), files, (), lines)


def _newest_first(repo: Path) -> list[str]:
    out = git_repo.git(repo, "rev-list", "--no-merges", "--timestamp", "HEAD").decode().split("\n")
    stamped = [line.split() for line in out if line]
    stamped.sort(key=lambda ts_sha: -int(ts_sha[0]))
    return [sha for _ts, sha in stamped]


def _read_commits_file(repo: Path, commits_file: Path) -> tuple[list[str], list[str]]:
    try:
        names = [line.split("#", 1)[0].strip() for line in Path(commits_file).read_text().splitlines()]
    except OSError as exc:
        raise InvalidInput(f"cannot read the commits file {commits_file}: {exc.strerror}") from exc
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise InvalidInput(f"the commits file {commits_file} names no commit; write one SHA a line")
    out = git_repo.git(repo, "cat-file", "--batch-check", input=("\n".join(f"{n}^{{commit}}" for n in names) + "\n").encode())
    shas, unknown = [], []
    for name, line in zip(names, out.decode().splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[1] == "commit":
            shas.append(parts[0])
        else:
            unknown.append(name)
    return list(dict.fromkeys(shas)), unknown


def select_tasks(
    repo: Path, last: int | None = None, commits_file: Path | None = None, *, stats: dict | None = None,
) -> list[Task]:
    """The newest `last` tasks of the whole history (by commit date), or the commits a file names, newest first.

    `stats`, when given, receives the number of commits scanned, kept, and dropped per reason.
    """
    if (last is None) == (commits_file is None):
        raise InvalidInput("give exactly one of --last N or --commits FILE")
    if last is not None and last < 1:
        raise InvalidInput("--last must be at least 1")
    top = git_repo.require_repo(repo)
    dropped: Counter[str] = Counter()
    kept: list[Task] = []
    scanned = 0
    if commits_file is not None:
        shas, unknown = _read_commits_file(top, commits_file)
        dropped.update({"not a commit of this repository": len(unknown)} if unknown else {})
        batches: Iterable[list[str]] = [shas]
    else:
        order = _newest_first(top)
        step = max(500, 4 * last)
        batches = (order[i:i + step] for i in range(0, len(order), step))
    for batch in batches:
        for rec in history.read_commits(top, batch, numstat=True):
            scanned += 1
            if isinstance(rec, BadCommit):
                dropped["unreadable (missing objects)"] += 1
                continue
            reason = drop_reason(rec, chosen=commits_file is not None)
            if reason:
                dropped[reason] += 1
            else:
                kept.append(_task(rec))
                if len(kept) == last:
                    break
        if len(kept) == last:
            break
    kept.sort(key=lambda t: -t.committed_at)
    kept = _with_hunks(top, kept)
    if stats is not None:
        stats.update({"scanned": scanned, "kept": len(kept), "dropped": dict(dropped.most_common())})
    return kept


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def parse_old_hunks(patch: str) -> list[Hunk]:
    """The old-side ranges of every hunk in a `git diff -U0` patch."""
    hunks: list[Hunk] = []
    path = None
    for line in patch.split("\n"):
        if line.startswith("--- "):
            old = line[4:]
            path = old[2:] if old.startswith("a/") else None
        elif line.startswith("@@ ") and path is not None:
            m = _HUNK.match(line)
            if m:
                hunks.append(Hunk(path, int(m.group(1)), 1 if m.group(2) is None else int(m.group(2))))
    return hunks


def _with_hunks(repo: Path, tasks: list[Task]) -> list[Task]:
    if not tasks:
        return tasks
    sep = "\x1e"
    out = git_repo.git(
        repo, "-c", "core.quotePath=false", "log", "--no-walk=unsorted", "--stdin", "-p", "-U0", "--no-renames",
        "--no-color", f"--format={sep}%H", "--", *(f"*{s}" for s in CODE_SUFFIXES),
        input=("\n".join(t.sha for t in tasks) + "\n").encode(),
    ).decode("utf-8", "surrogateescape")
    by_sha: dict[str, list[Hunk]] = {}
    for record in out.split(sep)[1:]:
        sha, _, patch = record.partition("\n")
        by_sha[sha.strip()] = parse_old_hunks(patch)
    return [
        Task(t.sha, t.parent, t.committed_at, t.query, t.files,
             tuple(h for h in by_sha.get(t.sha, []) if h.path in t.files), t.changed_lines)
        for t in tasks
    ]


def touched_functions(hunks: Iterable[Hunk], spans: dict[str, list[tuple[str, int, int]]]) -> list[str]:
    """Ids of the functions whose line spans the hunks rewrite, or insert into strictly inside."""
    touched: dict[str, None] = {}
    for h in hunks:
        for sid, start, end in spans.get(h.path, []):
            if h.count > 0:
                hit = h.start <= end and h.start + h.count - 1 >= start
            else:
                hit = start <= h.start and h.start + 1 <= end
            if hit:
                touched[sid] = None
    return list(touched)


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
    if "hybrid" in rankers:
        t = time.perf_counter()
        res = retrieval.search(worktree, task.query, home=home, k=POOL, ranker="hybrid", langs=LANGS)
        spent["hybrid"] += time.perf_counter() - t
        funcs = [(s.id, s.score) for s in res.symbols if s.kind == "function"]
        out["hybrid"] = {"files": _ranked((f.path, f.score) for f in res.files), "symbols": funcs,
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
) -> dict:
    """Score every ranker on every task at its parent's state; return the JSON-ready report.

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
        with git_repo.temporary_worktree(top, worktree):
            for i, task in enumerate(ordered, 1):
                say(f"[{i}/{len(ordered)}] {task.sha[:10]} {task.query[:60]}")
                reason, detail = "checkout of the parent failed", git_repo.checkout_detached(worktree, task.parent)
                if detail is None:
                    reason, detail = "indexing the parent failed", None
                    try:
                        _move_index(worktree, eval_home, "hybrid" in rankers, history_notes, spent)
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
    return {**report, "history_notes": history_notes}


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
