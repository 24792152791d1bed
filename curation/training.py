"""Training: one LoRA adapter per stage, always on the frozen base, written atomically into the adapter registry.

The recipe per stage follows the design: rank 16 (32 for the plan stage), alpha twice the rank, all seven linear
projections, SFT on the assistant's answers only; the plan stage adds DPO after its CoT-SFT. On CPU, TRL trains in
fp32; on a GPU, Unsloth's QLoRA (4-bit NF4 base) does.

A base is refused as *merged* (adapters are never trained on a merge) when its folder holds
`adapter_config.json`, `adapter_model.safetensors` or `cra_adapter.json` (adapter files saved with or as the model),
or when its `config.json` carries the `cra_merged` key, which `mark_merged` writes into every merge cra exports.

A run trains into a scratch folder under `$CRA_HOME/training/` and only a finished adapter is registered (the
registry copies it in atomically); a killed run leaves at most its scratch folder, swept by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.config import Config, cra_home
from agent.errors import (
    DatasetTooSmall,
    InvalidInput,
    MergedBaseModel,
    TrainingRefused,
    WrongModelFamily,
)
from agent.extras import require
from agent.llm.adapters import VLLM_RANKS, check_adapter, describe_base
from agent.llm.chat import chat_format
from agent.llm.names import check_name
from agent.llm.registry import METADATA_FILE, Adapter, list_adapters, register
from agent.stages import RECIPES, stage_named
from agent.stages.base import StageRecipe
from curation.datasets import Example, load_examples, model_family
from curation.rounds import MIN_SFT_EXAMPLES, load_pairs

TECHNIQUES = ("sft", "sft+dpo")
MERGED_MARKER = "cra_merged"
MERGE_SIGNS = ("adapter_config.json", "adapter_model.safetensors", METADATA_FILE)
MIN_DPO_PAIRS = 4
_SCRATCH = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+$")  # .<adapter name>.<pid>.<random>


@dataclass(frozen=True)
class Progress:
    """One logged training step."""

    phase: str
    step: int
    max_steps: int
    loss: float


@dataclass
class _Phase:
    """What one phase (sft or dpo) did."""

    examples: int
    steps: int = 0
    seconds: float = 0.0
    loss: list[float] = field(default_factory=list)


def _hash_ids(examples: list[Example]) -> str:
    return hashlib.sha256("\n".join(sorted(e.id for e in examples)).encode()).hexdigest()[:20]


def dataset_hash(examples: list[Example]) -> str:
    """A stable hash of the examples' ids, whatever their order."""
    return _hash_ids(examples)


def mark_merged(folder: Path, *, adapter: str, base: str) -> None:
    """Mark an exported merge (base + adapter) in its config.json, so it is never trained on as a base."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config[MERGED_MARKER] = {"adapter": adapter, "base": base}
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _frozen_base(base: str) -> tuple[Path, str]:
    """The base's local folder and fingerprint; refused if it is not local or is a merged model."""
    described = describe_base(base)
    if described.path is None or described.fingerprint is None:
        raise TrainingRefused(f"base model {base} has no local files with a config.json; download it first "
                              f"(`huggingface-cli download {base}`) so its fingerprint can be recorded")
    signs = [name for name in MERGE_SIGNS if (described.path / name).exists()]
    if MERGED_MARKER in (described.config or {}):
        signs.append(f"config.json:{MERGED_MARKER}")
    if signs:
        raise MergedBaseModel(f"{base} is a merged model ({', '.join(signs)}): adapters are trained on the frozen base "
                              "only, never on a merge; train from the original base model")
    return described.path, described.fingerprint


