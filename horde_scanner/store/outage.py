"""Whether the store is there: a database that restarts, fails over, fills its disk or is
locked by another program is an upstream that comes back, not a reason for a loop to die.

    statement fails (connection lost, refused, disk full, locked) ──► away (why, since)
          ▲                                                           │ probe: a small write,
          └──────── statement fails again ◄──── back ◄── probe works ─┘ 0.2 s → 2 s apart

Both stores' connections report every statement here (`StoreHealth.failed`, `.succeeded`),
so the state is known without asking; while the store is away a probe writes one row
(`Store.probe`) until it works again. `/readyz` and `/metrics` read the state; the job runner
and the judge wait for `back()` to write what they kept meanwhile (judging/jobs.py).

Only errors that say the database cannot be reached or cannot write right now count
(`is_outage`): a constraint violation or a syntax error is a bug, not an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# SQLite's primary result codes that mean "not now": busy, locked, no memory, read-only (a
# file system remounted read-only), I/O error, full, cannot open, lock protocol.
_SQLITE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
# PostgreSQL's SQLSTATE classes that mean the same: connection exception, insufficient
# resources (disk full, too many connections), operator intervention (shutdown, starting up),
# system error (I/O).
_PG_CLASSES = ("08", "53", "57", "58")
# Probe pace while away: first soon (a restart takes seconds), then at most this far apart.
PROBE_FIRST_S = 0.2
PROBE_MAX_S = 2.0


def is_outage(exc: BaseException) -> bool:
    """Whether `exc`, raised by a store call, means the database is away for now.

    SQLAlchemy wraps the driver's errors (`DBAPIError.orig`; the asyncpg adapter's own
    error classes carry the asyncpg exception as their cause): the driver's is judged."""
    seen = 0
    while seen < 4:
        seen += 1
        orig = getattr(exc, "orig", None)
        if isinstance(orig, BaseException) and orig is not exc:
            exc = orig
            continue
        if type(exc).__module__.startswith("sqlalchemy") and exc.__cause__ is not None:
            exc = exc.__cause__
            continue
        break
    if type(exc).__module__.startswith("sqlalchemy"):
        # The pool's own: a connection invalidated under a statement, a timeout waiting for one.
        return type(exc).__name__ in ("DisconnectionError", "TimeoutError")
    return _driver_outage(exc)


def _driver_outage(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_CODES
        text = str(exc).lower()
        return any(w in text for w in ("locked", "full", "disk i/o", "unable to open"))
    if isinstance(exc, OSError):  # refused, reset, timed out (TimeoutError is an OSError)
        return True
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        sqlstate = getattr(exc, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _PG_CLASSES:
            return True
        # The client's side: a connection closed under a statement, a pool that lost its
        # connections while the server restarted.
        return (
            type(exc).__name__
            in (
                "InterfaceError",
                "ConnectionDoesNotExistError",
                "InternalClientError",
            )
            or "connection" in str(exc).lower()
        )
    return False


class StoreHealth:
    """Away or not, why and since when, for one store."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.away_since: float | None = None  # time.time()
        self.why: str | None = None
        self.outages = 0  # times it went away (a counter for /metrics)
        self.away_seconds = 0.0  # total time away, ended outages only
        # A failed write is only over when a write works (reads may work on a full disk).
        self._write_failed = False
        self._back = asyncio.Event()
        self._back.set()
        self._probe: Callable[[], Awaitable[None]] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def available(self) -> bool:
        return self.away_since is None

    def bind(self, probe: Callable[[], Awaitable[None]]) -> None:
        """The write that tells the store is back (the store's own `probe`)."""
        self._probe = probe

    def failed(self, exc: BaseException, *, write: bool = True) -> bool:
        """Note a failed statement; True when it means the store is away (callers then keep
        what they meant to write, and wait for `back()`)."""
        if not is_outage(exc):
            return False
        self.why = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        self._write_failed = self._write_failed or write
        if self.away_since is None:
            self.away_since = time.time()
            self.outages += 1
            self._back.clear()
            log.warning("store %s unavailable: %s; answering from memory", self.where, self.why)
        self._start_probe()
        return True

    def succeeded(self, *, write: bool) -> None:
        """Note a statement that worked (called only while away: the hot path checks
        `available` first)."""
        if self.away_since is None or (self._write_failed and not write):
            return
        self.away_seconds += time.time() - self.away_since
        log.warning("store %s is back after %.1f s", self.where, time.time() - self.away_since)
        self.away_since = None
        self.why = None
        self._write_failed = False
        self._back.set()

    async def back(self) -> None:
        """Return once the store is available (at once when it is)."""
        await self._back.wait()

    def _start_probe(self) -> None:
        if self._closed or self._probe is None:
            return
        if self._prober is not None and not self._prober.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nobody to probe for
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_until_back(), name="store-probe"
            )

    async def _probe_until_back(self) -> None:
        assert self._probe is not None
        pause = PROBE_FIRST_S
        while self.away_since is not None and not self._closed:
            await asyncio.sleep(pause)
            pause = min(pause * 2, PROBE_MAX_S)
            try:
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.failed(exc):
                    log.warning("store %s probe failed: %s", self.where, exc)
                continue
            self.succeeded(write=True)

    async def close(self) -> None:
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prober
            self._prober = None
