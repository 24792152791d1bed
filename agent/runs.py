"""The run log: each task run, its stages' inputs and outputs, and their decisions, in the ledger."""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import psutil

from agent import workspace
from agent.errors import InvalidInput
from agent.stages.base import StageResult
from agent.store import transaction, utc_now
from agent.store.ledger import LEDGER, ledger

FINISHED = ("succeeded", "failed", "error", "killed")
_RUN_COLUMNS = ("id, task, repo, base_commit, branch, patch, status, success, verdict, kind, keep_rom, rom_changed, "
                "options, timings, validation, error, pid, host, started_at, finished_at")


@LEDGER.migration
def l003_runs(con: duckdb.DuckDBPyConnection) -> None:
    """Task runs, each stage's input and output, and every retrieval decision."""
    con.execute(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            task TEXT NOT NULL,
            repo TEXT NOT NULL,
            base_commit TEXT NOT NULL,
            branch TEXT,
            patch TEXT,                      -- path of the run's patch file, when it changed something
            status TEXT NOT NULL,            -- running | succeeded | failed | error | killed
            success BOOLEAN,
            verdict TEXT,                    -- a human's mark: success | failure
            kind TEXT,                       -- the task analysis' kind
            keep_rom BOOLEAN,
            rom_changed BOOLEAN,
            options JSON NOT NULL,           -- retrieval_only, until, include_dirty
            timings JSON,
            validation JSON,
            error TEXT,
            pid INTEGER NOT NULL,
            host TEXT NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP
        )
        """
    )
    con.execute(
        """
        CREATE TABLE run_stages (
            run_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            ordinal INTEGER NOT NULL,
            source TEXT NOT NULL,            -- model | rules
            input JSON,
            output JSON,
            notes JSON,
            detail JSON,
            call_ids TEXT[],
            seconds DOUBLE NOT NULL,
            error TEXT,
            PRIMARY KEY (run_id, stage)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE decisions (
            run_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            ordinal INTEGER NOT NULL,
            candidate TEXT NOT NULL,
            decision TEXT NOT NULL,
            score DOUBLE,
            reason TEXT
        )
        """
    )


@dataclass
class Run:
    """One task run as the log has it."""

    id: str
    task: str
    repo: str
    base_commit: str
    branch: str | None
    patch: str | None
    status: str
    success: bool | None
    verdict: str | None
    kind: str | None
    keep_rom: bool | None
    rom_changed: bool | None
    options: dict
    timings: dict | None
    validation: dict | None
    error: str | None
    pid: int
    host: str
    started_at: datetime
    finished_at: datetime | None
    stages: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def new_run_id() -> str:
    """A short, sortable, unique run id."""
    return f"{utc_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def start_run(home: str | Path | None, run_id: str, *, task: str, repo: Path, base_commit: str, options: dict) -> None:
    """Record a run as running, with this process as its owner."""
    with ledger(home) as con:
        con.execute(
            "INSERT INTO runs (id, task, repo, base_commit, status, options, pid, host, started_at)"
            " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            [run_id, task, str(repo), base_commit, json.dumps(options), os.getpid(), socket.gethostname(), utc_now()],
        )


def record_stage(home: str | Path | None, run_id: str, ordinal: int, stage: str, inp: Any, result: StageResult | None,
                 seconds: float, error: str | None = None) -> None:
    """Write one stage's input, output, notes and decisions in one transaction."""
    dump = (lambda m: m.model_dump_json()) if inp is not None else (lambda m: None)
    with ledger(home) as con, transaction(con):
        con.execute(
            "INSERT OR REPLACE INTO run_stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, stage, ordinal, result.source if result else "rules", dump(inp) if inp is not None else None,
             result.output.model_dump_json() if result else None, json.dumps(result.notes if result else []),
             json.dumps(result.detail if result else {}, default=str), result.call_ids if result else [], seconds, error],
        )
        con.execute("DELETE FROM decisions WHERE run_id = ? AND stage = ?", [run_id, stage])
        if result and result.decisions:
            con.executemany(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [[run_id, stage, i, d.candidate, d.decision, d.score, d.reason] for i, d in enumerate(result.decisions)],
            )


def finish_run(home: str | Path | None, run_id: str, *, status: str, success: bool | None, **fields: Any) -> None:
    """Close a run with its status and whatever else is known (kind, branch, patch, timings, validation, error)."""
    if status not in FINISHED:
        raise InvalidInput(f"unknown run status {status!r}")
    sets = {"status": status, "success": success, "finished_at": utc_now(), **fields}
    for key in ("timings", "validation"):
        if key in sets and sets[key] is not None:
            sets[key] = json.dumps(sets[key], default=str)
    with ledger(home) as con:
        con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?", [*sets.values(), run_id])


