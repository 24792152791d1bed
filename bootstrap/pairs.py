"""Mined commits become stored training pairs: walk the history oldest first with the index at each parent."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from pydantic import ValidationError

from agent import projects
from agent import repo as git_repo
from agent.builds import BuildEnvironment
from agent.config import Config
from agent.errors import CraError, InvalidInput
from agent.index.build import index_repo
from agent.scratch import scratch_folder
from agent.stages.task_analysis import ROM_PRESERVING
from agent.steps import DIRECT, Steps
from agent.store import utc_now
from agent.store.ledger import LEDGER, ledger
from agent.validation import validate
from bootstrap.derive import commit_patch, derive_pairs
from bootstrap.mining import MinedCommit, MiningReport, mine
from bootstrap.teacher import Teacher
from curation.datasets import (
    Example,
    add_examples,
    commit_splits,
    family_for,
    relabel,
    unlabelled,
)

Progress = Callable[[str], None]
EVAL_SHARE = 0.1
SCRATCH_PREFIX = "cra-bootstrap-"  # + the walking process's pid: a killed walk's folder is removed by the next
WEAK_WORDS = 4


@LEDGER.migration
def l004_bootstrap_commits(con: duckdb.DuckDBPyConnection) -> None:
    """The commits bootstrapping has done; a ledger from before each table had its owner has it from l004_training."""
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS bootstrap_commits (
            repo TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            status TEXT NOT NULL,            -- derived | skipped
            reason TEXT,
            pairs INTEGER NOT NULL,
            facts JSON,
            done_at TIMESTAMP NOT NULL,
            PRIMARY KEY (repo, commit_sha)
        )
        """
    )


@dataclass
class DeriveReport:
    """What a derivation pass did."""

    commits: int = 0
    derived: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)
    new_examples: int = 0
    code_exact: int = 0
    code_tried: int = 0
    code_failed: dict[str, int] = field(default_factory=dict)
    described_by_teacher: int = 0
    seconds: float = 0.0

    def absorb(self, other: DeriveReport) -> None:
        """Add another pass's counts to this one (parallel slices: the longest slice's time)."""
        self.commits += other.commits
        self.derived += other.derived
        self.new_examples += other.new_examples
        self.code_exact += other.code_exact
        self.code_tried += other.code_tried
        self.described_by_teacher += other.described_by_teacher
        for key, n in other.skipped.items():
            _bump(self.skipped, key, n)
        for key, n in other.pairs.items():
            _bump(self.pairs, key, n)
        for key, n in other.code_failed.items():
            _bump(self.code_failed, key, n)
        self.seconds = max(self.seconds, other.seconds)


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def done_commits(home: str | Path | None, repo: Path) -> set[str]:
    """Commits of `repo` bootstrapping already handled (derived or skipped for good)."""
    with ledger(home) as con:
        return {r[0] for r in con.execute("SELECT commit_sha FROM bootstrap_commits WHERE repo = ?", [str(repo)]).fetchall()}


def commit_log(home: str | Path | None, repo: Path | None = None, *, status: str | None = None,
               code_failed: bool = False, limit: int = 50) -> list[dict]:
    """What bootstrapping did with each commit, newest record first: status, why, pairs, and why no code pair."""
    if status not in (None, "derived", "skipped"):
        raise InvalidInput(f"unknown status {status!r}: use derived or skipped")
    repo = git_repo.require_repo(repo) if repo else None
    with ledger(home) as con:
        rows = con.execute(
            "SELECT repo, commit_sha, status, reason, pairs, json_extract_string(facts, '$.code_failed[1]') AS why, done_at"
            " FROM bootstrap_commits WHERE (? IS NULL OR repo = ?) AND (? IS NULL OR status = ?)"
            " AND (NOT ? OR why IS NOT NULL) ORDER BY done_at DESC, commit_sha LIMIT ?",
            [*(str(repo) if repo else None,) * 2, status, status, code_failed, limit]).fetchall()
    return [{"repo": r[0], "commit": r[1], "status": r[2], "reason": r[3], "pairs": r[4], "code_failed": r[5],
             "done_at": r[6].isoformat()} for r in rows]


@dataclass(frozen=True)
class StoredSplit:
    """What bootstrapping did with a repo before: commits done (derived, or skipped for what they change), commits
    held out, and the date of the newest commit with stored pairs."""

    done: int = 0
    held: int = 0
    newest: datetime | None = None


