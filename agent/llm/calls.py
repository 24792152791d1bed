"""The call log: every model call, success or failure, in the ledger; secrets never reach it."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from agent.errors import InvalidInput
from agent.llm.names import scrub_urls
from agent.store import utc_now
from agent.store.ledger import LEDGER, ledger

REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)\b(bearer|authorization:?)\s+[^\s\"']+")


@LEDGER.migration
def l001_llm_calls(con: duckdb.DuckDBPyConnection) -> None:
    """Every model call, success or failure, with what was asked, what answered and what came back."""
    con.execute(
        """
        CREATE TABLE llm_calls (
            id TEXT PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            run_id TEXT,
            stage TEXT NOT NULL,
            call_type TEXT NOT NULL,         -- structured | text
            provider TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            model_requested TEXT NOT NULL,   -- what resolution chose (an adapter or a model)
            model_answered TEXT,             -- what the server says answered
            adapter TEXT,                    -- the adapter asked for, if any
            base_model TEXT NOT NULL,
            resolution TEXT NOT NULL,        -- why that model: override | adapter | role-default | base
            fallback_reason TEXT,            -- set when the adapter could not be used and the base answered
            messages JSON NOT NULL,
            params JSON NOT NULL,            -- request parameters (never keys or headers)
            output_schema JSON,
            raw_response TEXT,               -- the last answer's text
            attempts JSON NOT NULL,          -- every request made: model, outcome, text or error
            parsed JSON,
            schema_ok BOOLEAN NOT NULL,
            repairs INTEGER NOT NULL,
            retries INTEGER NOT NULL,
            latency_ms DOUBLE NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            error_type TEXT,
            error TEXT
        )
        """
    )
    con.execute("CREATE INDEX llm_calls_run ON llm_calls (run_id)")


@dataclass
class CallRecord:
    """One logical model call: the requests it took and how it ended."""

    stage: str
    call_type: str
    provider: str
    endpoint: str
    model_requested: str
    base_model: str
    resolution: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    run_id: str | None = None
    adapter: str | None = None
    model_answered: str | None = None
    fallback_reason: str | None = None
    output_schema: dict | None = None
    raw_response: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    parsed: Any = None
    schema_ok: bool = False
    repairs: int = 0
    retries: int = 0
    latency_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_type: str | None = None
    error: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: datetime = field(default_factory=utc_now)


_JSON_FIELDS = ("messages", "params", "output_schema", "attempts", "parsed")
_FIELDS = tuple(CallRecord.__dataclass_fields__)


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret and bearer token replaced, through nested lists and dicts."""
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
        return scrub_urls(_BEARER.sub(lambda m: f"{m[1]} {REDACTED}", value))
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


def log_call(home: str | Path | None, record: CallRecord, *, secrets: list[str]) -> str:
    """Write `record` to the ledger with secrets scrubbed; return its id."""
    row = redact(asdict(record), secrets)
    values = [json.dumps(row[name]) if name in _JSON_FIELDS else row[name] for name in _FIELDS]
    with ledger(home) as con:
        con.execute(
            f"INSERT INTO llm_calls ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})", values,
        )
    return record.id


def _record(columns: list[str], row: tuple) -> CallRecord:
    data = dict(zip(columns, row))
    for name in _JSON_FIELDS:
        if data[name] is not None:
            data[name] = json.loads(data[name])
    return CallRecord(**data)


def list_calls(
    home: str | Path | None, *, limit: int = 20, stage: str | None = None, run_id: str | None = None,
    failed: bool = False,
) -> list[CallRecord]:
    """The newest calls first, optionally only one stage's, one run's or the failed ones."""
    if limit <= 0:
        raise InvalidInput(f"--limit must be positive, not {limit}")
    with ledger(home) as con:
        cur = con.execute(
            f"SELECT {', '.join(_FIELDS)} FROM llm_calls WHERE (? IS NULL OR stage = ?) AND (? IS NULL OR run_id = ?)"
            " AND (NOT ? OR error IS NOT NULL) ORDER BY created_at DESC LIMIT ?",
            [stage, stage, run_id, run_id, failed, limit],
        )
        rows = cur.fetchall()
    return [_record(list(_FIELDS), row) for row in rows]


def get_call(home: str | Path | None, call_id: str) -> CallRecord:
    """The call whose id is or starts with `call_id`."""
    with ledger(home) as con:
        rows = con.execute(
            f"SELECT {', '.join(_FIELDS)} FROM llm_calls WHERE starts_with(id, ?) LIMIT 2", [call_id],
        ).fetchall()
    if not rows:
        raise InvalidInput(f"no call with id {call_id!r}; `cra calls` lists them")
    if len(rows) > 1:
        raise InvalidInput(f"call id {call_id!r} is ambiguous; give more characters")
    return _record(list(_FIELDS), rows[0])


def calls_of_runs(home: str | Path | None, run_ids: list[str]) -> dict[str, CallRecord]:
    """The calls logged for these runs, by call id."""
    if not run_ids:
        return {}
    with ledger(home) as con:
        rows = con.execute(f"SELECT {', '.join(_FIELDS)} FROM llm_calls WHERE run_id IN ({', '.join('?' * len(run_ids))})",
                           run_ids).fetchall()
    return {record.id: record for record in (_record(list(_FIELDS), row) for row in rows)}


def model_seconds(home: str | Path | None, run_id: str) -> float:
    """The time a run's model calls took, summed, in seconds."""
    with ledger(home, read_only=True) as con:
        (ms,) = con.execute("SELECT coalesce(sum(latency_ms), 0) FROM llm_calls WHERE run_id = ?", [run_id]).fetchone()
    return ms / 1000
