"""Choosing the frames of an animation or a video worth judging, within a decode budget."""

from __future__ import annotations

import time

from PIL import Image

from horde_scanner.media.types import DecodeLimits, Frame, UnreadableMedia


def candidate_positions(count: int, max_frames: int) -> list[int]:
    """Frame numbers worth decoding: evenly spread, first included, four times as many as will
    be kept so that near-duplicates can be dropped without leaving the sample short."""
    n = min(count, max(1, max_frames) * 4)
    if n <= 1:
        return [0]
    return sorted({round(i * (count - 1) / (n - 1)) for i in range(n)})


class DecodeBudget:
    """Decode time, checked between frames (one frame is bounded by max_pixels)."""

    def __init__(self, limits: DecodeLimits, media_type: str) -> None:
        self._limit = limits.max_decode_s
        self._media_type = media_type
        self._started = time.monotonic()

    def check(self, index: int) -> None:
        if time.monotonic() - self._started > self._limit:
            raise UnreadableMedia(
                f"{self._media_type}: decoding took longer than {self._limit:g} s "
                f"(stopped at frame {index})"
            )


class FrameSample:
    """Candidate frames in file order -> at most max_frames distinct ones, evenly spread."""

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self._frames: list[Frame] = []
        self._sigs: list[tuple[int, tuple[int, ...]]] = []

    def offer(self, index: int, time_s: float | None, image: Image.Image) -> None:
        sig = signature(image)
        if any(_near(sig, other, self._limits.near_duplicate_bits) for other in self._sigs):
            return
        self._sigs.append(sig)
        self._frames.append(Frame(index, time_s, image))

    def __len__(self) -> int:
        return len(self._frames)

    def result(self) -> tuple[Frame, ...]:
        frames, k = self._frames, max(1, self._limits.max_frames)
        if len(frames) <= k:
            return tuple(frames)
        if k == 1:
            return (frames[0],)
        picks = sorted({round(i * (len(frames) - 1) / (k - 1)) for i in range(k)})
        return tuple(frames[i] for i in picks)


# Mean colour may differ this much per channel (0-255) between near-identical frames.
_COLOUR_TOLERANCE = 12


def signature(image: Image.Image) -> tuple[int, tuple[int, ...]]:
    """A 64-bit difference hash plus the mean colour: the hash alone sees structure only, and
    would take a red frame for the green one before it."""
    small = image.convert("RGB").resize((9, 8), Image.Resampling.BILINEAR)
    px = small.convert("L").tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] > px[row * 9 + col + 1])
    rgb = small.tobytes()
    mean = tuple(sum(rgb[c::3]) // 72 for c in range(3))
    return bits, mean


def _near(a: tuple[int, tuple[int, ...]], b: tuple[int, tuple[int, ...]], bits: int) -> bool:
    if (a[0] ^ b[0]).bit_count() > bits:
        return False
    return all(abs(x - y) <= _COLOUR_TOLERANCE for x, y in zip(a[1], b[1], strict=True))
