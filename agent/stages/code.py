"""Code: search/replace edit blocks per file, applied in the run's worktree, with the errors fed back."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from agent.edits import Edit, EditError, apply_edits, format_feedback
from agent.index.query import symbols_in_files
from agent.stages.base import Decision, RepoPath, Stage, StageContext, StageResult, StageUnavailable, clip, system
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

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> CodeInput:
        """The plan, with the text of the primary symbols (or the head of each planned file) from the worktree."""
        plan: Plan = done["plan"]
        precision: PrecisionOutput | None = done.get("precision")
        root = ctx.worktree or ctx.repo
        files = list(dict.fromkeys(step.file for step in plan.steps))
        wanted = {(v.path, v.name) for v in (precision.symbols if precision else []) if v.tier == "primary"}
        wanted |= {(step.file, name) for step in plan.steps for name in step.symbols}
        excerpts = []
        spans = [(s.path, s.start_line, s.end_line) for s in symbols_in_files(ctx.repo, files, home=ctx.home)
                 if (s.path, s.name) in wanted]
        for path in files:
            target = root / path
            if not target.is_file():
                continue
            lines = target.read_text(encoding="utf-8", errors="replace").splitlines()
            mine = [(a, b) for p, a, b in spans if p == path] or [(1, min(len(lines), EXCERPT_LINES))]
            for start, end in mine:
                end = min(end, start + EXCERPT_LINES - 1, len(lines))
                excerpts.append(Excerpt(path=path, start_line=start, text="\n".join(lines[start - 1:end])))
        return CodeInput(task=ctx.task, plan=plan, excerpts=excerpts)

    def prompt(self, ctx: StageContext, inp: CodeInput) -> list[dict[str, str]]:
        """The plan and the excerpts, with the edit format."""
        steps = "\n".join(f"{i}. {s.file}: {s.change}" for i, s in enumerate(inp.plan.steps, 1))
        code = "\n\n".join(f"--- {e.path} (from line {e.start_line})\n{e.text}" for e in inp.excerpts)
        body = (f"Task: {inp.task}\nPlan: {inp.plan.summary}\n{steps}\n\nCode:\n{code}\n\n"
                "Write search/replace edits: `search` is copied exactly from the file and matches one place only; "
                "`replace` is its new text. An empty `search` creates a new file.")
        return [system("C programmer"), {"role": "user", "content": clip(body, ctx.max_prompt_chars)}]

    def run(self, ctx: StageContext, inp: CodeInput, *, use_model: bool) -> StageResult[CodeEdits]:
        """Ask for edits and apply them; an edit that does not apply goes back to the model, a bounded number of times."""
        if not use_model or ctx.llm is None:
            raise StageUnavailable("the code stage needs a model; run without --retrieval-only")
        if ctx.worktree is None:
            raise StageUnavailable("the code stage needs the run's worktree")
        messages = self.prompt(ctx, inp)
        calls, notes = [], []
        for attempt in range(ctx.code_retries + 1):
            answer = ctx.llm.ask(self.name, messages, CodeEdits)
            calls.append(answer.call_id)
            if answer.fallback_reason and attempt == 0:
                notes.append(f"fallback: {answer.fallback_reason}")
            edits = [Edit(path=b.path, search=b.search, replace=b.replace) for b in answer.value.edits]
            try:
                applied = apply_edits(ctx.worktree, edits)
            except EditError as exc:
                feedback = format_feedback(exc)
                notes.append(f"attempt {attempt + 1}: {feedback}")
                messages = [*messages, {"role": "assistant", "content": answer.value.model_dump_json()},
                            {"role": "user", "content": feedback + "\nSend all the edits again, corrected."}]
                continue
            return StageResult(answer.value, "model", self.decisions(inp, answer.value), calls, notes,
                               detail={"applied": [vars(a) for a in applied], "attempts": attempt + 1})
        return StageResult(answer.value, "model", self.decisions(inp, answer.value, failed=True), calls, notes,
                           detail={"applied": [], "attempts": ctx.code_retries + 1, "failed": True})

    def decisions(self, inp: CodeInput, out: CodeEdits, failed: bool = False) -> list[Decision]:
        """One row per edit block."""
        verdict = "not applied" if failed else "applied"
        return [Decision(candidate=e.path, decision=verdict if e.search else f"{verdict} (new file)",
                         reason=clip(e.search.splitlines()[0] if e.search else "", 200)) for e in out.edits]
