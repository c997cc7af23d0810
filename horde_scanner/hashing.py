"""Content hashes. sha256 of the exact bytes is the cache key, and also the first 32 bytes of
pict-rs's own hash, so a verdict can be matched to pict-rs aliases later."""

from __future__ import annotations

import hashlib
import re

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(value: str) -> bool:
    return bool(_SHA256_RE.match(value))
