"""A tiny Qwen3-architecture model and a locally trained ChatML tokenizer, for tests and demos, built offline."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from agent.errors import InvalidInput
from agent.extras import require
from agent.llm.chat import chatml_template

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, with `{% generation %}` around assistant turns so TRL can train on the answers only.
CHAT_TEMPLATE = chatml_template(thinking_tokens=False)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def _corpus() -> list[str]:
    """Text to learn merges from: this package's own source, which is C-ish identifiers, JSON and English."""
    root = Path(__file__).resolve().parents[1]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.py"))]
    texts.append('{"files": ["src/field_weather.c", "include/constants/flags.h"], "reason": "void CB2_InitBattle(void)"}')
    return texts


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with the ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, chat_template=CHAT_TEMPLATE, model_max_length=ARCHITECTURE["max_position_embeddings"],
    )


def build_tiny_model(out: Path, *, vocab_size: int = 2048, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Qwen3 model and its tokenizer to `out`; return `out`."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} exists and is not empty; choose a new folder for the tiny model")
    if vocab_size < 512:
        raise InvalidInput(f"vocab size {vocab_size} is too small: a byte-level tokenizer needs at least 512")
    tokenizer = train_tokenizer(vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer), bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **ARCHITECTURE,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "cra_tiny.json").write_text(json.dumps({"seed": seed, "vocab_size": len(tokenizer), **ARCHITECTURE}))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def random_adapter(base: Path, out: Path, *, seed: int, rank: int = 8, scale: float = 3.0) -> Path:
    """A LoRA adapter with random (untrained) weights on `base`: it answers visibly differently, for tests and demos."""
    require("train", "a random LoRA adapter")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(scale)
    peft_model.save_pretrained(out)
    return out