def _alive(pid: int, host: str) -> bool:
    """Whether a run's process may still be running (another machine's run: cannot tell, so yes)."""
    return host != socket.gethostname() or psutil.pid_exists(pid)


def reap_killed(home: str | Path | None) -> list[str]:
    """Mark runs whose process died without finishing as killed, and remove their worktrees and branches."""
    with ledger(home) as con:
        rows = con.execute("SELECT id, repo, pid, host FROM runs WHERE status = 'running'").fetchall()
        dead = [(run_id, repo) for run_id, repo, pid, host in rows if not _alive(pid, host)]
        for run_id, _ in dead:
            con.execute("UPDATE runs SET status = 'killed', success = false, error = 'the run process died before it finished'"
                        " WHERE id = ?", [run_id])
    for run_id, repo in dead:
        workspace.discard(Path(repo), run_id, home)
    return [run_id for run_id, _ in dead]


def _run(row: tuple) -> Run:
    data = dict(zip([c.strip() for c in _RUN_COLUMNS.split(",")], row))
    for key in ("options", "timings", "validation"):
        data[key] = json.loads(data[key]) if data[key] else ({} if key == "options" else None)
    return Run(**data)


def list_runs(home: str | Path | None, *, limit: int = 20, repo: Path | None = None) -> list[Run]:
    """The newest runs first (runs left running by a dead process are marked killed first)."""
    if limit <= 0:
        raise InvalidInput(f"--limit must be positive, not {limit}")
    reap_killed(home)
    with ledger(home) as con:
        rows = con.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE (? IS NULL OR repo = ?) ORDER BY started_at DESC LIMIT ?",
                           [str(repo) if repo else None, str(repo) if repo else None, limit]).fetchall()
    return [_run(row) for row in rows]


def get_run(home: str | Path | None, run_id: str) -> Run:
    """A run, with its stages and decisions; `run_id` may be a unique prefix."""
    reap_killed(home)
    with ledger(home) as con:
        rows = con.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE starts_with(id, ?) LIMIT 2", [run_id]).fetchall()
        if not rows:
            raise InvalidInput(f"no run {run_id!r}; `cra runs list` shows them")
        if len(rows) > 1:
            raise InvalidInput(f"run id {run_id!r} is ambiguous; give more characters")
        run = _run(rows[0])
        cur = con.execute("SELECT stage, ordinal, source, input, output, notes, detail, call_ids, seconds, error"
                          " FROM run_stages WHERE run_id = ? ORDER BY ordinal", [run.id])
        names = [d[0] for d in cur.description]
        for values in cur.fetchall():
            stage = dict(zip(names, values))
            for key in ("input", "output", "notes", "detail"):
                stage[key] = json.loads(stage[key]) if stage[key] else None
            run.stages.append(stage)
        cur = con.execute("SELECT stage, candidate, decision, score, reason FROM decisions WHERE run_id = ?"
                          " ORDER BY stage, ordinal", [run.id])
        names = [d[0] for d in cur.description]
        run.decisions = [dict(zip(names, values)) for values in cur.fetchall()]
    return run


def mark_run(home: str | Path | None, run_id: str, verdict: str) -> Run:
    """Record a human verdict (success or failure) on a run."""
    if verdict not in ("success", "failure"):
        raise InvalidInput("a verdict is --success or --failure")
    run = get_run(home, run_id)
    with ledger(home) as con:
        con.execute("UPDATE runs SET verdict = ? WHERE id = ?", [verdict, run.id])
    return get_run(home, run.id)


@dataclass(frozen=True)
class JudgedStage:
    """A model-answered stage of a finished run whose outcome is known: a human's verdict, else the run's own."""

    run_id: str
    task: str
    repo: str
    base_commit: str
    success: bool
    stage: str
    call_ids: list[str]
    detail: dict


def judged_stages(home: str | Path | None) -> list[JudgedStage]:
    """Every model-answered stage that ended without error in a finished run with an outcome, oldest run first."""
    with ledger(home) as con:
        rows = con.execute(
            """
            SELECT r.id, r.task, r.repo, r.base_commit, coalesce(r.verdict = 'success', r.success), s.stage,
                   s.call_ids, s.detail
            FROM runs r JOIN run_stages s ON s.run_id = r.id
            WHERE s.source = 'model' AND s.error IS NULL AND r.status IN ('succeeded', 'failed')
              AND coalesce(r.verdict = 'success', r.success) IS NOT NULL
            ORDER BY r.started_at, s.ordinal
            """).fetchall()
    return [JudgedStage(*head, call_ids or [], json.loads(detail) if detail else {})
            for *head, call_ids, detail in rows]
