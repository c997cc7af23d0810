"""Bytes in, pixels out, safely.

The type comes from magic bytes, never from a name or a Content-Type (pict-rs 0.4 files have no
extension, and a client can lie). Decoding refuses images whose header already announces more
pixels than allowed, before any pixel is decompressed, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

from PIL import Image, UnidentifiedImageError

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
    "encode_for_backend",
    "encode_webp",
    "prepare",
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


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels carry arbitrary colour; judge what a viewer sees (on white).
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
