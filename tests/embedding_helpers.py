"""Shared pieces for the embedding tests: the model names a test instance runs the tiny
encoder under (the `encoder` fixture, tests/conftest.py, writes its file), and random unit
vectors of its dimension."""

from __future__ import annotations

import numpy as np

MODEL_ID = "tiny-test-encoder-v1"
PREPROCESS = "resize224-bicubic-centercrop-clipnorm"


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
