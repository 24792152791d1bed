"""`cra run` as a Prefect flow: one task per stage, each publishing its decisions as artifacts; and `cra-task`, the
same run as a deployment started from the Prefect UI."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from agent.config import load_config
from agent.pipeline import RunOptions, RunOutcome, TaskRun, drive
from agent.stages.base import Decision, Stage, StageResult
from agent.validation import ValidationResult
from flows.steps import PrefectSteps

MAX_ROWS = 60
NAMED_PER_DECISION = 3  # a decision taken for this many candidates or fewer names them in the summary


def artifact_key(run_id: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) for one run's artifact."""
    return re.sub(r"[^a-z0-9-]+", "-", f"cra-{run_id}-{what}".lower()).strip("-")


def decision_summary(decisions: list[Decision]) -> str:
    """The decisions in one line, e.g. "relevant: src/wallclock.c · supporting: 6 · irrelevant: 16"."""
    by_decision: dict[str, list[str]] = {}
    for d in decisions:
        by_decision.setdefault(d.decision, []).append(d.candidate)
    return " · ".join(f"{decision}: {', '.join(names) if len(names) <= NAMED_PER_DECISION else len(names)}"
                      for decision, names in by_decision.items()) or "no decisions"


def publish_stage(run: TaskRun, stage: Stage, result: StageResult) -> None:
    """The stage's decisions as a table, and its output (with notes) as markdown."""
    rows = [{"candidate": d.candidate, "decision": d.decision, "score": "" if d.score is None else f"{d.score:.3f}",
             "reason": d.reason} for d in result.decisions[:MAX_ROWS]]
    create_table_artifact(key=artifact_key(run.run_id, f"{stage.name}-decisions"), table=rows or [{"decision": "(none)"}],
                          description=f"{stage.name} ({result.source}): {decision_summary(result.decisions)}"[:500])
    notes = "".join(f"- {note}\n" for note in result.notes)
    body = f"### {stage.name} ({result.source})\n\n{notes}\n{stage.summary(result.output)}"
    create_markdown_artifact(key=artifact_key(run.run_id, stage.name), markdown=body, description=f"{stage.name} output")


def publish_outcome(run: TaskRun, outcome: RunOutcome) -> None:
    """The validation checks, the diff and the run's status."""
    validation: ValidationResult | None = outcome.validation
    if validation is not None:
        create_table_artifact(key=artifact_key(run.run_id, "validation"), description=f"validation: success={validation.success}",
                              table=[{"check": c.name, "passed": c.passed, "exit": c.exit_code, "timed out": c.timed_out,
                                      "seconds": round(c.seconds, 2)} for c in validation.checks])
    diff = outcome.patch.read_text(errors="replace") if outcome.patch else "(no change)"
    notes = "".join(f"- {note}\n" for note in outcome.notes)
    create_markdown_artifact(
        key=artifact_key(run.run_id, "result"), description=f"run {outcome.run_id}: {outcome.status}",
        markdown=f"### Run {outcome.run_id}: {outcome.status}\n\n{notes}\nbranch: `{outcome.branch or '-'}`\n\n```diff\n{diff}\n```\n",
    )


@flow(name="cra-run", flow_run_name="{run_name}", validate_parameters=False)
def run_flow(run: TaskRun, run_name: str) -> RunOutcome:
    """The staged agent on one task (`drive`): each stage a task publishing its decisions, every decision an
    artifact, then validation and the outcome."""
    outcome = drive(run, steps=PrefectSteps(), publish=partial(publish_stage, run))
    publish_outcome(run, outcome)
    return outcome


def run_with_prefect(run: TaskRun) -> RunOutcome:
    """Execute `run` as a Prefect flow run (ephemeral Prefect unless PREFECT_API_URL points at a server)."""
    return run_flow(run, run_name=f"{run.run_id}: {run.task.splitlines()[0][:60]}")


@flow(name="cra-task", flow_run_name="{task}")
def task_flow(task: str, repo: str, retrieval_only: bool = False, until: str | None = None,
              include_dirty: bool = False, config: str | None = None, home: str | None = None) -> dict:
    """`cra run` as a deployment, started from the Prefect UI's form: the staged run is its subflow, with the
    stages' decisions as artifacts; returns the outcome (`cra run --json`)."""
    logger = get_run_logger()
    run = TaskRun(task, Path(repo), config=load_config(Path(repo), path=Path(config) if config else None), home=home,
                  options=RunOptions(retrieval_only=retrieval_only, until=until, include_dirty=include_dirty),
                  on_event=logger.info)
    outcome = run_with_prefect(run).as_dict()
    logger.info("run %s %s%s", outcome["run_id"], outcome["status"],
                f": branch {outcome['branch']}, patch {outcome['patch']}" if outcome["branch"] else "")
    return outcome


