"""`cra bootstrap` as a Prefect flow: `bootstrap_repo` with mining (cached), derivation in partitions and the teacher's
labels as tasks.

The task runner is threads by default; `dask` spreads the partitions and teacher calls over a Dask cluster.
`cra-bootstrap-refresh` is the same pass with plain parameters, for the deployment in prefect.yaml.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from prefect import flow
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from agent import repo as git_repo
from agent.config import Config, load_config
from bootstrap.pairs import BootstrapReport, bootstrap_repo
from flows.steps import PrefectSteps


def _mining_key(context, parameters: dict) -> str:
    """Mining is cached per repository HEAD and the set of commits already done."""
    head = git_repo.head_commit(Path(parameters["repo"]))
    done = hashlib.sha256("\n".join(sorted(parameters["exclude"])).encode()).hexdigest()[:16]
    return f"cra-mine-{head}-{done}"


STEP_OPTIONS = {
    "mine": {"cache_key_fn": _mining_key, "cache_expiration": timedelta(days=1), "persist_result": True},
    "teach": {"cache_policy": NO_CACHE, "retries": 1, "retry_delay_seconds": 5},
}


@flow(name="cra-bootstrap", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def bootstrap_flow(repo: str, config: Config, home: str | None = None, use_teacher: bool = False,
                   last: int | None = None, partitions: int = 1) -> BootstrapReport:
    """`bootstrap_repo` with each step a task: mining (cached), derivation in `partitions` parallel slices of
    history, the teacher's labels; re-running only does new commits."""
    return bootstrap_repo(Path(repo), config=config, home=home, use_teacher=use_teacher, last=last,
                          partitions=partitions, steps=PrefectSteps(STEP_OPTIONS))


def run_bootstrap_flow(repo: Path, *, config: Config, home: str | None, use_teacher: bool, last: int | None,
                       partitions: int = 1, dask_address: str | None = None, dask_workers: int = 0) -> BootstrapReport:
    """Run the flow with threads, or on a Dask cluster (an address, or a local one with `dask_workers` processes)."""
    runner = ThreadPoolTaskRunner(max_workers=max(partitions, config.teacher.concurrency))
    if not (dask_address or dask_workers):
        return bootstrap_flow.with_options(task_runner=runner)(str(repo), config, home, use_teacher, last, partitions)
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=dask_address) if dask_address else DaskTaskRunner(
        cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True})
    with shared_api():
        return bootstrap_flow.with_options(task_runner=runner)(str(repo), config, home, use_teacher, last, partitions)


@contextmanager
def shared_api() -> Iterator[None]:
    """One Prefect API for the flow and every Dask worker: the configured server, else one temporary server.

    Without it each worker process would start an ephemeral server of its own on the same database.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=90)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@flow(name="cra-bootstrap-refresh")
def bootstrap_refresh(repo: str, home: str | None = None, config_file: str | None = None, teacher: bool = False,
                      last: int | None = None, partitions: int = 1) -> dict:
    """Bootstrap the commits not done before, from JSON parameters (a deployment's); the report as plain data."""
    config = load_config(Path(repo), path=Path(config_file) if config_file else None)
    report = run_bootstrap_flow(Path(repo), config=config, home=home, use_teacher=teacher, last=last,
                                partitions=partitions)
    return asdict(report)
