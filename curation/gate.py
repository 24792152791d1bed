"""The promotion gate: a candidate adapter, the active one and the base, scored on held-out examples per stage.

Each stage scores its own answers (`Stage.score`); code answers are also validated (parse and build) at the
commit's parent. A candidate is promoted only when it beats both the active adapter and the base; a stage with no
gain two rounds running has plateaued. A project's candidate is scored on that project's held-out commits against
what the project uses now, and promoted for it; a family's candidate is scored and promoted per member project.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from agent import repo as git_repo
from agent.builds import BuildEnvironment
from agent.config import Config
from agent.edits import Edit, EditError, apply_edits
from agent.errors import CraError, InvalidInput, InvalidModelOutput
from agent.llm.client import LLM
from agent.llm.registry import (
    Adapter,
    active_adapters,
    get,
    promote,
    record_evaluation,
    require_files,
)
from agent.llm.resolve import describe_bases, resolve_stage
from agent.llm.serve import load_adapter, reload, unload_adapter
from agent.projects import HOME_SCOPE, members, project_scope, scopes_for
from agent.scratch import scratch_folder
from agent.stages import STAGE_ROLES, stage_named
from agent.store import utc_now
from agent.store.ledger import LEDGER, ledger
from agent.validation import validate
from curation.datasets import Example, family_for, load_examples

MIN_GAIN = 0.01
PLATEAU_ROUNDS = 2
SCRATCH_PREFIX = "cra-gate-"  # + pid: the edited files of one held-out answer


@LEDGER.migration
def l007_gate(con: duckdb.DuckDBPyConnection) -> None:
    """Every gate decision: a candidate's score against the active adapter's and the base's on held-out examples."""
    con.execute(
        """
        CREATE TABLE gate_decisions (
            stage TEXT NOT NULL,
            candidate TEXT NOT NULL,
            round INTEGER,
            candidate_score DOUBLE NOT NULL,
            active TEXT,
            active_score DOUBLE,
            base_score DOUBLE NOT NULL,
            examples INTEGER NOT NULL,
            promoted BOOLEAN NOT NULL,
            reason TEXT NOT NULL,
            decided_at TIMESTAMP NOT NULL
        )
        """
    )


def validates(example: Example, edits: list[dict], env: BuildEnvironment | None) -> bool | None:
    """Whether `edits` apply at the example commit's parent and pass the parse check and the build.

    None when it cannot be checked here (no checkout of the example's repository).
    """
    if env is None or not example.commit_sha:
        return None
    try:
        parent = git_repo.git(env.repo, "rev-parse", "--verify", "--quiet", f"{example.commit_sha}^{{commit}}^"
                              ).decode().strip()
    except git_repo.GitError:
        return None
    with scratch_folder(SCRATCH_PREFIX) as edited:
        touched = {e["path"] for e in edits if git_repo.safe_relative(e["path"])}
        git_repo.write_files_at(env.repo, parent, touched, edited)  # the files the edits touch, at the parent
        try:
            applied = apply_edits(edited, [Edit(**e) for e in edits])
        except EditError:
            return False
        result = validate(edited, sorted({a.path for a in applied}), base_commit=parent, keep_rom=False, env=env)
        return result.success


def build_environment(config: Config, home: str | Path | None, example: Example,
                      known: dict[str, BuildEnvironment | None]) -> BuildEnvironment | None:
    """The build environment of the example's checkout, made once per checkout; None where it is not here."""
    if example.repo not in known:
        try:
            known[example.repo] = BuildEnvironment.of(Path(example.repo), config.validation, home) if example.repo else None
        except CraError:
            known[example.repo] = None
    return known[example.repo]


def replay_gold_edits(config: Config, home: str | Path | None, repo: Path, limit: int) -> list[dict]:
    """The gold edits of the newest `limit` held-out code examples of `repo`, validated through the gate's path."""
    env = BuildEnvironment.of(repo, config.validation, home)
    examples = [e for e in load_examples(home, stage="code", split="eval")
                if e.repo and Path(e.repo).resolve() == env.repo][-limit:]
    if not examples:
        raise InvalidInput(f"no held-out code examples of {env.repo} in the cra home; run `cra bootstrap --repo "
                           f"{env.repo}` first")
    rows = []
    for example in examples:
        started = time.monotonic()
        passed = validates(example, example.output["edits"], env)
        rows.append({"commit": example.commit_sha, "files": sorted({e["path"] for e in example.output["edits"]}),
                     "validated": passed, "seconds": round(time.monotonic() - started, 2)})
    return rows


@LEDGER.migration
def l013_gate_projects(con: duckdb.DuckDBPyConnection) -> None:
    """The project each decision scored on and promoted for (NULL: every project's examples, promoted home-wide)."""
    con.execute("ALTER TABLE gate_decisions ADD COLUMN project TEXT")


@dataclass(frozen=True)
class Evaluation:
    """A model's mean score on a stage's held-out examples."""

    model: str
    score: float
    examples: int
    failures: int
    validation_pass_rate: float | None = None


def answer_all(config: Config, home: str | Path | None, stage: str, model: str, examples: list[Example], *,
               workers: int = 1) -> list[dict | None]:
    """`model`'s answer (an adapter or the base) to each example's prompt, `workers` at a time; None where it gave
    none that fits the stage's schema."""
    bases, measured = describe_bases(config), stage_named(stage)
    resolution = replace(resolve_stage(stage, measured.role, config, [], bases), model=model,
                         source="override", reason="gate evaluation")
    llm = LLM(config, [resolution], home=home, run_id=f"gate:{stage}:{model}")

    def answer(example: Example) -> dict | None:
        try:
            return llm.ask(stage, example.messages, measured.Output).value.model_dump(mode="json")
        except InvalidModelOutput:
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(answer, examples))


