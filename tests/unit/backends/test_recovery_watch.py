"""Waiting jobs are woken when a path comes back, even when it was down for less time than
the watch's polling interval (a Horde restarted on the same port within a fraction of a
second): the watch compares recovery counts, not only live/down."""

from __future__ import annotations

from horde_scanner.backends.base import Backend, Readiness
from horde_scanner.backends.reachability import Reachability
from horde_scanner.backends.recovery import RecoveryWatch


class _Remote(Backend):
    """A backend whose one path is a real Reachability."""

    name = "remote"

    def __init__(self) -> None:
        self.reach = Reachability("remote", self._probe, down_after=2, probe_interval_s=3600)

    async def _probe(self) -> None:
        return None

    def readiness(self) -> Readiness:
        return Readiness(self.name, not self.reach.down, "", self.reach.recoveries)


async def _watch(backend: _Remote, woken: list[list[str]]) -> RecoveryWatch:
    async def recovered(names: list[str]) -> None:
        woken.append(names)

    watch = RecoveryWatch(backend, recovered, interval_s=3600)  # checks only when told here
    await watch.start()
    return watch


async def test_an_outage_between_two_checks_is_still_a_recovery():
    backend, woken = _Remote(), []
    watch = await _watch(backend, woken)
    try:
        assert watch.check() == []
        backend.reach.failed("refused", gave_up=True)
        backend.reach.ok()  # down and back before the watch looked
        assert backend.reach.recoveries == 1
        assert watch.check() == ["remote"]
        assert watch.check() == []  # counted once
    finally:
        await watch.stop()
        await backend.reach.aclose()


async def test_down_seen_then_up_is_a_recovery_and_failures_below_the_threshold_are_not():
    backend, woken = _Remote(), []
    watch = await _watch(backend, woken)
    try:
        backend.reach.failed("refused")  # one failure of two: still up, nothing to wake
        backend.reach.ok()
        assert watch.check() == []
        backend.reach.failed("refused")
        backend.reach.failed("refused")
        assert watch.check() == []  # down now
        backend.reach.ok()
        assert watch.check() == ["remote"]
    finally:
        await watch.stop()
        await backend.reach.aclose()
