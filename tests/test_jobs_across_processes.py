"""Two processes on one SQLite file (`server.processes`): an upload whose job row the other
process already holds gets that process's verdict, including one written before this process
started waiting. The store has no notifications there; a verdict that came in between the
last look and the wait must not leave the upload waiting out its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from horde_scanner.judging.jobs import Job, JobRunner
from horde_scanner.store.sqlite import Store
from horde_scanner.verdict import Label, Verdict


async def _never(job: Job) -> Verdict:
    raise AssertionError(f"judged {job.sha256[:12]} again: the other process owns it")


async def _nothing(job: Job, verdict: Verdict, answer: str | None) -> None:
    return None


@asynccontextmanager
async def _two_processes(tmp_path: Path, sha: str) -> AsyncIterator[tuple[Store, JobRunner]]:
    """Two processes' stores on one SQLite file: the first took the upload of `sha` (its job
    row is in); the second's JobRunner, with no background loop running (only what its
    calls themselves do counts)."""
    async with (
        await Store.open(tmp_path / "s.db") as first,
        await Store.open(tmp_path / "s.db") as second,
    ):
        assert await first.add_job(sha, b"x", media_type="image/png", size=1, source="upload")
        yield first, JobRunner(second, _never, _nothing, workers=1)


async def _upload(runner: JobRunner, sha: str) -> asyncio.Future[Verdict]:
    return await runner.submit(sha, b"x", media_type="image/png", size=1, source="upload")


async def test_a_verdict_written_before_the_wait_is_delivered(tmp_path: Path):
    sha = "ab" * 32
    async with _two_processes(tmp_path, sha) as (first, runner):
        # The first process has judged it; its job row is not gone yet.
        await first.put_verdict(sha, Verdict(label=Label.CLEAN, backend="horde"))
        # The same image reaches the second process now.
        fut = await _upload(runner, sha)
        verdict = await asyncio.wait_for(fut, 2.0)
        assert verdict.label is Label.CLEAN and verdict.backend == "horde"
        assert runner.outstanding == 0


async def test_a_verdict_written_after_the_wait_is_delivered_by_check_others(tmp_path: Path):
    sha = "cd" * 32
    async with _two_processes(tmp_path, sha) as (first, runner):
        fut = await _upload(runner, sha)
        assert not fut.done()
        await first.put_verdict(sha, Verdict(label=Label.NSFW, backend="horde"))
        await runner.check_others()  # what the judge's store-sync beat calls on a change
        assert (await asyncio.wait_for(fut, 2.0)).label is Label.NSFW
