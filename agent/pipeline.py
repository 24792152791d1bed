"""One task run: the stages in order, the worktree, validation and the patch, every step in the run log.

`TaskRun` is the library both the `cra run` command and the Prefect flow drive, step by step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from agent import projects, runs, workspace
from agent import repo as git_repo
from agent.builds import BuildEnvironment
from agent.config import Config
from agent.errors import InvalidInput, InvalidModelOutput
from agent.index.build import update_index
from agent.llm.budget import PromptBudget, budget_for
from agent.llm.client import LLM
from agent.llm.resolve import resolve_all
from agent.project import Project
from agent.stages import PIPELINE, RETRIEVAL_STAGES, STAGE_NAMES, STAGE_ROLES
from agent.stages.base import Stage, StageContext, StageResult
from agent.steps import DIRECT, Steps
from agent.validation import ValidationResult, validate

MAX_TASK_CHARS = 4000
Events = Callable[[str], None]


@dataclass
class RunOptions:
    """How to run a task."""

    retrieval_only: bool = False
    until: str | None = None
    include_dirty: bool = False

    def stages(self) -> list[Stage]:
        """The stages this run goes through, in order."""
        names = RETRIEVAL_STAGES if self.retrieval_only else STAGE_NAMES
        if self.until is not None:
            if self.until not in STAGE_NAMES:
                raise InvalidInput(f"unknown stage {self.until!r} for --until; stages are {', '.join(STAGE_NAMES)}")
            if self.until not in names:
                raise InvalidInput(f"--retrieval-only runs {', '.join(names)}; it cannot go on to {self.until}")
            names = names[: names.index(self.until) + 1]
        return [s for s in PIPELINE if s.name in names]


@dataclass
class RunOutcome:
    """What a run produced."""

    run_id: str
    status: str
    success: bool | None
    base_commit: str
    results: dict[str, StageResult]
    validation: ValidationResult | None = None
    patch: Path | None = None
    branch: str | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The outcome as JSON-ready data: status, branch and patch, each stage's output and notes, validation."""
        return {
            "run_id": self.run_id, "status": self.status, "success": self.success, "branch": self.branch,
            "patch": str(self.patch) if self.patch else None, "notes": self.notes, "timings": self.timings,
            "stages": {name: {"source": r.source, "output": r.output.model_dump(mode="json"), "notes": r.notes}
                       for name, r in self.results.items()},
            "validation": self.validation.model_dump(mode="json") if self.validation else None,
        }


