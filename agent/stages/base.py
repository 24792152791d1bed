"""The one small interface every stage shares: typed input and output, a prompt from the index, a record of decisions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from agent.errors import CraError
from agent.llm.budget import PromptBudget, char_budget, fit
from agent.llm.roles import Role
from agent.project import Project
from agent.stages.gold import CommitGold, Lesson
from agent.stages.measures import mean_measure

if TYPE_CHECKING:  # a stage talks to the model through its context; the model layer never imports a stage
    from agent.llm.client import LLM

I = TypeVar("I", bound=BaseModel)  # noqa: E741 - the conventional name for an input type
O = TypeVar("O", bound=BaseModel)  # noqa: E741
V = TypeVar("V")
K = TypeVar("K")


# Bounded text, so a constrained decoder always reaches the end of the JSON.
Short = Annotated[str, Field(max_length=64)]
Reason = Annotated[str, Field(max_length=200)]
RepoPath = Annotated[str, Field(max_length=160)]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StageUnavailable(CraError):
    """A stage that needs a model was asked to run without one."""


class Retry(Exception):
    """A model's answer the stage cannot use; `feedback` goes back to the model for another attempt."""

    def __init__(self, feedback: str) -> None:
        super().__init__(feedback)
        self.feedback = feedback


@dataclass(frozen=True)
class StageRecipe:
    """How one stage's adapter is trained; alpha is always twice the rank."""

    rank: int
    technique: str = "sft"
    learning_rate: float = 2e-4
    epochs: int = 2
    max_steps: int | None = None  # caps every phase; None trains `epochs` full passes
    max_length: int = 4096
    batch_size: int = 4
    grad_accum: int = 4
    curriculum: bool = False  # shortest examples first, in order, instead of shuffled
    dpo_learning_rate: float = 5e-6
    dpo_beta: float = 0.1
    targets: tuple[str, ...] = LORA_TARGETS
    seed: int = 42  # the LoRA's initial weights and the data order: the same data gives the same adapter

    @property
    def alpha(self) -> int:
        """LoRA alpha: twice the rank."""
        return 2 * self.rank


class Decision(BaseModel):
    """One choice a stage made about one candidate: kept for the run log, the Prefect UI and curation."""

    candidate: str
    decision: str
    score: float | None = None
    reason: str = ""


@dataclass
class StageContext:
    """What every stage may read: the task, the indexed checkout, the run's worktree, and the model."""

    task: str
    project: Project
    llm: LLM | None
    worktree: Path | None = None
    run_id: str | None = None
    budgets: dict[str, PromptBudget] = field(default_factory=dict)  # per stage, in the served model's tokens
    code_retries: int = 2

    @property
    def repo(self) -> Path:
        """The checkout's top folder."""
        return self.project.repo

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
    """A pipeline stage and all its facts: its name, types, the model role that answers it, how its adapter is
    trained, its labeller (how a past commit becomes its training pair), how a held-out answer is scored, and how its
    output reads in the Prefect UI.

    Subclasses set the class facts and implement `build_input`, `prompt`, `decisions`, `teach` and `measures`; a stage
    that acts on the model's answer and may send it back (`retries`) overrides `accept` and `rejected`.
    """

    name: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    role: ClassVar[Role]
    recipe: ClassVar[StageRecipe]
    has_rules: ClassVar[bool] = False
    needs_worktree: ClassVar[bool] = False
    retries: ClassVar[bool] = False  # an answer `accept` sends back is asked again, up to the run's retries
    retry_request: ClassVar[str] = "Answer again, corrected."

    @abstractmethod
    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> I:
        """This stage's input from the task and the outputs of the stages before it."""

    @abstractmethod
    def prompt(self, ctx: StageContext, inp: I) -> Prompt:
        """The chat messages for the model, built from the index, within the stage's prompt budget."""

    @abstractmethod
    def decisions(self, inp: I, out: O) -> list[Decision]:
        """The per-candidate choices in `out`, for the log."""

    @abstractmethod
    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        """This stage's training pair for a past commit, from its gold facts and the earlier stages' lessons, with
        `ctx` at the commit's parent."""

    @abstractmethod
    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        """How well a held-out answer matches the gold one, field by field, each in [0, 1] (None: the field does not
        apply to this example; `validated`: the edits passed validation)."""

    def score(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None) -> float:
        """The mean of the measures that apply (1.0 when none does): the gate's one number per answer."""
        return mean_measure(self.measures(gold, predicted, prompt, validated))

    def rules(self, ctx: StageContext, inp: I) -> O:
        """A deterministic, index-based answer without a model (stages with `has_rules`)."""
        raise StageUnavailable(f"the {self.name} stage needs a model; run without --retrieval-only")

    def check(self, ctx: StageContext, inp: I, out: O) -> tuple[O, list[str]]:
        """Confine a model's answer to what the stage allows (known paths, candidates); return it and notes."""
        return out, []

    def accept(self, ctx: StageContext, inp: I, out: O) -> tuple[O, list[str], dict[str, Any]]:
        """Use the model's answer: the answer, notes and details; raise Retry when it cannot be used as it is."""
        out, notes = self.check(ctx, inp, out)
        return out, notes, {}

    def rejected(self, inp: I, out: O, calls: list[str], notes: list[str]) -> StageResult[O]:
        """The result when every answer was sent back (stages with `retries`)."""
        raise StageUnavailable(f"the {self.name} stage could not use any of the model's {len(calls)} answers")

    def summary(self, out: O) -> str:
        """The output as markdown, for the Prefect UI."""
        return f"```json\n{out.model_dump_json(indent=2)}\n```\n"

    def run(self, ctx: StageContext, inp: I, *, use_model: bool) -> StageResult[O]:
        """Answer with the model when asked to (and one is configured), else with the rules; an answer `accept`
        sends back goes to the model again with the feedback, as often as the run allows (`retries`)."""
        if not use_model:
            out = self.rules(ctx, inp)
            return StageResult(out, "rules", self.decisions(inp, out))
        if ctx.llm is None:
            raise StageUnavailable(f"the {self.name} stage needs a model, and none is configured")
        if self.needs_worktree and ctx.worktree is None:
            raise StageUnavailable(f"the {self.name} stage needs the run's worktree")
        prompt = self.prompt(ctx, inp)
        messages, calls, notes = prompt.messages, [], list(prompt.cut)
        tries = ctx.code_retries + 1 if self.retries else 1
        for attempt in range(1, tries + 1):
            answer = ctx.llm.ask(self.name, messages, self.Output)
            calls.append(answer.call_id)
            if answer.fallback_reason and attempt == 1:
                notes.append(f"fallback: {answer.fallback_reason}")
            try:
                out, more, detail = self.accept(ctx, inp, answer.value)
            except Retry as retry:
                notes.append(f"attempt {attempt}: {retry.feedback}")
                messages = [*messages, {"role": "assistant", "content": answer.value.model_dump_json()},
                            {"role": "user", "content": f"{retry.feedback}\n{self.retry_request}"}]
                continue
            detail = {**detail, "attempts": attempt} if self.retries else detail
            return StageResult(out, "model", self.decisions(inp, out), calls, notes + more, detail)
        return self.rejected(inp, answer.value, calls, notes)


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
