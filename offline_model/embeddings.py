"""A deterministic hashing embedder: no model files, no network, the same vector for the same text.

Features are the lowercased word unigrams of a text plus the character trigrams of its normalised form
(words joined by single spaces, padded with a space at each end, so word boundaries count). Each feature
is hashed (BLAKE2b, 64 bits) to a bucket and a sign (signed feature hashing, so collisions cancel out
rather than pile up); the vector is L2-normalised. Texts sharing words or word pieces therefore have a
high cosine similarity, unrelated texts one near zero, and identical texts exactly 1.

Typical cosine similarities at 384 dimensions: a question reusing most words of a statement ("What is my
daily calorie goal?" / "My daily calorie goal is 2000 kcal") ≈ 0.65-0.8, texts sharing a word or two
("peanut allergy" / "I'm allergic to peanuts") ≈ 0.25-0.55, unrelated texts ≈ 0-0.15. Retrieval
thresholds tuned for neural models (0.82 for ada-002) are far too strict for it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

WORD_WEIGHT = 1.0
"""Weight of a whole-word feature."""
TRIGRAM_WEIGHT = 0.5
"""Weight of a character-trigram feature (there are several per word, so each counts less)."""

_WORD = re.compile(r"\w+")
_SIGN_BIT = 1 << 63


@lru_cache(maxsize=1 << 16)
def _feature_hash(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")


def features(text: str) -> list[tuple[str, float]]:
    """The weighted features of `text`; never empty (a text without words hashes as itself)."""
    words = _WORD.findall(text.lower())
    if not words:
        return [("raw:" + text, WORD_WEIGHT)]
    padded = " " + " ".join(words) + " "
    found = [("w:" + word, WORD_WEIGHT) for word in words]
    found.extend(("c:" + padded[i : i + 3], TRIGRAM_WEIGHT) for i in range(len(padded) - 2))
    return found


def embed(text: str, dimensions: int) -> npt.NDArray[np.float32]:
    """The unit-length embedding of `text` with `dimensions` components."""
    if dimensions < 1:
        raise ValueError("dimensions must be at least 1")
    vector = np.zeros(dimensions, dtype=np.float64)
    for feature, weight in features(text):
        hashed = _feature_hash(feature)
        vector[hashed % dimensions] += -weight if hashed & _SIGN_BIT else weight
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        # Every feature cancelled out (possible in very few dimensions): fall back to the first bucket.
        vector[_feature_hash("raw:" + text) % dimensions] = 1.0
        norm = 1.0
    return (vector / norm).astype(np.float32)


def embed_many(texts: Sequence[str], dimensions: int) -> npt.NDArray[np.float32]:
    """Embeddings of `texts`, one row each."""
    if not texts:
        return np.zeros((0, dimensions), dtype=np.float32)
    return np.stack([embed(text, dimensions) for text in texts])
