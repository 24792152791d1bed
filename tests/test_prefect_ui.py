"""`cra run` against a real Prefect server: the flow run, one task run per stage, and each stage's decisions
as artifacts, read back through the server's REST API and seen in its UI by a real headless chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.run import artifact_key
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.prefect_server import PrefectServer

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK = "Rename InitWallClock to CB2_InitWallClock"
NAMED_FILE, NAMED_FUNCTION = "src/wallclock.c", "InitWallClock"
STAGES = ["task_analysis", "scope", "precision"]
UI_WAIT_S = 45

pytestmark = pytest.mark.timeout(300)


def cra(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "agent.cli", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, f"cra {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@dataclass
class FlowRunRecord:
    run_id: str  # cra's run id
    flow_run: dict
    task_runs: list[dict]
    artifacts: dict[str, dict]  # by key

    def key(self, what: str) -> str:
        return artifact_key(self.run_id, what)


@pytest.fixture(scope="module")
def cra_run(prefect_server: PrefectServer, decomp_template: DecompRepo,
            tmp_path_factory: pytest.TempPathFactory) -> FlowRunRecord:
    """`cra run TASK --retrieval-only` on a copy of the fixture decomp, as a flow run on the server; read back by API."""
    work = tmp_path_factory.mktemp("prefect-run")
    repo = work / "pokefixture"
    shutil.copytree(decomp_template.path, repo, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(REPO_ROOT), CRA_HOME=str(work / "cra-home"), CRA_CONFIG=str(work / "cra-home" / "config.toml"),
               PREFECT_HOME=str(work / "prefect-client-home"), PREFECT_API_URL=prefect_server.api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cra(["index", str(repo), "--no-embed"], env)  # text and graph only: the run reuses it and loads no embedder
    outcome = json.loads(cra(["run", TASK, "--repo", str(repo), "--retrieval-only", "--json"], env).stdout)
    assert outcome["status"] == "succeeded", outcome
    run_id = outcome["run_id"]

    [flow_run] = prefect_server.post("/flow_runs/filter", {"flow_runs": {"name": {"like_": run_id}}})
    task_runs = prefect_server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    artifacts = prefect_server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    return FlowRunRecord(run_id, flow_run, task_runs, {a["key"]: a for a in artifacts})


def table(artifact: dict) -> list[dict]:
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def test_the_run_is_a_completed_flow_run_with_one_task_run_per_stage(cra_run: FlowRunRecord) -> None:
    flow_run = cra_run.flow_run
    assert flow_run["state_type"] == "COMPLETED"
    assert flow_run["name"] == f"{cra_run.run_id}: {TASK}"
    assert sorted(t["name"] for t in cra_run.task_runs) == sorted(STAGES)
    assert {t["state_type"] for t in cra_run.task_runs} == {"COMPLETED"}


def test_each_stage_publishes_its_decisions_as_artifacts_of_its_task_run(cra_run: FlowRunRecord) -> None:
    key = cra_run.key
    assert set(cra_run.artifacts) == {key(s) for s in STAGES} | {key(f"{s}-decisions") for s in STAGES} | {key("result")}
    task_run_ids = {t["name"]: t["id"] for t in cra_run.task_runs}
    for stage in STAGES:
        decisions, output = cra_run.artifacts[key(f"{stage}-decisions")], cra_run.artifacts[key(stage)]
        assert (decisions["type"], output["type"]) == ("table", "markdown")
        assert decisions["task_run_id"] == output["task_run_id"] == task_run_ids[stage], stage

    analysis = {row["candidate"]: row["decision"] for row in table(cra_run.artifacts[key("task_analysis-decisions")])}
    assert analysis["kind"] == "rename" and analysis[NAMED_FUNCTION] == "named symbol"

    scope = cra_run.artifacts[key("scope-decisions")]
    relevant = [row["candidate"] for row in table(scope) if row["decision"] == "relevant"]
    assert relevant == [NAMED_FILE]
    assert f"relevant: {NAMED_FILE}" in scope["description"]

    precision = cra_run.artifacts[key("precision-decisions")]
    rows = {row["candidate"]: row for row in table(precision)}
    primary = [candidate for candidate, row in rows.items() if row["decision"] == "primary"]
    # the named function first; its caller, which the rename edits too (its history note names the function), may follow
    assert primary[0] == f"{NAMED_FILE}:{NAMED_FUNCTION}" and rows[primary[0]]["reason"] == "named in the task"
    assert set(primary) <= {f"{NAMED_FILE}:{NAMED_FUNCTION}", f"{NAMED_FILE}:CB2_ViewWallClock"}
    assert f"primary: {NAMED_FILE}:{NAMED_FUNCTION}" in precision["description"]
    assert f'"name": "{NAMED_FUNCTION}"' in cra_run.artifacts[key("precision")]["data"]

    result = cra_run.artifacts[key("result")]
    assert result["task_run_id"] is None and "succeeded" in result["description"]


# --- the Prefect UI, in a real headless browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless chromium driven by chromedriver (Debian's `chromium` and `chromium-driver`; `make test` installs them)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser: install chromium and chromedriver (apt-get install chromium chromium-driver, "
                    "which `make test` does as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)  # an explicit driver: no download attempted
    try:
        yield chrome
    finally:
        chrome.quit()


def page_shows(chrome, url: str, *texts: str) -> str:
    """Open `url` and wait until the rendered page (the SPA's data loaded) shows every text; return the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(url)

    def body() -> str:
        return chrome.find_element("tag name", "body").text

    try:
        WebDriverWait(chrome, UI_WAIT_S, poll_frequency=0.2).until(lambda _: all(t in body() for t in texts))
    except TimeoutException:
        missing = [t for t in texts if t not in body()]
        pytest.fail(f"{url} (now {chrome.current_url}) never showed {missing}; it shows:\n{body()[-3000:]}")
    return body()


def test_the_prefect_ui_shows_each_stage_artifact_and_its_decisions(prefect_server: PrefectServer, cra_run: FlowRunRecord,
                                                                     browser) -> None:
    from selenium.webdriver.common.by import By

    settings = httpx.get(f"{prefect_server.url}/ui-settings", timeout=10).json()
    assert settings["default_ui"] == "v2", settings  # Prefect 3.9 opens the React UI, under /v2
    ui = prefect_server.url + settings["v2_base_url"].rstrip("/")

    # The flow run's page, Artifacts tab: every artifact by key, the decisions summed up in their descriptions.
    key = cra_run.key
    summaries = (f"relevant: {NAMED_FILE}", f"primary: {NAMED_FILE}:{NAMED_FUNCTION}")  # rendered after the keys
    text = page_shows(browser, f"{ui}/runs/flow-run/{cra_run.flow_run['id']}?tab=Artifacts", *cra_run.artifacts,
                      *summaries)
    assert cra_run.flow_run["name"] in text and "Completed" in text

    # Each decision table's own page renders its rows.
    for what, candidate, decision in (("scope-decisions", NAMED_FILE, "relevant"),
                                      ("precision-decisions", f"{NAMED_FILE}:{NAMED_FUNCTION}", "primary")):
        artifact = cra_run.artifacts[key(what)]
        page_shows(browser, f"{ui}/artifacts/artifact/{artifact['id']}", key(what), candidate)
        rows = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in browser.find_elements(By.TAG_NAME, "tr")]
        assert [candidate, decision] in [r[:2] for r in rows], rows[:5]
