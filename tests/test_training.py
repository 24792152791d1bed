"""Adapter training: real TRL runs of the tiny model on CPU, from the frozen base into the registry, and its guards."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import Config, ModelsConfig, RoleModels, adapter_store, cra_home
from agent.errors import DatasetTooSmall, MergedBaseModel, WrongModelFamily
from agent.llm.adapters import VLLM_RANKS, check_adapter, describe_base
from agent.llm.registry import list_adapters, register
from agent.stages import RECIPES
from agent.stages.base import LORA_TARGETS
from curation.datasets import Example, add_examples
from curation.training import (
    METADATA_FILE,
    Progress,
    dataset_hash,
    mark_merged,
    sweep_scratch,
    train_adapter,
    train_stage,
)

FAST = {"rank": 8, "max_steps": 3, "batch_size": 4, "grad_accum": 1}


def _example(i: int, stage: str = "scope", *, family: str = "tiny", answer: dict | None = None) -> Example:
    prompt = [{"role": "system", "content": f"You are the {stage} stage."},
              {"role": "user", "content": f"Task {i}: use window constants in wallclock {i}"}]
    return Example(stage, "synthetic", family, prompt, answer or {"files": [f"src/wall_clock_{i}.c"]})


def _examples(n: int, stage: str = "scope", **kwargs) -> list[Example]:
    return [_example(i, stage, **kwargs) for i in range(n)]


def _pairs(n: int) -> list[tuple[Example, Example]]:
    return [(_example(i, "plan", answer={"steps": [f"edit CB2_StartWallClock {i}"]}),
             _example(i, "plan", answer={"steps": ["change nothing"]})) for i in range(n)]


def _logits(base: Path, adapter: Path | None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer.apply_chat_template(_example(99).messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_recipes_follow_the_design() -> None:
    assert {stage: r.rank for stage, r in RECIPES.items()} == {
        "task_analysis": 16, "scope": 16, "precision": 16, "plan": 32, "code": 16}
    assert all(r.alpha == 2 * r.rank and r.rank in VLLM_RANKS and r.targets == LORA_TARGETS for r in RECIPES.values())
    assert {stage: r.technique for stage, r in RECIPES.items() if r.technique != "sft"} == {"plan": "sft+dpo"}
    assert replace(RECIPES["plan"], rank=8).alpha == 16


def test_dataset_hash_is_stable_whatever_the_order() -> None:
    examples = _examples(5)
    assert dataset_hash(examples) == dataset_hash(examples[::-1]) != dataset_hash(examples[:4])


def test_sft_registers_a_checked_candidate_that_changes_the_model(tiny_models, isolated_cra_home: Path) -> None:
    events: list[Progress] = []
    recipe = replace(RECIPES["scope"], **{**FAST, "max_steps": 4}, learning_rate=5e-3)
    adapter = train_adapter(isolated_cra_home, stage="scope", base=str(tiny_models.base), sft=_examples(8),
                            name="scope-r1", recipe=recipe, round=1, on_progress=events.append)

    assert (adapter.name, adapter.stage, adapter.status, adapter.rank) == ("scope-r1", "scope", "candidate", 8)
    base = describe_base(str(tiny_models.base))
    files = check_adapter(adapter.path, base, rank_limit=64, trained_on=adapter.base_fingerprint)
    assert set(files.target_modules) == set(LORA_TARGETS)
    meta = adapter.metadata
    assert json.loads((adapter.path / METADATA_FILE).read_text()) == meta
    assert meta["base"] == {"name": str(tiny_models.base), "fingerprint": base.fingerprint} and meta["round"] == 1
    assert meta["dataset"] == {"hash": dataset_hash(_examples(8)), "sft_examples": 8, "dpo_pairs": 0,
                               "projects": {"-": 8}}  # imported pairs of no project
    assert (meta["recipe"]["rank"], meta["recipe"]["alpha"], meta["backend"]) == (8, 16, "trl-cpu")
    sft = meta["phases"]["sft"]
    assert sft["steps"] == 4 and len(sft["loss"]) == 4 and sft["loss"][-1] < sft["loss"][0] and sft["seconds"] > 0
    assert [(e.phase, e.step) for e in events] == [("sft", 1), ("sft", 2), ("sft", 3), ("sft", 4)]
    assert list((cra_home(isolated_cra_home) / "training").iterdir()) == []  # the scratch folder is gone

    before, after = _logits(tiny_models.base, None), _logits(tiny_models.base, adapter.path)
    assert (after - before).abs().max().item() > 1e-3


def test_the_same_data_trains_the_same_adapter_whatever_ran_before(tiny_models, isolated_cra_home: Path) -> None:
    import torch
    from safetensors.torch import load_file

    recipe = replace(RECIPES["scope"], **FAST)
    first = train_adapter(isolated_cra_home, stage="scope", base=str(tiny_models.base), sft=_examples(8),
                          name="scope-a", recipe=recipe, round=1)
    torch.rand(1000)  # the process's random state moves on, as other work would move it
    second = train_adapter(isolated_cra_home, stage="scope", base=str(tiny_models.base), sft=_examples(8),
                           name="scope-b", recipe=recipe, round=1)
    a, b = (load_file(str(x.path / "adapter_model.safetensors")) for x in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.metadata["recipe"]["seed"] == 42


def test_plan_trains_cot_sft_then_dpo_on_the_same_adapter(tiny_models, isolated_cra_home: Path) -> None:
    recipe = replace(RECIPES["plan"], **{**FAST, "batch_size": 2})
    adapter = train_adapter(isolated_cra_home, stage="plan", base=str(tiny_models.base), sft=_examples(8, "plan"),
                            dpo=_pairs(4), name="plan-r1", recipe=recipe)

    phases = adapter.metadata["phases"]
    assert (phases["sft"]["steps"], phases["dpo"]["steps"], phases["dpo"]["examples"]) == (3, 3, 4)
    assert len(phases["dpo"]["loss"]) == 3 and phases["dpo"]["loss"][0] == pytest.approx(0.6931, abs=1e-3)
    assert adapter.metadata["dataset"]["dpo_pairs"] == 4
    assert not (adapter.path / "ref").exists()  # DPO's frozen reference copy is not saved
    check_adapter(adapter.path, describe_base(str(tiny_models.base)), rank_limit=64, trained_on=adapter.base_fingerprint)


def test_refuses_datasets_too_small(tiny_models, isolated_cra_home: Path) -> None:
    base = str(tiny_models.base)
    with pytest.raises(DatasetTooSmall, match="7 SFT examples, at least 8"):
        train_adapter(isolated_cra_home, stage="scope", base=base, sft=_examples(7), name="scope-r1")
    with pytest.raises(DatasetTooSmall, match="2 preference pairs, at least 4"):
        train_adapter(isolated_cra_home, stage="plan", base=base, sft=_examples(8, "plan"), dpo=_pairs(2), name="plan-r1")
    assert list_adapters(isolated_cra_home) == []


def test_refuses_examples_for_another_model_family(tiny_models, isolated_cra_home: Path) -> None:
    with pytest.raises(WrongModelFamily, match="qwen2.5-coder cannot train an adapter on .*family tiny"):
        train_adapter(isolated_cra_home, stage="code", base=str(tiny_models.base), name="code-r1",
                      sft=_examples(8, "code", family="qwen2.5-coder"))


def test_refuses_a_merged_model_as_base(tiny_models, tmp_path: Path, isolated_cra_home: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = tmp_path / "merged" / "tiny"  # same family name: only the merge rule can refuse it
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models.base), tiny_models.adapters[0])
    model.merge_and_unload().save_pretrained(merged)
    mark_merged(merged, adapter="scope-r1", base=str(tiny_models.base))
    with pytest.raises(MergedBaseModel, match="cra_merged.*frozen base"):
        train_adapter(isolated_cra_home, stage="scope", base=str(merged), sft=_examples(8), name="scope-r1")

    with_adapter = tmp_path / "with-adapter" / "tiny"
    model.save_pretrained(with_adapter)  # the adapter's files next to a model's
    (with_adapter / "config.json").write_bytes((tiny_models.base / "config.json").read_bytes())
    with pytest.raises(MergedBaseModel, match="adapter_config.json"):
        train_adapter(isolated_cra_home, stage="scope", base=str(with_adapter), sft=_examples(8), name="scope-r1")
    assert list_adapters(isolated_cra_home) == []


def _train_until_killed(home: Path, base: str, started: Path) -> None:
    def mark(progress: Progress) -> None:
        started.write_text(str(progress.step))

    recipe = replace(RECIPES["scope"], **{**FAST, "max_steps": 100_000})
    train_adapter(home, stage="scope", base=base, sft=_examples(8), name="scope-r2", recipe=recipe, on_progress=mark)


def test_a_kill_mid_training_leaves_the_registry_and_store_unchanged(tiny_models, tmp_path: Path,
                                                                      isolated_cra_home: Path) -> None:
    register(isolated_cra_home, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=str(tiny_models.base))
    before = (list_adapters(isolated_cra_home), sorted(p.name for p in adapter_store(isolated_cra_home).iterdir()))
    started = tmp_path / "started"
    # fork: the child has torch and TRL imported already, so it is training within a second
    child = multiprocessing.get_context("fork").Process(
        target=_train_until_killed, args=(isolated_cra_home, str(tiny_models.base), started))
    child.start()
    deadline = time.monotonic() + 120
    while not started.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), f"training never started (exit code {child.exitcode})"
    os.kill(child.pid, signal.SIGKILL)
    child.join()

    assert child.exitcode == -signal.SIGKILL
    after = (list_adapters(isolated_cra_home), sorted(p.name for p in adapter_store(isolated_cra_home).iterdir()))
    assert after == before
    scratch = sorted((cra_home(isolated_cra_home) / "training").iterdir())
    assert len(scratch) == 1 and scratch[0].name.startswith(f".scope-r2.{child.pid}.")
    assert sweep_scratch(isolated_cra_home) == scratch and not scratch[0].exists()


def test_train_stage_trains_the_roles_base_on_the_ledgers_examples(tiny_models, isolated_cra_home: Path) -> None:
    add_examples(isolated_cra_home, [*_examples(8, "plan"), replace(_example(50, "plan"), split="eval")])
    register(isolated_cra_home, tiny_models.adapters[0], name="plan-r1", stage="plan", base_model=str(tiny_models.base))
    config = Config(models=ModelsConfig(reasoning=RoleModels(base=str(tiny_models.base), endpoint="http://127.0.0.1:9/v1")))

    adapter = train_stage(isolated_cra_home, config, stage="plan", steps=2)

    assert (adapter.name, adapter.rank, adapter.base_model) == ("plan-r2", 32, str(tiny_models.base))
    meta = adapter.metadata
    assert meta["dataset"]["sft_examples"] == 8 and meta["dataset"]["hash"] == dataset_hash(_examples(8, "plan"))
    # no preference pairs in the ledger yet: SFT only, and the metadata says what the design asks for
    assert (meta["recipe"]["technique"], meta["designed_technique"], list(meta["phases"])) == ("sft", "sft+dpo", ["sft"])
    assert meta["phases"]["sft"]["steps"] == 2


def test_the_cpu_loss_is_trls_sft_loss_on_the_same_batch(tiny_models, tmp_path: Path) -> None:
    """The CPU trainer projects only the answer's positions through the output layer; the loss and its gradient are
    TRL's own (its fused head's), on a real batch of TRL's collator with assistant-only labels."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from agent.llm.chat import chat_format
    from curation.training import _answer_only_loss, _torch_model

    recipe = replace(RECIPES["scope"], **FAST)
    model, tokenizer = _torch_model(tiny_models.base, recipe)
    chat = chat_format(tiny_models.base, str(tiny_models.base))
    tokenizer.chat_template = chat.template
    args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                     assistant_only_loss=True, eos_token=chat.end_token)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": e.chat()} for e in _examples(4)]))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompts masked, answers kept
    lora = [p for p in model.parameters() if p.requires_grad]
    theirs = trainer.compute_loss(model, dict(batch))
    their_grads = torch.autograd.grad(theirs, lora)
    ours = _answer_only_loss(model, dict(batch))
    our_grads = torch.autograd.grad(ours, lora)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)
    for a, b in zip(our_grads, their_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
