"""Bytes in, pixels out, safely.

The type comes from magic bytes, never from a name or a Content-Type (pict-rs 0.4 files have no
extension, and a client can lie). Decoding refuses images whose header already announces more
pixels than allowed, before any pixel is decompressed, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from types import ModuleType

from PIL import Image, UnidentifiedImageError

from horde_scanner.media.memory import DecodeMemory
from horde_scanner.media.sampling import DecodeBudget, FrameSample, candidate_positions
from horde_scanner.media.types import (
    DecodedImage,
    DecodeLimits,
    Frame,
    PreparedImage,
    UnreadableMedia,
)

# The types live in types.py (so that video.py needs nothing from here); callers keep
# importing them from the module that decodes.
__all__ = [
    "IMAGE_TYPES",
    "VIDEO_TYPES",
    "DecodeLimits",
    "DecodedImage",
    "Frame",
    "PreparedImage",
    "UnreadableMedia",
    "candidate_positions",
    "decode",
    "decode_cost",
    "encode_for_backend",
    "encode_webp",
    "prepare",
    "prepare_within",
    "sniff",
]

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


def prepare(data: bytes, limits: DecodeLimits) -> PreparedImage:
    """Decode `data` and downscale it for a backend. Blocking: call from a worker thread.

    Raises UnreadableMedia with a reason an admin can read.
    """
    return encode_for_backend(decode(data, limits), data, limits)


async def prepare_within(
    data: bytes, limits: DecodeLimits, memory: DecodeMemory, executor: Executor | None = None
) -> PreparedImage:
    """`prepare` holding its estimated bytes from `memory` (waiting for them if need be)."""
    loop = asyncio.get_running_loop()
    cost = await loop.run_in_executor(executor, decode_cost, data, limits)
    async with memory.hold(cost, sniff(data) or "file"):
        return await loop.run_in_executor(executor, prepare, data, limits)


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
        return _video().decode_video(data, media_type, limits)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            _check_pixels(width, height, limits)
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


# Bytes Pillow keeps per pixel of a decoded frame, by mode (everything else takes 4).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# What reducing one frame costs beyond the frame itself: a few bands of rows in RGB(A), the
# reduced copy and its bilinear result, PDQ and the sample's signature.
_WORK_BYTES = 24 << 20
# Bytes per pixel of the frame size that walking an animation holds, measured with Pillow:
# the composed frame, the previous one (disposal) and the frame being pasted (APNG); GIF adds
# its palette frame; libwebp's animation decoder keeps its own canvas and previous canvas
# beside the bytes handed over and Pillow's frame (a WebP still goes through it too).
_ANIMATION_BYTES = {"PNG": 12, "GIF": 16}
_WEBP_BYTES = 18


def _video() -> ModuleType:
    from horde_scanner.media import video  # PyAV only when a video comes

    return video


def decode_cost(data: bytes, limits: DecodeLimits) -> int:
    """About how many bytes decoding `data` holds at its peak, from the header alone (cheap:
    nothing is decompressed). Raises UnreadableMedia where `decode` would refuse at once.
    Blocking (a video's header is read through PyAV): call from a worker thread."""
    media_type = sniff(data)
    if media_type is None:
        raise UnreadableMedia("not a known image or video type (magic bytes)")
    if media_type in VIDEO_TYPES:
        return _video().video_cost(data, media_type, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            _check_pixels(width, height, limits)
            animated = bool(getattr(img, "is_animated", False))
            per_pixel = _PIXEL_BYTES.get(img.mode, 4)
            extra = 0
            if img.format == "WEBP":
                per_pixel = _WEBP_BYTES
            elif animated:
                per_pixel = _ANIMATION_BYTES.get(str(img.format), _WEBP_BYTES)
            elif img.format == "JPEG":
                extra = _jpeg_coefficients(img)
                img.draft("RGB", (limits.backend_max_side, limits.backend_max_side))
                width, height = img.size
                per_pixel = 4
            elif img.format == "TIFF":
                per_pixel = 4 * 2  # libtiff may read a whole strip or tile beside the frame
    except UnreadableMedia:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableMedia(f"{media_type}: cannot decode ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableMedia(
            f"exceeds the decode limit of {limits.max_pixels} pixels; decompression bomb "
            f"refused ({exc})"
        ) from None
    return width * height * per_pixel + extra + _WORK_BYTES


def _jpeg_coefficients(img: Image.Image) -> int:
    """A progressive JPEG keeps every DCT coefficient of the full image (2 bytes each) until
    its last scan, whatever scale it is drawn at."""
    if not img.info.get("progressive"):
        return 0
    from PIL import JpegImagePlugin

    # 4:4:4 keeps 3 full planes, 4:2:2 two, 4:2:0 one and a half.
    planes = {0: 3.0, 1: 2.0, 2: 1.5}.get(JpegImagePlugin.get_sampling(img), 3.0)
    return int(img.width * img.height * planes * 2)


def _check_pixels(width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableMedia("image has no pixels")
    if width * height > limits.max_pixels:
        raise UnreadableMedia(
            f"{width}x{height} exceeds the decode limit of {limits.max_pixels} pixels"
        )


def _small(img: Image.Image, limits: DecodeLimits) -> Image.Image:
    """The frame as RGB, longest side <= backend_max_side, reduced before it is converted.

    The same pixels as converting the whole frame and calling `thumbnail` (an integer box
    reduction, then bilinear), but the conversion is done one band of rows at a time on the way
    down: the decoded frame in its own mode is the only full-size copy there ever is."""
    side = limits.backend_max_side
    width, height = img.size
    size = _fitted(width, height, side)
    if size == (width, height):
        return _to_rgb(img)
    # Pillow's resize(reducing_gap=2.0), which thumbnail uses: reduce by the integer factor
    # that leaves at least twice the target size, then bilinear from there.
    fx = int(width / size[0] / 2.0) or 1
    fy = int(height / size[1] / 2.0) or 1
    img.load()
    reduced = _reduce_in_bands(img, fx, fy) if fx > 1 or fy > 1 else _to_rgb(img)
    box = (0.0, 0.0, width / fx, height / fy)
    return reduced.resize(size, Image.Resampling.BILINEAR, box=box)


# Rows converted at a time: a band is about this many bytes in RGBA.
_BAND_BYTES = 4 << 20


def _reduce_in_bands(img: Image.Image, fx: int, fy: int) -> Image.Image:
    width, height = img.size
    out = Image.new("RGB", (-(-width // fx), -(-height // fy)), (255, 255, 255))
    rows = max(fy, (_BAND_BYTES // (4 * width)) // fy * fy)
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        band = _to_rgb_or_rgba(band, img)
        small = band.reduce((fx, fy))
        del band
        if small.mode == "RGBA":
            out.paste(small.convert("RGB"), (0, top // fy), small.getchannel("A"))
        else:
            out.paste(small, (0, top // fy))
    return out


def _fitted(width: int, height: int, side: int) -> tuple[int, int]:
    """The size `thumbnail((side, side))` gives (its aspect-preserving rounding)."""
    if width <= side and height <= side:
        return width, height
    aspect = width / height
    x, y = side, side

    def round_aspect(number: float, key: Callable[[int], float]) -> int:
        return max(min(int(number), int(number) + 1, key=key), 1)

    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


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


def _transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _to_rgb_or_rgba(band: Image.Image, frame: Image.Image) -> Image.Image:
    """A band of `frame` as RGB, or RGBA when the frame has transparency (reduced premultiplied,
    then put on white: the same as putting the whole frame on white first)."""
    if _transparent(frame):
        if band.mode == "P" and "transparency" in frame.info:
            band.info["transparency"] = frame.info["transparency"]
        return band.convert("RGBA")
    return band.convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    if _transparent(img):
        # Transparent pixels carry arbitrary colour; judge what a viewer sees (on white).
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