def evaluate(config: Config, home: str | Path | None, stage: str, model: str, examples: list[Example], *,
             validate_code: bool = True) -> Evaluation:
    """Ask `model` (an adapter or the base) every held-out prompt of `stage` and score the answers.

    Code answers are also applied at their commit's parent and validated (parse and build), when the repo is here.
    """
    measured = stage_named(stage)
    environments: dict[str, BuildEnvironment | None] = {}
    total, failures, validated = 0.0, 0, []
    for example, answer in zip(examples, answer_all(config, home, stage, model, examples), strict=True):
        if answer is None:
            failures += 1
            continue
        passed = (validates(example, answer["edits"], build_environment(config, home, example, environments))
                  if stage == "code" and validate_code else None)
        if passed is not None:
            validated.append(passed)
        total += measured.score(example.output, answer, example.messages[-1]["content"], passed)
    rate = round(sum(validated) / len(validated), 4) if validated else None
    return Evaluation(model, round(total / len(examples), 4) if examples else 0.0, len(examples), failures, rate)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one candidate."""

    stage: str
    candidate: Evaluation
    active: Evaluation | None
    base: Evaluation
    promoted: bool
    reason: str
    project: str | None = None  # scored on this project's held-out commits and promoted for it; None: every project


def plateaued(home: str | Path | None, stage: str, project: str | None = None) -> bool:
    """Whether the stage's last PLATEAU_ROUNDS gate decisions (for `project`, or home-wide) all promoted nothing."""
    with ledger(home) as con:
        rows = con.execute("SELECT promoted FROM gate_decisions WHERE stage = ? AND project IS NOT DISTINCT FROM ?"
                           " ORDER BY decided_at DESC LIMIT ?", [stage, project, PLATEAU_ROUNDS]).fetchall()
    return len(rows) == PLATEAU_ROUNDS and not any(r[0] for r in rows)


def scored_projects(config: Config, candidate: Adapter, project: str | None = None) -> list[str | None]:
    """The projects a candidate is gated for: its own, its family's members (or the one named), or every project
    together (None) for a home-wide candidate unless one is named."""
    if candidate.project:
        if project not in (None, candidate.project):
            raise InvalidInput(f"adapter {candidate.name} was trained for project {candidate.project}; it is gated "
                               f"on {candidate.project}'s held-out commits, not {project}'s")
        return [candidate.project]
    if candidate.project_family:
        family = members(config, candidate.project_family)
        if project is not None and project not in family:
            raise InvalidInput(f"project {project} is not in family {candidate.project_family} "
                               f"({', '.join(family)}), which adapter {candidate.name} was trained for")
        return [project] if project else list(family)
    return [project]


def active_for(home: str | Path | None, config: Config, stage: str, base_model: str,
               project: str | None) -> Adapter | None:
    """The adapter `project` (or, for None, every project) uses now for `stage` on `base_model`, if any."""
    active = [a for a in active_adapters(home) if a.stage == stage and a.base_model == base_model]
    for scope in scopes_for(config, project):
        found = next((a for a in active if scope in a.active_in), None)
        if found:
            return found
    return None


def gate(config: Config, home: str | Path | None, name: str, *, limit: int | None = None,
         project: str | None = None) -> GateDecision:
    """Score candidate `name`, what `project` uses now and the base on `project`'s held-out examples (every
    project's, for None); promote it for that project (or home-wide) and hot-load it on a gain."""
    candidate = get(home, name)
    stage = candidate.stage
    role = stage_named(stage).role
    server = config.models.role(role)
    if candidate.project_family and project is None:
        raise InvalidInput(f"adapter {name} was trained for family {candidate.project_family}: gate it for one member "
                           f"project at a time ({', '.join(members(config, candidate.project_family))})")
    project = scored_projects(config, candidate, project)[0]
    examples = load_examples(home, stage=stage, split="eval", family=family_for(stage, config),
                             projects=[project] if project else None)[:limit]
    if not examples:
        raise InvalidInput(f"no held-out {stage} examples{f' of {project}' if project else ''} to evaluate {name} on; "
                           "bootstrap more history first")
    load_adapter(server.endpoint, candidate.name, require_files(home, candidate))
    active = active_for(home, config, stage, candidate.base_model, project)
    scored = evaluate(config, home, stage, candidate.name, examples)
    active_eval = evaluate(config, home, stage, active.name, examples) if active and active.name != name else None
    base_eval = evaluate(config, home, stage, describe_bases(config)[role].served_name, examples)
    bar = max(base_eval.score, active_eval.score if active_eval else 0.0)
    promoted = scored.score >= bar + MIN_GAIN
    reason = (f"{scored.score:.3f} beats {bar:.3f} by {scored.score - bar:.3f}" if promoted
              else f"{scored.score:.3f} does not beat {bar:.3f} by {MIN_GAIN}")
    record_evaluation(home, name, {"score": scored.score, "active": active_eval.score if active_eval else None,
                                   "base": base_eval.score, "examples": len(examples), "failures": scored.failures,
                                   "validation_pass_rate": scored.validation_pass_rate})
    with ledger(home) as con:
        con.execute("INSERT INTO gate_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [stage, name, candidate.metadata.get("round"), scored.score, active.name if active_eval else None,
                     active_eval.score if active_eval else None, base_eval.score, len(examples), promoted, reason,
                     utc_now(), project])
    if promoted:
        promote(home, name, scope=project_scope(project) if project else HOME_SCOPE, require_evaluation=True)
        reload(config, role, STAGE_ROLES, home)
    elif not get(home, name).active_in:
        unload_adapter(server.endpoint, name)
    return GateDecision(stage, scored, active_eval, base_eval, promoted, reason, project)


