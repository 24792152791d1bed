"""Precision: the symbols of the scoped files, in tiers primary, supporting and excluded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
    keep_listed,
)
from agent.stages.gold import CommitGold, Lesson
from agent.stages.measures import kept_f1
from agent.stages.scope import ScopeOutput, scoped
from agent.stages.task_analysis import TaskAnalysis

Tier = Literal["primary", "supporting", "excluded"]
MAX_SYMBOLS = 40
PRIMARY_SHARE = 0.5
MAX_PRIMARY = 4
NOTE_CHARS = 200  # of a candidate's history note in the prompt


class SymbolCandidate(BaseModel):
    """A symbol of a scoped file, with how well it matches the task."""

    name: str
    kind: str
    path: str
    line: int
    score: float
    history: str = ""  # what the commits that made and changed it said
    summary: str = ""  # a model's one-line summary of it (`cra enrich`), marked model-written in the prompt


class PrecisionInput(BaseModel):
    """The task, its analysis, the scope and the candidate symbols."""

    task: str
    analysis: TaskAnalysis
    relevant_files: list[str]
    candidates: list[SymbolCandidate]


class SymbolVerdict(BaseModel):
    """One symbol's tier and the reason for it."""

    name: Short
    path: RepoPath
    tier: Tier
    reason: Reason


class PrecisionOutput(BaseModel):
    """The symbols the change touches, those it reads, and the rest."""

    symbols: list[SymbolVerdict] = Field(max_length=MAX_SYMBOLS)


class PrecisionStage(Stage[PrecisionInput, PrecisionOutput]):
    """Which symbols the change needs."""

    name = "precision"
    Input = PrecisionInput
    Output = PrecisionOutput
    role = "reasoning"
    recipe = StageRecipe(rank=16, curriculum=True)
    has_rules = True

    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        """F1 of the primary symbols, and of the symbols kept (primary or supporting)."""
        key = lambda v: (v["path"], v["name"])  # noqa: E731
        return kept_f1({key(v): v["tier"] for v in gold["symbols"]}, {key(v): v["tier"] for v in predicted["symbols"]},
                       "primary", ("primary", "supporting"))

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> PrecisionInput:
        """The symbols of relevant and supporting files, scored by symbol search and names in the task."""
        analysis: TaskAnalysis = done["task_analysis"]
        scope: ScopeOutput = done["scope"]
        files = scoped(scope, "relevant", "supporting")
        hits = ctx.project.search(" ".join([ctx.task, *analysis.symbols]), k=200)
        score = {(h.name, h.path): h.score for h in hits.symbols if h.path in files}
        top = max(score.values(), default=1.0) or 1.0
        named = set(analysis.symbols)
        terms = {t.lower() for t in analysis.key_terms}
        cands = []
        symbols = ctx.project.symbols_in_files(files)
        for sym in symbols:
            value = score.get((sym.name, sym.path), 0.0) / top
            if sym.name in named:
                value = max(value, 1.0) + 1.0
            elif terms and any(t in sym.name.lower() for t in terms):
                value += 0.25
            cands.append(SymbolCandidate(name=sym.name, kind=sym.kind, path=sym.path, line=sym.start_line, score=round(value, 3)))
        cands.sort(key=lambda c: (-c.score, c.path, c.line))
        cands = cands[:MAX_SYMBOLS]
        shown = {(c.name, c.path) for c in cands}
        found = ctx.project.history_notes(shown)
        summaries = ctx.project.summaries(s for s in symbols if (s.name, s.path) in shown)
        for cand in cands:
            cand.history = found.get((cand.name, cand.path), "")[:NOTE_CHARS]
            cand.summary = summaries.get((cand.name, cand.path), "")
        return PrecisionInput(task=ctx.task, analysis=analysis, relevant_files=scoped(scope, "relevant"),
                              candidates=cands)

    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        """The candidates of the files the commit changed in tiers: the symbols it modified primary, those the modified
        code names supporting."""
        inp = self.build_input(ctx, {"task_analysis": earlier["task_analysis"].handed,
                                     "scope": earlier["scope"].handed})
        primary, supporting = set(gold.primary), set(gold.supporting)
        verdicts = []
        for cand in inp.candidates:
            if (cand.path, cand.name) in primary:
                tier, reason = "primary", "the commit modified it"
            elif (cand.path, cand.name) in supporting:
                tier, reason = "supporting", "the modified code uses it"
            else:
                tier, reason = "excluded", "not touched"
            verdicts.append(SymbolVerdict(name=cand.name, path=cand.path, tier=tier, reason=reason))
        return Lesson(PrecisionOutput(symbols=verdicts), self.prompt(ctx, inp).messages, rules=self.rules(ctx, inp))

    def rules(self, ctx: StageContext, inp: PrecisionInput) -> PrecisionOutput:
        """Named symbols and the best matches in relevant files are primary; other matches support."""
        best = max((c.score for c in inp.candidates), default=0.0)
        verdicts, primary = [], 0
        for cand in inp.candidates:
            if cand.score >= 2.0:
                tier, reason = "primary", "named in the task"
            elif (cand.path in inp.relevant_files and best > 0 and cand.score >= PRIMARY_SHARE * best
                  and primary < MAX_PRIMARY and cand.kind in ("function", "global", "macro_function")):
                tier, reason = "primary", f"best match in a relevant file ({cand.score:.2f})"
            elif cand.score > 0:
                tier, reason = "supporting", f"matches the task ({cand.score:.2f})"
            else:
                tier, reason = "excluded", "no match"
            primary += tier == "primary"
            verdicts.append(SymbolVerdict(name=cand.name, path=cand.path, tier=tier, reason=reason))
        return PrecisionOutput(symbols=verdicts)

    def prompt(self, ctx: StageContext, inp: PrecisionInput) -> Prompt:
        """The task and each candidate symbol with its file and score, best first, as many as fit."""
        lines = [f"- {c.name} ({c.kind}, {c.path}:{c.line}, score {c.score:.2f})"
                 + (f"; summary (model-written): {c.summary}" if c.summary else "")
                 + (f"; history: {c.history}" if c.history else "") for c in inp.candidates]
        return budgeted(ctx, self.name, "symbol selector",
                        f"Task: {inp.task}\nAnalysis: {inp.analysis.shown(ctx.budget(self.name))}\n"
                        f"Relevant files: {', '.join(inp.relevant_files)}\n\nCandidate symbols:\n",
                        lines, "\n\nPut each symbol in a tier: primary (the change edits it), supporting (the change "
                               "reads or calls it) or excluded, with a short reason. Use only the symbols listed.",
                        what="candidate symbols")

    def check(self, ctx: StageContext, inp: PrecisionInput, out: PrecisionOutput) -> tuple[PrecisionOutput, list[str]]:
        """Keep verdicts on listed symbols only; the rest are excluded."""
        symbols, notes = keep_listed(
            out.symbols, lambda v: (v.name, v.path), [(c.name, c.path) for c in inp.candidates],
            lambda key: SymbolVerdict(name=key[0], path=key[1], tier="excluded", reason="not placed by the model"), "symbol")
        return PrecisionOutput(symbols=symbols), notes

    def decisions(self, inp: PrecisionInput, out: PrecisionOutput) -> list[Decision]:
        """One row per candidate symbol."""
        score = {(c.name, c.path): c.score for c in inp.candidates}
        return [Decision(candidate=f"{v.path}:{v.name}", decision=v.tier, score=score.get((v.name, v.path)), reason=v.reason)
                for v in out.symbols]
