"""The promotion gate: a candidate adapter, the active one and the base, scored on held-out examples per stage.

Scores: scope and precision, macro F1 of the labels; task analysis, field accuracy; plan, files and their order;
code, the share of edits that apply to the shown code, the exact-match rate, and whether the edits pass validation
(parse and build) at the commit's parent. A candidate is promoted only when
it beats both the active adapter and the base; a stage with no gain two rounds running has plateaued.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from agent import repo as git_repo
from agent.builds import BuildEnvironment
from agent.config import Config, ledger_path
from agent.edits import Edit, EditError, apply_edits
from agent.errors import CraError, InvalidInput, InvalidModelOutput
from agent.llm.client import LLM
from agent.llm.resolve import describe_bases, resolve_stage
from agent.llm.roles import STAGE_ROLES
from agent.llm.serve import load_adapter, reload, unload_adapter
from agent.stages import PIPELINE
from agent.store import opened, utc_now
from agent.store.ledger import LEDGER
from agent.scratch import scratch_folder
from agent.validation import validate
from curation.datasets import Example, family_for, load_examples
from curation.registry import Adapter, active_adapters, get, promote, record_evaluation, require_files

MIN_GAIN = 0.01
PLATEAU_ROUNDS = 2
SCRATCH_PREFIX = "cra-gate-"  # + pid: the edited files of one held-out answer
OUTPUTS = {stage.name: stage.Output for stage in PIPELINE}


def f1(gold: set, predicted: set) -> float:
    """F1 of two sets (1.0 when both are empty)."""
    if not gold and not predicted:
        return 1.0
    hits = len(gold & predicted)
    return 0.0 if not hits else 2 * hits / (len(gold) + len(predicted))


def macro_f1(gold: dict, predicted: dict, labels: tuple[str, ...], default: str) -> float:
    """Macro F1 over `labels` of per-item labels; items the prediction leaves out get `default`."""
    scores = []
    for label in labels:
        want = {k for k, v in gold.items() if v == label}
        got = {k for k in gold if predicted.get(k, default) == label}
        if want or got:
            scores.append(f1(want, got))
    return sum(scores) / len(scores) if scores else 1.0


def order_agreement(gold: list[str], predicted: list[str]) -> float:
    """The share of gold pairs (a before b) the prediction keeps in order."""
    common = [p for p in gold if p in predicted]
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1:]]
    if not pairs:
        return 1.0 if common else 0.0
    return sum(predicted.index(a) < predicted.index(b) for a, b in pairs) / len(pairs)


def score(stage: str, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None) -> float:
    """How well one answer matches the gold answer, in [0, 1], by the stage's measure.

    For the code stage, `validated` is whether the edits passed validation at the commit's parent, when checked.
    """
    if stage == "task_analysis":
        return (float(gold["kind"] == predicted["kind"]) + float(gold["keep_rom"] == predicted["keep_rom"])
                + f1(set(gold["symbols"]), set(predicted["symbols"])) + f1(set(gold["files"]), set(predicted["files"]))) / 4
    if stage == "scope":
        return macro_f1({v["path"]: v["label"] for v in gold["files"]}, {v["path"]: v["label"] for v in predicted["files"]},
                        ("relevant", "supporting", "irrelevant"), "irrelevant")
    if stage == "precision":
        key = lambda v: (v["path"], v["name"])  # noqa: E731
        return macro_f1({key(v): v["tier"] for v in gold["symbols"]}, {key(v): v["tier"] for v in predicted["symbols"]},
                        ("primary", "supporting", "excluded"), "excluded")
    if stage == "plan":
        gold_files = list(dict.fromkeys(s["file"] for s in gold["steps"]))
        got_files = list(dict.fromkeys(s["file"] for s in predicted["steps"]))
        return (f1(set(gold_files), set(got_files)) + order_agreement(gold_files, got_files)) / 2
    edits = predicted["edits"]
    applies = sum(1 for e in edits if e["search"] and e["search"] in prompt) / len(edits) if edits else 0.0
    exact = float(sorted(json.dumps(e, sort_keys=True) for e in edits)
                  == sorted(json.dumps(e, sort_keys=True) for e in gold["edits"]))
    return (applies + exact) / 2 if validated is None else (applies + exact + float(validated)) / 3


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


@dataclass(frozen=True)
class Evaluation:
    """A model's mean score on a stage's held-out examples."""

    model: str
    score: float
    examples: int
    failures: int
    validation_pass_rate: float | None = None


def evaluate(config: Config, home: str | Path | None, stage: str, model: str, examples: list[Example], *,
             validate_code: bool = True) -> Evaluation:
    """Ask `model` (an adapter or the base) every held-out prompt of `stage` and score the answers.

    Code answers are also applied at their commit's parent and validated (parse and build), when the repo is here.
    """
    bases = describe_bases(config)
    resolution = replace(resolve_stage(stage, config, [], bases), model=model, source="override", reason="gate evaluation")
    llm = LLM(config, home=home, run_id=f"gate:{stage}:{model}", resolutions=[resolution])
    environments: dict[str, BuildEnvironment | None] = {}
    total, failures, validated = 0.0, 0, []
    for example in examples:
        try:
            answer = llm.ask(stage, example.messages, OUTPUTS[stage]).value.model_dump(mode="json")
        except InvalidModelOutput:
            failures += 1
            continue
        passed = (validates(example, answer["edits"], build_environment(config, home, example, environments))
                  if stage == "code" and validate_code else None)
        if passed is not None:
            validated.append(passed)
        total += score(stage, example.output, answer, example.messages[-1]["content"], passed)
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


def plateaued(home: str | Path | None, stage: str) -> bool:
    """Whether the stage's last PLATEAU_ROUNDS gate decisions all promoted nothing."""
    with opened(ledger_path(home), schema=LEDGER) as con:
        rows = con.execute("SELECT promoted FROM gate_decisions WHERE stage = ? ORDER BY decided_at DESC LIMIT ?",
                           [stage, PLATEAU_ROUNDS]).fetchall()
    return len(rows) == PLATEAU_ROUNDS and not any(r[0] for r in rows)