class TaskRun:
    """A task run, advanced one step at a time: `prepare`, `run_stage` for each stage, `finish` (or `fail`)."""

    def __init__(self, task: str, repo: Path, *, config: Config, options: RunOptions, home: str | Path | None = None,
                 on_event: Events = lambda _: None) -> None:
        text = task.strip()
        if not text:
            raise InvalidInput("the task is empty; describe the change, e.g. \"Rename sub_80A1234 to CB2_InitWallClock\"")
        if len(text) > MAX_TASK_CHARS:
            raise InvalidInput(f"the task is {len(text):,} characters; keep it under {MAX_TASK_CHARS:,} (a commit-subject-like "
                               "description plus a few details)")
        self.task, self.config, self.options, self.home, self.say = text, config, options, home, on_event
        self.repo = git_repo.require_repo(repo)
        self.plan = options.stages()
        self.run_id = runs.new_run_id()
        self.done: dict[str, BaseModel] = {}
        self.results: dict[str, StageResult] = {}
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}
        self.ws: workspace.Workspace | None = None
        self.builds: BuildEnvironment | None = None
        self.ctx: StageContext | None = None
        self.base_commit = ""
        self.failed_stage: str | None = None

    @property
    def needs_model(self) -> bool:
        """Whether any planned stage asks a model."""
        return not self.options.retrieval_only

    @property
    def edits(self) -> bool:
        """Whether the run reaches the code stage."""
        return any(s.name == "code" for s in self.plan)

    def prepare(self) -> None:
        """Bring the index up to date, open the run in the log, and make the worktree if the run edits."""
        started = time.perf_counter()
        self.base_commit = git_repo.head_commit(self.repo)
        runs.start_run(self.home, self.run_id, task=self.task, repo=self.repo, base_commit=self.base_commit,
                       options=vars(self.options))
        try:
            self._refresh_index()
            project = Project.open(self.repo, self.home)
            dirty = workspace.dirty_paths(self.repo)
            if dirty and not self.options.include_dirty:
                self.notes.append(f"the run starts from HEAD {self.base_commit[:10]}; {len(dirty)} uncommitted file(s) are "
                                  "not included (use --include-dirty to start from the working state)")
            if self.edits:
                self.builds = project.builds(self.config.validation)
                self.builds.carried()  # a missing build tool stops the run before any model is asked
                self.ws = workspace.create_workspace(self.repo, self.run_id, home=self.home,
                                                     include_dirty=self.options.include_dirty)
            known = projects.register(self.home, self.repo, self.config)
            llm = (LLM(self.config, resolve_all(self.config, self.home, STAGE_ROLES, known.name), home=self.home,
                       run_id=self.run_id) if self.needs_model else None)
        except BaseException as exc:
            self.fail(exc)
            raise
        self.ctx = StageContext(task=self.task, project=project, llm=llm,
                                worktree=self.ws.path if self.ws else None, run_id=self.run_id,
                                budgets=self._budgets() if self.needs_model else {})
        self.timings["prepare"] = time.perf_counter() - started

    def _budgets(self) -> dict[str, PromptBudget]:
        """Each planned stage's prompt budget, in the tokens of the base its role serves."""
        models, by_base = self.config.models, {}
        for stage in self.plan:
            base = models.role(stage.role).base
            if base not in by_base:
                by_base[base] = budget_for(base, max_model_len=self.config.serve.max_model_len,
                                           answer_tokens=models.max_tokens)
        return {stage.name: by_base[models.role(stage.role).base] for stage in self.plan}

    def _refresh_index(self) -> None:
        """Index the checkout first if it never was, or bring a stale index forward incrementally."""
        started = time.perf_counter()
        report = update_index(self.repo, self.home, self.say)
        if report.changed or report.full:
            self.notes.append(f"index {'built' if report.full else 'updated'} first ({report.parsed} files parsed)")
        self.timings["index"] = time.perf_counter() - started

    def run_stage(self, stage: Stage) -> StageResult:
        """Run one stage on the outputs so far and log its input, output and decisions."""
        assert self.ctx is not None, "prepare() first"
        started = time.perf_counter()
        inp = None
        try:
            inp = stage.build_input(self.ctx, self.done)
            self.ctx.project.close()  # the input's reads of the index shared one connection; none is held while
            result = stage.run(self.ctx, inp, use_model=self.needs_model)  # a model answers (cra index may write)
        except BaseException as exc:
            runs.record_stage(self.home, self.run_id, len(self.results), stage.name, inp, None,
                              time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, InvalidModelOutput):
                self.failed_stage = stage.name
                self.notes.append(f"the {stage.name} stage failed: {exc}")
            raise
        finally:
            self.ctx.project.close()  # nor between stages, nor through validation
        seconds = time.perf_counter() - started
        self.timings[stage.name] = seconds
        runs.record_stage(self.home, self.run_id, len(self.results), stage.name, inp, result, seconds)
        self.done[stage.name] = result.output
        self.results[stage.name] = result
        return result

    def validate(self) -> ValidationResult | None:
        """Check the worktree after the code stage: parse, build, and (for ROM-preserving tasks) match."""
        code = self.results.get("code")
        if self.ws is None or self.builds is None or code is None or code.detail.get("failed"):
            return None
        started = time.perf_counter()
        analysis = self.done.get("task_analysis")
        result = validate(self.ws.path, sorted(git_repo.changed_since(self.ws.path, self.base_commit)),
                          base_commit=self.base_commit, keep_rom=bool(analysis and analysis.keep_rom), env=self.builds)
        self.timings["validation"] = time.perf_counter() - started
        return result

    def finish(self, validation: ValidationResult | None = None) -> RunOutcome:
        """Write the patch, close the run in the log, and remove the worktree (the branch stays if there is a patch)."""
        patch = None
        code = self.results.get("code")
        if self.ws is not None:
            try:
                patch = workspace.finish(self.ws, f"cra: {self.task.splitlines()[0][:72]}")
            finally:
                workspace.remove_worktree(self.ws, keep_branch=patch is not None)  # the log names a kept branch
        if self.failed_stage:
            status, success = "failed", False
        elif code is None:
            status, success = "succeeded", None
        elif code.detail.get("failed"):
            status, success = "failed", False
            self.notes.append("the edits did not apply after the allowed retries")
        else:
            success = bool(validation and validation.success)
            status = "succeeded" if success else "failed"
        analysis = self.done.get("task_analysis")
        runs.finish_run(
            self.home, self.run_id, status=status, success=success, kind=getattr(analysis, "kind", None),
            keep_rom=getattr(analysis, "keep_rom", None), rom_changed=validation.rom_changed if validation else None,
            branch=self.ws.branch if self.ws and patch else None, patch=str(patch) if patch else None,
            timings=self.timings, validation=validation.model_dump() if validation else None,
        )
        return RunOutcome(self.run_id, status, success, self.base_commit, self.results, validation, patch,
                          self.ws.branch if self.ws and patch else None, self.notes, self.timings)

    def fail(self, exc: BaseException) -> None:
        """Close the run as an error (or killed, on an interrupt), keeping what was logged."""
        if self.ws is not None:
            workspace.remove_worktree(self.ws, keep_branch=False)
        status = "killed" if isinstance(exc, KeyboardInterrupt) else "error"
        runs.finish_run(self.home, self.run_id, status=status, success=False, timings=self.timings,
                        error=f"{type(exc).__name__}: {exc}")


def drive(run: TaskRun, *, steps: Steps = DIRECT,
          publish: Callable[[Stage, StageResult], None] = lambda stage, result: None) -> RunOutcome:
    """Take a run start to finish: each stage, then validation, a step (`steps`: directly, or a Prefect task each
    in flows/run.py); `publish` sees each stage's result inside its step."""

    def stage_step(stage: Stage) -> StageResult:
        result = run.run_stage(stage)
        publish(stage, result)
        return result

    run.prepare()
    try:
        for stage in run.plan:
            run.say(f"{stage.name}…")
            try:
                steps.one(stage.name, stage_step, stage)
            except InvalidModelOutput:
                return run.finish()  # a model that cannot answer fails the run; the log has why
        return run.finish(steps.one("validation", run.validate) if run.edits else None)
    except BaseException as exc:
        run.fail(exc)
        raise
