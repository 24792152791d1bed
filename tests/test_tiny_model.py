"""`cra dev tiny-model`: an offline tiny Qwen3 model that transformers, PEFT and TRL load and train."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.llm.tiny import CHAT_TEMPLATE

runner = CliRunner()


def test_cli_builds_a_model_transformers_peft_and_trl_can_use(tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    folder = tmp_path / "tiny"
    result = runner.invoke(app, ["dev", "tiny-model", str(folder), "--vocab-size", "1024"])
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.config.model_type == "qwen3" and sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    chat = [{"role": "user", "content": "Fix CaveTransition pals"}, {"role": "assistant", "content": '{"files": ["src/field_effect.c"]}'}]
    encoded = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == '{"files": ["src/field_effect.c"]}<|im_end|>'

    data = Dataset.from_list([{"messages": chat}] * 8)
    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=data,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        args=SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, use_cpu=True,
                       assistant_only_loss=True, max_length=64, report_to=[], logging_steps=1, save_strategy="no",
                       bf16=False),
    )
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    trainer.model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = runner.invoke(app, ["dev", "tiny-model", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("size", [100])
def test_refuses_a_vocabulary_too_small_for_bytes(tmp_path: Path, size: int) -> None:
    result = runner.invoke(app, ["dev", "tiny-model", str(tmp_path / "m"), "--vocab-size", str(size)])
    assert result.exit_code == 2 and "at least 512" in result.output
    assert not (tmp_path / "m").exists()
