"""Animations and videos made on the fly (Pillow for animations, PyAV's encoders for video).

Colour markers follow horde_scanner/testing/horde.py and MockBackend: a red frame is judged
csam-like.
`frames("green", marker=6, count=12)` gives twelve frames of a scene with a moving square,
frame 6 painted red all over.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from horde_scanner.testing.images import COLOURS

# Encoders present in PyAV's wheels (checked by tests/unit/media/test_video.py).
VIDEO_CODECS = {
    "mp4": ("libx264", "yuv420p"),
    "webm": ("libvpx", "yuv420p"),
    "mkv": ("mpeg4", "yuv420p"),
}


def frames(
    colour: str = "green",
    *,
    count: int = 12,
    marker: int | None = None,
    marker_colour: str = "red",
    size: tuple[int, int] = (160, 120),
    moving: bool = True,
) -> list[Image.Image]:
    """`count` frames; with `moving`, a white square crosses the scene so frames differ."""
    out = []
    for i in range(count):
        fill = COLOURS[marker_colour] if i == marker else COLOURS[colour]
        img = Image.new("RGB", size, fill)
        if moving and i != marker:
            draw = ImageDraw.Draw(img)
            x = (i * size[0]) // max(1, count)
            draw.rectangle(
                (x, size[1] // 3, x + size[0] // 8, size[1] // 3 + size[1] // 8),
                fill=(250, 250, 250),
            )
        out.append(img)
    return out


def animation(images: list[Image.Image], fmt: str = "GIF", *, duration_ms: int = 100) -> bytes:
    out = io.BytesIO()
    extra: dict[str, object] = {"loop": 0}
    if fmt == "WEBP":
        extra["lossless"] = True
    images[0].save(
        out, format=fmt, save_all=True, append_images=images[1:], duration=duration_ms, **extra
    )
    return out.getvalue()


def video(images: list[Image.Image], container: str = "mp4", *, fps: int = 4) -> bytes:
    import av

    codec, pix_fmt = VIDEO_CODECS[container]
    fmt = {"mp4": "mp4", "webm": "webm", "mkv": "matroska"}[container]
    out = io.BytesIO()
    with av.open(out, mode="w", format=fmt) as muxer:
        stream = muxer.add_stream(codec, rate=fps)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": str(fps * 2)}
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def gif_screen(width: int, height: int, frame_count: int = 1) -> bytes:
    """A GIF whose logical screen is width x height with `frame_count` 1x1 frames: tiny on disk,
    huge or long when decoded."""
    header = (
        b"GIF89a" + width.to_bytes(2, "little") + height.to_bytes(2, "little") + b"\x80\x00\x00"
    )
    palette = b"\x00\x00\x00\xff\xff\xff"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # 1x1 image at 0,0
        + b"\x02\x02\x44\x01\x00"  # LZW data for one pixel
    )
    return header + palette + frame * frame_count + b"\x3b"
