"""Bytes in, pixels out, safely.

The type comes from magic bytes, never from a name or a Content-Type (pict-rs 0.4 files have no
extension, and a client can lie). Decoding refuses images whose header already announces more
pixels than allowed, before any pixel is decompressed, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image, UnidentifiedImageError

IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/apng",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/jxl",
        "image/bmp",
        "image/tiff",
    }
)
VIDEO_TYPES = frozenset({"video/mp4", "video/webm", "video/x-matroska", "video/quicktime"})

_ISO_BMFF_IMAGE_BRANDS = {b"avif", b"avis"}
_ISO_BMFF_QUICKTIME = {b"qt  "}


class UnreadableMedia(Exception):
    """The bytes cannot be judged (unknown type, corrupt, or over a decode limit)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sniff(data: bytes) -> str | None:
    """Media type from the first bytes, or None when it is not a media type we know."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        # APNG is a PNG with an acTL chunk before the first IDAT.
        idat = data.find(b"IDAT")
        actl = data.find(b"acTL", 0, idat if idat > 0 else 4096)
        return "image/apng" if actl > 0 else "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "image/jxl"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _ISO_BMFF_IMAGE_BRANDS:
            return "image/avif"
        if brand in _ISO_BMFF_QUICKTIME:
            return "video/quicktime"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in data[:4096] else "video/x-matroska"
    if head.startswith(b"BM") and len(data) > 26:
        return "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


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


def prepare(data: bytes, limits: DecodeLimits) -> PreparedImage:
    """Decode `data` and downscale it for a backend. Blocking: call from a worker thread.

    Raises UnreadableMedia with a reason an admin can read.
    """
    return encode_for_backend(decode(data, limits), data, limits)


def encode_webp(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    # method 0: ~7x faster than 4 at 512 px (10 vs 70 ms, the largest CPU cost of a miss) for
    # files ~6% larger.
    image.save(out, format="WEBP", quality=quality, method=0)
    return out.getvalue()


def encode_for_backend(decoded: DecodedImage, data: bytes, limits: DecodeLimits) -> PreparedImage:
    """Add the WebP a backend is sent (the costly half of `prepare`: a hash-list match that
    rejects an image needs only the pixels). Blocking."""
    rgb, side = decoded.image, limits.backend_max_side
    small = max(decoded.width, decoded.height) <= side
    frames = decoded.frames or (Frame(0, None, rgb),)
    try:
        if (
            len(frames) == 1
            and decoded.media_type == "image/webp"
            and len(data) < 512 * 1024
            and small
        ):
            # Already small WebP (e.g. a persisted job): keep its bytes, skip a re-encode.
            webp = data
            frames = (replace(frames[0], webp=webp),)
        else:
            frames = tuple(
                replace(f, webp=encode_webp(f.image, limits.webp_quality)) for f in frames
            )
            webp = frames[0].webp
    except (OSError, ValueError) as exc:
        raise UnreadableMedia(f"{decoded.media_type}: cannot encode ({exc})") from None
    return PreparedImage(
        decoded.media_type, decoded.width, decoded.height, decoded.frame_count, rgb, webp, frames
    )


def decode(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """Decode `data` and downscale it to at most `backend_max_side`. Blocking.

    Animations and videos are reduced to a sample of at most `limits.max_frames` frames.
    Raises UnreadableMedia with a reason an admin can read.
    """
    media_type = sniff(data)
    if media_type is None:
        raise UnreadableMedia("not a known image or video type (magic bytes)")
    if media_type in VIDEO_TYPES:
        from horde_scanner.media.video import decode_video  # PyAV only when a video comes

        return decode_video(data, media_type, limits)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise UnreadableMedia("image has no pixels")
            if width * height > limits.max_pixels:
                raise UnreadableMedia(
                    f"{width}x{height} exceeds the decode limit of {limits.max_pixels} pixels"
                )
            frame_count = int(getattr(img, "n_frames", 1) or 1)
            if frame_count > 1:
                frames = _animation_frames(img, media_type, frame_count, limits)
                rgb = frames[0].image
            else:
                # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: far less work for big photos.
                img.draft("RGB", (limits.backend_max_side, limits.backend_max_side))
                img.seek(0)
                rgb = _small(img, limits)
                frames = (Frame(0, None, rgb),)
    except UnreadableMedia:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableMedia(f"{media_type}: cannot decode ({exc})") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fired first (its limit is higher than ours).
        raise UnreadableMedia(
            f"exceeds the decode limit of {limits.max_pixels} pixels; decompression bomb "
            f"refused ({exc})"
        ) from None
    return DecodedImage(media_type, width, height, frame_count, rgb, frames)


def _small(img: Image.Image, limits: DecodeLimits) -> Image.Image:
    rgb = _to_rgb(img)
    side = limits.backend_max_side
    rgb.thumbnail((side, side), Image.Resampling.BILINEAR)
    return rgb


def _animation_frames(
    img: Image.Image, media_type: str, count: int, limits: DecodeLimits
) -> tuple[Frame, ...]:
    """Walk every frame (GIF/APNG/WebP frames build on the previous ones, so seeking decodes
    them all anyway) and keep downscaled copies of the candidates only."""
    if count > limits.max_frame_count:
        raise UnreadableMedia(
            f"{media_type}: {count} frames exceed the limit of {limits.max_frame_count}"
        )
    total = count * img.width * img.height
    if total > limits.max_total_pixels:
        raise UnreadableMedia(
            f"{media_type}: {count} frames of {img.width}x{img.height} exceed the decode limit "
            f"of {limits.max_total_pixels} pixels in all"
        )
    wanted = set(candidate_positions(count, limits.max_frames))
    budget = DecodeBudget(limits, media_type)
    sample = FrameSample(limits)
    elapsed_ms = 0.0
    for index in range(count):
        budget.check(index)
        img.seek(index)
        if index in wanted:
            sample.offer(index, elapsed_ms / 1000.0, _small(img, limits))
        elapsed_ms += float(img.info.get("duration") or 0)
    return sample.result()


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


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels carry arbitrary colour; judge what a viewer sees (on white).
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
