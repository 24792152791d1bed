"""LoRA adapters on disk: which base they belong to, and whether vLLM can serve them on a given base."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BadAdapter

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ARCH_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size",
)
_LORA_KEY = re.compile(r"layers\.(\d+)\..*?\b(\w+)\.lora_(A|B)\.weight$")
_EDGE_BYTES = 1 << 20
_described: dict[tuple, BaseModel] = {}


@dataclass(frozen=True)
class BaseModel:
    """A base model as configured, with its local files when they can be found."""

    name: str
    path: Path | None
    config: dict | None
    fingerprint: str | None

    @property
    def served_name(self) -> str:
        """The name the server knows it by: the configured name, or a local folder's name."""
        return served_name(self.name)


@dataclass(frozen=True)
class AdapterFiles:
    """What an adapter folder says about itself."""

    path: Path
    rank: int
    base_model: str
    target_modules: tuple[str, ...]


def served_name(base: str) -> str:
    """The model name a server is asked for: a local path's folder name, else the name itself."""
    return Path(base).name if _is_local_path(base) else base


def _is_local_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def same_name(a: str, b: str) -> bool:
    """Two base names meaning the same model: equal up to case, a trailing slash and the folder or org prefix."""
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def locate_base(name: str) -> Path | None:
    """The local folder of a base model: the path itself, else its Hugging Face cache snapshot; None if absent."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if _is_local_path(name):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, or not a repo id: the caller says what it could not check
        return None


def fingerprint(folder: Path) -> str:
    """A hash of a model's architecture and weight files (sizes plus their first and last MiB): cheap but specific."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256(json.dumps({k: config.get(k) for k in ARCH_KEYS}, sort_keys=True).encode())
    for weights in sorted(folder.glob("*.safetensors")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as fh:
            digest.update(fh.read(_EDGE_BYTES))
            fh.seek(max(0, size - _EDGE_BYTES))
            digest.update(fh.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


def describe_base(name: str) -> BaseModel:
    """The base model `name`, with its config and fingerprint when its files are local (read once per file state)."""
    folder = locate_base(name)
    if folder is None or not (folder / "config.json").is_file():
        return BaseModel(name=name, path=folder, config=None, fingerprint=None)
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    stamp = (name, str(folder), *((f.name, st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]))
    if stamp not in _described:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        _described[stamp] = BaseModel(name=name, path=folder, config=config, fingerprint=fingerprint(folder))
    return _described[stamp]


def read_adapter(path: Path) -> AdapterFiles:
    """Read an adapter folder's PEFT config; a clear error if the folder is not a readable LoRA adapter."""
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise BadAdapter(f"adapter folder {path} does not exist; register the adapter again or remove it")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadAdapter(f"{config_file} is missing or unreadable ({exc}); the adapter folder is incomplete") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise BadAdapter(f"{path} is a {config.get('peft_type')} adapter; only LoRA adapters can be served")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise BadAdapter(f"{path} has no adapter_model.safetensors; save the adapter with safetensors")
    ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
    targets = config.get("target_modules") or []
    return AdapterFiles(
        path=path, rank=max(ranks), base_model=str(config.get("base_model_name_or_path") or ""),
        target_modules=tuple([targets] if isinstance(targets, str) else targets),
    )


def _expected_dims(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear projection of a Llama/Qwen-style decoder layer."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    inter = config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _shape_problems(weights: Path, config: dict) -> list[str]:
    from safetensors import safe_open

    dims = _expected_dims(config)
    layers = config["num_hidden_layers"]
    problems = []
    try:
        with safe_open(str(weights), framework="numpy") as tensors:
            for key in tensors.keys():
                match = _LORA_KEY.search(key)
                if not match:
                    continue
                layer, module, which = int(match[1]), match[2], match[3]
                if layer >= layers:
                    problems.append(f"{key}: layer {layer} but the base has {layers} layers")
                    continue
                if module not in dims:
                    continue
                shape = tuple(tensors.get_slice(key).get_shape())
                fan_in, fan_out = dims[module]
                if (which == "A" and shape[1] != fan_in) or (which == "B" and shape[0] != fan_out):
                    want = f"(r, {fan_in})" if which == "A" else f"({fan_out}, r)"
                    problems.append(f"{key}: shape {shape}, the base needs {want}")
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated file, whatever safetensors calls it
        return [f"cannot read {weights.name}: {exc}"]
    return problems


def check_adapter(
    path: Path, base: BaseModel, *, rank_limit: int, trained_on: str | None = None,
) -> AdapterFiles:
    """Check an adapter can be served on `base`: files, a rank vLLM allows within the limit, the same base, shapes.

    `trained_on` is the fingerprint the registry recorded at training time, when there is one.
    """
    files = read_adapter(path)
    if files.rank not in VLLM_RANKS:
        raise BadAdapter(f"adapter {path.name} has rank {files.rank}; vLLM serves ranks {', '.join(map(str, VLLM_RANKS))}: retrain with one of them")
    if files.rank > rank_limit:
        raise BadAdapter(f"adapter {path.name} has rank {files.rank}, above the limit of {rank_limit} ([serve] max_lora_rank_limit)")
    if trained_on and base.fingerprint and trained_on != base.fingerprint:
        raise BadAdapter(
            f"adapter {path.name} was trained on a different base than {base.name} (fingerprint {trained_on} vs "
            f"{base.fingerprint}); serve it on its own base or retrain it"
        )
    if not trained_on and files.base_model and not same_name(files.base_model, base.name):
        raise BadAdapter(f"adapter {path.name} was trained on {files.base_model}, not {base.name}; serve it on its own base or retrain it")
    if base.config is None:
        return files
    problems = _shape_problems(path / "adapter_model.safetensors", base.config)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise BadAdapter(f"adapter {path.name} does not fit {base.name}: {shown}")
    return files
