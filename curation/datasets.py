"""Training examples in the ledger: stored once, summarised, exported as chat messages ready for TRL, imported."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from agent.config import Config
from agent.errors import InvalidInput
from agent.projects import checked_name, project_of
from agent.stages import stage_named
from agent.store import transaction, utc_now
from agent.store.ledger import LEDGER, ledger

FORMATS = ("jsonl", "parquet")
_COLUMNS = ("id, stage, source, family, repo, commit_sha, commit_date, split, messages, output, teacher, metadata,"
            " created_at, project")
_READ = "stage, source, family, messages, output, split, repo, commit_sha, commit_date, metadata, project"
SPLITS = ("train", "eval")


@LEDGER.migration
def l004_training(con: duckdb.DuckDBPyConnection) -> None:
    """Training examples per stage, bootstrapped, logged or imported (ledgers from before got bootstrap_commits here too)."""
    con.execute(
        """
        CREATE TABLE training_examples (
            id TEXT PRIMARY KEY,             -- hash of stage, messages and output: the same pair is stored once
            stage TEXT NOT NULL,
            source TEXT NOT NULL,            -- synthetic | logged | imported:<name>
            family TEXT NOT NULL,            -- base-model family the pair is for (qwen3, qwen2.5-coder, ...)
            repo TEXT,
            commit_sha TEXT,
            commit_date TIMESTAMP,
            split TEXT NOT NULL,             -- train | eval (the newest commits are held out)
            messages JSON NOT NULL,          -- system + user turns, as the agent sends them
            output JSON NOT NULL,            -- the assistant's answer: the stage's schema
            teacher JSON,                    -- teacher model, label or reasoning, tokens, cost, when labelled
            metadata JSON,
            created_at TIMESTAMP NOT NULL
        )
        """
    )


@LEDGER.migration
def l010_example_projects(con: duckdb.DuckDBPyConnection) -> None:
    """Each example's project, named from its checkout (the checkout's folder name where it is gone)."""
    con.execute("ALTER TABLE training_examples ADD COLUMN project TEXT")
    for (repo,) in con.execute("SELECT DISTINCT repo FROM training_examples WHERE repo IS NOT NULL").fetchall():
        con.execute("UPDATE training_examples SET project = ? WHERE repo = ?", [project_of(repo), repo])


@dataclass(frozen=True)
class Example:
    """One training pair for one stage."""

    stage: str
    source: str
    family: str
    messages: list[dict[str, str]]
    output: dict
    split: str = "train"
    repo: str | None = None
    commit_sha: str | None = None
    commit_date: datetime | None = None
    metadata: dict | None = None
    project: str | None = None  # None: named from `repo` when stored (imported pairs may have neither)

    @property
    def id(self) -> str:
        """A hash of the stage, the prompt and the answer: the same pair is never stored twice."""
        body = json.dumps([self.stage, self.family, self.messages, self.output], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:20]

    def chat(self) -> list[dict[str, str]]:
        """The pair as one chat: the prompt's turns, then the answer as the assistant's turn."""
        return [*self.messages, {"role": "assistant", "content": json.dumps(self.output, separators=(",", ":"))}]


def model_family(base: str) -> str:
    """The family of a base model's name: Qwen/Qwen3-4B -> qwen3, Qwen2.5-Coder-3B-Instruct -> qwen2.5-coder."""
    name = Path(base.rstrip("/")).name.lower()
    parts = [p for p in name.replace("_", "-").split("-") if p]
    kept = []
    for part in parts:
        if part[:-1].replace(".", "").isdigit() and part[-1] in "bm" or part in ("instruct", "chat", "base", "it"):
            break
        kept.append(part)
    return "-".join(kept) or name


def family_for(stage: str, config: Config) -> str:
    """The base-model family a stage's pairs are for, from the role that serves it."""
    return model_family(config.models.role(stage_named(stage).role).base)


def add_examples(home: str | Path | None, examples: list[Example]) -> int:
    """Store examples not stored before; return how many were new."""
    if not examples:
        return 0
    now = utc_now()
    rows = [[e.id, e.stage, e.source, e.family, e.repo, e.commit_sha, e.commit_date, e.split, json.dumps(e.messages),
             json.dumps(e.output), None, json.dumps(e.metadata or {}), now,
             e.project or (project_of(e.repo) if e.repo else None)] for e in examples]
    with ledger(home) as con, transaction(con):
        before = con.execute("SELECT count(*) FROM training_examples").fetchone()[0]
        con.executemany(f"INSERT OR IGNORE INTO training_examples ({_COLUMNS}) VALUES ({', '.join('?' * 14)})", rows)
        after = con.execute("SELECT count(*) FROM training_examples").fetchone()[0]
    return after - before


def summary(home: str | Path | None) -> list[dict]:
    """Counts per stage, source, family, split, project and repo."""
    with ledger(home) as con:
        cur = con.execute(
            "SELECT stage, source, family, split, coalesce(project, '-') AS project, coalesce(repo, '-') AS repo,"
            " count(*) AS examples"
            " FROM training_examples GROUP BY ALL ORDER BY stage, source, family, split, project, repo"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _example(r: tuple) -> Example:
    return Example(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5], r[6], r[7], r[8],
                   json.loads(r[9]) if r[9] else None, r[10])


