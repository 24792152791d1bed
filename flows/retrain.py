"""The scheduled curate-and-retrain flow: the next round, then train and gate each stage as its own task."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from agent.config import Config, load_config
from curation.retrain import RetrainReport, StageOutcome, curate, train_stage_from_round
from curation.training import RECIPES


@task(cache_policy=NO_CACHE)
def curate_task(home: str | None, config: Config):
    """Collect logged runs and preference pairs, and snapshot the next round (None when nothing is new)."""
    return curate(home, config)


@task(cache_policy=NO_CACHE, task_run_name="train-and-gate-{stage}")
def stage_task(home: str | None, config: Config, built, stage: str, steps: int | None) -> StageOutcome:
    """Train one stage's adapter on the round and gate it."""
    return train_stage_from_round(home, config, built, stage, steps=steps)


@flow(name="cra-curate-retrain")
def curate_retrain(repo: str | None = None, home: str | None = None, config_file: str | None = None,
                   stages: list[str] | None = None, steps: int | None = None) -> dict:
    """Curate the next round and retrain every stage with something new; decisions are a table artifact."""
    config = load_config(Path(repo) if repo else None, path=Path(config_file) if config_file else None)
    built, collected = curate_task(home, config)
    outcomes = [] if built is None else [stage_task(home, config, built, s, steps) for s in stages or list(RECIPES)]
    report = RetrainReport(built.number if built else None, built.snapshot_hash if built else None, collected, outcomes)
    create_table_artifact(key="cra-curate-retrain", description=f"round {report.round}: adapters trained and gated",
                          table=[{"stage": o.stage, "adapter": o.adapter or "", "promoted": o.promoted, "reason": o.reason}
                                 for o in outcomes] or [{"stage": "-", "reason": "nothing new to train on"}])
    return asdict(report)
