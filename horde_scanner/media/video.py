"""Video frames through PyAV (extra [video]; its wheels carry their own FFmpeg).

One cheap pass over the packets (no decoding) finds the keyframes, the duration and whether
there are frames at all. Then, for each sample time spread evenly over the duration, the
decoder jumps to the keyframe before it (only forwards: a jump back would decode the same
stretch twice) and decodes on to the sample time, at most `_MAX_FORWARD_FRAMES` frames: with
long keyframe intervals a sample lands a little early instead of costing a whole interval, and
once `_FORWARD_BUDGET` frames are spent, samples are the keyframes themselves.
Only one full-size frame exists at a time; each kept frame is scaled down by FFmpeg itself.
"""

from __future__ import annotations

import bisect
import io
from fractions import Fraction
from typing import Any

from horde_scanner.media.sampling import DecodeBudget, FrameSample
from horde_scanner.media.types import DecodedImage, DecodeLimits, UnreadableMedia

# Decoded frames allowed between a keyframe and a sample time (3 s of 30 fps video), and in
# all for one file: once spent, samples snap to the keyframe before them. About 0.3 s of 720p
# decoding on one core.
_MAX_FORWARD_FRAMES = 90
_FORWARD_BUDGET = 120
# Sample times tried per frame kept, so that near-duplicates can be dropped.
_CANDIDATES_PER_FRAME = 2
# Decoding threads per video: each holds frames of its own, so their number bounds memory.
_THREADS = 2


# Decoded pictures FFmpeg may hold at once: up to 16 reference frames (H.264/HEVC), the frame
# being decoded and one per decoding thread.
_FRAME_BUFFERS = 16 + 2 + _THREADS
# Pixel formats by bytes per pixel (planar 4:2:0 8-bit is 1.5); 10/12-bit ones take twice that.
_HALF_PLANES = {"420": 1.5, "422": 2.0, "444": 3.0}


def video_cost(data: bytes, media_type: str, limits: DecodeLimits) -> int:
    """About how many bytes sampling this video holds at its peak, from its header."""
    av = _import_av(media_type)
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            streams = container.streams.video
            if not streams:
                raise UnreadableMedia(f"{media_type}: no video frames (no readable video stream)")
            ctx = streams[0].codec_context
            width, height = ctx.width or 0, ctx.height or 0
            _check_size(width, height, media_type, limits)
            fmt = str(getattr(ctx, "pix_fmt", None) or "yuv420p")
    except UnreadableMedia:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, IndexError, RuntimeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise UnreadableMedia(f"{media_type}: cannot decode ({why})") from None
    per_pixel = next((v for k, v in _HALF_PLANES.items() if k in fmt), 4.0)
    if any(depth in fmt for depth in ("p10", "p12", "p16")):
        per_pixel *= 2
    return int(max(width * height, 1) * per_pixel * _FRAME_BUFFERS) + (16 << 20)


def _import_av(media_type: str) -> Any:
    try:
        import av
    except ImportError:
        raise UnreadableMedia(
            f"{media_type}: reading video needs the [video] extra "
            "(pip install 'horde-scanner[video]')"
        ) from None
    return av


def decode_video(data: bytes, media_type: str, limits: DecodeLimits) -> DecodedImage:
    """Sample frames of a video. Blocking: call from a worker thread."""
    av = _import_av(media_type)
    errors: tuple[type[BaseException], ...] = (
        av.FFmpegError,
        OSError,
        ValueError,
        EOFError,
        IndexError,
        RuntimeError,
    )
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            return _sample(container, media_type, limits)
    except UnreadableMedia:
        raise
    except errors as exc:
        # FFmpeg's errors carry an errno and a file name of '<none>': keep the words only.
        why = getattr(exc, "strerror", None) or str(exc)
        raise UnreadableMedia(f"{media_type}: cannot decode ({why})") from None


def _sample(container: Any, media_type: str, limits: DecodeLimits) -> DecodedImage:
    streams = container.streams.video
    if not streams:
        raise UnreadableMedia(f"{media_type}: no video frames (no readable video stream)")
    stream = streams[0]
    ctx = stream.codec_context
    _check_size(ctx.width, ctx.height, media_type, limits)
    budget = DecodeBudget(limits, media_type)

    keyframes: list[int] = []
    first = last = None
    packets = 0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue  # the demuxer's closing empty packet, or one without a time
        packets += 1
        first = packet.pts if first is None else min(first, packet.pts)
        last = packet.pts if last is None else max(last, packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
        if packets % 256 == 0:
            budget.check(packets)
    if packets == 0 or first is None or last is None:
        raise UnreadableMedia(f"{media_type}: no video frames (the stream is empty)")
    keyframes.sort()
    if not keyframes:
        keyframes = [first]
    time_base = stream.time_base or Fraction(1, 1000)
    rate = stream.average_rate or stream.guessed_rate

    n = min(packets, max(1, limits.max_frames) * _CANDIDATES_PER_FRAME)
    span = last - first
    targets = sorted({first + (span * i) // max(1, n - 1) for i in range(n)})

    ctx.thread_type = "AUTO"
    ctx.thread_count = _THREADS
    sample = FrameSample(limits)
    decoded_pixels = 0
    frames_iter = None
    pos: int | None = None
    forward_left = _FORWARD_BUDGET
    for target in targets:
        k = bisect.bisect_right(keyframes, target) - 1
        keyframe = keyframes[max(0, k)]
        if frames_iter is None or (pos is not None and keyframe > pos):
            container.seek(keyframe, stream=stream, backward=True, any_frame=False)
            frames_iter = container.decode(stream)
        frame = None
        for forward, candidate in enumerate(frames_iter):
            budget.check(packets)
            _check_size(candidate.width, candidate.height, media_type, limits)
            decoded_pixels += candidate.width * candidate.height
            if decoded_pixels > limits.max_total_pixels:
                raise UnreadableMedia(
                    f"{media_type}: decoding would exceed the limit of "
                    f"{limits.max_total_pixels} pixels in all"
                )
            frame = candidate
            pos = candidate.pts if candidate.pts is not None else pos
            if candidate.pts is None or candidate.pts >= target or forward >= _MAX_FORWARD_FRAMES:
                break
            forward_left -= 1
            if forward_left <= 0:
                break
        if frame is None:
            break  # end of the stream
        seconds = float(((frame.pts if frame.pts is not None else target) - first) * time_base)
        index = round(seconds * float(rate)) if rate else len(sample)
        sample.offer(index, round(seconds, 3), _small(frame, limits))
    frames = sample.result()
    if not frames:
        raise UnreadableMedia(f"{media_type}: no frame could be decoded")
    width = ctx.width or frames[0].image.width
    height = ctx.height or frames[0].image.height
    return DecodedImage(media_type, width, height, packets, frames[0].image, frames)


def _check_size(width: int, height: int, media_type: str, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise UnreadableMedia(
            f"{media_type}: {width}x{height} frames exceed the decode limit of "
            f"{limits.max_pixels} pixels"
        )


def _small(frame: Any, limits: DecodeLimits) -> Any:
    side = limits.backend_max_side
    scale = min(1.0, side / max(frame.width, frame.height, 1))
    w = max(1, round(frame.width * scale))
    h = max(1, round(frame.height * scale))
    return frame.to_image(width=w, height=h, interpolation="BILINEAR")
