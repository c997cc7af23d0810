"""What the docs (README, docs/trust.md) say leaves the server for the AI Horde: one small WebP,
nothing else."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service


async def test_only_a_512px_webp_and_the_forms_go_to_the_horde(tmp_path: Path, http):
    photo = images.image("green", size=(3000, 2000), seed=5)
    exif = Image.Exif()
    exif[0x010E] = "uploaded by @someone@lemmy.example"  # ImageDescription
    exif[0x8298] = "someone"  # Copyright
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    async with FakeHorde(latency=0.2) as horde:
        settings = make_settings(tmp_path / "s.db", horde.url)
        async with running_service(settings) as svc:
            reply = await validate_upload(http, svc.scan_url(), buf.getvalue(), "image/jpeg")
            assert reply.status == 200
        (sub,) = horde.submissions
        sent = horde.interrogations[sub.id].image_bytes
    assert sub.body_keys == {"source_image", "forms", "slow_workers"}
    assert all(payload == {} for payload in sub.payloads.values())
    assert not sub.source_is_url  # the bytes themselves, not a link back to this server
    assert sub.image_format == "WEBP" and max(sub.image_size) <= 512
    decoded = Image.open(io.BytesIO(sent))
    assert not decoded.getexif() and "exif" not in decoded.info and "xmp" not in decoded.info
    assert b"someone" not in sent
