"""Plan: ordered steps naming files, symbols and the change, from the scope and precision results."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent.edits import resolve_in_repo
from agent.errors import PathOutsideRepo
from agent.stages.base import (
    Decision,
    Prompt,
    Reason,
    RepoPath,
    Short,
    Stage,
    StageContext,
    StageRecipe,
    budgeted,
)
from agent.stages.gold import CommitGold, Lesson
from agent.stages.measures import f1, order_agreement
from agent.stages.precision import PrecisionOutput
from agent.stages.scope import ScopeOutput, scoped
from agent.stages.task_analysis import TaskAnalysis


class PlanInput(BaseModel):
    """The task, its analysis, the scoped files and the primary and supporting symbols."""

    task: str
    analysis: TaskAnalysis
    files: list[str]
    primary: list[str]
    supporting: list[str]


class PlanStep(BaseModel):
    """One change to one file."""

    file: RepoPath
    symbols: list[Short] = Field(max_length=6)
    change: Reason


class Plan(BaseModel):
    """What to change, in order."""

    summary: Reason
    steps: list[PlanStep] = Field(min_length=1, max_length=8)


class PlanStage(Stage[PlanInput, Plan]):
    """Ordered steps for the code stage."""

    name = "plan"
    Input = PlanInput
    Output = Plan
    role = "reasoning"
    recipe = StageRecipe(rank=32, technique="sft+dpo", learning_rate=1e-4)

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> PlanInput:
        """Scoped files and tiered symbols."""
        scope: ScopeOutput = done["scope"]
        precision: PrecisionOutput = done["precision"]
        return PlanInput(
            task=ctx.task, analysis=done["task_analysis"], files=scoped(scope, "relevant", "supporting"),
            primary=[f"{v.path}:{v.name}" for v in precision.symbols if v.tier == "primary"],
            supporting=[f"{v.path}:{v.name}" for v in precision.symbols if v.tier == "supporting"],
        )

    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        """A step per code file the commit changed, headers first, naming its modified symbols and hunks; the prompt
        is built on the commit's analysis, not the rules' (the teacher may replace the plan later)."""
        inp = self.build_input(ctx, {"task_analysis": earlier["task_analysis"].output, "scope": earlier["scope"].handed,
                                     "precision": earlier["precision"].handed})
        what = {"documentation": "document", "rename": "rename in"}.get(gold.kind, "change")
        steps = []
        for path in sorted(gold.code_files, key=lambda p: (not p.endswith(".h"), gold.code_files.index(p))):
            names = [name for p, name in gold.primary if p == path][:6]
            n = gold.hunks[path]
            steps.append(PlanStep(file=path, symbols=names,
                                  change=f"{what} {', '.join(names) or 'the file'} ({n} hunk{'s' * (n != 1)})"[:200]))
        return Lesson(Plan(summary=gold.description[:200], steps=steps[:8]), self.prompt(ctx, inp).messages)

    def prompt(self, ctx: StageContext, inp: PlanInput) -> Prompt:
        """The task with the files and symbols to work from (symbols as many as fit)."""
        symbols = [f"- {name} (primary)" for name in inp.primary] + [f"- {name} (supporting)" for name in inp.supporting]
        return budgeted(ctx, self.name, "planner",
                        f"Task: {inp.task}\nAnalysis: {inp.analysis.shown(ctx.budget(self.name))}\n"
                        f"Files: {', '.join(inp.files)}\nSymbols:\n", symbols or ["-"],
                        "\n\nWrite the plan: a one-line summary and ordered steps, each naming one file, the symbols it "
                        "changes and the change in one sentence. Keep the ROM byte-identical when the analysis says so.",
                        what="symbols")

    def check(self, ctx: StageContext, inp: PlanInput, out: Plan) -> tuple[Plan, list[str]]:
        """Drop steps whose file would leave the repository."""
        root = ctx.worktree or ctx.repo
        steps, notes = [], []
        for step in out.steps:
            try:
                resolve_in_repo(root, step.file)
            except PathOutsideRepo:
                notes.append(f"dropped a step on {step.file!r}: outside the repository")
            else:
                steps.append(step)
        return Plan.model_construct(summary=out.summary, steps=steps), notes

    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        """F1 of the files the steps touch, and how well their order agrees with the gold order."""
        gold_files = list(dict.fromkeys(s["file"] for s in gold["steps"]))
        got_files = list(dict.fromkeys(s["file"] for s in predicted["steps"]))
        return {"files_f1": f1(set(gold_files), set(got_files)), "order": order_agreement(gold_files, got_files)}

    def summary(self, out: Plan) -> str:
        """The plan's summary and its numbered steps."""
        steps = "".join(f"{i}. `{s.file}` {', '.join(s.symbols)}: {s.change}\n" for i, s in enumerate(out.steps, 1))
        return f"{out.summary}\n\n{steps}"

    def decisions(self, inp: PlanInput, out: Plan) -> list[Decision]:
        """One row per step, in order."""
        return [Decision(candidate=step.file, decision=f"step {i}", reason=f"{step.change} [{', '.join(step.symbols)}]"[:200])
                for i, step in enumerate(out.steps, 1)]
