"""The pluggable embedder: the bundled MiniLM, offline."""

import numpy as np
import pytest

from agent.errors import InvalidInput
from agent.index.embed import load_embedder


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
