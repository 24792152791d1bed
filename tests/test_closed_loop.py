"""The closed loop on CPU: the tiny base fails task analysis on fixture tasks; bootstrapping and a round of training
give an adapter the gate promotes and the server hot-loads; `cra run` then does that stage better; a second round,
built from the new logged runs with replay, keeps the gain. Every step is asserted from DuckDB and the registry."""

from __future__ import annotations

import duckdb
import httpx
import pytest

from agent.config import ledger_path, load_config
from agent.pipeline import RunOptions, TaskRun, drive
from agent.runs import mark_run
from bootstrap.pairs import bootstrap_repo
from curation.datasets import load_examples
from curation.gate import evaluate, gate, score
from curation.registry import get, list_adapters
from curation.retrain import curate, train_from_round
from curation.rounds import REPLAY_BOUNDS, build_round
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.served import needs_vllm, start_served, stop_served

pytestmark = needs_vllm
STAGE = "task_analysis"
TRAINING = "[training]\nrank = 8\nmax_steps = 200\nlearning_rate = 0.01\nbatch_size = 4\ngrad_accum = 1\n"


@pytest.fixture(scope="module")
def loop_server(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    server = start_served(tiny_models, tmp_path_factory.mktemp("loop-home"), tmp_path_factory.mktemp("loop-project"),
                          with_adapters=False, extra=TRAINING)
    try:
        yield server
    finally:
        stop_served(server)


def served_adapters(endpoint: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{endpoint}/models", timeout=10).json()["data"] if m.get("parent")}


def test_bootstrap_train_gate_serve_run_and_a_second_round_keep_the_gain(loop_server, decomp_template: DecompRepo) -> None:
    home, config = loop_server.home, load_config(loop_server.project)
    # the base fails the stage on the fixture's tasks
    report = bootstrap_repo(decomp_template.path, config=config, home=home)
    assert report.derive.pairs[STAGE] >= 9
    tasks = load_examples(home, stage=STAGE, split="train")
    base = evaluate(config, home, STAGE, "tiny", tasks)
    assert base.score < 0.2
    # round 1: train from the frozen base, gate on the held-out commits, promote, hot-load
    first = build_round(home)
    adapter = train_from_round(home, config, first, STAGE)
    assert adapter.status == "candidate" and adapter.metadata["dataset"]["hash"] == first.snapshot_hash
    decision = gate(config, home, adapter.name)
    assert decision.promoted, decision.reason
    assert get(home, adapter.name).status == "active" and adapter.name in served_adapters(loop_server.endpoint)
    # cra run on those tasks now does the stage better, through the served adapter
    gold = {t.messages[-1]["content"].split("\n", 1)[0].removeprefix("Task: "): t.output for t in tasks}
    scores = {}
    for task, expected in gold.items():
        outcome = drive(TaskRun(task, decomp_template.path, config=config, home=home, options=RunOptions(until=STAGE)))
        result = outcome.results[STAGE]
        scores[outcome.run_id] = score(STAGE, expected, result.output.model_dump(mode="json"))
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    answered = {r[0] for r in con.execute("SELECT model_answered FROM llm_calls WHERE run_id IN "
                                          f"({', '.join('?' * len(scores))})", list(scores)).fetchall()}
    con.close()
    assert answered == {adapter.name}
    assert sum(scores.values()) / len(scores) > base.score
    # round 2: the runs people marked good come back as logged examples, mixed with replay from round 1
    for run_id, value in scores.items():
        mark_run(home, run_id, "success" if value > base.score else "failure")
    second, collected = curate(home, config, seed=1)
    assert second is not None and collected["logged_examples"] > 0
    mix = second.mixes[(STAGE, "tiny")]
    assert mix.new and REPLAY_BOUNDS[0] <= mix.replay_share <= REPLAY_BOUNDS[1]
    again = gate(config, home, train_from_round(home, config, second, STAGE).name)
    assert again.active is not None and again.active.model == adapter.name
    kept = again.candidate if again.promoted else again.active  # the gate keeps whichever is better active
    assert kept.score > again.base.score, again.reason  # the gain is kept after the second round
    active_now = [a.name for a in list_adapters(home, stage=STAGE, status="active")]
    assert active_now == [kept.model] and kept.model in served_adapters(loop_server.endpoint)
