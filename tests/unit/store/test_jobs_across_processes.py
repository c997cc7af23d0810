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
from horde_scanner.store.memory import MemoryStore
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


async def test_a_job_the_other_process_already_finished_is_not_judged_again(tmp_path: Path):
    """The other process wrote the verdict and removed its row between this one's cache miss
    and its job row: the new row is dropped and the verdict taken, not a second judgement."""
    sha = "ef" * 32
    async with (
        await Store.open(tmp_path / "s.db") as first,
        await Store.open(tmp_path / "s.db") as second,
    ):
        await first.put_verdict(sha, Verdict(label=Label.CLEAN, backend="horde"))
        runner = JobRunner(second, _never, _nothing, workers=1)
        fut = await runner.submit(sha, b"x", media_type="image/png", size=1, source="upload")
        assert (await asyncio.wait_for(fut, 2.0)).label is Label.CLEAN
        assert await second.count_jobs() == 0


async def test_a_fresh_rejudge_is_judged_although_a_verdict_is_stored() -> None:
    sha = "0f" * 32
    judged: list[str] = []

    async def judge(job: Job) -> Verdict:
        judged.append(job.sha256)
        return Verdict(label=Label.NSFW, backend="horde")

    async with MemoryStore() as store:
        await store.put_verdict(sha, Verdict(label=Label.CLEAN, backend="horde"))
        runner = JobRunner(store, judge, _nothing, workers=1)
        await runner.start()
        try:
            fut = await runner.submit(
                sha, b"x", media_type="image/png", size=1, source="rejudge:admin", fresh=True
            )
            assert (await asyncio.wait_for(fut, 5.0)).label is Label.NSFW
        finally:
            await runner.stop()
        assert judged == [sha]
        stored = await store.get_verdict(sha)
        assert stored is not None and stored.verdict.label is Label.NSFW


async def test_our_own_job_claimed_and_judged_by_the_other_process_is_delivered(tmp_path: Path):
    """This process made the job row, but the other process's feeder claimed it first and
    judged it: the upload waiting here gets that verdict at the next look, not its deadline."""
    sha = "12" * 32
    async with (
        await Store.open(tmp_path / "s.db") as first,
        await Store.open(tmp_path / "s.db") as second,
    ):
        runner = JobRunner(second, _never, _nothing, workers=1)
        fut = await _upload(runner, sha)  # our row, not yet claimed here
        claimed = await first.claim_jobs(10)  # the other process's feeder is quicker
        assert [job.sha256 for job in claimed] == [sha]
        await first.put_verdict(sha, Verdict(label=Label.CLEAN, backend="horde"))
        await first.finish_job(sha)
        await runner.check_others()
        assert (await asyncio.wait_for(fut, 2.0)).label is Label.CLEAN


async def test_a_fresh_rejudge_is_not_answered_by_the_verdict_it_replaces() -> None:
    sha = "34" * 32
    async with MemoryStore() as store:
        await store.put_verdict(sha, Verdict(label=Label.CLEAN, backend="horde", judged_at=1.0))
        runner = JobRunner(store, _never, _nothing, workers=1)
        fut = await runner.submit(
            sha, b"x", media_type="image/png", size=1, source="rejudge:admin", fresh=True
        )
        await runner.check_others()
        assert not fut.done()
        await store.put_verdict(sha, Verdict(label=Label.NSFW, backend="horde"))
        await runner.check_others()
        assert (await asyncio.wait_for(fut, 2.0)).label is Label.NSFW