def eval_commits(commits: Sequence[MinedCommit], share: float = EVAL_SHARE, stored: StoredSplit = StoredSplit()) -> set[str]:
    """The commits (given oldest first) to hold out for evaluation and never train on: the newest ones, enough for
    the held-out commits, stored and new, to be `share` of them all.

    Only commits newer than every stored one qualify and nothing stored moves, so a run resumed after a crash holds
    out what the whole run would have, a refresh with new commits trains on most of them, and older history filled
    in after a `--last N` pass is all trained on.
    """
    total = stored.done + len(commits)
    target = max(1, round(total * share)) if total >= 10 else 0
    newer = [c for c in commits if stored.newest is None or _utc_date(c) > stored.newest]
    held = min(len(newer), max(0, target - stored.held))
    return {c.sha for c in newer[len(newer) - held:]}


# The ledger's records of kept commits, those the walk reached: a commit mining could not read has a record saying
# "missing objects" and no split.
_KEPT = "(facts->>'split' IS NOT NULL OR coalesce(reason, '') NOT LIKE 'missing objects%')"


def stored_split(home: str | Path | None, repo: Path) -> StoredSplit:
    """What bootstrapping did with `repo` before (see eval_commits). Commits mining could not read were never done;
    in ledgers from before records kept their split, a commit counts as held out when its stored pairs are."""
    stored = commit_splits(home, repo)
    with ledger(home) as con:
        rows = con.execute(f"SELECT commit_sha, {_KEPT}, facts->>'split' FROM bootstrap_commits WHERE repo = ?",
                           [str(repo)]).fetchall()
    held = sum(split == "eval" if split is not None else stored.get(sha, (False, None))[0] for sha, _, split in rows)
    return StoredSplit(sum(kept for _, kept, _ in rows), held,
                       max((date for _, date in stored.values() if date is not None), default=None))


def done_dates(home: str | Path | None, repo: Path) -> list[datetime]:
    """The author dates (naive UTC) of `repo`'s kept commits that bootstrapping handled before."""
    with ledger(home) as con:
        shas = [r[0] for r in con.execute(f"SELECT commit_sha FROM bootstrap_commits WHERE repo = ? AND {_KEPT}",
                                          [str(repo)]).fetchall()]
    return [_utc(date) for date in git_repo.author_dates(repo, shas).values()]


def chronological(commits: Sequence[MinedCommit]) -> list[MinedCommit]:
    """Oldest first by author date in UTC; commits of the same second keep history's order (mining lists newest first)."""
    position = {c.sha: i for i, c in enumerate(commits)}
    return sorted(commits, key=lambda c: (_utc_date(c), -position[c.sha]))


def _utc_date(commit: MinedCommit) -> datetime:
    """The commit's author date as naive UTC, as the ledger stores it."""
    return _utc(commit.author_date)


def _utc(iso: str) -> datetime:
    """An ISO 8601 date with an offset as naive UTC."""
    return datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None)


def _paths(commit: MinedCommit) -> list[str]:
    return list(dict.fromkeys(f.new_path or f.old_path for f in commit.files))


def weak_description(text: str) -> bool:
    """A description too short to say what changed: the teacher may write a better one from the diff."""
    return len(text.split()) < WEAK_WORDS


