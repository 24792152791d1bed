"""Taking an adapter out of cra: a merged model (PEFT merge, for export only) with an Ollama Modelfile.

GGUF is one step further with llama.cpp: `python convert_hf_to_gguf.py OUT --outfile model.gguf`, then an Ollama
Modelfile `FROM ./model.gguf`. A merge is marked in its config.json so cra never trains an adapter on it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from agent.errors import BadAdapter, InvalidInput
from agent.extras import require
from agent.llm.adapters import locate_base
from agent.llm.registry import get, require_files
from curation.training import mark_merged


def export_adapter(home: str | Path | None, name: str, out: Path) -> Path:
    """Merge adapter `name` into its base and write the model, tokenizer and a Modelfile to `out` (written aside, then renamed)."""
    require("train", "merging an adapter for export")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if out.exists():
        raise InvalidInput(f"{out} exists; choose a new folder for the export")
    adapter = get(home, name)
    folder = require_files(home, adapter)
    base = locate_base(adapter.base_model)
    if base is None:
        raise BadAdapter(f"the base {adapter.base_model} of {name} has no local files; download it before exporting")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
        mark_merged(staging, adapter=name, base=adapter.base_model)
        (staging / "Modelfile").write_text(
            f"# {name}: {adapter.stage} adapter merged into {adapter.base_model}, exported by cra\nFROM .\n", encoding="utf-8")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