def gate(config: Config, home: str | Path | None, name: str, *, limit: int | None = None) -> GateDecision:
    """Score candidate `name`, the active adapter and the base on held-out examples; promote and hot-load on a gain."""
    candidate = get(home, name)
    stage = candidate.stage
    server = config.models.role(STAGE_ROLES[stage])
    examples = load_examples(home, stage=stage, split="eval", family=family_for(stage, config))[:limit]
    if not examples:
        raise InvalidInput(f"no held-out {stage} examples to evaluate {name} on; bootstrap more history first")
    load_adapter(server.endpoint, candidate.name, require_files(home, candidate))
    active: Adapter | None = next((a for a in active_adapters(home) if a.stage == stage and a.base_model == candidate.base_model), None)
    scored = evaluate(config, home, stage, candidate.name, examples)
    active_eval = evaluate(config, home, stage, active.name, examples) if active and active.name != name else None
    base_eval = evaluate(config, home, stage, describe_bases(config)[STAGE_ROLES[stage]].served_name, examples)
    bar = max(base_eval.score, active_eval.score if active_eval else 0.0)
    promoted = scored.score >= bar + MIN_GAIN
    reason = (f"{scored.score:.3f} beats {bar:.3f} by {scored.score - bar:.3f}" if promoted
              else f"{scored.score:.3f} does not beat {bar:.3f} by {MIN_GAIN}")
    record_evaluation(home, name, {"score": scored.score, "active": active_eval.score if active_eval else None,
                                   "base": base_eval.score, "examples": len(examples), "failures": scored.failures,
                                   "validation_pass_rate": scored.validation_pass_rate})
    with opened(ledger_path(home), schema=LEDGER) as con:
        con.execute("INSERT INTO gate_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [stage, name, candidate.metadata.get("round"), scored.score, active.name if active_eval else None,
                     active_eval.score if active_eval else None, base_eval.score, len(examples), promoted, reason,
                     utc_now()])
    if promoted:
        promote(home, name, require_evaluation=True)
        reload(config, STAGE_ROLES[stage], home)
    else:
        unload_adapter(server.endpoint, name)
    return GateDecision(stage, scored, active_eval, base_eval, promoted, reason)


