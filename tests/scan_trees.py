"""pict-rs-like storage trees for sweep tests: the 0.4 layout (extension-less UUIDv4 names in
numbered directories) and the 0.5.7+ layout (UUIDv7 paths, time-ordered), thumbnails beside
their originals, and a few files that are not media at all."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image

from horde_scanner.sources.layout import is_v7_identifier
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import new_identifier


@dataclass
class Tree:
    # identifier -> bytes, and identifier -> what a judge should say (None: not media)
    files: dict[str, bytes] = field(default_factory=dict)
    expect: dict[str, str | None] = field(default_factory=dict)

    def add(self, identifier: str, data: bytes, label: str | None) -> str:
        self.files[identifier] = data
        self.expect[identifier] = label
        return identifier

    def with_label(self, label: str | None) -> list[str]:
        return sorted(i for i, lab in self.expect.items() if lab == label)

    @property
    def media(self) -> list[str]:
        return sorted(i for i, lab in self.expect.items() if lab is not None)

    def write(self, root: Path, *, mtime_base: float | None = None) -> None:
        """Write the files; with `mtime_base`, UUIDv7 files get their name's time as mtime
        (as pict-rs writes them) and the others `mtime_base`."""
        for identifier, data in sorted(self.files.items()):
            path = root / identifier
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if mtime_base is not None:
                when = v7_time(identifier) or mtime_base
                os.utime(path, (when, when))


def v7_time(identifier: str) -> float | None:
    """Creation time spelled by a UUIDv7 identifier, or None for other names."""
    if not is_v7_identifier(identifier):
        return None
    return int(identifier.replace("/", "")[:12], 16) / 1000


def distinct(colour: str, n: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A colour-marker image with an 8x8 block of its own: lossy encoders keep it, so every
    `n` gives different bytes while the mean colour (what judges look at) barely moves."""
    img = images.image(colour, size=size, seed=n)
    block = Image.new("RGB", (8, 8), ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256))
    img.paste(block, ((n * 13) % (size[0] - 8), (n * 7) % (size[1] - 8)))
    return img


LABEL_OF = {"red": "csam", "magenta": "nsfw", "green": "clean", "blue": "clean", "yellow": "clean"}


def v04_identifier(rng: random.Random) -> str:
    dirs = "/".join(f"{rng.randrange(3):03d}" for _ in range(3))
    return f"{dirs}/{uuid.UUID(int=rng.getrandbits(128), version=4)}"


def pictrs_tree(
    *,
    seed: int = 0,
    v04: dict[str, int] | None = None,
    v057: dict[str, int] | None = None,
    thumbnails: int = 2,
    non_media: bool = True,
    start: datetime | None = None,
) -> Tree:
    """A tree with `v04` and `v057` images per colour, a few thumbnails and non-media files."""
    rng = random.Random(seed)
    tree = Tree()
    n = seed * 10_000
    for colour, count in ({"green": 3, "red": 1} if v04 is None else v04).items():
        for _ in range(count):
            n += 1
            tree.add(
                v04_identifier(rng), images.encode(distinct(colour, n), "JPEG"), LABEL_OF[colour]
            )
    when = start or datetime(2024, 6, 1, tzinfo=UTC)
    originals = []
    for colour, count in ({"green": 3, "magenta": 1, "red": 1} if v057 is None else v057).items():
        for _ in range(count):
            n += 1
            when += timedelta(minutes=7)
            ext = rng.choice(["webp", "png", "jpeg"])
            fmt = {"webp": "WEBP", "png": "PNG", "jpeg": "JPEG"}[ext]
            data = images.encode(distinct(colour, n), fmt)
            originals.append((colour, n))
            tree.add(new_identifier(ext, when), data, LABEL_OF[colour])
    for colour, seed_n in originals[:thumbnails]:
        when += timedelta(seconds=3)
        thumb = images.encode(distinct(colour, seed_n, (48, 48)), "WEBP")
        tree.add(new_identifier("webp", when), thumb, LABEL_OF[colour])
    if non_media:
        tree.add("README.txt", b"pict-rs files directory\n", None)
        tree.add("000/000/000/.lock", b"", None)
        tree.add(
            new_identifier("webp", when + timedelta(seconds=1)), b"\x00not really a webp" * 8, None
        )
    return tree
