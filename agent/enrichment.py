"""Enrichment: a model's account of each function (what it is for, how to change it, what it risks), kept by the
function's body hash so only changed functions are asked about again, and reviewed by people in samples.

Every field here was written by a model, and is shown marked as such; a person's "bad" verdict takes an enrichment out
of search texts, prompts and training data. `bootstrap/enrich.py` asks the model; this module stores and reads.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import duckdb
from pydantic import BaseModel, Field

from agent.config import ledger_path
from agent.errors import InvalidInput
from agent.index.symbols import ParsedFile
from agent.store import utc_now
from agent.store.ledger import LEDGER, ledger

MODEL_MARK = "model-written"
REVIEW_VERDICTS = ("good", "bad")
_BRANCHES = re.compile(r"\b(?:if|for|while|case)\b|&&|\|\||\?")
Tag = Annotated[str, Field(max_length=40)]
Line = Annotated[str, Field(max_length=160)]  # one step, effect, risk or check: a teacher that loops stops here


class CallerNote(BaseModel):
    """How one caller uses the function."""

    name: str = Field(max_length=80)
    note: Line


class Enrichment(BaseModel):
    """The fields a model writes for one function (seed 000, section 4), bounded so answers stay short."""

    summary: str = Field(max_length=160, description="one line: what the function does")
    description: str = Field(max_length=900, description="3-6 sentences: intent, what it modifies, side effects")
    intent_tags: list[Tag] = Field(max_length=6, description="the function's domains, e.g. graphics, battle, save")
    change_recipe: list[Line] = Field(max_length=6, description="3-6 steps to change it safely")
    side_effects: list[Line] = Field(max_length=5, description="state, memory and hardware it touches")
    risks: list[Line] = Field(max_length=5, description="what a change could break (matching the ROM included)")
    caller_notes: list[CallerNote] = Field(max_length=5, description="how its callers use it")
    sanity_checks: list[Line] = Field(max_length=5, description="checks to run after changing it")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure the model is of this account, 0-1")


@LEDGER.migration
def l008_enrichments(con: duckdb.DuckDBPyConnection) -> None:
    """Model enrichments of functions, per project, by body hash, with their cost and a person's review."""
    con.execute(
        """
        CREATE TABLE enrichments (
            id TEXT PRIMARY KEY,             -- hash of project, path, name, body hash, model and answer
            project TEXT NOT NULL,           -- the project's folder name under the home
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            body_hash TEXT NOT NULL,         -- sha256 of the function's text when it was enriched
            model TEXT NOT NULL,             -- the model that wrote it
            fields JSON NOT NULL,            -- an Enrichment
            complexity INTEGER NOT NULL,     -- 1 + branches (if, for, while, case, &&, ||, ?)
            confidence DOUBLE NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE,
            seconds DOUBLE,
            created_at TIMESTAMP NOT NULL,
            review TEXT,                     -- good | bad, from a person
            review_note TEXT,
            reviewed_at TIMESTAMP
        )
        """
    )
    con.execute("CREATE INDEX enrichments_symbol ON enrichments(project, path, name)")


@dataclass(frozen=True)
class Enriched:
    """One stored enrichment: which function at which body, who wrote it, what it cost, how a person judged it."""

    id: str
    project: str
    path: str
    name: str
    body_hash: str
    model: str
    fields: Enrichment
    complexity: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    seconds: float
    review: str | None = None
    review_note: str | None = None

    def text(self) -> str:
        """The search line: summary and tags, marked as a model's."""
        tags = f" [{', '.join(self.fields.intent_tags)}]" if self.fields.intent_tags else ""
        return f"{self.fields.summary}{tags}"

    def as_dict(self) -> dict:
        """A JSON-ready view, marked as a model's."""
        return {"id": self.id, "path": self.path, "name": self.name, "written_by": f"{MODEL_MARK} ({self.model})",
                "complexity": self.complexity, "review": self.review, "review_note": self.review_note,
                **self.fields.model_dump()}


def body_hash(body: str) -> str:
    """The hash an enrichment is kept by: the function's text."""
    return hashlib.sha256(body.encode()).hexdigest()


def function_body(lines: list[str], start_line: int, end_line: int) -> str:
    """The text of a definition from its file's lines (1-based, inclusive)."""
    return "\n".join(lines[start_line - 1:end_line])


def of_parsed(home: str | Path | None, project: str, parsed: Iterable[ParsedFile]) -> dict[tuple[str, str], Enriched]:
    """The current enrichment of each function defined in `parsed` (path, name), where it has one."""
    rows = _live_rows(home, project)
    if not rows:  # bodies are hashed only for a project that has enrichments
        return {}
    bodies = {}
    for pf in parsed:
        lines = pf.text.split("\n")
        for sym in pf.symbols:
            if sym.kind == "function":
                bodies[(pf.path, sym.name)] = body_hash(function_body(lines, sym.start_line, sym.end_line))
    return _matching(rows, bodies)


def bodies_in_checkout(repo: Path, symbols: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], str]:
    """The text of each definition (path, name, start line, end line) in the checkout at `repo`, each file read once."""
    lines: dict[str, list[str]] = {}
    bodies = {}
    for path, name, start, end in symbols:
        if path not in lines:
            file = repo / path
            lines[path] = file.read_text(errors="replace").split("\n") if file.is_file() else []
        bodies[(path, name)] = function_body(lines[path], start, end)
    return bodies


