"""`cra ranker fit` as the Prefect flow cra-ranker-refit: the history read, one task run per anchor, one per level
fitted, and the keep-or-not decision as a table artifact."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from agent.config import project_paths
from agent.repo import require_repo
from bootstrap.ranking import ANCHOR_COMMITS, FitReport, fit_ranker
from flows.steps import PrefectSteps


@flow(name="cra-ranker-refit", validate_parameters=False)
def ranker_flow(repo: str, home: str | None = None, until: str = "HEAD", max_commits: int | None = None,
                every: int = ANCHOR_COMMITS, full: bool = False) -> FitReport:
    """`fit_ranker` with each step a task; whether the fitted ranker was kept is a table artifact."""
    top = require_repo(Path(repo))
    report = fit_ranker(top, project_paths(top, home).ranker, until=until, max_commits=max_commits, every=every,
                        full=full, steps=PrefectSteps())
    create_table_artifact(
        key="cra-ranker-refit", description=f"{report.status}: {report.queries} past commits up to {report.until[:10]}",
        table=[{"level": level, "judged on": judged["queries"], "default Acc@5": judged.get("default_acc@5"),
                "learned Acc@5": judged.get("learned_acc@5"), "kept": judged["kept"]}
               for level, judged in report.validation.items()] or [{"level": "(none)", "kept": False}])
    return report


def ranker_refit(repo: str, home: str | None = None, max_commits: int | None = None, full: bool = False) -> dict:
    """Refit with the commits since the last fit, from JSON parameters (a deployment's); the report as plain data."""
    return asdict(ranker_flow(repo, home, max_commits=max_commits, full=full))
