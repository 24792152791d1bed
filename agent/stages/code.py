"""Code: search/replace edit blocks per file, applied in the run's worktree, with the errors fed back."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, Field

from agent.edits import Edit, EditError, apply_edits, format_feedback
from agent.index.parse import parse_file
from agent.index.symbols import ParsedFile
from agent.stages.base import (
    Decision,
    Prompt,
    RepoPath,
    Retry,
    Stage,
    StageContext,
    StageRecipe,
    StageResult,
    budgeted,
    clip,
)
from agent.stages.gold import CommitGold, Lesson
from agent.stages.plan import Plan
from agent.stages.precision import PrecisionOutput

Block = Annotated[str, Field(max_length=4000)]
EXCERPT_LINES = 120
MAX_EDITS = 12  # edit blocks in one code answer


class Excerpt(BaseModel):
    """Lines of a file the plan touches, numbered as in the worktree."""

    path: str
    start_line: int
    text: str


class CodeInput(BaseModel):
    """The task, the plan and the code it is about."""

    task: str
    plan: Plan
    excerpts: list[Excerpt]


class EditBlock(BaseModel):
    """Replace `search` (copied exactly from the file) with `replace`; an empty search creates a new file."""

    path: RepoPath
    search: Block
    replace: Block


class CodeEdits(BaseModel):
    """The edits that carry out the plan."""

    edits: list[EditBlock] = Field(min_length=1, max_length=MAX_EDITS)


class CodeStage(Stage[CodeInput, CodeEdits]):
    """Edits, applied and checked to apply, with a bounded number of retries."""

    name = "code"
    Input = CodeInput
    Output = CodeEdits
    role = "coding"
    recipe = StageRecipe(rank=16)
    needs_worktree = True
    retries = True
    retry_request = "Send all the edits again, corrected."

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> CodeInput:
        """The plan, with the text of the primary symbols (or the head of each planned file), spans and text both from
        the files the model will edit (the worktree), never from the index, which may hold other edits."""
        plan: Plan = done["plan"]
        precision: PrecisionOutput | None = done.get("precision")
        root = ctx.worktree or ctx.repo
        files = list(dict.fromkeys(step.file for step in plan.steps))
        wanted = {(v.path, v.name) for v in (precision.symbols if precision else []) if v.tier == "primary"}
        wanted |= {(step.file, name) for step in plan.steps for name in step.symbols}
        excerpts = []
        for path in files:
            target = root / path
            if not target.is_file():
                continue
            data = target.read_bytes()
            lines = data.decode("utf-8", errors="replace").splitlines()
            parsed = parse_file(path, data)
            spans = [(s.start_line, s.end_line) for s in parsed.symbols if (path, s.name) in wanted] \
                if isinstance(parsed, ParsedFile) else []
            for start, end in spans or [(1, min(len(lines), EXCERPT_LINES))]:
                end = min(end, start + EXCERPT_LINES - 1, len(lines))
                excerpts.append(Excerpt(path=path, start_line=start, text="\n".join(lines[start - 1:end])))
        return CodeInput(task=ctx.task, plan=plan, excerpts=excerpts)

    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        """The blocks that reproduce the commit exactly, each one's code shown in the prompt; no pair when there are
        none, the facts saying why."""
        if gold.edits_skipped is not None:
            return Lesson(None, facts={"code_skipped": gold.edits_skipped})
        if gold.edits_failed is not None:
            return Lesson(None, facts={"code_failed": gold.edits_failed})
        inp = self.build_input(ctx, {"plan": earlier["plan"].handed, "precision": earlier["precision"].handed})
        shown = "\n".join(e.text for e in inp.excerpts)
        for edit in gold.edits:  # the answer may only edit code the prompt shows
            if edit.search not in shown:
                inp.excerpts.append(Excerpt(path=edit.path, start_line=edit.hunk_line, text=edit.search))
        answer = CodeEdits(edits=[EditBlock(path=e.path, search=e.search, replace=e.replace) for e in gold.edits])
        return Lesson(answer, self.prompt(ctx, inp).messages, facts={"code_exact": True})

    def prompt(self, ctx: StageContext, inp: CodeInput) -> Prompt:
        """The plan and the excerpts (as many as fit, the last one cut short if need be), with the edit format."""
        steps = "\n".join(f"{i}. {s.file}: {s.change}" for i, s in enumerate(inp.plan.steps, 1))
        code = [f"--- {e.path} (from line {e.start_line})\n{e.text}" for e in inp.excerpts]
        return budgeted(ctx, self.name, "C programmer", f"Task: {inp.task}\nPlan: {inp.plan.summary}\n{steps}\n\nCode:\n",
                        code, "\n\nWrite search/replace edits: `search` is copied exactly from the file and matches one "
                              "place only; `replace` is its new text. An empty `search` creates a new file.",
                        what="code excerpts", joiner="\n\n")

    def accept(self, ctx: StageContext, inp: CodeInput, out: CodeEdits) -> tuple[CodeEdits, list[str], dict]:
        """Apply the edits in the worktree; edits that do not apply go back to the model with what went wrong."""
        try:
            applied = apply_edits(ctx.worktree, [Edit(path=b.path, search=b.search, replace=b.replace) for b in out.edits])
        except EditError as exc:
            raise Retry(format_feedback(exc)) from exc
        return out, [], {"applied": [vars(a) for a in applied]}

    def rejected(self, inp: CodeInput, out: CodeEdits, calls: list[str], notes: list[str]) -> StageResult[CodeEdits]:
        """The last answer, marked not applied: the run fails without validation."""
        return StageResult(out, "model", _rows(out, "not applied"), calls, notes,
                           detail={"applied": [], "attempts": len(calls), "failed": True})

    def decisions(self, inp: CodeInput, out: CodeEdits) -> list[Decision]:
        """One row per edit block."""
        return _rows(out, "applied")

    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        """Search blocks found in the prompt's code, the exact gold edits, and, when checked, passing validation."""
        edits = predicted["edits"]
        applies = sum(1 for e in edits if e["search"] and e["search"] in prompt) / len(edits) if edits else 0.0
        exact = float(sorted(json.dumps(e, sort_keys=True) for e in edits)
                      == sorted(json.dumps(e, sort_keys=True) for e in gold["edits"]))
        return {"applies": applies, "exact": exact, "validates": None if validated is None else float(validated)}


def _rows(out: CodeEdits, verdict: str) -> list[Decision]:
    """One decision per edit block: `verdict`, the file, and the first line it replaces."""
    return [Decision(candidate=e.path, decision=verdict if e.search else f"{verdict} (new file)",
                     reason=clip(e.search.splitlines()[0] if e.search else "", 200)) for e in out.edits]
