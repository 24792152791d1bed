"""The agent's own overhead per run: wall time minus model time (from the call log) minus validation (the build)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import Config
from agent.errors import CraError
from agent.llm.calls import model_seconds
from agent.localization import select_tasks
from agent.pipeline import RunOptions, TaskRun, drive

Progress = Callable[[str], None]


def bench_overhead(
    repo: Path, *, config: Config, home: str | Path | None = None, tasks: int = 5, retrieval_only: bool = True,
    on_progress: Progress = lambda _: None,
) -> dict:
    """Run the newest `tasks` commit subjects of `repo` as tasks (no Prefect) and split each run's wall time."""
    chosen = [t.query for t in select_tasks(repo, last=tasks)]
    rows = []
    for i, task in enumerate(chosen, 1):
        on_progress(f"run {i}/{len(chosen)}: {task}")
        started = time.perf_counter()
        run = TaskRun(task, repo, config=config, home=home, options=RunOptions(retrieval_only=retrieval_only))
        try:
            outcome = drive(run)
            status = outcome.status
        except CraError as exc:
            status = f"error: {exc}"
        wall = time.perf_counter() - started
        model = model_seconds(home, run.run_id)
        build = run.timings.get("validation", 0.0)
        rows.append({"task": task, "status": status, "wall_s": round(wall, 3), "model_s": round(model, 3),
                     "validation_s": round(build, 3), "overhead_s": round(wall - model - build, 3),
                     "stages_s": {k: round(v, 3) for k, v in run.timings.items()}})
    overheads = [r["overhead_s"] for r in rows]
    return {
        "repo": str(repo), "retrieval_only": retrieval_only, "runs": rows,
        "overhead_median_s": round(statistics.median(overheads), 3), "overhead_max_s": round(max(overheads), 3),
        "overhead_first_s": overheads[0],
    }
