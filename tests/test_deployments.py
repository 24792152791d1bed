"""prefect.yaml's deployments, for real: a local Prefect server, the `cra-process` work pool, `prefect deploy` from the
repository root, `prefect deployment run`, and a process worker that runs the bootstrap into a cra home's ledger."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import yaml

from agent.config import ledger_path
from flows.run import artifact_key
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.prefect_server import PrefectServer, prefect_executable, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL, FLOW, DEPLOYMENT = "cra-process", "cra-bootstrap-refresh", "cra-bootstrap-refresh"
TASK_FLOW = TASK_DEPLOYMENT = "cra-task"
TASK = "Use window constants in wallclock"
LAST = 3
RUN_WAIT_S = 150
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = pytest.mark.timeout(300)


def prefect(args: list[str], env: dict[str, str]) -> str:
    """A `prefect` command run from the repository root, as a user would (prefect.yaml is found there)."""
    done = subprocess.run([prefect_executable(), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class DeployedRun:
    repo: Path
    home: Path
    deployment: dict
    flow_run: dict
    task_run: dict  # the cra-task deployment's flow run, started from the same deploy
    worker_log: str


@pytest.fixture(scope="module")
def deployed_run(prefect_server: PrefectServer, decomp_template: DecompRepo,
                 tmp_path_factory: pytest.TempPathFactory) -> DeployedRun:
    """Deploy cra-bootstrap-refresh and cra-task on a copy of the fixture decomp, run each once on a process worker."""
    work = tmp_path_factory.mktemp("deployment")
    repo, home = work / "pokefixture", work / "cra-home"
    shutil.copytree(decomp_template.path, repo, symlinks=True)
    # The worker's environment is its flow runs': this checkout importable (installed or not), a cra home of its own.
    env = prefect_server.client_env(work / "prefect-client-home")
    env.update(PYTHONPATH=str(REPO_ROOT), CRA_HOME=str(work / "worker-cra-home"), CRA_CONFIG=str(work / "config.toml"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

    prefect(["work-pool", "create", POOL, "--type", "process"], env)
    for name in (DEPLOYMENT, TASK_DEPLOYMENT):  # one per command, as the README says: Prefect ignores --param otherwise
        prefect(["--no-prompt", "deploy", "--name", name, "--param", f"repo={repo}", "--param", f"home={home}"], env)
    started = prefect(["deployment", "run", f"{FLOW}/{DEPLOYMENT}", "--param", f"last={LAST}"], env)
    task_started = prefect(["deployment", "run", f"{TASK_FLOW}/{TASK_DEPLOYMENT}", "--param", f"task={TASK}",
                            "--param", "retrieval_only=true", "--param", "until=precision"], env)
    flow_run_id, task_run_id = (re.search(r"UUID: ([0-9a-f-]{36})", out) for out in (started, task_started))
    assert flow_run_id and task_run_id, (started, task_started)

    log = work / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([prefect_executable(), "worker", "start", "--pool", POOL, "--run-once"], env=env,
                                  cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_WAIT_S
        runs = [prefect_server.get(f"/flow_runs/{found[1]}") for found in (flow_run_id, task_run_id)]
        while any(run["state_type"] not in TERMINAL for run in runs):
            if time.monotonic() > deadline:
                pytest.fail(f"flow runs still {[run['state_type'] for run in runs]} after {RUN_WAIT_S} s; worker log:\n"
                            f"{log.read_text(errors='replace')[-4000:]}")
            time.sleep(1)  # polling the flow runs' states
            runs = [prefect_server.get(f"/flow_runs/{found[1]}") for found in (flow_run_id, task_run_id)]
        worker.wait(30)  # --run-once: the worker leaves once its runs are done
    finally:
        stop(worker)
    deployment = prefect_server.get(f"/deployments/name/{FLOW}/{DEPLOYMENT}")
    return DeployedRun(repo, home, deployment, runs[0], runs[1], log.read_text(errors="replace"))


def test_the_deployment_comes_from_prefect_yaml(deployed_run: DeployedRun) -> None:
    deployment = deployed_run.deployment
    assert deployment["entrypoint"] == "flows.bootstrap:bootstrap_refresh"
    assert deployment["work_pool_name"] == POOL
    assert deployment["parameters"] == {"repo": str(deployed_run.repo), "home": str(deployed_run.home),
                                        "teacher": False, "partitions": 1}
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * 0"]


def test_a_process_worker_runs_the_deployment_into_the_ledger(deployed_run: DeployedRun) -> None:
    flow_run = deployed_run.flow_run
    assert flow_run["state_type"] == "COMPLETED", deployed_run.worker_log[-4000:]
    assert flow_run["work_pool_name"] == POOL
    assert flow_run["parameters"]["last"] == LAST and flow_run["parameters"]["repo"] == str(deployed_run.repo)

    con = duckdb.connect(str(ledger_path(deployed_run.home)), read_only=True)
    try:
        done = con.execute("SELECT commit_sha, status FROM bootstrap_commits WHERE repo = ?",
                           [str(deployed_run.repo)]).fetchall()
        examples = con.execute("SELECT stage, count(*) FROM training_examples WHERE repo = ? GROUP BY stage",
                               [str(deployed_run.repo)]).fetchall()
        unknown = con.execute("SELECT count(*) FROM training_examples WHERE commit_sha NOT IN"
                              " (SELECT commit_sha FROM bootstrap_commits)").fetchone()[0]
    finally:
        con.close()
    assert len(done) == LAST, done
    assert {"derived"} <= {status for _, status in done}
    assert dict(examples).keys() >= {"task_analysis", "scope", "precision", "plan"} and unknown == 0


def test_a_task_started_from_the_deployment_runs_the_stages_and_shows_their_decisions(
        deployed_run: DeployedRun, prefect_server: PrefectServer) -> None:
    flow_run = deployed_run.task_run
    assert flow_run["state_type"] == "COMPLETED", deployed_run.worker_log[-4000:]
    assert flow_run["parameters"]["task"] == TASK and flow_run["parameters"]["repo"] == str(deployed_run.repo)
    con = duckdb.connect(str(ledger_path(deployed_run.home)), read_only=True)
    try:
        [(run_id, status)] = con.execute("SELECT id, status FROM runs WHERE task = ?", [TASK]).fetchall()
        stages = [s for (s,) in con.execute("SELECT stage FROM run_stages WHERE run_id = ? ORDER BY ordinal",
                                            [run_id]).fetchall()]
    finally:
        con.close()
    assert status == "succeeded" and stages == ["task_analysis", "scope", "precision"]
    # The staged run is a cra-run subflow of the deployment's run, with each stage's decisions as an artifact.
    [subflow] = prefect_server.post("/flow_runs/filter", {"flow_runs": {"name": {"like_": run_id}}})
    assert subflow["parent_task_run_id"]
    artifacts = prefect_server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [subflow["id"]]}}})
    assert {a["key"] for a in artifacts} >= {artifact_key(run_id, f"{stage}-decisions") for stage in ("scope", "precision")}


def test_prefect_yaml_declares_the_nightly_curate_retrain_and_weekly_enrichment_and_refit_on_the_same_pool() -> None:
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    retrain, enrich = deployments["cra-curate-retrain"], deployments["cra-enrich-refresh"]
    refit = deployments["cra-ranker-refit"]
    assert retrain["entrypoint"] == "flows.retrain:curate_retrain"
    assert retrain["work_pool"]["name"] == POOL == deployments[DEPLOYMENT]["work_pool"]["name"] == enrich["work_pool"]["name"]
    assert refit["work_pool"]["name"] == POOL
    [schedule] = retrain["schedules"]
    assert schedule["cron"] == "0 3 * * *"
    for weekly in (enrich, refit):
        module, function = weekly["entrypoint"].split(":")
        assert callable(getattr(importlib.import_module(module), function))
        [schedule] = weekly["schedules"]
        assert schedule["cron"].endswith("* * 0")  # Sundays
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ project.stdout }}"}}]
