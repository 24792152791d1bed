"""One curate-and-retrain cycle: the next round, an adapter per stage trained from the frozen base, and the gate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.config import Config
from agent.errors import CraError, InvalidInput, ModelUnavailable
from agent.llm.registry import Adapter
from agent.projects import members
from agent.stages import RECIPES, stage_named
from agent.steps import DIRECT, Steps
from curation.datasets import examples_by_id, family_for
from curation.gate import gate, plateaued
from curation.rounds import (
    MIN_SFT_EXAMPLES,
    NothingNew,
    Round,
    build_round,
    code_preferences,
    collect_logged,
    preference_pairs_by_id,
)
from curation.training import MIN_DPO_PAIRS, train_adapter

Progress = Callable[[str], None]


@dataclass
class StageOutcome:
    """What the cycle did for one stage."""

    stage: str
    adapter: str | None = None
    promoted: bool | None = None
    reason: str = ""
    scores: dict[str, float | None] = field(default_factory=dict)


@dataclass
class RetrainReport:
    """A cycle: the round it built (None when nothing was new) and each stage's outcome."""

    round: int | None
    snapshot: str | None
    collected: dict[str, int]
    stages: list[StageOutcome]


def train_from_round(home: str | Path | None, config: Config, built: Round, stage: str, *,
                     steps: int | None = None, project: str | None = None,
                     project_family: str | None = None) -> Adapter:
    """Train `stage` on the round's mix (new + replay, and DPO pairs where the recipe has them) from the frozen base:
    all of it, or only the examples of `project` or of `project_family`'s projects."""
    if project and project_family:
        raise InvalidInput("train for one project (--project) or one family of projects (--family), not both")
    wanted = [project] if project else members(config, project_family) if project_family else None
    family = family_for(stage, config)
    mix = built.mixes.get((stage, family))
    if mix is None:
        others = {f: len(m.new) for (s, f), m in built.mixes.items() if s == stage}
        role = stage_named(stage).role
        waiting = built.waiting.get(f"{stage}/{family}")
        if waiting is not None:
            raise InvalidInput(f"round {built.number} leaves {stage} out: {waiting} new {family} examples, "
                               f"{MIN_SFT_EXAMPLES} needed; they wait for a later round (log more runs)")
        where = (f"; it has {stage} examples for {', '.join(f'{f} ({n} new)' for f, n in sorted(others.items()))}: "
                 f"serve a base of that family as [models.{role}] base, or add {family} examples" if others else
                 "; bootstrap more history or log more runs")
        raise InvalidInput(f"round {built.number} has nothing new for {stage} in the {family} family (the family of "
                           f"[models.{role}] base {config.models.role(role).base}){where}")
    if plateaued(home, stage, project):
        raise InvalidInput(f"{stage} has plateaued: no gain in the last two rounds")
    recipe = replace(RECIPES[stage], **config.training.overrides())
    if steps is not None:
        recipe = replace(recipe, max_steps=steps)
    pairs = preference_pairs_by_id(home, mix.dpo, projects=wanted) if recipe.technique == "sft+dpo" else []
    if len(pairs) < MIN_DPO_PAIRS:
        recipe, pairs = replace(recipe, technique="sft"), []
    sft = [e for e in examples_by_id(home, mix.new + mix.replay) if wanted is None or e.project in wanted]
    if wanted is not None and not sft:
        raise InvalidInput(f"round {built.number} has no {stage} examples of {', '.join(wanted)}; bootstrap "
                           f"{wanted[0]} (`cra bootstrap --repo CHECKOUT`) and curate a new round")
    scope = project or project_family
    return train_adapter(home, stage=stage, base=config.models.role(stage_named(stage).role).base, sft=sft,
                         dpo=pairs or None, name=f"{stage}-{scope}-r{built.number}" if scope else f"{stage}-r{built.number}",
                         recipe=recipe, round=built.number, dataset_hash=built.snapshot_hash if wanted is None else None,
                         project=project, project_family=project_family)


def train_stage_from_round(home: str | Path | None, config: Config, built: Round, stage: str,
                           steps: int | None = None) -> StageOutcome:
    """Train `stage` on the round and gate the candidate; say why when either step does not happen."""
    try:
        adapter = train_from_round(home, config, built, stage, steps=steps)
    except CraError as exc:
        return StageOutcome(stage, reason=f"not trained: {exc}")
    try:
        decision = gate(config, home, adapter.name)
    except ModelUnavailable as exc:
        return StageOutcome(stage, adapter.name, None, f"trained; not gated (no model server): {exc}")
    except InvalidInput as exc:
        return StageOutcome(stage, adapter.name, None, f"trained; not gated: {exc}")
    return StageOutcome(stage, adapter.name, decision.promoted, decision.reason, {
        "candidate": decision.candidate.score, "active": decision.active.score if decision.active else None,
        "base": decision.base.score})


def curate(home: str | Path | None, config: Config, seed: int = 0) -> tuple[Round | None, dict[str, int]]:
    """Collect logged runs and preference pairs, and snapshot the next round (None when nothing is new)."""
    sft, dpo = collect_logged(home, config)
    collected = {"logged_examples": sft, "logged_pairs": dpo, "code_pairs": code_preferences(home)}
    try:
        return build_round(home, seed=seed), collected
    except NothingNew:
        return None, collected


def retrain(home: str | Path | None, config: Config, *, stages: list[str] | None = None, max_steps: int | None = None,
            seed: int = 0, on_progress: Progress = lambda _: None, steps: Steps = DIRECT) -> RetrainReport:
    """Collect logged runs, build the next round, and train and gate each stage that has something new; `steps`
    runs each step (directly, or as Prefect tasks in flows/retrain.py)."""
    built, collected = steps.one("curate", curate, home, config, seed)
    if built is None:
        return RetrainReport(None, None, collected, [StageOutcome(s, reason="nothing new since the last round")
                                                     for s in (stages or RECIPES)])
    outcomes = []
    for stage in stages or list(RECIPES):
        on_progress(f"round {built.number}: {stage}")
        outcomes.append(steps.one(f"train-and-gate-{stage}", train_stage_from_round, home, config, built, stage, max_steps))
    return RetrainReport(built.number, built.snapshot_hash, collected, outcomes)
