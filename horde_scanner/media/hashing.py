"""Content hashes.

sha256 of the exact bytes is the cache key, and also the first 32 bytes of pict-rs's own hash,
so a verdict can be matched to pict-rs aliases later.

PDQ (Meta's perceptual hash, 256 bits) of the decoded pixels survives re-encoding, resizing,
recompression and light cropping: two hashes of the same picture differ in few bits (Hamming
distance), unrelated pictures in about half of them. The hex form is the one ThreatExchange and
HMA use (most significant bit first), so lists can be exchanged with those tools.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

PDQ_BITS = 256
PDQ_HEX_LEN = PDQ_BITS // 4

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PDQ_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(value: str) -> bool:
    return bool(_SHA256_RE.match(value))


def is_pdq_hex(value: str) -> bool:
    return bool(_PDQ_RE.match(value))


@dataclass(frozen=True, slots=True)
class PdqHash:
    """One PDQ hash. `quality` (0-100) says how much structure the picture had: flat or
    nearly flat pictures hash to near-random bits and must never be trusted to match."""

    hex: str
    quality: int
    # Frame of an animation or video the hash was taken from (0 for a still image).
    frame: int = 0


def pdq_hash(image: Image.Image, *, frame: int = 0) -> PdqHash:
    """PDQ of an RGB image. Blocking (a few ms at 512 px): call from a worker thread.

    Hash the already downscaled image (<= 512 px side): PDQ reduces to 64x64 luma anyway, and
    its reference implementation downsamples to 512 px first, so the result is the same."""
    import pdqhash  # C++ extension; imported here so that importing this module stays cheap

    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    bits, quality = pdqhash.compute(pixels)
    # pdqhash returns bit 255 first: packing most significant bit first gives the standard hex.
    value = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
    return PdqHash(value, int(quality), frame)


def pdq_distance(a: str, b: str) -> int:
    """Hamming distance between two PDQ hex strings."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
