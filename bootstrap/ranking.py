"""The ranker learns from the project's own history: each past commit's subject is a query, the .c/.h files and the
symbols it changed are the answer, and every candidate's signals are read where the commit's author stood: the code
at an anchor commit at most `anchor_commits` before it, the history only up to it. Fitted per level (files, symbols)
with LightGBM LambdaRank, kept only when it beats the named default weights on the newest past commits."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent import ranker as fitted_ranker
from agent import repo as git_repo
from agent.errors import InvalidInput
from agent.index import history
from agent.index.build import index_repo, open_index
from agent.index.embed import DEFAULT_EMBEDDER
from agent.index.parse import parse_file
from agent.index.reader import IndexReader
from agent.index.symbols import PROTOTYPE, ParsedFile, assign_ids
from agent.localization import Limits, Task, select_tasks, touched_functions
from agent.ranker import Group
from agent.retrieval import (
    FILE_FEATURES,
    FILE_SIGNALS,
    SYMBOL_FEATURES,
    SYMBOL_SIGNALS,
    WEIGHTS,
    Searcher,
    weighted,
)
from agent.scratch import scratch_folder
from agent.steps import DIRECT, Steps
from agent.store.migrations import INDEX

MIN_QUERIES = 100      # past commits whose answer the candidates hold; with fewer, the default weights stay
ANCHOR_COMMITS = 500   # a past commit's code is read at an anchor at most this many commits before it
# Past commits may be larger than the tasks they teach for (5 files, 200 lines): a subject and the files and
# functions it changed are an answer however many there are, and small decomps need every one of them.
PAST_COMMIT_LIMITS = Limits(files=10, lines=1000)
LANGS = ["c", "h"]
SCRATCH_PREFIX = "cra-ranker-"
EXAMPLES = "examples.parquet"

Progress = Callable[[str], None]


@dataclass
class Example:
    """One past commit's candidates at both levels."""

    task: Task
    files: Group
    symbols: Group | None


@dataclass
class FitReport:
    """What a fit did: whether it kept a ranker, on which commits, and how it compared with the default weights."""

    status: str  # "fitted", "too short" (default weights stay), "no gain" (default weights stay)
    repo: str
    until: str
    commits: int = 0           # past commits (tasks) read
    queries: int = 0           # of them, those whose answer the file candidates hold
    new_commits: int = 0       # read by this call (the rest came from the stored examples)
    anchors: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    rounds: dict[str, int] = field(default_factory=dict)
    timing_s: dict[str, float] = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)


def full_history(repo: Path, until: str) -> history.History:
    """The history tables of every commit reachable from `until`, built in memory."""
    con = duckdb.connect()
    try:
        INDEX.migrate(con)
        history.update_history(con, repo, until)
        return history.load(con)
    finally:
        con.close()


def _blobs(repo: Path, specs: list[str]) -> dict[str, bytes | None]:
    """`rev:path` blobs in one git call (None where missing)."""
    out = git_repo.git(repo, "cat-file", "--batch", input=("\n".join(specs) + "\n").encode())
    found, pos = {}, 0
    for spec in specs:
        end = out.index(b"\n", pos)
        head = out[pos:end].split()
        pos = end + 1
        if len(head) == 3:
            size = int(head[2])
            found[spec] = out[pos:pos + size]
            pos += size + 1
        else:
            found[spec] = None
    return found


def gold_symbols(repo: Path, task: Task) -> list[str]:
    """Ids of the symbols (every kind but prototypes) whose lines the commit rewrote, as they were at its parent."""
    blobs = _blobs(repo, [f"{task.parent}:{path}" for path in task.files])
    spans: dict[str, list[tuple[str, int, int]]] = {}
    for path in task.files:
        data = blobs.get(f"{task.parent}:{path}")
        parsed = parse_file(path, data) if data is not None else None
        if isinstance(parsed, ParsedFile):
            assign_ids(parsed)
            spans[path] = [(s.id, s.start_line, s.end_line) for s in parsed.symbols if s.kind != PROTOTYPE]
    return touched_functions(task.hunks, spans)


def _group(query: str, rows: dict[str, dict[str, float]], features: Sequence[str], gold: set[str]) -> Group:
    keys = list(rows)
    return Group(query, keys, fitted_ranker.matrix([rows[k] for k in keys], features),
                 np.array([k in gold for k in keys], dtype=np.float64), len(gold))


