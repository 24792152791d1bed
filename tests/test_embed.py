"""The pluggable embedder: the bundled MiniLM, offline."""

import numpy as np
import pytest

from agent.errors import InvalidInput
from agent.index.embed import OnnxEmbedder, embed_isolated, load_embedder, load_query_embedder


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_vectors_are_unit_float32_in_input_order(embedder) -> None:
    texts = ["function CB2_InitWallClock: set up the wall clock screen",
             "x",
             "battle damage calculation for a move hitting a pokemon " * 8]
    out = embedder.embed(texts)
    assert out.shape == (3, embedder.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
    for i, text in enumerate(texts):  # batching by length must not reorder rows
        assert float(out[i] @ embedder.embed([text])[0]) > 0.99
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_similar_texts_are_closer(embedder) -> None:
    query, near, far = embedder.embed(["clock on the wall", "wall clock screen", "battle damage formula"])
    assert query @ near > query @ far


def test_loaded_once_per_process(embedder) -> None:
    assert load_embedder("minilm") is embedder


def test_unknown_model_is_invalid_input(tmp_path) -> None:
    with pytest.raises(InvalidInput, match="offline"):
        load_embedder(str(tmp_path / "no-such-model"))
    with pytest.raises(InvalidInput, match="offline"):
        load_embedder("no-such-org/no-such-model-xyz")


TEXTS = ["function CB2_InitWallClock: set up the wall clock screen", "x",
         "battle damage calculation for a move hitting a pokemon " * 40]


def test_query_embedder_runs_the_default_model_exported_to_onnx(embedder, tmp_path) -> None:
    query = load_query_embedder(None, tmp_path / "models")
    assert isinstance(query, OnnxEmbedder)
    exported = sorted((tmp_path / "models").iterdir())
    assert [p.suffix for p in exported] == [".onnx"]  # written aside and renamed: no temporary file left
    assert load_query_embedder("minilm", tmp_path / "models") is query
    out = query.embed(TEXTS)
    assert out.shape == (3, embedder.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # The same model as the torch embedder's (which runs bf16 where the CPU has AMX), in the same order.
    assert (np.sum(out * embedder.embed(TEXTS), axis=1) > 0.999).all()
    assert query.embed([]).shape == (0, embedder.dim)


def test_query_embedder_without_a_models_folder_or_for_another_model_is_the_torch_one(embedder) -> None:
    assert load_query_embedder(None, None) is embedder


def test_bulk_embedding_in_a_worker_process_matches_and_exports_the_query_model(embedder, tmp_path) -> None:
    models = tmp_path / "models"
    out = embed_isolated(None, TEXTS, models)
    assert np.allclose(out, embedder.embed(TEXTS), atol=1e-5)
    assert [p.suffix for p in models.iterdir()] == [".onnx"]
