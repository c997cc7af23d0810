"""Provenance benchmark (issue 23): one image's uploader and usages on a big Lemmy database.

A throwaway PostgreSQL (horde_scanner/testing/pg.py) gets Lemmy's tables (0.19.4+ layout by
default, `--schema 1.0` for 1.0's) and, generated server-side with generate_series, 1 M posts,
5 M comments and 200 k uploads spread over two years (`--scale` shrinks all three). 10 % of
posts link an upload as their URL; 5 % of comments carry an upload's link in markdown; the rest
is plain text. Figures:

  time to the uploader (upload row + person + instance)     p50 / p95   (target p95 <= 50 ms)
  time to the full usage list, window 90 days (default)     p50 / p95 / max (target <= 2 s)
  the same, window 7 days, and unbounded (the cost of no bound)
  cache-hit validation latency, provenance idle vs busy     p50 / p99, interleaved rounds

Comment and post bodies have no index on links: the scan is bounded by time (the image cannot
be linked before it was uploaded; `lemmy.usage_window_days` after), on Lemmy's own indexes on
comment.published / post.published.

Run: .venv/bin/python -m bench.provenance [--scale 0.2] [--schema 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import numpy as np

from horde_scanner.backends.mock import MockBackend
from horde_scanner.config import LemmySettings
from horde_scanner.integrations.lemmy_db import LemmyDb
from horde_scanner.testing import lemmy_db as L
from horde_scanner.testing.images import jpeg
from horde_scanner.testing.pg import PgServer
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import make_settings, running_service
from horde_scanner.verdict import Label, Verdict

DAYS = 730


def percentiles(values_s: list[float]) -> str:
    ms = np.asarray(values_s) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return f"p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  p99 {p99:7.2f} ms  max {ms.max():7.2f} ms"


def generate_sql(schema: str, posts: int, comments: int, uploads: int) -> list[str]:
    """Server-side generation, one statement per table (then Lemmy's indexes are in place)."""
    v1 = schema == "1.0"
    pub = "published_at" if v1 else "published"
    actor = "ap_id" if v1 else "actor_id"
    alias = "md5(({n})::text)::uuid::text || '.webp'"
    persons, local_every = 50_000, 5
    span = f"interval '{DAYS} days'"
    upload_cols = (
        f"person_id, pictrs_alias, {pub}, thumbnail_for_post_id"
        if v1
        else f"local_user_id, pictrs_alias, pictrs_delete_token, {pub}"
    )
    upload_vals = (
        "(g % 10000 + 1) * 5, "
        + alias.format(n="g")
        + f", now() - {span} * (1 - g::float8 / {uploads}), NULL"
        if v1
        else "g % 10000 + 1, "
        + alias.format(n="g")
        + f", 't', now() - {span} * (1 - g::float8 / {uploads})"
    )
    comment_extra_col = "community_id, " if v1 else ""
    return [
        "INSERT INTO instance (id, domain) SELECT g, CASE WHEN g = 1 THEN 'lemmy.local'"
        " ELSE 'i' || g || '.example' END FROM generate_series(1, 50) g",
        f"INSERT INTO site (id, name, {actor}, instance_id)"
        " VALUES (1, 'Local', 'https://lemmy.local/', 1)",
        "INSERT INTO local_site (id, site_id) VALUES (1, 1)",
        f"INSERT INTO person (id, name, {actor}, local, instance_id)"
        f" SELECT g, 'u' || g, 'https://' || CASE WHEN g % {local_every} = 0 THEN 'lemmy.local'"
        f" ELSE 'i' || (g % 49 + 2) || '.example' END || '/u/u' || g, g % {local_every} = 0,"
        f" CASE WHEN g % {local_every} = 0 THEN 1 ELSE g % 49 + 2 END"
        f" FROM generate_series(1, {persons}) g",
        "INSERT INTO local_user (id, person_id, password_encrypted)"
        f" SELECT g / {local_every}, g, 'x'"
        f" FROM generate_series({local_every}, {persons}, {local_every}) g",
        f"INSERT INTO community (id, name, title, {actor}, local, instance_id)"
        " SELECT g, 'c' || g, 'C' || g, 'https://i' || (g % 49 + 2) || '.example/c/c' || g,"
        " false, g % 49 + 2 FROM generate_series(1, 1000) g",
        f"INSERT INTO local_image ({upload_cols}) SELECT {upload_vals}"
        f" FROM generate_series(1, {uploads}) g",
        # Every 10th post links upload g/10 as its URL, a minute after the upload.
        f"INSERT INTO post (id, name, url, body, creator_id, community_id, {pub}, ap_id, local)"
        " SELECT g, 'post ' || g,"
        f" CASE WHEN g % 10 = 0 AND g / 10 <= {uploads}"
        " THEN 'https://lemmy.local/pictrs/image/' || "
        + alias.format(n="g / 10")
        + " ELSE 'https://example.com/' || md5(g::text) END,"
        " 'body ' || md5(g::text), g % 50000 + 1, g % 1000 + 1,"
        f" CASE WHEN g % 10 = 0 AND g / 10 <= {uploads}"
        f" THEN now() - {span} * (1 - (g / 10)::float8 / {uploads}) + interval '1 minute'"
        f" ELSE now() - {span} * (1 - g::float8 / {posts}) END,"
        f" 'https://lemmy.local/post/' || g, true FROM generate_series(1, {posts}) g",
        # Every 20th comment carries upload (g/20 mod uploads)'s link in markdown, an hour after.
        "INSERT INTO comment (id, creator_id, post_id, "
        f"{comment_extra_col}content, {pub}, ap_id, local)"
        f" SELECT g, g % 50000 + 1, g % {posts} + 1, "
        + ("g % 1000 + 1, " if v1 else "")
        + " CASE WHEN g % 20 = 0 THEN 'look ![](https://lemmy.local/pictrs/image/' || "
        + alias.format(n=f"(g / 20) % {uploads} + 1")
        + " || ') ' || md5(g::text)"
        " ELSE 'plain text ' || md5(g::text) || ' ' || md5((g + 1)::text) END,"
        " CASE WHEN g % 20 = 0"
        f" THEN now() - {span} * (1 - ((g / 20) % {uploads} + 1)::float8 / {uploads})"
        f" + interval '1 hour' ELSE now() - {span} * (1 - g::float8 / {comments}) END,"
        " 'https://i' || (g % 49 + 2) || '.example/comment/' || g, false"
        f" FROM generate_series(1, {comments}) g",
        "ANALYZE",
    ]


async def build(url: str, schema: str, scale: float) -> tuple[int, int, int, float]:
    posts, comments, uploads = int(1_000_000 * scale), int(5_000_000 * scale), int(200_000 * scale)
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    try:
        await conn.execute(L.schema_sql("1.0" if schema == "1.0" else "0.19.4"))
        for sql in generate_sql(schema, posts, comments, uploads):
            await conn.execute(sql)
    finally:
        await conn.close()
    return posts, comments, uploads, time.perf_counter() - started


def alias_of(n: int) -> str:
    import hashlib
    import uuid

    return str(uuid.UUID(hashlib.md5(str(n).encode()).hexdigest())) + ".webp"  # noqa: S324


async def lookups(
    url: str, uploads: int, window: float | None, samples: int
) -> dict[str, list[float]]:
    db = LemmyDb(LemmySettings(database_url=url, usage_window_days=window, query_timeout_s=60))
    await db.check()
    rng = random.Random(23)
    picks = [rng.randint(1, uploads) for _ in range(samples)]
    uploader, full, found = [], [], []
    try:
        for n in picks:
            t0 = time.perf_counter()
            await db.uploads([alias_of(n)])
            uploader.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            record = await db.lookup([alias_of(n)], None)
            full.append(time.perf_counter() - t0)
            found.append(float(len(record.usages)))
    finally:
        await db.close()
    return {"uploader": uploader, "full": full, "usages": found}


async def cache_hits(url: str, rounds: int, round_s: float) -> dict[str, list[float]]:
    """Sequential cache hits on one in-process service (the provenance loop shares its event
    loop: the conservative case); rounds alternate idle and busy provenance."""
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-prov-"))
    settings = make_settings(
        tmp / "s.db",
        "http://127.0.0.1:9/api",
        lemmy={"database_url": url, "usage_window_days": 90.0, "retry_s": 1.0},
    )
    data = jpeg("green", seed=5)
    out: dict[str, list[float]] = {"idle": [], "busy": []}
    async with (
        running_service(settings, backend=MockBackend()) as svc,
        aiohttp.ClientSession() as http,
    ):
        await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        store = svc.parts.store
        resolver = svc.parts.provenance
        assert resolver is not None
        shas = [f"{i:064x}" for i in range(1, 41)]
        for i, sha in enumerate(shas):
            await store.put_verdict(sha, Verdict(label=Label.CSAM), source="bench")
            await store.want_provenance(sha, "bench", aliases=[alias_of(i * 97 + 1)], seen_at=None)
        busy = asyncio.Event()

        async def keep_busy() -> None:
            while True:
                await busy.wait()
                for sha in shas:
                    await store.refresh_provenance(sha)
                resolver.wake()
                await asyncio.sleep(0.2)

        task = asyncio.create_task(keep_busy())
        try:
            for r in range(rounds):
                mode = "busy" if r % 2 else "idle"
                if mode == "busy":
                    busy.set()
                    before = resolver.resolved
                else:
                    busy.clear()
                    await asyncio.sleep(1.0)
                until = time.perf_counter() + round_s
                while time.perf_counter() < until:
                    t0 = time.perf_counter()
                    answer = await validate_upload(http, svc.scan_url(), data, "image/jpeg")
                    out[mode].append(time.perf_counter() - t0)
                    assert answer.status == 200
                if mode == "busy":
                    out.setdefault("resolved_during_busy", []).append(resolver.resolved - before)
        finally:
            task.cancel()
    return out


async def main(scale: float, schema: str, samples: int) -> None:
    pg = PgServer().start()
    try:
        url = pg.new_database()
        posts, comments, uploads, took = await build(url, schema, scale)
        print(
            f"Lemmy {schema} database: {posts:,} posts, {comments:,} comments, {uploads:,} uploads"
            f" generated in {took:.0f} s"
        )
        for window in (90.0, 7.0, None):
            res = await lookups(url, uploads, window, samples)
            name = f"{window:g} days" if window else "unbounded"
            if window == 90.0:
                print(f"time to the uploader            {percentiles(res['uploader'])}")
            print(
                f"full usage list, window {name:<9} {percentiles(res['full'])}"
                f"  (usages found: median {statistics.median(res['usages']):.0f})"
            )
        hits = await cache_hits(url, rounds=6, round_s=4.0)
        print(f"cache hits, provenance idle     {percentiles(hits['idle'])}")
        print(f"cache hits, provenance busy     {percentiles(hits['busy'])}")
        print(f"images resolved during busy rounds: {sum(hits.get('resolved_during_busy', []))}")
    finally:
        pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 1 M posts, 5 M comments")
    parser.add_argument("--schema", choices=("0.19.4", "1.0"), default="0.19.4")
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.scale, args.schema, args.samples))
