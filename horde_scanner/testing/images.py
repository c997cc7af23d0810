"""Test images made on the fly. Colour markers follow horde_scanner/testing/horde.py: red is judged
csam-like, magenta nsfw, everything else clean. A seed scatters a few pixels so that every
image has its own sha256 while keeping its mean colour."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image

COLOURS = {
    "red": (230, 20, 20),
    "magenta": (230, 20, 230),
    "yellow": (235, 225, 20),
    "green": (40, 150, 60),
    "blue": (30, 60, 200),
}


def image(
    colour: str = "green", *, size: tuple[int, int] = (256, 256), seed: int = 0
) -> Image.Image:
    img = Image.new("RGB", size, COLOURS[colour])
    rng = random.Random(seed)
    px = img.load()
    assert px is not None
    for _ in range(24):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r, g, b = COLOURS[colour]
        px[x, y] = (min(255, r + rng.randrange(20)), g, b)
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def jpeg(colour: str = "green", *, size: tuple[int, int] = (256, 256), seed: int = 0) -> bytes:
    return encode(image(colour, size=size, seed=seed), "JPEG", quality=90)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header announces width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def distinct_png(seed: int) -> bytes:
    """A clean image of its own per seed (different bytes, same verdict)."""
    # PNG: JPEG's chroma subsampling can make a few changed pixels vanish (equal bytes).
    return encode(image("green", seed=seed), "PNG")