def _check_dataset(stage: str, base: str, recipe: StageRecipe, sft: list[Example],
                   dpo: list[tuple[Example, Example]] | None) -> None:
    """Refuse a dataset too small for the recipe, or written for another stage, split or model family."""
    if len(sft) < MIN_SFT_EXAMPLES:
        raise DatasetTooSmall(f"{stage}: {len(sft)} SFT examples, at least {MIN_SFT_EXAMPLES} are needed; "
                              "bootstrap more history or log more runs")
    if recipe.technique == "sft" and dpo:
        raise InvalidInput(f"{stage}: {len(dpo)} preference pairs given but the recipe is SFT only; "
                           "use technique 'sft+dpo' or leave the pairs out")
    if recipe.technique == "sft+dpo" and len(dpo or []) < MIN_DPO_PAIRS:
        raise DatasetTooSmall(f"{stage}: {len(dpo or [])} preference pairs, at least {MIN_DPO_PAIRS} are needed for "
                              "DPO; log more runs, or train with technique 'sft'")
    everything = [*sft, *(e for pair in dpo or [] for e in pair)]
    family = model_family(base)
    others = sorted({e.family for e in everything} - {family})
    if others:
        raise WrongModelFamily(f"{stage}: examples for {', '.join(others)} cannot train an adapter on {base} "
                               f"(family {family}); load the examples of family {family}")
    wrong_stage = sorted({e.stage for e in everything} - {stage})
    if wrong_stage:
        raise InvalidInput(f"{stage}: examples of stage {', '.join(wrong_stage)} were given; train each stage on its own")
    held_out = sum(e.split != "train" for e in everything)
    if held_out:
        raise InvalidInput(f"{stage}: {held_out} examples are from the held-out split; train on split 'train' only")
    if any(chosen.messages != rejected.messages for chosen, rejected in dpo or []):
        raise InvalidInput(f"{stage}: a preference pair's answers answer different prompts; pair answers to one prompt")


def sweep_scratch(home: str | Path | None) -> list[Path]:
    """Remove the scratch folders of training runs whose process is gone (killed mid-training); return them."""
    swept = []
    for folder in sorted((cra_home(home) / "training").glob(".*")):
        match = _SCRATCH.match(folder.name)
        if not match or not folder.is_dir():
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
        except PermissionError:
            continue
    return swept


def _progress_callback(phase: str, on_progress: Callable[[Progress], None] | None):
    """A TrainerCallback that reports each logged loss."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs) -> None:
            if on_progress is not None and logs and "loss" in logs:
                on_progress(Progress(phase, state.global_step, state.max_steps, float(logs["loss"])))

    return Report()


def _unsloth_model(path: Path, recipe: StageRecipe):
    """GPU only: the base in 4-bit NF4 (QLoRA) with Unsloth's kernels, and LoRA on it."""
    # Unsloth patches transformers and TRL as it is imported: on a GPU only, and before TRL is.
    try:
        from unsloth import FastLanguageModel, PatchDPOTrainer
    except ImportError as exc:
        raise TrainingRefused(f"a GPU is present but Unsloth cannot be imported ({exc}); `pip install unsloth`") from exc

    PatchDPOTrainer()
    model, tokenizer = FastLanguageModel.from_pretrained(str(path), max_seq_length=recipe.max_length, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.0, bias="none",
        target_modules=list(recipe.targets), use_gradient_checkpointing="unsloth",
    )
    return model, tokenizer


def _torch_model(path: Path, recipe: StageRecipe):
    """CPU: the base in fp32 with a fresh LoRA on it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(recipe.targets), task_type="CAUSAL_LM")
    return get_peft_model(model, lora), AutoTokenizer.from_pretrained(path)


def _common_args(recipe: StageRecipe, out: Path, gpu: bool) -> dict:
    """Trainer settings both phases share: no checkpoints, no reporting, a loss every step."""
    import torch

    bf16 = gpu and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(out), "use_cpu": not gpu, "bf16": bf16, "fp16": gpu and not bf16, "report_to": [], "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
        "per_device_train_batch_size": recipe.batch_size, "gradient_accumulation_steps": recipe.grad_accum,
        "num_train_epochs": recipe.epochs, "max_steps": recipe.max_steps or -1, "max_length": recipe.max_length,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.03, "weight_decay": 0.0, "activation_checkpointing": False,
        "seed": recipe.seed,
    }


def _answer_only_loss(model, inputs: dict, num_items_in_batch=None):
    """The SFT loss with only the answer's positions projected through the output layer, in one matmul.

    TRL's fused head tiles that projection and computes entropy and accuracy too: on CPU, with Gemma's 262k-token
    vocabulary, a step of four task-analysis answers took 40 s against 13 s this way (one core, same batch)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"][:, 1:]
    answer = labels != -100
    hidden = base.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).last_hidden_state
    logits = base.get_output_embeddings()(hidden[:, :-1][answer]).float()
    if cap := getattr(base.config.get_text_config(), "final_logit_softcapping", None):
        logits = torch.tanh(logits / cap) * cap
    loss = torch.nn.functional.cross_entropy(logits, labels[answer], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else answer.sum().clamp(min=1))