def load_examples(home: str | Path | None, *, stage: str, split: str | None = None, family: str | None = None,
                  source: str | None = None, projects: list[str] | None = None) -> list[Example]:
    """The stored examples of one stage (of these projects, when named), oldest commit first."""
    stage_named(stage)  # an unknown stage is an error
    with ledger(home) as con:
        rows = con.execute(
            f"SELECT {_READ} FROM training_examples WHERE stage = ? AND (? IS NULL OR split = ?)"
            " AND (? IS NULL OR family = ?) AND (? IS NULL OR source = ?) AND (?::TEXT[] IS NULL OR list_contains(?, project))"
            " ORDER BY commit_date NULLS LAST, id",
            [stage, split, split, family, family, source, source, projects, projects],
        ).fetchall()
    return [_example(r) for r in rows]


def examples_by_id(home: str | Path | None, ids: list[str]) -> list[Example]:
    """The stored examples with these ids, in the given order."""
    if not ids:
        return []
    with ledger(home) as con:
        rows = con.execute(f"SELECT id, {_READ} FROM training_examples WHERE id IN ({', '.join('?' * len(ids))})",
                           ids).fetchall()
    found = {r[0]: _example(r[1:]) for r in rows}
    return [found[i] for i in ids if i in found]


def train_pools(home: str | Path | None) -> dict[tuple[str, str], list[tuple[str, str, str | None]]]:
    """The train split's (id, source, project) per (stage, family), in that order, each pool by id."""
    with ledger(home) as con:
        rows = con.execute("SELECT stage, family, id, source, project FROM training_examples WHERE split = 'train'"
                           " ORDER BY stage, family, id").fetchall()
    pools: dict[tuple[str, str], list[tuple[str, str, str | None]]] = {}
    for stage, family, example_id, source, project in rows:
        pools.setdefault((stage, family), []).append((example_id, source, project))
    return pools


def commit_splits(home: str | Path | None, repo: Path) -> dict[str, tuple[bool, datetime | None]]:
    """Per commit of `repo` with synthetic examples: whether any of them is held out, and the commit's date."""
    with ledger(home) as con:
        rows = con.execute("SELECT commit_sha, bool_or(split = 'eval'), max(commit_date) FROM training_examples"
                           " WHERE repo = ? AND source = 'synthetic' GROUP BY commit_sha", [str(repo)]).fetchall()
    return {sha: (held, date) for sha, held, date in rows}


def unlabelled(home: str | Path | None, *, stage: str, repo: Path) -> list[tuple[str, str, str]]:
    """`repo`'s synthetic examples of `stage` no teacher has labelled yet, oldest commit first: (id, messages, commit)."""
    with ledger(home) as con:
        return con.execute(
            "SELECT id, messages, commit_sha FROM training_examples WHERE stage = ? AND source = 'synthetic'"
            " AND teacher IS NULL AND repo = ? ORDER BY commit_date", [stage, str(repo)]).fetchall()


def relabel(home: str | Path | None, example_id: str, *, output: str, teacher: dict) -> None:
    """Replace a stored example's answer (`output`, JSON text) with a teacher's, recording what the teacher did."""
    with ledger(home) as con:
        con.execute("UPDATE training_examples SET output = ?, teacher = ? WHERE id = ?",
                    [output, json.dumps(teacher), example_id])


def export(home: str | Path | None, out: Path, *, stage: str, fmt: str, split: str | None = "train",
           family: str | None = None) -> int:
    """Write one stage's examples as `{"messages": [...]}` rows (jsonl or parquet), atomically; return the count."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    examples = load_examples(home, stage=stage, split=split, family=family)
    if not examples:
        raise InvalidInput(f"no {split or 'stored'} examples for {stage}; run `cra bootstrap` or `cra datasets import` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        staging = Path(tmp.name)
    try:
        records = [{"messages": e.chat(), "stage": e.stage, "source": e.source, "family": e.family, "split": e.split,
                    "commit": e.commit_sha or ""} for e in examples]
        if fmt == "jsonl":
            staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        else:
            pq.write_table(pa.Table.from_pylist(records), staging)
        staging.replace(out)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return len(examples)


def import_file(home: str | Path | None, path: Path, *, stage: str, source: str, family: str,
                project: str | None = None) -> tuple[int, int]:
    """Import open cold-start pairs (rows with `messages`, the last one the assistant's answer) for every project, or
    for `project`; return (read, new)."""
    stage_named(stage)  # an unknown stage is an error
    if project is not None:
        checked_name(project)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    where = "row" if path.suffix == ".parquet" else "line"  # a Parquet row, or the line of the file (blank ones count)
    try:
        if path.suffix == ".parquet":
            rows = list(enumerate(pq.read_table(path).to_pylist(), 1))
        else:
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    rows += [(i, json.loads(line))] if line.strip() else []
                except ValueError as exc:
                    raise InvalidInput(f"{path} line {i} is not JSON ({exc}); nothing was imported") from exc
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise InvalidInput(f"{path} is not JSONL or Parquet of chat rows: {exc}") from exc
    examples = []
    for i, row in rows:
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise InvalidInput(f"{path} {where} {i}: needs `messages` ending with the assistant's answer; nothing was "
                               "imported")
        answer = messages[-1]["content"]
        try:
            output = json.loads(answer)
        except ValueError:
            output = {"text": answer}
        examples.append(Example(stage, f"imported:{source}", family, messages[:-1], output,
                                metadata={"file": path.name, "row": i}, project=project))
    return len(examples), add_examples(home, examples)


def counts_by_project(home: str | Path | None) -> dict[str, dict[str, int]]:
    """Stored examples per project and stage ('-' for those of no project, such as imported pairs)."""
    with ledger(home) as con:
        rows = con.execute("SELECT coalesce(project, '-'), stage, count(*) FROM training_examples GROUP BY ALL"
                           " ORDER BY 1, 2").fetchall()
    counts: dict[str, dict[str, int]] = {}
    for project, stage, n in rows:
        counts.setdefault(project, {})[stage] = n
    return counts
