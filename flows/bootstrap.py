"""`cra bootstrap` as a Prefect flow: mining (cached), derivation in partitions, teacher labelling mapped over pairs.

The task runner is threads by default; `dask` spreads the partitions and teacher calls over a Dask cluster.
`cra-bootstrap-refresh` is the same pass with plain parameters, for the deployment in prefect.yaml.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from agent import repo as git_repo
from agent.config import Config, load_config
from bootstrap.mining import MinedCommit, MiningReport, mine
from bootstrap.pairs import (
    BootstrapReport,
    DeriveReport,
    derive_commits,
    done_commits,
    label_plan,
    pending_plans,
    select_commits,
    tally,
)
from bootstrap.teacher import Teacher


def _mining_key(context, parameters: dict) -> str:
    """Mining is cached per repository HEAD and the set of commits already done."""
    head = git_repo.head_commit(Path(parameters["repo"]))
    done = hashlib.sha256("\n".join(sorted(parameters["exclude"])).encode()).hexdigest()[:16]
    return f"cra-mine-{head}-{done}"


@task(cache_key_fn=_mining_key, cache_expiration=timedelta(days=1), persist_result=True)
def mine_task(repo: str, exclude: list[str]) -> MiningReport:
    """Mine the history for commits not processed before."""
    return mine(Path(repo), exclude=set(exclude))


@task(cache_policy=NO_CACHE, task_run_name="derive-{part}")
def derive_task(repo: str, commits: list[MinedCommit], config: Config, home: str | None, held: list[str], part: int,
                use_teacher: bool) -> DeriveReport:
    """Derive and store one partition's pairs, in a worktree of its own."""
    teacher = Teacher(config, home) if use_teacher else None
    return derive_commits(Path(repo), commits, config=config, home=home, teacher=teacher, held_out=held)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="teach-{row[2]:.10}")
def label_task(repo: str, row: tuple[str, str, str], config: Config, home: str | None) -> dict:
    """The teacher's reasoning and plan for one plan pair (nothing stored if it fails)."""
    return label_plan(home, Teacher(config, home), Path(repo), row)


def _merge(reports: list[DeriveReport]) -> DeriveReport:
    total = DeriveReport()
    for report in reports:
        total.absorb(report)
    return total


@flow(name="cra-bootstrap", task_runner=ThreadPoolTaskRunner(max_workers=4), validate_parameters=False)
def bootstrap_flow(repo: str, config: Config, home: str | None = None, use_teacher: bool = False,
                   last: int | None = None, partitions: int = 1) -> BootstrapReport:
    """Mine, derive (in `partitions` parallel slices of history) and label; re-running only does new commits."""
    top = git_repo.require_repo(Path(repo))
    started = time.perf_counter()
    mined = mine_task(str(top), sorted(done_commits(home, top)))
    mining_s = time.perf_counter() - started
    chosen, held_out = select_commits(home, top, mined, last)
    held = sorted(held_out)
    size = max(1, -(-len(chosen) // max(1, partitions)))
    parts = [chosen[i:i + size] for i in range(0, len(chosen), size)]
    futures = [derive_task.submit(str(top), part, config, home, held, i, use_teacher) for i, part in enumerate(parts)]
    derived = _merge([f.result() for f in futures])
    labelled = None
    if use_teacher:
        rows = pending_plans(home, top)
        labelled = tally(f.result() for f in label_task.map(unmapped(str(top)), rows, unmapped(config), unmapped(home)))
    return BootstrapReport(str(top), mined.seen, len(mined.commits), dict(mined.dropped), derived, labelled, mining_s)


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
