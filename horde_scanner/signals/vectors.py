"""Image embeddings as values: the HMA signal form (hex of raw float32 bytes) and the checks a
vector from outside must pass before it is stored or indexed.

HMA's CLIP signal (tx-extension-clip, `CLIPOutput.serialize`) writes `hash_vector.tobytes()`
as hex: float32 in little-endian byte order (every machine it runs on), 512 dimensions, 4,096
hex characters, L2-normalised. The same form is used here for every model; the dimension is
the model's.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from horde_scanner.errors import InvalidInput

# What "normalised" means for a vector read from a list: float32 rounding of a unit vector
# stays well inside this; anything further was not normalised (or was edited).
NORM_TOLERANCE = 1e-3
_HEX = re.compile(r"[0-9a-fA-F]*")
_FLOAT = np.dtype("<f4")


class BadVector(InvalidInput, ValueError):
    """A vector that cannot be used: not hex, wrong length, not finite, not normalised."""


def to_hex(vector: np.ndarray) -> str:
    """HMA form: the little-endian float32 bytes as lower-case hex."""
    return np.ascontiguousarray(vector, dtype=_FLOAT).tobytes().hex()


def from_hex(text: str, dim: int) -> np.ndarray:
    """A checked unit vector (float32, `dim`) from HMA's hex form; BadVector says why not."""
    if not isinstance(text, str):
        raise BadVector(f"an embedding must be hex text, got {type(text).__name__}")
    text = text.strip()
    if len(text) != dim * 8:
        raise BadVector(
            f"an embedding of {dim} float32 is {dim * 8} hex characters, got {len(text)}"
        )
    if not _HEX.fullmatch(text):
        raise BadVector("an embedding is not hexadecimal")
    return checked(np.frombuffer(bytes.fromhex(text), dtype=_FLOAT), dim)


def checked(vector: np.ndarray, dim: int) -> np.ndarray:
    """`vector` as float32 if it has `dim` finite components and unit length."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if len(vector) != dim:
        raise BadVector(f"an embedding must have {dim} dimensions, got {len(vector)}")
    if not np.isfinite(vector).all():
        raise BadVector("an embedding has a component that is not a finite number")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise BadVector(f"an embedding must be L2-normalised (length 1), got length {norm:.4f}")
    return vector


def normalised(vector: np.ndarray) -> np.ndarray:
    """An encoder's output as a unit float32 vector (an all-zero output stays zero)."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def digest(vector: np.ndarray) -> str:
    """A short stable key of a vector's exact bytes (the store's upsert and diff key)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=_FLOAT).tobytes()).hexdigest()[:32]


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=_FLOAT).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=_FLOAT)
