"""A second opinion, in the background, on images the pre-screen cleared by itself.

With `prescreen.second_opinion`, every image the CPU pre-screen judged clean is also sent to
the next backend (the AI Horde, or whatever backend.kind resolved to) once its verdict is
stored. When that opinion is worse (nsfw or csam), it replaces the stored verdict and goes
through the same late-positive handling as any verdict that came after an accepted upload.

Best effort by design: at most `max_pending` opinions are in flight (more are skipped and
counted), and pending ones are not persisted across a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from horde_scanner.backends.base import (
    Backend,
    BackendFailed,
    BackendUnavailable,
    judge_image,
)
from horde_scanner.backends.prescreen import merge_prescreen
from horde_scanner.judging.jobs import FinishedHook
from horde_scanner.media.decode import PreparedImage
from horde_scanner.policy.rules import Policy
from horde_scanner.store.interfaces import AuditStore, VerdictStore
from horde_scanner.store.jobs import Job
from horde_scanner.tasks import cancel_and_wait
from horde_scanner.verdict import Verdict


class SecondOpinionStore(VerdictStore, AuditStore, Protocol):
    """What a second opinion records."""


log = logging.getLogger(__name__)


class SecondOpinion:
    def __init__(
        self,
        store: SecondOpinionStore,
        policy: Policy,
        backend: Backend,
        *,
        max_pending: int,
        on_worse: FinishedHook | None = None,
        forget: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._backend = backend
        self._max_pending = max_pending
        self._on_worse = on_worse
        self._forget = forget
        self._tasks: set[asyncio.Task[None]] = set()
        self.asked = 0
        self.skipped = 0
        self.overruled = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def offer(self, job: Job, image: PreparedImage, first: Verdict) -> bool:
        if len(self._tasks) >= self._max_pending:
            self.skipped += 1
            return False
        self.asked += 1
        task = asyncio.create_task(self._ask(job, image, first), name="second-opinion")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _ask(self, job: Job, image: PreparedImage, first: Verdict) -> None:
        try:
            signals = await judge_image(self._backend, image, sha256=job.sha256)
        except (BackendUnavailable, BackendFailed) as exc:
            log.info("second opinion on %s not had: %s", job.sha256[:12], exc)
            return
        except Exception:
            log.exception("second opinion on %s failed", job.sha256[:12])
            return
        # The pre-screen's scores of a cleared image are all under its thresholds: merged in for
        # the record on a still image (an animation keeps them per frame in `first`).
        scores = first.signals.scores if first.signals else None
        if image.animated:
            scores = None
        verdict = self._policy.judge(merge_prescreen(signals, scores))
        await self._store.audit(
            "second_opinion",
            sha256=job.sha256,
            label=verdict.label.value,
            source=job.source,
            detail={"first": first.label.value, "reasons": verdict.reasons},
        )
        if verdict.label.severity <= first.label.severity:
            return
        self.overruled += 1
        log.warning(
            "second opinion on %s: %s (pre-screen said %s)",
            job.sha256[:12],
            verdict.label.value,
            first.label.value,
        )
        await self._store.put_verdict(
            job.sha256, verdict, media_type=job.media_type, size=job.size, source=job.source
        )
        if self._forget is not None:
            self._forget(job.sha256)
        if self._on_worse is not None:
            # The first (clean) verdict let the image in, wherever it came from.
            await self._on_worse(job, verdict, "accept")

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks))
