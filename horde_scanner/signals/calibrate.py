"""Calibrating a match threshold on an admin's own benign images (`embeddings calibrate DIR`).

Each image gets variants an abuser's copy could be (JPEG quality, resizing, a 10-30 % crop, a
mirror, a text overlay). Similarities of an image with its own variants are the matches a
threshold should keep; similarities between different images are the false matches it must
not make. For a threshold t, a query is falsely matched when any of the index's N entries is
at or above t: with p the share of unrelated pairs at or above t, about 1 - (1 - p)^N.
With few images p is coarse (no unrelated pair above t says p < 1 / pairs, not p = 0); the
report says how many pairs each figure rests on.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageOps

Variant = Callable[[Image.Image], Image.Image]


def _jpeg(quality: int) -> Variant:
    def apply(image: Image.Image) -> Image.Image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=quality)
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")

    return apply


def _resize(scale: float) -> Variant:
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        return image.resize((max(8, round(w * scale)), max(8, round(h * scale))))

    return apply


def _crop(share: float) -> Variant:
    """Cut `share` of each dimension away, the same on both sides."""

    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        dx, dy = round(w * share / 2), round(h * share / 2)
        return image.crop((dx, dy, w - dx, h - dy))

    return apply


def _overlay(image: Image.Image) -> Image.Image:
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    draw.rectangle((0, round(h * 0.82), w, h), fill=(0, 0, 0))
    draw.text((round(w * 0.04), round(h * 0.86)), "reposted from elsewhere", fill=(255, 255, 255))
    return image


VARIANTS: dict[str, Variant] = {
    "jpeg-q30": _jpeg(30),
    "jpeg-q60": _jpeg(60),
    "resize-50%": _resize(0.5),
    "resize-200%": _resize(2.0),
    "crop-10%": _crop(0.10),
    "crop-20%": _crop(0.20),
    "crop-30%": _crop(0.30),
    "flip": ImageOps.mirror,
    "text-overlay": _overlay,
}
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)


@dataclass(frozen=True, slots=True)
class Calibration:
    # Similarity of each image with each of its variants, by variant name.
    variants: dict[str, np.ndarray]
    # Similarities of distinct images (every pair, up to a cap).
    unrelated: np.ndarray
    images: int

    def kept(self, threshold: float) -> float:
        """Share of variant pairs a threshold still matches."""
        every = np.concatenate(list(self.variants.values()))
        return float((every >= threshold).mean()) if len(every) else float("nan")

    def false_pair_rate(self, threshold: float) -> float:
        """Share of unrelated pairs at or above the threshold."""
        return float((self.unrelated >= threshold).mean()) if len(self.unrelated) else 0.0

    def false_match_rate(self, threshold: float, index_size: int) -> float:
        """Chance that a benign query matches any of `index_size` unrelated entries."""
        p = self.false_pair_rate(threshold)
        return float(-np.expm1(index_size * np.log1p(-min(p, 1 - 1e-12))))


def calibrate(
    images: Iterable[Image.Image],
    encode: Callable[[Image.Image], np.ndarray],
    *,
    max_pairs: int = 200_000,
) -> Calibration:
    originals: list[np.ndarray] = []
    variants: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for image in images:
        image = image.convert("RGB")
        base = encode(image)
        originals.append(base)
        for name, make in VARIANTS.items():
            variants[name].append(float(np.dot(base, encode(make(image)))))
    matrix = np.stack(originals) if originals else np.zeros((0, 1), np.float32)
    sims = matrix @ matrix.T
    upper = sims[np.triu_indices(len(originals), k=1)]
    if len(upper) > max_pairs:
        upper = np.random.default_rng(0).choice(upper, max_pairs, replace=False)
    return Calibration(
        {k: np.array(v, np.float32) for k, v in variants.items()},
        upper.astype(np.float32),
        len(originals),
    )


def report(result: Calibration, index_size: int, thresholds: Iterable[float] = THRESHOLDS) -> str:
    """What `embeddings calibrate` prints."""
    lines = [f"{result.images} images, {len(result.unrelated)} unrelated pairs"]
    lines.append("similarity of an image with its variant (min / p5 / median):")
    for name, values in result.variants.items():
        if len(values):
            p5, p50 = np.percentile(values, [5, 50])
            lines.append(f"  {name:<13} {values.min():.3f} / {p5:.3f} / {p50:.3f}")
    if len(result.unrelated):
        p50, p99, top = np.percentile(result.unrelated, [50, 99, 100])
        lines.append(f"unrelated pairs (median / p99 / max): {p50:.3f} / {p99:.3f} / {top:.3f}")
    lines.append(
        f"threshold  variants kept  unrelated pairs >= t  false match per query at {index_size:,}"
        " entries"
    )
    floor = 1 / len(result.unrelated) if len(result.unrelated) else 1.0
    for t in thresholds:
        p = result.false_pair_rate(t)
        shown = f"{p:.2e}" if p > 0 else f"< {floor:.1e}"
        fmr = result.false_match_rate(t, index_size)
        fmr_shown = f"{fmr:.2e}" if p > 0 else f"< {-np.expm1(index_size * np.log1p(-floor)):.1e}"
        lines.append(f"  {t:.2f}     {result.kept(t):6.1%}        {shown:>12}         {fmr_shown}")
    return "\n".join(lines)