def read_example(searcher: Searcher, hist: history.History, task: Task, gold_ids: list[str],
                 allowed: set[str]) -> Example:
    """One past commit's candidates and their features, at the searcher's anchor and the history before it."""
    found = searcher.signals(task.query, allowed, file_filter={"langs": LANGS}, history_now=history.as_of(hist, task.sha))
    files = _group(task.query, found.files, FILE_FEATURES, set(task.files))
    scored = {p: sum(weighted(raw, FILE_SIGNALS, WEIGHTS).values()) for p, raw in found.files.items()}
    order = sorted(scored.items(), key=lambda ps: (-ps[1], ps[0]))
    rows = searcher.symbol_rows(task.query, found, order, allowed)
    symbols = _group(task.query, rows, SYMBOL_FEATURES, set(gold_ids)) if gold_ids else None
    return Example(task, files, symbols)


def anchors_for(tasks: Sequence[Task], hist: history.History, every: int) -> list[tuple[str, list[Task]]]:
    """Tasks oldest first in runs that share an anchor: the parent of a run's first task, at most `every` commits
    (by date) before each of the run's parents."""
    seq = {sha: i for i, sha in enumerate(hist.shas)}
    runs: list[tuple[str, list[Task]]] = []
    start = None
    for task in sorted(tasks, key=lambda t: (seq.get(t.parent, -1), t.committed_at, t.sha)):
        if task.parent not in seq:
            continue
        if start is None or seq[task.parent] - start > every:
            start = seq[task.parent]
            runs.append((task.parent, []))
        runs[-1][1].append(task)
    return runs


@dataclass
class AnchorRead:
    """What reading one anchor's past commits gave: their examples, the anchor used, and why others were dropped."""

    examples: list[Example] = field(default_factory=list)
    anchor: str | None = None
    dropped: Counter[str] = field(default_factory=Counter)
    spent: Counter[str] = field(default_factory=Counter)


def read_anchor(repo: Path, worktree: Path, home: Path, anchor: str, run: list[Task], hist: history.History,
                history_notes: bool) -> AnchorRead:
    """Move the scratch index to `anchor` and read the examples of the past commits of its run."""
    out = AnchorRead()
    # Old commits may miss blobs: the anchor moves on to the next parent that checks out, and the commits before
    # it are dropped (their code would come from their future).
    while run and git_repo.checkout_detached(worktree, anchor) is not None:
        skipped = [t for t in run if t.parent == anchor]
        out.dropped["code unreadable at the anchor (missing objects)"] += len(skipped)
        run = run[len(skipped):]
        anchor = run[0].parent if run else anchor
    if not run:
        return out
    out.anchor = anchor
    t = time.perf_counter()
    index_repo(worktree, home=home, embed=True, embedder=DEFAULT_EMBEDDER, history_notes=history_notes)
    out.spent["index"] += time.perf_counter() - t
    t = time.perf_counter()
    paths, index_state = open_index(worktree, home)
    with IndexReader(paths.store, paths.repo) as reader:
        searcher = Searcher(paths, index_state, reader)
    allowed = {p for p, lang in searcher.files.items() if lang in LANGS}
    for task in run:
        gold_ids = [g for g in gold_symbols(repo, task) if g in searcher.meta]
        example = read_example(searcher, hist, task, gold_ids, allowed)
        if example.files.labels.any():
            out.examples.append(example)
        else:
            out.dropped["no changed file among the candidates"] += 1
    out.spent["features"] += time.perf_counter() - t
    return out


def collect(
    repo: Path, tasks: Sequence[Task], hist: history.History, state: Path, *, every: int = ANCHOR_COMMITS,
    history_notes: bool = True, steps: Steps = DIRECT, say: Progress, spent: Counter[str], dropped: Counter[str],
) -> tuple[list[Example], list[str]]:
    """Read every task's example, moving a scratch index (in `state`) from anchor to anchor, each anchor a step;
    the anchors used."""
    examples: list[Example] = []
    used: list[str] = []
    runs = anchors_for(tasks, hist, every)
    if len(tasks) > sum(len(run) for _, run in runs):
        dropped["parent not in the history"] += len(tasks) - sum(len(run) for _, run in runs)
    worktree, home = state / "worktree", state / "home"
    if worktree.exists():  # a killed fit's: the index in `home` is kept and moves on from where it was
        shutil.rmtree(worktree)
    worktree.parent.mkdir(parents=True, exist_ok=True)
    with git_repo.temporary_worktree(repo, worktree):
        for n, (anchor, run) in enumerate(runs, 1):
            say(f"anchor {n}/{len(runs)} {anchor[:10]}: {len(run)} past commits")
            read = steps.one(f"anchor-{n}", read_anchor, repo, worktree, home, anchor, run, hist, history_notes)
            examples += read.examples
            used += [read.anchor] if read.anchor else []
            dropped.update(read.dropped)
            spent.update(read.spent)
    return examples, used