def _answer_only(trainer_class):
    """`trainer_class` (TRL's SFTTrainer) with `_answer_only_loss` as its loss: the CPU's trainer."""
    class AnswerOnlySFT(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return _answer_only_loss(model, inputs, num_items_in_batch)

    return AnswerOnlySFT


def _seconds_since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _run_phase(trainer, phase: _Phase) -> None:
    """Train quietly (progress goes to the callback), recording steps, seconds and the loss curve."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    trainer.train()
    phase.seconds = _seconds_since(started)
    phase.steps = trainer.state.global_step
    phase.loss = [round(float(row["loss"]), 6) for row in trainer.state.log_history if "loss" in row]


def _train(path: Path, base: str, recipe: StageRecipe, sft: list[Example], dpo: list[tuple[Example, Example]] | None,
           scratch: Path, on_progress: Callable[[Progress], None] | None) -> tuple[Any, dict[str, _Phase], str]:
    """Train a fresh LoRA through the recipe's phases; return the PEFT model, each phase's record and the backend."""
    import torch
    from transformers import set_seed

    gpu = torch.cuda.is_available()
    set_seed(recipe.seed)  # before the LoRA is made: its initial weights must not depend on what ran before
    model, tokenizer = _unsloth_model(path, recipe) if gpu else _torch_model(path, recipe)
    # Imported after the model: on a GPU, Unsloth must patch TRL first.
    from datasets import Dataset, disable_progress_bars
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    disable_progress_bars()  # progress goes to the callback, not to the terminal of the command that trains
    chat = chat_format(path, base)  # the template and end of turn the server uses too
    tokenizer.chat_template = chat.template
    tokenizer.eos_token = chat.end_token  # DPOConfig has no eos_token field: TRL falls back to the tokenizer's

    ordered = sorted(sft, key=lambda e: len(json.dumps(e.chat()))) if recipe.curriculum else sft
    phases = {"sft": _Phase(len(sft))}
    sft_args = SFTConfig(**_common_args(recipe, scratch / "sft", gpu), learning_rate=recipe.learning_rate,
                         assistant_only_loss=True, eos_token=chat.end_token,
                         train_sampling_strategy="sequential" if recipe.curriculum else "group_by_length")
    trainer = (SFTTrainer if gpu else _answer_only(SFTTrainer))(model=model, args=sft_args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": e.chat()} for e in ordered]),
                         callbacks=[_progress_callback("sft", on_progress)])
    _run_phase(trainer, phases["sft"])
    if recipe.technique == "sft+dpo":
        pairs = [{"prompt": chosen.messages, "chosen": chosen.chat()[-1:], "rejected": rejected.chat()[-1:]}
                 for chosen, rejected in dpo or []]
        phases["dpo"] = _Phase(len(pairs))
        dpo_args = DPOConfig(**_common_args(recipe, scratch / "dpo", gpu), learning_rate=recipe.dpo_learning_rate,
                             beta=recipe.dpo_beta)
        trainer = DPOTrainer(model=trainer.model, args=dpo_args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(pairs), callbacks=[_progress_callback("dpo", on_progress)])
        _run_phase(trainer, phases["dpo"])
    return trainer.model, phases, "unsloth-qlora" if gpu else "trl-cpu"


def train_adapter(
    home: str | Path | None, *, stage: str, base: str, sft: list[Example],
    dpo: list[tuple[Example, Example]] | None = None, name: str, recipe: StageRecipe | None = None,
    round: int | None = None, dataset_hash: str | None = None,
    on_progress: Callable[[Progress], None] | None = None, project: str | None = None,
    project_family: str | None = None,
) -> Adapter:
    """Train `stage`'s adapter on the frozen `base` and register it as a candidate named `name`, for `project`,
    `project_family` or (neither) every project of the home."""
    stage_named(stage)  # an unknown stage is an error
    require("train", f"training the {stage} adapter")
    check_name(name, what="adapter name")
    recipe = recipe or RECIPES[stage]
    if recipe.rank not in VLLM_RANKS:
        raise InvalidInput(f"rank {recipe.rank} cannot be served; vLLM serves ranks {', '.join(map(str, VLLM_RANKS))}")
    if recipe.technique not in TECHNIQUES:
        raise InvalidInput(f"unknown technique {recipe.technique!r}; techniques are {', '.join(TECHNIQUES)}")
    _check_dataset(stage, base, recipe, sft, dpo)
    if any(a.name == name for a in list_adapters(home)):
        raise InvalidInput(f"an adapter named {name} is already registered; choose another name")
    path, base_fingerprint = _frozen_base(base)
    chat_format(path, base)  # a base whose chat format cra cannot tell is refused before any training
    snapshot = dataset_hash or _hash_ids([*sft, *(e for pair in dpo or [] for e in pair)])

    root = cra_home(home) / "training"
    root.mkdir(parents=True, exist_ok=True)
    sweep_scratch(home)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=root))
    try:
        started = time.monotonic()
        model, phases, backend = _train(path, base, recipe, sft, dpo, scratch, on_progress)
        out = scratch / "adapter"
        model.peft_config["default"].base_model_name_or_path = base
        model.save_pretrained(out, selected_adapters=["default"])
        metadata = {
            "stage": stage, "round": round, "base": {"name": base, "fingerprint": base_fingerprint},
            "dataset": {"hash": snapshot, "sft_examples": len(sft), "dpo_pairs": len(dpo or []),
                        "projects": dict(sorted(Counter(e.project or "-" for e in sft).items()))},
            "recipe": {**asdict(recipe), "alpha": recipe.alpha}, "designed_technique": RECIPES[stage].technique,
            "backend": backend,
            "phases": {key: asdict(phase) for key, phase in phases.items()},
            "seconds": _seconds_since(started),
        }
        (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        check_adapter(out, describe_base(base), rank_limit=recipe.rank, trained_on=base_fingerprint)
        return register(home, out, name=name, stage=stage, base_model=base, metadata=metadata, project=project,
                        project_family=project_family)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _next_round(home: str | Path | None, stage: str) -> int:
    """One more than the highest `<stage>-rN` adapter registered."""
    numbers = [int(m[1]) for a in list_adapters(home, stage=stage) if (m := re.fullmatch(rf"{stage}-r(\d+)", a.name))]
    return max(numbers, default=0) + 1


def train_stage(home: str | Path | None, config: Config, *, stage: str, round: int | None = None,
                steps: int | None = None, on_progress: Callable[[Progress], None] | None = None) -> Adapter:
    """Train `stage`'s adapter on its role's base from the ledger's train split, named `<stage>-r<round>`.

    A DPO stage with too few preference pairs yet trains SFT only; its metadata records the designed technique.
    """
    base = config.models.role(stage_named(stage).role).base
    family = model_family(base)
    sft = load_examples(home, stage=stage, split="train", family=family)
    recipe = RECIPES[stage] if steps is None else replace(RECIPES[stage], max_steps=steps)
    pairs = load_pairs(home, stage=stage, family=family) if recipe.technique == "sft+dpo" else []
    if len(pairs) < MIN_DPO_PAIRS:
        recipe, pairs = replace(recipe, technique="sft"), []
    number = round if round is not None else _next_round(home, stage)
    return train_adapter(home, stage=stage, base=base, sft=sft, dpo=pairs or None, name=f"{stage}-r{number}",
                         recipe=recipe, round=round, on_progress=on_progress)