def complexity(body: str) -> int:
    """A cyclomatic estimate: one plus the branches in the body."""
    return 1 + len(_BRANCHES.findall(body))


def enrichment_id(project: str, path: str, name: str, digest: str, model: str, fields: Enrichment) -> str:
    """The id of one answer about one function body by one model."""
    body = json.dumps([project, path, name, digest, model, fields.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def store(home: str | Path | None, rows: Iterable[Enriched]) -> int:
    """Keep enrichments (one answer per function body and model); how many were new."""
    rows = list(rows)
    if not rows:
        return 0
    with ledger(home) as con:
        before = con.execute("SELECT count(*) FROM enrichments").fetchone()[0]
        con.executemany(
            "INSERT OR IGNORE INTO enrichments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
            [[r.id, r.project, r.path, r.name, r.body_hash, r.model, r.fields.model_dump_json(), r.complexity,
              r.fields.confidence, r.prompt_tokens, r.completion_tokens, r.cost_usd, r.seconds, utc_now()]
             for r in rows])
        return con.execute("SELECT count(*) FROM enrichments").fetchone()[0] - before


_COLUMNS = ("id, project, path, name, body_hash, model, fields, complexity, coalesce(prompt_tokens, 0), "
            "coalesce(completion_tokens, 0), coalesce(cost_usd, 0), coalesce(seconds, 0), review, review_note")


def _row(row: tuple) -> Enriched:
    """A stored enrichment as it was checked when written: bounds added since do not make older answers unreadable."""
    fields = json.loads(row[6])
    notes = [CallerNote.model_construct(**note) for note in fields.get("caller_notes", [])]
    return Enriched(*row[:6], Enrichment.model_construct(**{**fields, "caller_notes": notes}), *row[7:])


def _live_rows(home: str | Path | None, project: str) -> list[tuple]:
    """The project's enrichments no person marked bad, oldest first (none when the ledger does not exist yet)."""
    if not ledger_path(home).exists():
        return []
    with ledger(home, read_only=True) as con:
        return con.execute(f"SELECT {_COLUMNS} FROM enrichments WHERE project = ? AND coalesce(review, '') <> 'bad' "
                           "ORDER BY created_at", [project]).fetchall()


def _matching(rows: list[tuple], bodies: dict[tuple[str, str], str]) -> dict[tuple[str, str], Enriched]:
    """Of `rows`, the newest made at each (path, name)'s body hash in `bodies`."""
    return {(row[2], row[3]): _row(row) for row in rows if bodies.get((row[2], row[3])) == row[4]}


def current(home: str | Path | None, project: str, bodies: dict[tuple[str, str], str]) -> dict[tuple[str, str], Enriched]:
    """The newest enrichment of each (path, name) in `bodies` (path, name -> body hash) made at that body, unless a
    person marked it bad."""
    return _matching(_live_rows(home, project), bodies) if bodies else {}


def of_symbols(home: str | Path | None, project: str, repo: Path,
               symbols: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], Enriched]:
    """The current enrichment of each function (path, name, start line, end line) of the checkout at `repo`, where its
    body is the one that was enriched."""
    bodies = bodies_in_checkout(repo, symbols)
    return current(home, project, {key: body_hash(body) for key, body in bodies.items()})


def rejected(home: str | Path | None, project: str) -> set[tuple[str, str, str]]:
    """(path, name, body hash) of the enrichments a person marked bad: asked about again, bypassing any cache."""
    if not ledger_path(home).exists():
        return set()
    with ledger(home, read_only=True) as con:
        return set(con.execute("SELECT path, name, body_hash FROM enrichments WHERE project = ? AND review = 'bad'",
                               [project]).fetchall())


def sample_for_review(home: str | Path | None, project: str, n: int, seed: int = 0) -> list[Enriched]:
    """`n` enrichments of the project no person has judged yet, drawn at random (seeded)."""
    if n < 1:
        raise InvalidInput(f"--sample must be at least 1 (it is {n})")
    with ledger(home, read_only=True) as con:
        rows = con.execute(f"SELECT {_COLUMNS} FROM enrichments WHERE project = ? AND review IS NULL ORDER BY id",
                           [project]).fetchall()
    return [_row(r) for r in random.Random(seed).sample(rows, min(n, len(rows)))]


def mark(home: str | Path | None, enrichment: str, verdict: str, note: str | None = None) -> Enriched:
    """Record a person's verdict on an enrichment (an id or a unique prefix of one)."""
    if verdict not in REVIEW_VERDICTS:
        raise InvalidInput(f"unknown verdict {verdict!r}; use {' or '.join(REVIEW_VERDICTS)}")
    with ledger(home) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM enrichments WHERE starts_with(id, ?)", [enrichment]).fetchall()]
        if len(ids) != 1:
            raise InvalidInput(f"no enrichment {enrichment!r}; `cra enrich review` lists them" if not ids else
                               f"enrichment id {enrichment!r} is ambiguous; give more characters")
        con.execute("UPDATE enrichments SET review = ?, review_note = ?, reviewed_at = ? WHERE id = ?",
                    [verdict, note, utc_now(), ids[0]])
        return _row(con.execute(f"SELECT {_COLUMNS} FROM enrichments WHERE id = ?", [ids[0]]).fetchone())
