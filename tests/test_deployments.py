"""prefect.yaml's deployments, for real: a local Prefect server, the `cra-process` work pool, `prefect deploy` from the
repository root, `prefect deployment run`, and a process worker that runs the bootstrap into a cra home's ledger."""

from __future__ import annotations

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
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.prefect_server import (
    PrefectServer,
    prefect_executable,
    running_prefect_server,
    stop,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL, FLOW, DEPLOYMENT = "cra-process", "cra-bootstrap-refresh", "cra-bootstrap-refresh"
LAST = 3
RUN_WAIT_S = 150
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server-home")) as server:
        yield server


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
    worker_log: str


@pytest.fixture(scope="module")
def deployed_run(prefect_server: PrefectServer, decomp_template: DecompRepo,
                 tmp_path_factory: pytest.TempPathFactory) -> DeployedRun:
    """Deploy cra-bootstrap-refresh on a copy of the fixture decomp, run it once on a process worker."""
    work = tmp_path_factory.mktemp("deployment")
    repo, home = work / "pokefixture", work / "cra-home"
    shutil.copytree(decomp_template.path, repo, symlinks=True)
    # The worker's environment is its flow runs': this checkout importable (installed or not), a cra home of its own.
    env = prefect_server.client_env(work / "prefect-client-home")
    env.update(PYTHONPATH=str(REPO_ROOT), CRA_HOME=str(work / "worker-cra-home"), CRA_CONFIG=str(work / "config.toml"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

    prefect(["work-pool", "create", POOL, "--type", "process"], env)
    prefect(["--no-prompt", "deploy", "--name", DEPLOYMENT, "--param", f"repo={repo}", "--param", f"home={home}"], env)
    started = prefect(["deployment", "run", f"{FLOW}/{DEPLOYMENT}", "--param", f"last={LAST}"], env)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started)
    assert flow_run_id, started

    log = work / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([prefect_executable(), "worker", "start", "--pool", POOL, "--run-once"], env=env,
                                  cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_WAIT_S
        while (flow_run := prefect_server.get(f"/flow_runs/{flow_run_id[1]}"))["state_type"] not in TERMINAL:
            if time.monotonic() > deadline:
                pytest.fail(f"flow run still {flow_run['state_type']} after {RUN_WAIT_S} s; worker log:\n"
                            f"{log.read_text(errors='replace')[-4000:]}")
            time.sleep(1)  # polling the flow run's state
        worker.wait(30)  # --run-once: the worker leaves once its run is done
    finally:
        stop(worker)
    deployment = prefect_server.get(f"/deployments/name/{FLOW}/{DEPLOYMENT}")
    return DeployedRun(repo, home, deployment, flow_run, log.read_text(errors="replace"))


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


def test_prefect_yaml_declares_the_nightly_curate_retrain_on_the_same_pool() -> None:
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    retrain = deployments["cra-curate-retrain"]
    assert retrain["entrypoint"] == "flows.retrain:curate_retrain"
    assert retrain["work_pool"]["name"] == POOL == deployments[DEPLOYMENT]["work_pool"]["name"]
    [schedule] = retrain["schedules"]
    assert schedule["cron"] == "0 3 * * *"
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ project.stdout }}"}}]
