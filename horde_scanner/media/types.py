"""What media decoding takes and gives: its limits, its errors and the decoded pixels.

Shared by stills (decode.py) and video (video.py) without either importing the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from horde_scanner.errors import InvalidInput


class UnreadableMedia(InvalidInput):
    """The bytes cannot be judged (unknown type, corrupt, or over a decode limit)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_pixels: int = 64_000_000
    backend_max_side: int = 512
    webp_quality: int = 85
    # Frames of an animation or video judged: the first, then spread over the duration.
    max_frames: int = 8
    # An animation announcing more frames than this is unreadable (each must be decoded).
    max_frame_count: int = 5_000
    # Pixels decoded over all frames of one file (animations decode every frame).
    max_total_pixels: int = 1_000_000_000
    # Wall-clock bound on decoding one file, checked between frames.
    max_decode_s: float = 5.0
    # Frames whose difference hash differs in at most this many of 64 bits count as the same.
    near_duplicate_bits: int = 4
    # Bytes all decodes of a process may hold at once (media/memory.py holds the count).
    decode_memory_bytes: int = 320 << 20


@dataclass(frozen=True, slots=True)
class Frame:
    """One sampled frame: where it is in the file and its pixels (RGB, <= backend side)."""

    index: int
    # Presentation time in seconds (None for a still image).
    time_s: float | None
    image: Image.Image
    # The frame as WebP (what the AI Horde is sent); empty until encode_for_backend.
    webp: bytes = b""

    def label(self) -> str:
        if self.time_s is None:
            return f"frame {self.index}"
        return f"frame {self.index} at {self.time_s:.2f} s"


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image decoded once and reduced to what a backend needs."""

    media_type: str
    width: int
    height: int
    # Frames in the file (1 for a still image; an estimate for some videos).
    frame_count: int
    # RGB, longest side <= backend_max_side: the first frame.
    image: Image.Image
    # The same pixels as WebP: what a pending job persists and what the AI Horde is sent.
    webp: bytes
    # The sample to judge, in file order (one entry for a still image).
    frames: tuple[Frame, ...] = ()

    @property
    def animated(self) -> bool:
        """From an animation or a video (even when one frame is left to judge)."""
        return bool(self.frames) and self.frames[0].time_s is not None

    def subset(self, frames: Sequence[Frame]) -> PreparedImage:
        """The same file reduced to some of its sampled frames (the first of them leads)."""
        first = frames[0]
        return PreparedImage(
            self.media_type,
            self.width,
            self.height,
            self.frame_count,
            first.image,
            first.webp or self.webp,
            tuple(frames),
        )


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Decoded and downscaled, not yet encoded for a backend (enough for hashing)."""

    media_type: str
    width: int
    height: int
    frame_count: int
    # RGB, longest side <= backend_max_side: the first frame.
    image: Image.Image
    frames: tuple[Frame, ...] = ()
