"""Past commits as localization tasks: a commit's subject is the query, the .c/.h files (and the functions) it
changed are the answer. The localization benchmark scores rankers on them and the ranker is fitted on them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent import repo as git_repo
from agent.errors import InvalidInput
from agent.index import history
from agent.index.history import BadCommit, CommitRecord, strip_pr_suffix

CODE_SUFFIXES = (".c", ".h")
MIN_WORDS = 3
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

@dataclass(frozen=True, slots=True)
class Limits:
    """How large a commit may be to count: the .c/.h files it modifies and its changed lines (every text file)."""

    files: int
    lines: int


TASK_LIMITS = Limits(files=5, lines=200)


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


def drop_reason(rec: CommitRecord, *, chosen: bool = False, limits: Limits = TASK_LIMITS) -> str | None:
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
    if len(code) > limits.files:
        return f"more than {limits.files} .c/.h files"
    if sum((f.added or 0) + (f.deleted or 0) for f in rec.files) >= limits.lines:
        return f"{limits.lines}+ changed lines"
    return None


def _task(rec: CommitRecord) -> Task:
    files = tuple(sorted(f.path for f in rec.files if is_code(f.path) and f.status == "M"))
    lines = sum((f.added or 0) + (f.deleted or 0) for f in rec.files)
    return Task(rec.sha, rec.parents[0], rec.committed_at, strip_pr_suffix(rec.subject), files, (), lines)


def _newest_first(repo: Path, head: str) -> list[str]:
    out = git_repo.git(repo, "rev-list", "--no-merges", "--timestamp", head).decode().split("\n")
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
    head: str = "HEAD", limits: Limits = TASK_LIMITS,
) -> list[Task]:
    """The newest `last` tasks of the history of `head` (by commit date), or the commits a file names, newest first;
    `limits` bounds their size.

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
        order = _newest_first(top, head)
        step = max(500, 4 * last)
        batches = (order[i:i + step] for i in range(0, len(order), step))
    for batch in batches:
        for rec in history.read_commits(top, batch, numstat=True):
            scanned += 1
            if isinstance(rec, BadCommit):
                dropped["unreadable (missing objects)"] += 1
                continue
            reason = drop_reason(rec, chosen=commits_file is not None, limits=limits)
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
