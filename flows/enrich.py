"""`cra enrich` as the Prefect flow cra-enrich: the index update, one task run per function asked about (as many at
once as [teacher] concurrency allows), and the re-index of the enriched files, each visible in the UI."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from agent.config import Config, load_config
from bootstrap.enrich import EnrichReport, enrich_repo
from flows.steps import PrefectSteps


@flow(name="cra-enrich", validate_parameters=False)
def enrich_flow(repo: str, config: Config, home: str | None = None, limit: int | None = None,
                files: str | None = None) -> EnrichReport:
    """`enrich_repo` with each step a task."""
    return enrich_repo(Path(repo), config, home=home, limit=limit, files=files, steps=PrefectSteps())


def enrich_refresh(repo: str, home: str | None = None, config_file: str | None = None, limit: int | None = None,
                   files: str | None = None) -> dict:
    """Enrich what changed, from JSON parameters (a deployment's); the report as plain data."""
    config = load_config(Path(repo), path=Path(config_file) if config_file else None)
    return run_enrich_flow(Path(repo), config, home=home, limit=limit, files=files).as_dict()


def run_enrich_flow(repo: Path, config: Config, *, home: str | None, limit: int | None,
                    files: str | None) -> EnrichReport:
    """Run the flow with a thread per concurrent model call."""
    runner = ThreadPoolTaskRunner(max_workers=config.teacher.concurrency)
    return enrich_flow.with_options(task_runner=runner)(str(repo), config, home, limit, files)