# ---------------------------------------------------------------------------------------------------------
# Stored examples: a refit reads only the commits that arrived since


def _table(examples: Sequence[Example], level: str, features: Sequence[str]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in ("sha", "committed_at", "query", "key", "label", "gold", *features)}
    for ex in examples:
        group = ex.files if level == "files" else ex.symbols
        if group is None:
            continue
        for i, key in enumerate(group.keys):
            cols["sha"].append(ex.task.sha)
            cols["committed_at"].append(ex.task.committed_at)
            cols["query"].append(ex.task.query)
            cols["key"].append(key)
            cols["label"].append(float(group.labels[i]))
            cols["gold"].append(group.gold)
            for j, name in enumerate(features):
                cols[name].append(float(group.features[i, j]))
    return pa.table(cols)


def save_examples(folder: Path, examples: Sequence[Example], meta: dict) -> None:
    """Write every example's candidates, one Parquet file per level, and how they were read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "examples.json").write_text(json.dumps(meta, sort_keys=True))
    for level, features in (("files", FILE_FEATURES), ("symbols", SYMBOL_FEATURES)):
        tmp = folder / f"{level}-{EXAMPLES}.tmp"
        pq.write_table(_table(examples, level, features), tmp)
        tmp.replace(folder / f"{level}-{EXAMPLES}")


def _groups(table: pa.Table, features: Sequence[str]) -> Iterator[tuple[str, int, Group]]:
    data = table.to_pydict()
    shas = data["sha"]
    start = 0
    for end in range(1, len(shas) + 1):
        if end == len(shas) or shas[end] != shas[start]:
            rows = range(start, end)
            group = Group(data["query"][start], [data["key"][i] for i in rows],
                          np.array([[data[f][i] for f in features] for i in rows], dtype=np.float64),
                          np.array([data["label"][i] for i in rows]), int(data["gold"][start]))
            yield shas[start], int(data["committed_at"][start]), group
            start = end


def stored_commits(folder: Path) -> dict[str, int]:
    """The past commits the stored examples come from, with their commit times."""
    table = pq.read_table(folder / f"files-{EXAMPLES}", columns=["sha", "committed_at"])
    return dict(zip(table.column("sha").to_pylist(), table.column("committed_at").to_pylist()))


def load_examples(folder: Path) -> list[Example]:
    """The examples stored by the last fit (none when there are none, or they were stored with other features)."""
    paths = {level: folder / f"{level}-{EXAMPLES}" for level in ("files", "symbols")}
    if not all(p.exists() for p in paths.values()):
        return []
    files, symbols = (pq.read_table(paths[level]) for level in ("files", "symbols"))
    if (files.column_names[6:] != list(FILE_FEATURES) or symbols.column_names[6:] != list(SYMBOL_FEATURES)):
        return []
    by_sha = {sha: group for sha, _, group in _groups(symbols, SYMBOL_FEATURES)}
    return [Example(Task(sha, "", when, group.query, ()), group, by_sha.get(sha))
            for sha, when, group in _groups(files, FILE_FEATURES)]


# ---------------------------------------------------------------------------------------------------------
# Fitting


def _default_scores(group: Group, features: Sequence[str], signals: dict[str, str]) -> np.ndarray:
    weights = np.array([getattr(WEIGHTS, signals[f]) if f in signals else 0.0 for f in features])
    return group.features @ weights


def _fit_level(groups: list[Group], features: Sequence[str], signals: dict[str, str]) -> tuple[
        fitted_ranker.Fitted | None, int, dict]:
    """Judge the fit on the newest past commits against the default weights; fit on all when it gains."""
    judged = fitted_ranker.judge(groups, features, lambda g: _default_scores(g, features, signals))
    if judged.learned_hits <= judged.baseline_hits:
        return None, judged.rounds, judged.as_dict()
    return fitted_ranker.train(groups, features, judged.rounds), judged.rounds, judged.as_dict()


def _examples_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "examples.json").read_text())
    except (OSError, ValueError):
        return None


def fit_ranker(
    repo: Path, folder: Path, *, until: str = "HEAD", state: Path | None = None, max_commits: int | None = None,
    every: int = ANCHOR_COMMITS, full: bool = False, min_queries: int = MIN_QUERIES, history_notes: bool = True,
    exclude: set[str] = frozenset(), steps: Steps = DIRECT, on_progress: Progress | None = None,
) -> FitReport:
    """Fit (or refit with the commits since the last fit) the ranker of `repo` on its history up to `until`, and
    store it in `folder` when it beats the default weights; `state` keeps the scratch index (a temporary folder
    by default). Past commits are chosen as localization tasks are: described, small, modifying .c/.h files."""
    say = on_progress or (lambda _msg: None)
    top = git_repo.require_repo(repo)
    if every < 1:
        raise InvalidInput(f"the anchor spacing must be at least 1 commit, not {every}")
    if max_commits is not None and max_commits < 1:
        raise InvalidInput(f"--max-commits must be at least 1, not {max_commits}")
    head = git_repo.resolve_commit(top, until)
    started = time.perf_counter()
    spent: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    reading = {"history_notes": history_notes, "anchor_commits": every, "max_files": PAST_COMMIT_LIMITS.files,
               "max_lines": PAST_COMMIT_LIMITS.lines}
    previous = None if full else _examples_meta(folder)
    reuse = bool(previous and {k: previous.get(k) for k in reading} == reading
                 and git_repo.is_ancestor(top, previous["until"], head))
    stored = [ex for ex in load_examples(folder) if ex.task.sha not in exclude] if reuse else []
    # Past commits read before that gave no example (missing blobs, no changed file among the candidates): not again.
    unusable = set(previous.get("unusable", ())) if reuse else set()
    anchors = list(previous.get("anchors", ())) if reuse else []
    known = {ex.task.sha for ex in stored} | unusable
    n_commits = int(git_repo.git(top, "rev-list", "--count", head).decode())
    selection: dict = {}
    tasks = [t for t in select_tasks(top, last=min(max_commits or n_commits, n_commits), head=head, stats=selection,
                                     limits=PAST_COMMIT_LIMITS)
             if t.sha not in known and t.sha not in exclude]
    dropped.update(selection.get("dropped", {}))
    report = FitReport("too short", str(top), head, new_commits=len(tasks))
    new: list[Example] = []
    if tasks:
        t = time.perf_counter()
        say(f"reading the history up to {head[:10]}")
        hist = steps.one("history", full_history, top, head)
        spent["history"] += time.perf_counter() - t
        with scratch_folder(SCRATCH_PREFIX) as tmp:
            new, report.anchors = collect(top, tasks, hist, state or tmp, every=every, history_notes=history_notes,
                                          steps=steps, say=say, spent=spent, dropped=dropped)
    examples = sorted(stored + new, key=lambda ex: (ex.task.committed_at, ex.task.sha))
    if max_commits is not None:
        examples = examples[-max_commits:]
    unusable |= {t.sha for t in tasks} - {ex.task.sha for ex in new}
    report.anchors = anchors + report.anchors
    save_examples(folder, examples, {**reading, "until": head, "unusable": sorted(unusable),
                                     "anchors": report.anchors})
    report.commits = len(known) + len(tasks)
    report.queries = len(examples)
    report.dropped = dict(dropped.most_common())
    if examples:
        oldest, newest = examples[0].task, examples[-1].task
        report.fitted_on = {"commits": len(examples), "oldest": _stamp(oldest), "newest": _stamp(newest)}
    if len(examples) < min_queries:
        fitted_ranker.remove(folder)
        report.timing_s = _timing(spent, started)
        return report
    t = time.perf_counter()
    levels: dict[str, fitted_ranker.Fitted] = {}
    for level, features, signals in (("files", FILE_FEATURES, FILE_SIGNALS), ("symbols", SYMBOL_FEATURES, SYMBOL_SIGNALS)):
        groups = [g for ex in examples if (g := ex.files if level == "files" else ex.symbols) is not None
                  and g.labels.any()]
        if len(groups) < min_queries:
            report.validation[level] = {"queries": len(groups), "kept": False, "why": "too few past commits"}
            continue
        model, report.rounds[level], judged = steps.one(f"fit-{level}", _fit_level, groups, features, signals)
        report.validation[level] = {**judged, "kept": model is not None}
        if model is not None:
            levels[level] = model
    spent["fit"] += time.perf_counter() - t
    report.timing_s = _timing(spent, started)
    if "files" not in levels:
        report.status = "no gain"
        fitted_ranker.remove(folder)
        return report
    report.status = "fitted"
    fitted_ranker.Ranker(levels, {**asdict(report), "fitted_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "lightgbm": _lightgbm_version()}).save(folder)
    return report


def _stamp(task: Task) -> dict:
    return {"sha": task.sha, "committed_at": datetime.fromtimestamp(task.committed_at, timezone.utc).isoformat()}


def _timing(spent: Counter[str], started: float) -> dict[str, float]:
    return {"total": round(time.perf_counter() - started, 1), **{k: round(v, 1) for k, v in sorted(spent.items())}}


def _lightgbm_version() -> str:
    import lightgbm

    return lightgbm.__version__
