"""Textured test images for perceptual hashing.

PDQ needs structure: a flat colour marker (testing/images.py) hashes with quality 0. These are
1/f ("pink") noise fields, the spectrum of natural photographs, reproducible by seed, in a
palette that makes the picture clearly red, green or blue on average. `red_is_csam` is a
backend judge for MockBackend that follows the marker convention for such pictures."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from horde_scanner.verdict import Signals

# (low, high) per channel.
PALETTES = {
    "red": ((60, 255), (0, 40), (0, 40)),
    "green": ((0, 120), (60, 230), (0, 120)),
    "blue": ((0, 90), (20, 140), (90, 255)),
}


def textured(
    colour: str = "green", *, seed: int = 0, size: tuple[int, int] = (480, 360)
) -> Image.Image:
    # The colour is part of the seed: the same seed in two colours is two unrelated pictures.
    rng = np.random.default_rng([seed, list(PALETTES).index(colour)])
    w, h = size
    freq = np.sqrt(np.fft.rfftfreq(w)[None, :] ** 2 + np.fft.fftfreq(h)[:, None] ** 2)
    freq[0, 0] = 1.0
    shared: np.ndarray | None = None
    channels = []
    for low, high in PALETTES[colour]:
        spectrum = (rng.normal(size=freq.shape) + 1j * rng.normal(size=freq.shape)) / freq**1.25
        spectrum[0, 0] = 0
        field = np.fft.irfft2(spectrum, s=(h, w))
        if shared is None:
            shared = field / field.std()
        # Mostly one field for all channels, so that luma (what PDQ sees) has full contrast.
        field = 0.7 * shared + 0.3 * field / field.std()
        field = (field - field.min()) / (field.max() - field.min())
        channels.append(low + field * (high - low))
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def flat(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (300, 300)
) -> Image.Image:
    return Image.new("RGB", size, colour)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def trim(img: Image.Image, fraction: float) -> Image.Image:
    w, h = img.size
    dx, dy = max(1, round(w * fraction)), max(1, round(h * fraction))
    return img.crop((dx, dy, w - dx, h - dy))


def variants(img: Image.Image) -> dict[str, bytes]:
    """Copies an uploader (or a federating server) would plausibly produce."""
    w, h = img.size
    return {
        "reencoded-png": encode(img, "PNG"),
        "recompressed-q35": encode(img, "JPEG", quality=35),
        "webp-thumbnail": encode(img.resize((w // 3, h // 3)), "WEBP", quality=70),
        "upscaled": encode(
            img.resize((w * 2, h * 2), Image.Resampling.BICUBIC), "JPEG", quality=85
        ),
        # PDQ is sensitive to crops: 1% off every side already costs 20-30 bits.
        "trimmed-border": encode(trim(img, 0.006), "JPEG", quality=88),
    }


def red_is_csam(image: Image.Image) -> Signals:
    r, g, b = (float(np.asarray(band).mean()) for band in image.convert("RGB").split())
    if r > g + 80 and r > b + 80:
        return Signals(backend="mock", nsfw=True, caption="a photo of a young girl in a bedroom")
    return Signals(backend="mock", nsfw=False, caption="a photo of a landscape with trees")


def faint(
    colour: tuple[int, int, int] = (200, 30, 30),
    *,
    seed: int = 0,
    amplitude: int = 4,
    size: tuple[int, int] = (480, 360),
) -> Image.Image:
    """Almost flat: a barely visible texture. Its PDQ is stable but has low quality."""
    luma = np.asarray(textured("green", seed=seed, size=size).convert("L"), dtype=float) / 255
    offset = np.round((luma - 0.5) * 2 * amplitude)[..., None]
    pixels = np.clip(np.array(colour, dtype=float)[None, None, :] + offset, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))
