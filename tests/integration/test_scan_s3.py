"""Sweeps of S3 object storage: moto's server mode, started here on loopback as a separate
process with request signing enforced (an IAM user and its key made first), real buckets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiobotocore")
pytest.importorskip("moto")

from aiobotocore.session import get_session  # noqa: E402

from horde_scanner.backends.mock import MockBackend  # noqa: E402
from horde_scanner.runtime.sweeps import run_apply, run_release, run_scan  # noqa: E402
from horde_scanner.sources.address import make_source  # noqa: E402
from horde_scanner.sources.s3 import S3Source  # noqa: E402
from horde_scanner.sources.source import SourceError  # noqa: E402
from horde_scanner.sweep.actions import Action  # noqa: E402
from horde_scanner.testing import images  # noqa: E402
from horde_scanner.testing.pictrs import new_identifier  # noqa: E402
from tests.scan_helpers import audit_rows, scan_settings  # noqa: E402
from tests.scan_trees import pictrs_tree  # noqa: E402

REGION = "us-east-1"


@dataclass
class Moto:
    url: str
    key_id: str
    secret: str

    def client(self) -> Any:
        return get_session().create_client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def settings(self, db: Path, **scan: Any) -> Any:
        s3 = {
            "endpoint_url": self.url,
            "region": REGION,
            "access_key_id": self.key_id,
            "secret_access_key": self.secret,
            **scan.pop("s3", {}),
        }
        return scan_settings(db, scan={"s3": s3, **scan})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_server() -> Iterator[Moto]:
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "AWS_DEFAULT_REGION": REGION}
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

        async def make_user() -> tuple[str, str]:
            # The three requests moto serves without authentication: a user, a policy, a key.
            async with get_session().create_client(
                "iam",
                endpoint_url=url,
                region_name=REGION,
                aws_access_key_id="bootstrap",
                aws_secret_access_key="bootstrap",
            ) as iam:
                await iam.create_user(UserName="scanner")
                await iam.put_user_policy(
                    UserName="scanner",
                    PolicyName="all",
                    PolicyDocument=json.dumps(
                        {
                            "Version": "2012-10-17",
                            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                        }
                    ),
                )
                key = (await iam.create_access_key(UserName="scanner"))["AccessKey"]
            return key["AccessKeyId"], key["SecretAccessKey"]

        key_id, secret = asyncio.run(make_user())
        yield Moto(url, key_id, secret)
    finally:
        proc.terminate()
        proc.wait(10)


_bucket_counter = iter(range(1, 1_000_000))


@pytest.fixture
async def bucket(moto_server: Moto) -> AsyncIterator[str]:
    name = f"pictrs-{next(_bucket_counter)}"
    async with moto_server.client() as s3:
        await s3.create_bucket(Bucket=name)
    yield name


async def put_tree(moto: Moto, bucket: str, files: dict[str, bytes], prefix: str = "") -> None:
    async with moto.client() as s3:
        await asyncio.gather(
            *(
                s3.put_object(Bucket=bucket, Key=prefix + key, Body=data)
                for key, data in files.items()
            )
        )


async def keys(moto: Moto, bucket: str, prefix: str = "") -> set[str]:
    async with moto.client() as s3:
        found: set[str] = set()
        async for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            found |= {o["Key"] for o in page.get("Contents") or []}
        return found


async def test_report_quarantine_release_delete(tmp_path: Path, moto_server: Moto, bucket: str):
    tree = pictrs_tree()
    await put_tree(moto_server, bucket, tree.files)
    db = tmp_path / "s.db"
    settings = moto_server.settings(db)
    backend = MockBackend()
    report = await run_scan(settings, f"s3://{bucket}", backend=backend)
    c = report.counts
    assert c.listed == len(tree.files) and c.not_media == 3
    assert c.csam == 2 and c.nsfw == 1 and c.clean == len(tree.with_label("clean"))
    assert await keys(moto_server, bucket) == set(tree.files)

    again = await run_scan(settings, f"s3://{bucket}/", backend=backend)
    assert again.counts.seen == len(tree.files) and again.counts.bytes_read == 0

    # Quarantine what the dry run found, into a prefix of the same bucket, never listed again.
    (applied,) = await run_apply(settings, action=Action.QUARANTINE)
    assert applied.counts.acted == 2
    now = await keys(moto_server, bucket)
    quarantined = {k for k in now if k.startswith("horde-scanner-quarantine/")}
    assert len(quarantined) == 2
    assert not set(tree.with_label("csam")) & now
    third = await run_scan(settings, f"s3://{bucket}", backend=backend)
    assert third.counts.listed == len(tree.files) - 2

    action_id = str(audit_rows(db, "scan_action")[0]["detail"]["action_id"])
    (restored,) = await run_release(settings, action_id)
    assert restored.startswith(f"s3://{bucket}/")
    assert restored.removeprefix(f"s3://{bucket}/") in await keys(moto_server, bucket)

    # Delete (no pict-rs configured): the other red object goes from the bucket itself.
    delete = await run_scan(settings, f"s3://{bucket}", action=Action.DELETE, backend=backend)
    assert delete.counts.acted == 0  # the released one is allow-listed, the other quarantined
    green = tree.with_label("clean")[0]
    await put_tree(moto_server, bucket, {green: images.jpeg("red", size=(64, 64), seed=77)})
    delete = await run_scan(settings, f"s3://{bucket}", action=Action.DELETE, backend=backend)
    assert delete.counts.acted == 1 and green not in await keys(moto_server, bucket)
    assert any("prune_missing" in n for n in delete.notes)


async def test_prefix_and_separate_quarantine_bucket(
    tmp_path: Path, moto_server: Moto, bucket: str
):
    tree = pictrs_tree(v04={"red": 1}, v057={"green": 2}, thumbnails=0, non_media=False)
    await put_tree(moto_server, bucket, tree.files, prefix="media/")
    await put_tree(moto_server, bucket, {"elsewhere/x": images.jpeg("red", seed=5)})
    async with moto_server.client() as s3:
        await s3.create_bucket(Bucket=f"{bucket}-q")
    settings = moto_server.settings(
        tmp_path / "s.db", s3={"quarantine_bucket": f"{bucket}-q", "quarantine_prefix": "held"}
    )
    report = await run_scan(
        settings, f"s3://{bucket}/media", action=Action.QUARANTINE, backend=MockBackend()
    )
    assert report.counts.listed == 3 and report.counts.acted == 1
    red = tree.with_label("csam")[0]
    held = await keys(moto_server, f"{bucket}-q")
    assert len(held) == 1 and next(iter(held)).startswith("held/")
    assert f"media/{red}" not in await keys(moto_server, bucket)
    assert "elsewhere/x" in await keys(moto_server, bucket)


async def test_follow_lists_from_the_uuid7_watermark(
    tmp_path: Path, moto_server: Moto, bucket: str
):
    start = datetime.now(UTC) - timedelta(days=10)
    tree = pictrs_tree(v04={}, v057={"green": 30}, thumbnails=0, non_media=False, start=start)
    await put_tree(moto_server, bucket, tree.files)
    settings = moto_server.settings(tmp_path / "s.db")
    source = make_source(f"s3://{bucket}", settings)
    assert isinstance(source, S3Source)
    stop = asyncio.Event()
    backend = MockBackend()
    task = asyncio.create_task(
        run_scan(
            settings,
            f"s3://{bucket}",
            action=Action.QUARANTINE,
            follow=True,
            interval_s=0.2,
            backend=backend,
            stop=stop,
            source=source,
        )
    )
    await _until(lambda: backend.calls == 30)
    listed_after_sweep = source.listed
    # New uploads: their UUIDv7 keys sort after everything listed so far.
    fresh = {new_identifier("jpeg", datetime.now(UTC)): images.jpeg("red", seed=901)}
    await put_tree(moto_server, bucket, fresh)
    await _until(lambda: backend.calls == 31)
    await asyncio.sleep(0.5)
    stop.set()
    report = await task
    assert report.counts.acted == 1 and not set(fresh) & await keys(moto_server, bucket)
    # Later cycles listed only what came after the watermark, not the 30 old objects again.
    per_cycle = source.listed - listed_after_sweep
    assert listed_after_sweep >= 30 and per_cycle < 30


async def test_stopped_sweep_resumes_from_checkpoint(
    tmp_path: Path, moto_server: Moto, bucket: str
):
    tree = pictrs_tree(v04={"green": 20}, v057={"green": 20}, thumbnails=0, non_media=False)
    await put_tree(moto_server, bucket, tree.files)
    settings = moto_server.settings(tmp_path / "s.db", concurrency=1)
    stop = asyncio.Event()
    backend = MockBackend(delay_s=0.02)
    task = asyncio.create_task(run_scan(settings, f"s3://{bucket}", backend=backend, stop=stop))
    await _until(lambda: backend.calls >= 15)
    stop.set()
    first = await task
    assert first.counts.listed < len(tree.files) or first.counts.done < len(tree.files)
    done_first = first.counts.done
    source = make_source(f"s3://{bucket}", settings)
    second = await run_scan(settings, f"s3://{bucket}", backend=backend, source=source)
    assert second.resumed_from is not None
    # Listing started after the checkpoint (S3 StartAfter): finished keys were not listed.
    assert source.listed <= len(tree.files) - done_first + 1
    assert backend.calls == len(tree.files)


async def test_wrong_credentials_stop_before_any_work(
    tmp_path: Path, moto_server: Moto, bucket: str
):
    db = tmp_path / "s.db"
    for s3 in ({"secret_access_key": "wrong"}, {"access_key_id": "AKIANOBODY"}):
        settings = moto_server.settings(db, s3=s3)
        with pytest.raises(SourceError, match="rejected the credentials"):
            await run_scan(settings, f"s3://{bucket}", backend=MockBackend())
    with pytest.raises(SourceError, match="no bucket named"):
        await run_scan(moto_server.settings(db), "s3://no-such-bucket-here", backend=MockBackend())
    closed = moto_server.settings(
        db, s3={"endpoint_url": f"http://127.0.0.1:{_free_port()}", "timeout_s": 2}
    )
    with pytest.raises(SourceError, match="cannot reach S3"):
        await run_scan(closed, f"s3://{bucket}", backend=MockBackend())
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM scan_runs").fetchone()[0] == 0


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
