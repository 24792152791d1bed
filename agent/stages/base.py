"""The one small interface every stage shares: typed input and output, a prompt from the index, a record of decisions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from agent.errors import CraError
from agent.llm.budget import PromptBudget, char_budget, fit
from agent.llm.client import LLM

I = TypeVar("I", bound=BaseModel)  # noqa: E741 - the conventional name for an input type
O = TypeVar("O", bound=BaseModel)  # noqa: E741
V = TypeVar("V")
K = TypeVar("K")


# Bounded text, so a constrained decoder always reaches the end of the JSON.
Short = Annotated[str, Field(max_length=64)]
Reason = Annotated[str, Field(max_length=200)]
RepoPath = Annotated[str, Field(max_length=160)]


class StageUnavailable(CraError):
    """A stage that needs a model was asked to run without one."""


class Decision(BaseModel):
    """One choice a stage made about one candidate: kept for the run log, the Prefect UI and curation."""

    candidate: str
    decision: str
    score: float | None = None
    reason: str = ""


@dataclass
class StageContext:
    """What every stage may read: the task, the index of the checkout, the run's worktree, and the model."""

    task: str
    repo: Path
    home: str | Path | None
    llm: LLM | None
    worktree: Path | None = None
    run_id: str | None = None
    budgets: dict[str, PromptBudget] = field(default_factory=dict)  # per stage, in the served model's tokens
    code_retries: int = 2

    def budget(self, stage: str) -> PromptBudget:
        """The prompt budget of `stage`: its served model's, else a character estimate (no model serves it)."""
        return self.budgets.get(stage) or char_budget()


@dataclass
class Prompt:
    """A stage's chat messages, and notes on the context its budget left out."""

    messages: list[dict[str, str]]
    cut: list[str] = field(default_factory=list)


@dataclass
class StageResult(Generic[O]):
    """A stage's output, how it was produced, and its decisions."""

    output: O
    source: Literal["model", "rules"]
    decisions: list[Decision]
    call_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


class Stage(ABC, Generic[I, O]):
    """A pipeline stage. Subclasses set `name`, `Input`, `Output` and implement `build_input`, `prompt`, `decisions`."""

    name: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    has_rules: ClassVar[bool] = False

    @abstractmethod
    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> I:
        """This stage's input from the task and the outputs of the stages before it."""

    @abstractmethod
    def prompt(self, ctx: StageContext, inp: I) -> Prompt:
        """The chat messages for the model, built from the index, within the stage's prompt budget."""

    @abstractmethod
    def decisions(self, inp: I, out: O) -> list[Decision]:
        """The per-candidate choices in `out`, for the log."""

    def rules(self, ctx: StageContext, inp: I) -> O:
        """A deterministic, index-based answer without a model (stages with `has_rules`)."""
        raise StageUnavailable(f"the {self.name} stage needs a model; run without --retrieval-only")

    def check(self, ctx: StageContext, inp: I, out: O) -> tuple[O, list[str]]:
        """Confine a model's answer to what the stage allows (known paths, candidates); return it and notes."""
        return out, []

    def run(self, ctx: StageContext, inp: I, *, use_model: bool) -> StageResult[O]:
        """Answer with the model when asked to (and one is configured), else with the rules."""
        if not use_model:
            out = self.rules(ctx, inp)
            return StageResult(out, "rules", self.decisions(inp, out))
        if ctx.llm is None:
            raise StageUnavailable(f"the {self.name} stage needs a model, and none is configured")
        prompt = self.prompt(ctx, inp)
        answer = ctx.llm.ask(self.name, prompt.messages, self.Output)
        out, notes = self.check(ctx, inp, answer.value)
        if answer.fallback_reason:
            notes.insert(0, f"fallback: {answer.fallback_reason}")
        return StageResult(out, "model", self.decisions(inp, out), [answer.call_id], prompt.cut + notes)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying so."""
    return text if len(text) <= limit else text[: max(0, limit - 20)] + "\n… (cut)"


def budgeted(ctx: StageContext, stage: str, role: str, head: str, context: list[str], tail: str, *, what: str,
             joiner: str = "\n") -> Prompt:
    """The system message and one user message: `head`, the `context` items that fit the budget, then `tail`.

    `head` and `tail` (the task and the instructions) are never cut; context items are kept in order while they fit.
    """
    sys = system(role)
    kept, cut = fit(ctx.budget(stage), [sys["content"], head, tail], context, what=what, joiner=joiner)
    return Prompt([sys, {"role": "user", "content": head + joiner.join(kept) + tail}], cut)


def system(role: str) -> dict[str, str]:
    """The system message every stage starts with."""
    return {"role": "system", "content": f"You are cra's {role} for a pret decompilation (C for the GBA). Answer only with JSON that matches the schema."}


def keep_listed(answered: list[V], key: Callable[[V], K], candidates: list[K], missing: Callable[[K], V],
                what: str) -> tuple[list[V], list[str]]:
    """A model's verdicts on the listed candidates only (the first per candidate), the unlisted ones dropped with a
    note, and `missing(candidate)` for each candidate the model left out."""
    allowed = set(candidates)
    kept: dict[K, V] = {}
    notes = []
    for verdict in answered:
        if key(verdict) in allowed:
            kept.setdefault(key(verdict), verdict)
        else:
            notes.append(f"dropped {what} {key(verdict)!r}: not a candidate")
    return [kept.get(c) or missing(c) for c in candidates], notes
