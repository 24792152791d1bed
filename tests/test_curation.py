"""Curation: rounds that accumulate with bounded replay, preference pairs, the gate's measures, rollback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import duckdb
import pytest

from agent.config import ledger_path
from agent.errors import InvalidInput
from agent.llm.registry import get, promote, register, rollback
from agent.stages import RECIPES, stage_named
from agent.stages.measures import f1, order_agreement
from curation.datasets import Example, add_examples
from curation.rounds import (
    REPLAY_BOUNDS,
    build_round,
    code_preferences,
    load_round,
    replay_size,
)


def examples(n: int, start: int = 0, stage: str = "scope", split: str = "train", source: str = "synthetic") -> list[Example]:
    return [Example(stage, source, "qwen3", [{"role": "user", "content": f"task {i}"}],
                    {"files": [{"path": f"src/f{i}.c", "label": "relevant", "reason": "r"}]}, split, "/repo", f"{i:040x}")
            for i in range(start, start + n)]


def test_rounds_accumulate_and_replay_within_bounds() -> None:
    add_examples(None, examples(40) + examples(5, 100, split="eval"))
    first = build_round(None)
    mix = first.mixes[("scope", "qwen3")]
    assert (len(mix.new), len(mix.replay), mix.pool) == (40, 0, 40)  # nothing earlier to replay; eval never enters
    add_examples(None, examples(20, 40))
    second = build_round(None)
    mix = second.mixes[("scope", "qwen3")]
    assert len(mix.new) == 20 and mix.pool == 60
    assert REPLAY_BOUNDS[0] <= mix.replay_share <= REPLAY_BOUNDS[1]
    assert set(mix.replay) <= set(first.mixes[("scope", "qwen3")].new)
    assert load_round(None, 1).mixes[("scope", "qwen3")].new == first.mixes[("scope", "qwen3")].new  # immutable
    with pytest.raises(InvalidInput, match="nothing new"):
        build_round(None)
    con = duckdb.connect(str(ledger_path()), read_only=True)
    summary = json.loads(con.execute("SELECT summary FROM rounds WHERE round = 2").fetchone()[0])
    con.close()
    assert summary["scope/qwen3"]["replay_share"] == round(mix.replay_share, 3)


def test_a_stage_with_too_few_new_examples_waits_for_a_later_round_and_keeps_them_new() -> None:
    add_examples(None, examples(40))
    first = build_round(None)
    add_examples(None, examples(5, 40) + examples(10, 200, stage="precision"))
    second = build_round(None)
    assert ("scope", "qwen3") not in second.mixes and second.waiting == {"scope/qwen3": 5}
    assert len(second.mixes[("precision", "qwen3")].new) == 10
    add_examples(None, examples(4, 45))
    third = build_round(None)
    mix = third.mixes[("scope", "qwen3")]
    assert len(mix.new) == 9 and set(mix.replay) <= set(first.mixes[("scope", "qwen3")].new)  # the five waited
    add_examples(None, examples(2, 60))
    with pytest.raises(InvalidInput, match="scope/qwen3: 2 new, 8 needed"):
        build_round(None)


@pytest.mark.parametrize("new", [5, 10, 40, 100, 1000])
def test_replay_size_keeps_the_share_between_10_and_20_percent(new: int) -> None:
    replay = replay_size(new, 10_000)
    assert REPLAY_BOUNDS[0] <= replay / (new + replay) <= REPLAY_BOUNDS[1]


def test_plan_trains_on_its_own_runs_only_after_the_early_stages() -> None:
    add_examples(None, examples(10, stage="plan", source="synthetic") + examples(10, 50, stage="plan", source="logged"))
    mix = build_round(None).mixes[("plan", "qwen3")]
    assert mix.pool == 10  # the logged plan examples wait


def test_code_preferences_prefer_the_commit_over_the_old_code() -> None:
    code = Example("code", "synthetic", "qwen2.5-coder", [{"role": "user", "content": "x"}],
                   {"edits": [{"path": "src/a.c", "search": "int a;", "replace": "int b;"}]}, "train", "/r", "0" * 40)
    add_examples(None, [code])
    assert code_preferences(None) == 1 and code_preferences(None) == 0
    con = duckdb.connect(str(ledger_path()), read_only=True)
    chosen, rejected = con.execute("SELECT chosen, rejected FROM preference_pairs").fetchone()
    con.close()
    assert json.loads(chosen)["edits"][0]["replace"] == "int b;"
    assert json.loads(rejected)["edits"][0]["replace"] == "int a;"


def test_measures() -> None:
    assert f1({"a", "b"}, {"a"}) == pytest.approx(2 / 3)
    scope = stage_named("scope")
    files = lambda **labels: {"files": [{"path": p, "label": v, "reason": "r"} for p, v in labels.items()]}  # noqa: E731
    gold = files(a="relevant", **dict.fromkeys("bcdefghij", "irrelevant"))  # as in a real scope pair: most irrelevant
    assert scope.score(gold, gold) == 1.0
    # An empty answer finds nothing: it scored 0.474 when each label's F1 counted, above an answer that had the changed
    # file among its three relevant ones and two more supporting (0.405); the gate would have preferred it.
    found = files(a="relevant", b="relevant", c="relevant", d="supporting", e="supporting")
    assert scope.score(gold, files()) == 0.0 < scope.score(gold, found)
    assert scope.measures(gold, found) == {"relevant": 0.5, "kept": pytest.approx(1 / 3)}
    precision = stage_named("precision")
    symbols = [{"path": "src/a.c", "name": n, "tier": t, "reason": "r"} for n, t in (("A", "primary"), ("B", "excluded"))]
    assert precision.score({"symbols": symbols}, {"symbols": []}) == 0.0 and precision.score(
        {"symbols": symbols}, {"symbols": symbols}) == 1.0
    assert order_agreement(["a", "b", "c"], ["a", "c", "b"]) == pytest.approx(2 / 3)
    gold = {"kind": "rename", "keep_rom": True, "symbols": ["A"], "files": ["src/a.c"], "key_terms": [], "subsystems": []}
    assert stage_named("task_analysis").score(gold, gold) == 1.0
    assert stage_named("task_analysis").score(gold, {**gold, "kind": "feature", "files": []}) == 0.5
    edits = {"edits": [{"path": "src/a.c", "search": "int a;", "replace": "int b;"}]}
    assert stage_named("code").score(edits, edits, prompt="... int a; ...") == 1.0
    assert stage_named("code").score(edits, {"edits": [{"path": "src/a.c", "search": "nope", "replace": "x"}]}, prompt="int a;") == 0.0


def test_rollback_brings_back_the_previous_adapter(tiny_models) -> None:
    base = str(tiny_models.base)
    register(None, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=base)
    register(None, tiny_models.adapters[1], name="scope-r2", stage="scope", base_model=base)
    promote(None, "scope-r1")
    promote(None, "scope-r2")
    assert rollback(None, "scope", base).name == "scope-r1"
    assert (get(None, "scope-r1").status, get(None, "scope-r2").status) == ("active", "retired")
    with pytest.raises(InvalidInput, match="no evaluation"):
        promote(None, "scope-r2", require_evaluation=True)


def test_nothing_to_roll_back_to(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no earlier scope adapter"):
        rollback(None, "scope", "tiny")


def test_export_merges_for_ollama_and_the_merge_is_never_a_training_base(tiny_models, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from agent.errors import InvalidInput as Refused
    from curation.export import export_adapter
    from curation.training import MERGED_MARKER

    register(None, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=str(tiny_models.base))
    out = export_adapter(None, "scope-r1", tmp_path / "scope-merged")
    assert (out / "Modelfile").read_text().endswith("FROM .\n")
    assert MERGED_MARKER in json.loads((out / "config.json").read_text())
    ids = torch.tensor([[5, 6, 7, 8]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models.base), get(None, "scope-r1").path).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-4)
    with pytest.raises(Refused, match="exists"):
        export_adapter(None, "scope-r1", out)


def test_code_answers_are_validated_at_the_commits_parent(decomp_template, tmp_path: Path) -> None:
    from agent.builds import BuildEnvironment
    from agent.config import load_config
    from bootstrap.pairs import bootstrap_repo
    from curation.datasets import load_examples
    from curation.gate import replay_gold_edits, validates
    from tests.fixtures.decomp import host_build_missing

    if reason := host_build_missing():
        pytest.skip(reason)
    config = load_config(decomp_template.path)
    bootstrap_repo(decomp_template.path, config=config)
    example = next(e for e in load_examples(None, stage="code") if e.output["edits"][0]["path"].endswith(".c"))
    env = BuildEnvironment.of(decomp_template.path, config.validation)
    gold = example.output["edits"]
    assert validates(example, gold, env) is True
    broken = [{**gold[0], "replace": gold[0]["replace"] + "\n{ broken"}] + gold[1:]
    assert validates(example, broken, env) is False
    assert validates(example, [{"path": gold[0]["path"], "search": "no such text", "replace": "x"}], env) is False
    assert validates(example, gold, None) is None  # no checkout of the example's repository here
    replayed = replay_gold_edits(config, None, decomp_template.path, 5)
    assert replayed and all(r["validated"] is True for r in replayed)
    assert not list(Path(tempfile.gettempdir()).glob(f"cra-gate-{os.getpid()}-*"))
    assert stage_named("code").score(example.output, {"edits": gold}, example.messages[-1]["content"], True) == 1.0


def test_a_stage_without_gain_two_rounds_running_has_plateaued(tmp_path: Path) -> None:
    from datetime import datetime

    from agent.config import Config
    from curation.gate import plateaued
    from curation.retrain import train_from_round

    add_examples(None, examples(12))
    built = build_round(None)
    con = duckdb.connect(str(ledger_path()))
    for i in range(2):
        con.execute("INSERT INTO gate_decisions VALUES ('scope', ?, ?, 0.1, NULL, NULL, 0.2, 3, false, 'no gain', ?, NULL)",
                    [f"scope-r{i}", i, datetime(2026, 1, 1 + i)])
    con.close()
    assert plateaued(None, "scope")
    config = Config.model_validate({"models": {"reasoning": {"base": "qwen3", "endpoint": "http://127.0.0.1:1/v1"}}})
    with pytest.raises(InvalidInput, match="plateaued"):
        train_from_round(None, config, built, "scope")


def test_training_a_stage_whose_examples_are_for_another_family_names_the_families() -> None:
    from agent.config import Config
    from curation.retrain import train_from_round

    add_examples(None, [Example("scope", "synthetic", "gemma3", [{"role": "user", "content": f"task {i}"}],
                                {"files": []}) for i in range(12)])
    built = build_round(None)
    config = Config.model_validate({"models": {"reasoning": {"base": "Qwen/Qwen3-4B", "endpoint": "http://127.0.0.1:1/v1"}}})
    with pytest.raises(InvalidInput, match=r"nothing new for scope in the qwen3 family .*Qwen/Qwen3-4B.*it has scope "
                                           r"examples for gemma3 \(12 new\)"):
        train_from_round(None, config, built, "scope")


def test_the_flow_and_the_cli_run_one_cycle_and_report_alike(prefect_api, tmp_path: Path) -> None:
    # Nothing logged, nothing bootstrapped: both say so for every stage (the flow used to report no stage at all).
    from typer.testing import CliRunner

    from agent.cli import app
    from agent.config import load_config
    from curation.retrain import retrain
    from flows.retrain import curate_retrain

    direct = retrain(None, load_config(tmp_path))
    flowed = curate_retrain(str(tmp_path))
    assert [s["stage"] for s in flowed["stages"]] == [s.stage for s in direct.stages] == list(RECIPES)
    assert {s["reason"] for s in flowed["stages"]} == {s.reason for s in direct.stages} == {"nothing new since the last round"}
    shown = CliRunner().invoke(app, ["curate", "--repo", str(tmp_path)])
    assert shown.exit_code == 2 and "collected 0 new examples" in shown.output and "nothing new to train on" in shown.output