def _record(home: str | Path | None, repo: Path, sha: str, status: str, reason: str | None, pairs: int, facts: dict,
            split: str | None = None) -> None:
    """Record what became of a commit; `split` is where a commit the walk reached was meant to go."""
    facts = facts if split is None else {**facts, "split": split}
    with ledger(home) as con:
        con.execute("INSERT OR REPLACE INTO bootstrap_commits VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [str(repo), sha, status, reason, pairs, json.dumps(facts), utc_now()])


def select_commits(home: str | Path | None, repo: Path, mined: MiningReport, last: int | None,
                   eval_share: float = EVAL_SHARE) -> tuple[list[MinedCommit], set[str]]:
    """The commits to derive now (oldest first) and those held out; unreadable ones are recorded as skipped for good.

    `last` scopes the pass to the newest `last` kept commits, done before or not: run again, it resumes the pass,
    then does only what new commits bring into the scope.
    """
    for sha, reason in mined.missing.items():
        _record(home, repo, sha, "skipped", f"missing objects: {reason}", 0, {})
    chosen = newest(mined.commits, last, done_dates(home, repo) if last is not None else ())
    return chosen, eval_commits(chosen, eval_share, stored_split(home, repo))


def derive_commits(
    repo: Path, commits: Sequence[MinedCommit], *, config: Config, home: str | Path | None = None,
    teacher: Teacher | None = None, held_out: Iterable[str] = (), on_progress: Progress = lambda _: None,
) -> DeriveReport:
    """Derive and store every commit's pairs in the order given (oldest first); each commit's pairs and record land together."""
    started = time.perf_counter()
    report = DeriveReport(commits=len(commits))
    held = set(held_out)
    top = git_repo.require_repo(repo)
    builds = BuildEnvironment.of(top, config.validation, home) if config.validation.in_bootstrap else None
    with scratch_folder(SCRATCH_PREFIX) as scratch, git_repo.temporary_worktree(top, scratch / "worktree") as worktree:
        for i, commit in enumerate(commits, 1):
            on_progress(f"{i}/{len(commits)} {commit.sha[:10]} {commit.description[:60]}")
            split = "eval" if commit.sha in held else "train"
            problem = git_repo.checkout_detached(worktree, commit.parent)
            if problem:
                _bump(report.skipped, "missing objects")
                _record(home, top, commit.sha, "skipped", f"missing objects: {problem}", 0, {}, split)
                continue
            try:
                index_repo(worktree, home=scratch / "home", embed=False, keep_versions=timedelta(0))  # no other reader
                description = commit.description
                if teacher is not None and weak_description(description):
                    better = teacher.description(description, commit_patch(top, commit.parent, commit.sha, _paths(commit)))
                    if better is not None:
                        description, report.described_by_teacher = better.description, report.described_by_teacher + 1
                pairs, facts = derive_pairs(worktree, scratch / "home", sha=commit.sha, parent=commit.parent,
                                            description=description, files=_paths(commit), repo=top)
            except (CraError, ValidationError) as exc:  # a pair that does not fit a stage's schema is skipped
                _bump(report.skipped, type(exc).__name__)
                _record(home, top, commit.sha, "skipped", f"{type(exc).__name__}: {str(exc)[:500]}", 0, {}, split)
                continue
            if builds is not None and facts["code_exact"]:
                problem = validation_problem(builds, commit, scratch, keep_rom=facts["kind"] in ROM_PRESERVING)
                facts["validated"] = problem is None
                if problem is not None:
                    pairs = [p for p in pairs if p.stage != "code"]
                    facts["code_failed"] = ("fails validation", problem)
            if not pairs:
                _bump(report.skipped, facts.get("skipped", "no pairs"))
                _record(home, top, commit.sha, "skipped", facts.get("skipped"), 0, facts, split)
                continue
            report.code_tried += facts["hunks"] > 0 and "code_skipped" not in facts
            report.code_exact += facts["code_exact"]
            if "code_failed" in facts:
                _bump(report.code_failed, facts["code_failed"][0])
            examples = [Example(p.stage, "synthetic", family_for(p.stage, config), p.messages,
                                p.output.model_dump(mode="json"), split, str(top), commit.sha,
                                _utc_date(commit),
                                {"description": description, "subject": commit.subject, **p.meta}) for p in pairs]
            report.new_examples += add_examples(home, examples)
            for pair in pairs:
                _bump(report.pairs, pair.stage)
            report.derived += 1
            _record(home, top, commit.sha, "derived", None, len(pairs), facts, split)
    report.seconds = time.perf_counter() - started
    return report


def validation_problem(builds: BuildEnvironment, commit: MinedCommit, scratch: Path, *, keep_rom: bool) -> str | None:
    """Why the commit's own change fails validation at its parent (the run's checks, the run's build), or None."""
    with tempfile.TemporaryDirectory(prefix="edited-", dir=scratch) as folder:
        changed = _paths(commit)
        git_repo.write_files_at(builds.repo, commit.sha, changed, Path(folder))
        result = validate(Path(folder), changed, base_commit=commit.parent, keep_rom=keep_rom, env=builds)
    if result.success:
        return None
    failed = next(c for c in result.checks if not c.passed)
    return f"{failed.name}: {(failed.skipped_reason or failed.log_tail or 'failed').splitlines()[-1][:300]}"


@dataclass
class TeacherReport:
    """What a teacher-labelling pass did."""

    labelled: int = 0
    cached: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


def pending_plans(home: str | Path | None, repo: Path) -> list[tuple[str, str, str]]:
    """Synthetic plan pairs of `repo` the teacher has not labelled yet: (id, messages, commit)."""
    return unlabelled(home, stage="plan", repo=repo)


def label_plan(home: str | Path | None, teacher: Teacher, repo: Path, row: tuple[str, str, str]) -> dict:
    """Label one plan pair with the teacher's reasoning and plan, in one write; on failure nothing is stored."""
    example_id, messages, sha = row
    diff = git_repo.git(repo, "diff", "-U3", "--no-color", f"{sha}^", sha).decode("utf-8", "replace")
    try:
        result = teacher.plan(json.loads(messages), diff)
    except CraError as exc:
        return {"failed": type(exc).__name__}
    record = {"model": teacher.settings.model, "reasoning": result.value.reasoning, "cached": result.cached,
              "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens, "cost_usd": result.cost_usd}
    relabel(home, example_id, output=result.value.plan.model_dump_json(), teacher=record)
    return record


def tally(results: Iterable[dict]) -> TeacherReport:
    """Sum what the teacher did over labelled pairs."""
    report = TeacherReport()
    for result in results:
        if "failed" in result:
            _bump(report.failed, result["failed"])
            continue
        report.labelled += 1
        report.cached += result["cached"]
        report.prompt_tokens += result["prompt_tokens"]
        report.completion_tokens += result["completion_tokens"]
        report.cost_usd += result["cost_usd"]
    return report


def teach_plan(home: str | Path | None, config: Config, repo: Path, row: tuple[str, str, str]) -> dict:
    """Label one plan pair, with a teacher of its own (a step: threads and Dask workers share none)."""
    return label_plan(home, Teacher(config, home), repo, row)


def label_plans(home: str | Path | None, config: Config, repo: Path, *, on_progress: Progress = lambda _: None,
                steps: Steps = DIRECT) -> TeacherReport:
    """Have the configured teacher label every pending plan pair of `repo`, `concurrency` at a time; failures are
    left for the next run."""
    Teacher(config, home)  # no teacher configured: say so before anything is asked
    rows = pending_plans(home, repo)
    on_progress(f"teacher: {len(rows)} plan pairs")
    return tally(steps.each("teach", teach_plan, [(home, config, repo, row) for row in rows], config.teacher.concurrency))


@dataclass
class BootstrapReport:
    """A bootstrapping pass: what mining kept and dropped, what derivation stored, what the teacher labelled."""

    repo: str
    seen: int
    kept: int
    dropped: dict[str, int]
    derive: DeriveReport
    teacher: TeacherReport | None
    mining_s: float


def newest(commits: Sequence[MinedCommit], last: int | None, done: Sequence[datetime] = ()) -> list[MinedCommit]:
    """Those of `commits` (oldest first) among the newest `last` by author date, counting the commits done before
    (their dates, naive UTC) toward the `last`; all when `last` is None."""
    ordered = chronological(commits)
    if last is None:
        return ordered
    merged = sorted([(date, 0, i) for i, date in enumerate(done)] + [(_utc_date(c), 1, i) for i, c in enumerate(ordered)])
    return [ordered[i] for _, pending, i in merged[len(merged) - last:] if pending] if last > 0 else []


def derive_part(repo: Path, commits: Sequence[MinedCommit], config: Config, home: str | Path | None,
                held_out: Sequence[str], use_teacher: bool, on_progress: Progress = lambda _: None) -> DeriveReport:
    """Derive and store one slice of history's pairs, in a worktree of its own (a step of `bootstrap_repo`)."""
    teacher = Teacher(config, home) if use_teacher else None
    return derive_commits(repo, commits, config=config, home=home, teacher=teacher, held_out=held_out,
                          on_progress=on_progress)


def mine_new(repo: Path, exclude: Sequence[str], on_progress: Progress = lambda _: None) -> MiningReport:
    """Mine the history for the commits not in `exclude` (a step of `bootstrap_repo`)."""
    return mine(repo, exclude=set(exclude), on_progress=on_progress)


def bootstrap_repo(
    repo: Path, *, config: Config, home: str | Path | None = None, use_teacher: bool = False, last: int | None = None,
    eval_share: float = EVAL_SHARE, partitions: int = 1, on_progress: Progress = lambda _: None,
    steps: Steps = DIRECT,
) -> BootstrapReport:
    """Mine the commits not done before, derive and store their pairs (in `partitions` slices of history, each its
    own step), and (optionally) have the teacher label them; `steps` runs each step, directly or as Prefect tasks."""
    top = git_repo.require_repo(repo)
    projects.register(home, top, config)  # a name another history has is refused before any work
    if use_teacher:
        Teacher(config, home)  # no teacher configured: say so before the history is mined
    started = time.perf_counter()
    mined = steps.one("mine", mine_new, top, sorted(done_commits(home, top)), on_progress)
    mining_s = time.perf_counter() - started
    chosen, held = select_commits(home, top, mined, last, eval_share)
    size = max(1, -(-len(chosen) // max(1, partitions)))
    parts = [chosen[i:i + size] for i in range(0, len(chosen), size)]
    derived = DeriveReport()
    for report in steps.each("derive", derive_part, [(top, part, config, home, sorted(held), use_teacher, on_progress)
                                                      for part in parts], len(parts)):
        derived.absorb(report)
    labelled = label_plans(home, config, top, on_progress=on_progress, steps=steps) if use_teacher else None
    return BootstrapReport(str(top), mined.seen, len(mined.commits), dict(mined.dropped), derived, labelled, mining_s)
