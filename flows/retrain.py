"""The scheduled curate-and-retrain flow: `curation.retrain.retrain`, each step a Prefect task, and its decisions as
a table artifact."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from agent.config import load_config
from curation.retrain import retrain
from flows.steps import PrefectSteps


@flow(name="cra-curate-retrain")
def curate_retrain(repo: str | None = None, home: str | None = None, config_file: str | None = None,
                   stages: list[str] | None = None, steps: int | None = None) -> dict:
    """Curate the next round and retrain every stage with something new; decisions are a table artifact."""
    config = load_config(Path(repo) if repo else None, path=Path(config_file) if config_file else None)
    report = retrain(home, config, stages=stages, max_steps=steps, steps=PrefectSteps())
    create_table_artifact(key="cra-curate-retrain", description=f"round {report.round}: adapters trained and gated",
                          table=[{"stage": o.stage, "adapter": o.adapter or "", "promoted": o.promoted, "reason": o.reason}
                                 for o in report.stages])
    return asdict(report)
