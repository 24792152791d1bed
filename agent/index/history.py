"""The repository's own history as a search signal: past commit subjects, the files they changed, co-change."""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent.repo import GIT_ENV, git, printable_path
from agent.store import utc_now

# Commits touching more files than this are sweeping refactors: they say little about where a change goes.
MAX_COMMIT_FILES = 40
# Recency: the weight of a past commit halves every this many commits back from the indexed HEAD.
HALF_LIFE_COMMITS = 3000.0
BM25_K1 = 1.2
BM25_B = 0.5
SIMILAR_COMMITS = 40  # how many of the most similar past commits vote for files
# The working set: the weight of a commit's files halves every this many commits back (the last few commits).
RECENT_HALF_LIFE = 3.0

_TRAILER = re.compile(r"^[A-Za-z-]+-by:|^-{3,}$")
_WORD = re.compile(r"[A-Za-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_PR_SUFFIX = re.compile(r"\s*\(#\d+\)\s*$")
_MERGE = re.compile(r"^Merge (?:pull request #\d+ from (?:[^/\s]+/)?|(?:remote-tracking )?branch ')?([^'\s]*)")
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or so that the this to was were with".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-case search terms: words, identifiers split at camelCase and snake_case, plurals folded."""
    out: list[str] = []
    for word in _WORD.findall(text.replace("_", " ")):
        parts = _CAMEL.findall(word)
        if len(parts) > 1:
            out.append(word.lower())
        out.extend(p.lower() for p in parts)
    return [_stem(t) for t in out if t not in STOPWORDS and len(t) > 1]


def _stem(term: str) -> str:
    if len(term) > 3 and term.endswith("s") and not term.endswith("ss"):
        return term[:-1]
    return term


def strip_pr_suffix(subject: str) -> str:
    """A subject without GitHub's trailing ' (#1234)'."""
    return _PR_SUFFIX.sub("", subject).strip()


@dataclass(slots=True)
class FileChange:
    """One path a commit touched: git's status letter (M, A, D, R, ...), its old path if renamed, line counts."""

    path: str
    status: str
    added: int | None = None
    deleted: int | None = None
    old_path: str | None = None


@dataclass(slots=True)
class CommitRecord:
    """One commit as `git log` describes it."""

    sha: str
    parents: list[str]
    committed_at: int
    author: str
    subject: str
    body_title: str
    files: list[FileChange] = field(default_factory=list)


@dataclass(slots=True)
class BadCommit:
    """A commit git could not describe (missing objects in an old or partial clone), and git's message."""

    sha: str
    reason: str


_SEP = "\x1e"
_FIELD = "\x1f"
_FORMAT = _FIELD.join(["%H", "%P", "%ct", "%an", "%s", "%b"])


def _unquote(path: str) -> str:
    if not (path.startswith('"') and path.endswith('"')):
        return path
    raw = path[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")
    return printable_path(raw.decode("utf-8", "surrogateescape"))


def _body_title(body: str) -> str:
    for line in body.splitlines():
        line = line.strip().lstrip("*- ").strip()
        if line and not _TRAILER.match(line):
            return line
    return ""


def _parse_header(head: str) -> CommitRecord:
    sha, parents, ts, author, subject, body = head.split(_FIELD, 5)
    return CommitRecord(sha, parents.split(), int(ts), author, subject, _body_title(body))


def _add_line(rec: CommitRecord, line: str, by_path: dict[str, FileChange]) -> None:
    if line.startswith(":"):
        meta, *paths = line.split("\t")
        status = meta.split()[-1][:1]
        path = _unquote(paths[-1])
        change = FileChange(path, status, old_path=_unquote(paths[0]) if len(paths) > 1 else None)
        by_path[path] = change
        rec.files.append(change)
        return
    added, deleted, path = line.split("\t", 2)
    change = by_path.get(_unquote(path.split("\t")[-1]))
    if change is not None:
        change.added = int(added) if added.isdigit() else None
        change.deleted = int(deleted) if deleted.isdigit() else None


def _diff_args(numstat: bool, renames: bool) -> list[str]:
    # Exact renames only: found from blob ids alone, so no blob is read (6x faster on pokeemerald, and old
    # commits with missing blobs stay readable); pret's file moves are nearly all exact.
    return ["--raw", "--no-abbrev", "--diff-merges=first-parent", "--find-renames=100%" if renames else "--no-renames",
            *(["--numstat"] if numstat else [])]


def _run_log(repo: Path, shas: list[str], numstat: bool, renames: bool) -> tuple[list[CommitRecord], str]:
    """Describe `shas` in one git call: the records it printed, and git's error when it died part way."""
    args = ["git", "-C", str(repo), "-c", "core.quotePath=false", "log", "--no-walk=unsorted", "--stdin",
            f"--format={_SEP}{_FORMAT}{_SEP}", *_diff_args(numstat, renames)]
    with tempfile.TemporaryFile() as feed:
        feed.write(("\n".join(shas) + "\n").encode())
        feed.seek(0)
        proc = subprocess.run(args, stdin=feed, capture_output=True, env={**os.environ, **GIT_ENV})
    pieces = proc.stdout.decode("utf-8", "backslashreplace").split(_SEP)
    records = []
    for head, body in zip(pieces[1::2], pieces[2::2]):
        rec = _parse_header(head)
        by_path: dict[str, FileChange] = {}
        for line in body.split("\n"):
            if line:
                _add_line(rec, line, by_path)
        records.append(rec)
    if proc.returncode == 0:
        return records, ""
    return records, proc.stderr.decode(errors="replace").strip() or f"git log exited {proc.returncode}"


def read_commits(
    repo: Path, shas: Iterable[str], *, numstat: bool = False, renames: bool = False,
) -> Iterator[CommitRecord | BadCommit]:
    """Describe each commit in order (files with status, optionally line counts and renames found by content).

    Commits git cannot describe (missing objects in an old or partial clone) come out as BadCommit.
    """
    todo = list(shas)
    while todo:
        records, failure = _run_log(repo, todo, numstat, renames)
        if not failure:
            yield from records
            return
        # git died after printing the header of the commit it could not read, or before the next header.
        if records and not _readable(repo, records[-1].sha, numstat, renames):
            records.pop()
        yield from records
        done = len(records)
        if done < len(todo):
            yield BadCommit(todo[done], failure.splitlines()[-1])
        todo = todo[done + 1:]


def _readable(repo: Path, sha: str, numstat: bool, renames: bool) -> bool:
    args = ["log", "--no-walk", "--format=%H", *_diff_args(numstat, renames), sha]
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, env={**os.environ, **GIT_ENV})
    return proc.returncode == 0


def reachable(repo: Path, head: str) -> list[str]:
    """Commits reachable from `head`, newest first by commit date."""
    return git(repo, "rev-list", "--date-order", head).decode().split()


def commit_text(rec: CommitRecord) -> str:
    """What a commit says it does: its subject and body title; for a merge, the branch name and the PR title."""
    if len(rec.parents) > 1:
        m = _MERGE.match(rec.subject)
        return f"{m.group(1) if m else rec.subject} {rec.body_title}"
    return f"{strip_pr_suffix(rec.subject)} {rec.body_title}"


# ---------------------------------------------------------------------------------------------------------
# The store: commits reachable from the indexed HEAD, their files and their search terms.


@dataclass
class HistoryUpdate:
    """What one `update_history` call changed."""

    head: str
    added: list[str] = field(default_factory=list)    # the shas of readable commits added
    removed: list[str] = field(default_factory=list)  # the shas dropped (no longer reachable)
    sweeping: set[str] = field(default_factory=set)  # added commits touching over MAX_COMMIT_FILES files
    unreadable: list[BadCommit] = field(default_factory=list)


_COMMITS = pa.schema([
    ("sha", pa.string()), ("committed_at", pa.int64()), ("subject", pa.string()), ("body_title", pa.string()),
    ("tokens", pa.list_(pa.string())), ("n_files", pa.int32()), ("is_merge", pa.bool_()),
])
_FILES = pa.schema([("sha", pa.string()), ("path", pa.string()), ("status", pa.string()), ("old_path", pa.string())])
_TERMS = pa.schema([("sha", pa.string()), ("term", pa.string()), ("tf", pa.int32())])


def history_head(con: duckdb.DuckDBPyConnection) -> str | None:
    """The commit the history tables describe, or None before the first update."""
    rows = con.execute("SELECT head FROM history_state WHERE id = 1").fetchall()
    return rows[0][0] if rows else None


def update_history(con: duckdb.DuckDBPyConnection, repo: Path, head: str) -> HistoryUpdate:
    """Make the tables hold exactly the commits reachable from `head`: add the new ones, drop the rest.

    Idempotent: run it inside the caller's transaction; an interrupted update is completed by the next one.
    """
    report = HistoryUpdate(head)
    if history_head(con) == head:
        return report
    want = reachable(repo, head)
    have = {r[0] for r in con.execute("SELECT sha FROM commits").fetchall()}
    gone = sorted(have - set(want))
    new = [s for s in want if s not in have]
    commits, files, terms = [], [], []
    records = list(read_commits(repo, new, renames=True))
    # Rename detection reads blobs; where some are missing, the paths alone may still be readable.
    retry = [r.sha for r in records if isinstance(r, BadCommit)]
    if retry:
        records = [r for r in records if isinstance(r, CommitRecord)] + list(read_commits(repo, retry))
    for rec in records:
        if isinstance(rec, BadCommit):
            # Kept as an empty row so that later updates do not try it again; it scores nothing.
            report.unreadable.append(rec)
            commits.append({"sha": rec.sha, "committed_at": 0, "subject": "", "body_title": None, "tokens": [],
                            "n_files": 0, "is_merge": False})
            continue
        toks = tokenize(commit_text(rec))
        commits.append({"sha": rec.sha, "committed_at": rec.committed_at, "subject": rec.subject,
                        "body_title": rec.body_title or None, "tokens": toks, "n_files": len(rec.files),
                        "is_merge": len(rec.parents) > 1})
        files.extend({"sha": rec.sha, "path": f.path, "status": f.status, "old_path": f.old_path} for f in rec.files)
        counts: dict[str, int] = {}
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
        terms.extend({"sha": rec.sha, "term": t, "tf": n} for t, n in counts.items())
    if gone:
        con.register("_gone", pa.table({"sha": pa.array(gone, pa.string())}))
        for table in ("commit_terms", "commit_files", "commits"):
            con.execute(f"DELETE FROM {table} WHERE sha IN (SELECT sha FROM _gone)")
        con.unregister("_gone")
    for table, rows, schema in (("commits", commits, _COMMITS), ("commit_files", files, _FILES),
                                ("commit_terms", terms, _TERMS)):
        if rows:
            con.register("_rows", pa.Table.from_pylist(rows, schema=schema))
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
            con.unregister("_rows")
    con.execute(
        "UPDATE commits SET seq = r.seq FROM (SELECT sha, row_number() OVER (ORDER BY committed_at, sha) AS seq"
        " FROM commits) r WHERE commits.sha = r.sha"
    )
    con.execute("DELETE FROM history_state")
    con.execute("INSERT INTO history_state VALUES (1, ?, ?, ?)", [head, len(want), utc_now()])
    report.removed = gone
    report.added = [rec.sha for rec in records if isinstance(rec, CommitRecord)]
    report.sweeping = {rec.sha for rec in records if isinstance(rec, CommitRecord) and len(rec.files) > MAX_COMMIT_FILES}
    return report


# ---------------------------------------------------------------------------------------------------------
# Scores the retrieval fuses: files that past commits like this one changed, files that change together.


@dataclass
class History:
    """The history tables loaded for scoring: BM25 postings over commit texts, commit-file incidence both ways."""

    shas: list[str]
    age: np.ndarray              # commits between each commit and the indexed HEAD (0 = newest)
    n_files: np.ndarray
    is_merge: np.ndarray
    doc_len: np.ndarray
    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (commit indices, term frequencies)
    paths: list[str]
    commit_files: list[np.ndarray]   # commit index -> indices of the paths it changed (deletions left out)
    file_commits: dict[str, np.ndarray]  # path -> indices of the commits that changed it

    @property
    def empty(self) -> bool:
        """Whether there is no history to score with."""
        return not self.shas


def _has_history(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'commit_terms'").fetchall()[0][0])


def _groups(keys: np.ndarray, values: np.ndarray, n: int) -> list[np.ndarray]:
    """values split by key 0..n-1, each group in its original order."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    sorted_values = values[order]
    return [sorted_values[bounds[i]:bounds[i + 1]] for i in range(n)]


def _encoded(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    codes = pc.dictionary_encode(column).combine_chunks()
    return codes.indices.to_numpy(zero_copy_only=False).astype(np.int64), codes.dictionary.to_pylist()


def load(con: duckdb.DuckDBPyConnection) -> History:
    """Read the history tables into memory for fast scoring (an empty History before the first update)."""
    if not _has_history(con):
        return History([], *(np.zeros(0, np.int64),) * 4, {}, [], [], {})
    commits = con.sql(
        "SELECT sha, max(seq) OVER () - seq AS age, n_files, is_merge, len(tokens) FROM commits ORDER BY seq"
    ).to_arrow_table()
    n = commits.num_rows
    terms = con.sql(
        "SELECT t.term, c.seq - 1 AS doc, t.tf FROM commit_terms t JOIN commits c USING (sha)"
    ).to_arrow_table()
    term_ids, vocabulary = _encoded(terms.column(0))
    docs = terms.column(1).to_numpy().astype(np.int64)
    tfs = terms.column(2).to_numpy().astype(np.float64)
    by_term = _groups(term_ids, np.arange(len(docs)), len(vocabulary))
    postings = {term: (docs[rows], tfs[rows]) for term, rows in zip(vocabulary, by_term)}
    renamed = con.execute(
        "SELECT f.old_path, f.path FROM commit_files f JOIN commits c USING (sha) WHERE f.status = 'R'"
        " ORDER BY c.seq"
    ).fetchall()
    files = con.sql(
        f"SELECT c.seq - 1 AS doc, f.path FROM commit_files f JOIN commits c USING (sha)"
        f" WHERE f.status <> 'D' AND c.n_files <= {MAX_COMMIT_FILES}"
    ).to_arrow_table()
    now = _rename_map(renamed)
    raw_ids, raw_paths = _encoded(files.column(1))
    paths = sorted({now.get(p, p) for p in raw_paths})
    path_index = {p: i for i, p in enumerate(paths)}
    remap = np.array([path_index[now.get(p, p)] for p in raw_paths], dtype=np.int64)
    pids = remap[raw_ids] if len(raw_ids) else raw_ids
    file_docs = files.column(0).to_numpy().astype(np.int64)
    return History(
        commits.column(0).to_pylist(),
        commits.column(1).to_numpy().astype(np.int64),
        commits.column(2).to_numpy().astype(np.int64),
        commits.column(3).to_numpy(zero_copy_only=False).astype(bool),
        commits.column(4).to_numpy().astype(np.float64),
        postings,
        paths,
        [np.unique(g) for g in _groups(file_docs, pids, n)],
        dict(zip(paths, (np.unique(g) for g in _groups(pids, file_docs, len(paths))))),
    )


def _rename_map(renames: list[tuple[str, str]]) -> dict[str, str]:
    """Each old path to the path its file has now, following renames oldest first (chains included)."""
    moved: dict[str, str] = {}
    for old, new in renames:
        moved[old] = new
        moved.pop(new, None)  # a path renamed onto is a live file again
    resolved: dict[str, str] = {}
    for old in moved:
        path, seen = old, set()
        while path in moved and path not in seen:
            seen.add(path)
            path = moved[path]
        resolved[old] = path
    return resolved


def recency(age: np.ndarray | int, half_life: float = HALF_LIFE_COMMITS) -> np.ndarray | float:
    """The weight of a commit `age` commits before the indexed HEAD."""
    return 0.5 ** (np.asarray(age, dtype=np.float64) / half_life)


def similar_commits(hist: History, query: str, n: int = SIMILAR_COMMITS) -> list[tuple[int, float]]:
    """The past commits whose subject and body title best match `query` (BM25): (commit index, score), best first."""
    terms = [t for t in sorted(set(tokenize(strip_pr_suffix(query)))) if t in hist.postings]
    if not terms or hist.empty:
        return []
    n_docs = len(hist.shas)
    avgdl = float(hist.doc_len.mean()) or 1.0
    scores = np.zeros(n_docs)
    for term in terms:
        docs, tf = hist.postings[term]
        idf = math.log(1 + (n_docs - len(docs) + 0.5) / (len(docs) + 0.5))
        norm = tf + BM25_K1 * (1 - BM25_B + BM25_B * hist.doc_len[docs] / avgdl)
        scores[docs] += idf * tf * (BM25_K1 + 1) / norm
    scores[(hist.n_files < 1) | (hist.n_files > MAX_COMMIT_FILES)] = 0.0
    hits = np.flatnonzero(scores > 0)
    # Ties (common in short subjects) go to the newer commit.
    best = hits[np.lexsort((hist.age[hits], -scores[hits]))][:n]
    return [(int(c), float(scores[c])) for c in best]


def similar_commit_files(
    hist: History, query: str, k: int = 50, *, commits: int = SIMILAR_COMMITS, half_life: float = HALF_LIFE_COMMITS,
) -> dict[str, float]:
    """Files that past commits described like `query` changed: similarity x recency, damped by commit size."""
    similar = similar_commits(hist, query, commits)
    if not similar:
        return {}
    top = similar[0][1]
    scores: dict[str, float] = {}
    for c, score in similar:
        weight = (score / top) * float(recency(hist.age[c], half_life)) / math.sqrt(hist.n_files[c])
        for pid in hist.commit_files[c]:
            path = hist.paths[pid]
            scores[path] = scores.get(path, 0.0) + weight
    return dict(sorted(scores.items(), key=lambda kv: -kv[1])[:k])


def cochange(
    hist: History, paths: Iterable[str], k: int = 50, *, half_life: float = HALF_LIFE_COMMITS,
) -> dict[str, float]:
    """Files that changed in the same commits as `paths`: per source, the recency-weighted share of its commits."""
    sources = set(paths)
    scores: dict[str, float] = {}
    for src in sources:
        cs = hist.file_commits.get(src)
        if cs is None:
            continue
        cs = cs[(hist.n_files[cs] >= 2) & (hist.n_files[cs] <= MAX_COMMIT_FILES) & ~hist.is_merge[cs]]
        if not len(cs):
            continue
        w = recency(hist.age[cs], half_life)
        total = float(w.sum())
        for c, wc in zip(cs, w / (hist.n_files[cs] - 1) / total):
            for pid in hist.commit_files[c]:
                path = hist.paths[pid]
                if path not in sources:
                    scores[path] = scores.get(path, 0.0) + float(wc)
    return dict(sorted(scores.items(), key=lambda kv: -kv[1])[:k])


def recent_files(hist: History, half_life: float = RECENT_HALF_LIFE) -> dict[str, float]:
    """The working set: per path, the recency-weighted count of the last commits (not merges or sweeps) changing it."""
    if hist.empty:
        return {}
    horizon = hist.age < 20 * half_life  # older commits weigh under a millionth
    cs = np.flatnonzero(horizon & ~hist.is_merge & (hist.n_files >= 1) & (hist.n_files <= MAX_COMMIT_FILES))
    scores: dict[str, float] = {}
    for c, w in zip(cs, recency(hist.age[cs], half_life)):
        for pid in hist.commit_files[c]:
            path = hist.paths[pid]
            scores[path] = scores.get(path, 0.0) + float(w)
    return scores


def churn(hist: History, paths: Iterable[str], half_life: float = HALF_LIFE_COMMITS) -> dict[str, float]:
    """Per path, the recency-weighted count of the commits (not merges or sweeps) that changed it."""
    scores = {}
    for path in paths:
        cs = hist.file_commits.get(path)
        if cs is not None:
            cs = cs[(hist.n_files[cs] >= 1) & (hist.n_files[cs] <= MAX_COMMIT_FILES) & ~hist.is_merge[cs]]
            if len(cs):
                scores[path] = float(recency(hist.age[cs], half_life).sum())
    return scores


def as_of(hist: History, sha: str) -> History:
    """The history as a commit's author saw it: only the commits older than `sha` (by commit date) count, and ages
    are counted from the newest of them. Raises KeyError when `sha` is not in the history."""
    i = hist.shas.index(sha)
    n_files = hist.n_files.copy()
    n_files[i:] = 0  # scores nothing: similar commits, co-change, churn and the working set skip empty commits
    age = hist.age - (hist.age[i - 1] if i else hist.age[0] + 1)
    return replace(hist, age=age, n_files=n_files)
