"""The decode memory budget (media/memory.py) and reducing before converting (media/decode.py):
what a decode may hold, in what order decodes wait, and that the pixels a backend and PDQ see
are the ones the whole-frame conversion gave (so hashes stay comparable across releases)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from horde_scanner.media.decode import DecodeLimits, decode, decode_cost
from horde_scanner.media.memory import DecodeMemory
from horde_scanner.media.types import UnreadableMedia

MIB = 1 << 20


async def test_decodes_wait_in_order_and_never_exceed_the_budget():
    memory = DecodeMemory(100 * MIB)
    order: list[str] = []

    async def decode_like(name: str, cost: int, hold_s: float) -> None:
        async with memory.hold(cost, name):
            order.append(name)
            assert memory.used <= memory.limit
            await asyncio.sleep(hold_s)

    first = asyncio.ensure_future(decode_like("big-1", 80 * MIB, 0.2))
    await asyncio.sleep(0.01)
    # The second big one waits; the small one behind it waits too (first come, first served),
    # so a big decode is never starved by a stream of small ones.
    rest = [
        asyncio.ensure_future(decode_like("big-2", 80 * MIB, 0.05)),
        asyncio.ensure_future(decode_like("small", 10 * MIB, 0.01)),
    ]
    await asyncio.sleep(0.05)
    assert order == ["big-1"] and memory.waiting == 2
    await asyncio.gather(first, *rest)
    assert order == ["big-1", "big-2", "small"]
    assert memory.used == 0 and memory.peak <= 100 * MIB and memory.waited == 2


async def test_a_cancelled_waiter_gives_back_what_it_was_granted():
    memory = DecodeMemory(100 * MIB)
    holder = asyncio.Event()

    async def hold(cost: int) -> None:
        async with memory.hold(cost, "x"):
            await holder.wait()

    first = asyncio.ensure_future(hold(90 * MIB))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(hold(50 * MIB))
    await asyncio.sleep(0.01)
    waiter.cancel()
    holder.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert memory.used == 0 and memory.waiting == 0
    async with memory.hold(100 * MIB, "all of it"):
        assert memory.used == 100 * MIB


def test_more_than_the_whole_budget_is_unreadable_at_once():
    memory = DecodeMemory(64 * MIB)
    with pytest.raises(UnreadableMedia, match="media.decode_memory_bytes"):
        memory.check(65 * MIB, "image/png")


def _png(img: Image.Image, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **kwargs)
    return out.getvalue()


def _whole_frame(data: bytes, side: int = 512) -> Image.Image:
    """What decoding did before: convert the whole frame (on white), then thumbnail."""
    img = Image.open(io.BytesIO(data))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = img.convert("RGB")
    rgb.thumbnail((side, side), Image.Resampling.BILINEAR)
    return rgb


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "I;16", "1", "RGBA", "LA", "P+transparency"])
def test_reducing_in_bands_gives_the_pixels_of_the_whole_frame(mode: str):
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 255, (1300, 1900, 3), dtype=np.uint8)
    rgb = Image.fromarray(arr)
    alpha = Image.fromarray(rng.integers(0, 255, (1300, 1900), dtype=np.uint8))
    if mode == "P+transparency":
        data = _png(rgb.quantize(32), transparency=5)
    elif mode == "P":
        data = _png(rgb.quantize(32))
    elif mode == "I;16":
        data = _png(Image.fromarray(arr[..., 0].astype(np.uint16) * 250).convert("I;16"))
    elif mode in ("RGBA", "LA"):
        img = rgb.convert(mode[0] if mode == "LA" else "RGB")
        img.putalpha(alpha)
        data = _png(img)
    else:
        data = _png(rgb.convert(mode))
    got = decode(data, DecodeLimits()).image
    want = _whole_frame(data)
    assert got.size == want.size and got.mode == "RGB"
    diff = np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int))
    # Identical without transparency; with it, reduced premultiplied then put on white: the
    # same up to rounding.
    assert diff.max() <= (2 if "A" in mode or "transparency" in mode else 0)


def test_the_cost_follows_the_mode_and_the_format():
    limits = DecodeLimits()
    side = 3000
    rgb = decode_cost(_png(Image.new("RGB", (side, side))), limits)
    assert rgb == side * side * 4 + 24 * MIB
    assert decode_cost(_png(Image.new("P", (side, side))), limits) == side * side + 24 * MIB
    assert decode_cost(_png(Image.new("I;16", (side, side))), limits) == side * side * 2 + 24 * MIB
    # A JPEG is drawn at a reduced scale; a progressive one keeps its coefficients whole.
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "JPEG")
    baseline = decode_cost(out.getvalue(), limits)
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "JPEG", progressive=True)
    progressive = decode_cost(out.getvalue(), limits)
    assert baseline < rgb and progressive > baseline + side * side * 2
    # A WebP still goes through libwebp's canvas as well.
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "WEBP", lossless=True)
    assert decode_cost(out.getvalue(), limits) > rgb
    with pytest.raises(UnreadableMedia, match="exceeds the decode limit"):
        decode_cost(_png(Image.new("P", (9000, 9000))), limits)
