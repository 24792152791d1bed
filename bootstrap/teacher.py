"""The teacher: a large OpenAI-compatible model that writes plan reasoning and better task descriptions.

Answers are validated against schemas, cached by content hash (a re-run costs nothing), made with a concurrency
limit, and their tokens and cost recorded; the key comes from the environment and is never logged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
from pydantic import BaseModel, Field, ValidationError

from agent.config import Config, RoleModels
from agent.errors import ConfigError
from agent.llm.adapters import BaseModel as ServedBase
from agent.llm.calls import get_call
from agent.llm.client import LLM
from agent.llm.resolve import Resolution
from agent.stages.plan import Plan
from agent.store import utc_now
from agent.store.ledger import LEDGER, ledger

T = TypeVar("T", bound=BaseModel)


@LEDGER.migration
def l005_teacher_cache(con: duckdb.DuckDBPyConnection) -> None:
    """Teacher answers by content hash, so a re-run costs nothing."""
    con.execute(
        """
        CREATE TABLE teacher_cache (
            key TEXT PRIMARY KEY,            -- hash of teacher model, purpose and messages
            purpose TEXT NOT NULL,           -- plan | description | judge | enrich
            model TEXT NOT NULL,
            answer JSON NOT NULL,            -- validated against the purpose's schema
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE,
            created_at TIMESTAMP NOT NULL
        )
        """
    )


class PlanLabel(BaseModel):
    """The teacher's reasoning towards a change it has seen, and the plan it implies."""

    reasoning: str = Field(max_length=3000)
    plan: Plan


class Description(BaseModel):
    """A task description written from a diff."""

    description: str = Field(max_length=200)


class Judgement(BaseModel):
    """How well a description states the change (1 poor to 5 exact)."""

    score: int = Field(ge=1, le=5)
    reason: str = Field(max_length=300)


@dataclass(frozen=True)
class Labelled:
    """A validated teacher answer and what it cost."""

    value: BaseModel
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


PURPOSES = ("plan", "description", "judge", "enrich")


class Teacher:
    """Asks the configured teacher, through cra's model layer (so every call is also in the call log)."""

    def __init__(self, config: Config, home: str | Path | None = None) -> None:
        settings = config.teacher
        if not settings.endpoint:
            raise ConfigError("no teacher is configured: set [teacher] endpoint and model, or run with --no-teacher")
        self.settings, self.home = settings, home
        server = RoleModels(base=settings.model, endpoint=settings.endpoint, provider="openai", api_key_env=settings.api_key_env)
        local = config.model_copy(update={"models": config.models.model_copy(
            update={"timeout_s": settings.timeout_s, "max_tokens": settings.max_tokens})})
        resolutions = [Resolution(f"teacher:{purpose}", "reasoning", settings.model, "override", f"[teacher] {settings.name}",
                                  ServedBase(settings.model, None, None, None), server)
                       for purpose in PURPOSES]
        self.llm = LLM(local, resolutions, home=home)

    def _key(self, purpose: str, messages: list[dict]) -> str:
        return hashlib.sha256(json.dumps([self.settings.model, purpose, messages], sort_keys=True).encode()).hexdigest()

    def ask(self, purpose: str, messages: list[dict[str, str]], output: type[T], *, fresh: bool = False) -> Labelled:
        """A validated answer for `purpose`, from the cache when this exact question was asked before and its answer
        still meets the schema (unless `fresh`: a person rejected the cached one); a fresh answer replaces the cached
        one."""
        key = self._key(purpose, messages)
        with ledger(self.home) as con:
            row = None if fresh else con.execute("SELECT answer FROM teacher_cache WHERE key = ?", [key]).fetchone()
        if row:
            try:
                return Labelled(output.model_validate_json(row[0]), True, 0, 0, 0.0)
            except ValidationError:
                pass  # cached before the answer's schema took its present bounds: asked again, and replaced
        answer = self.llm.ask(f"teacher:{purpose}", messages, output)
        call = get_call(self.home, answer.call_id)
        tokens_in, tokens_out = call.prompt_tokens or 0, call.completion_tokens or 0
        cost = (tokens_in * self.settings.price_in_per_mtok + tokens_out * self.settings.price_out_per_mtok) / 1e6
        with ledger(self.home) as con:
            con.execute("INSERT OR REPLACE INTO teacher_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [key, purpose, self.settings.model, answer.value.model_dump_json(), tokens_in, tokens_out, cost,
                         utc_now()])
        return Labelled(answer.value, False, tokens_in, tokens_out, cost)

    def plan(self, messages: list[dict[str, str]], diff: str) -> Labelled:
        """Reasoning and a plan for a plan-stage prompt, written knowing the commit's diff."""
        limit = self.settings.diff_chars
        shown = diff if len(diff) <= limit else diff[:limit] + "\n… (cut)"
        ask = [*messages[:-1], {"role": "user", "content": (
            messages[-1]["content"] + "\n\nThe change that was actually made:\n```diff\n" + shown + "\n```\n"
            "Write the reasoning a careful engineer would follow from the task to this change (without quoting "
            "the diff), then the plan.")}]
        return self.ask("plan", ask, PlanLabel)

    def description(self, subject: str, diff: str) -> Description | None:
        """A better task description for a weak subject, kept only if the judge scores it at the threshold."""
        shown = diff[: self.settings.diff_chars]
        written = self.ask("description", [
            {"role": "system", "content": "You write one-line task descriptions for commits of a C decompilation project."},
            {"role": "user", "content": f"Commit subject: {subject}\n```diff\n{shown}\n```\nWrite the task this diff carries out, "
                                        "as an imperative one-line description naming the symbols or files involved."},
        ], Description).value
        judged = self.ask("judge", [
            {"role": "system", "content": "You judge task descriptions against diffs."},
            {"role": "user", "content": f"Description: {written.description}\n```diff\n{shown}\n```\nScore 1-5 how exactly "
                                        "the description states what the diff does."},
        ], Judgement).value
        return written if judged.score >= self.settings.judge_threshold else None
