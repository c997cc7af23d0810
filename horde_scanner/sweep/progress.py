"""What a sweep shows while it runs (a bar on a terminal, log lines otherwise) and at the end."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import TextIO

log = logging.getLogger("horde_scanner.sweep")


@dataclass
class Counts:
    listed: int = 0
    seen: int = 0  # skipped: unchanged since judged (no byte read)
    read: int = 0
    bytes_read: int = 0
    judged: int = 0  # by a backend now
    cached: int = 0  # answered by the verdict cache or the lists
    clean: int = 0
    nsfw: int = 0
    csam: int = 0
    unreadable: int = 0
    not_media: int = 0
    errors: int = 0
    vanished: int = 0
    denied: int = 0
    acted: int = 0
    already_acted: int = 0
    action_failed: int = 0
    changed: int = 0  # apply: the file changed since it was judged; not acted on

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def done(self) -> int:
        """Files finished; labels count only files read in this run (seen ones are `seen`)."""
        return (
            self.seen + self.clean + self.nsfw + self.csam + self.unreadable + self.not_media
            + self.errors + self.vanished + self.denied
        )  # fmt: skip


SUMMARY_ROWS = [
    ("listed", "listed"),
    ("seen", "skipped as seen"),
    ("judged", "judged (backend)"),
    ("cached", "judged (cache/lists)"),
    ("clean", "clean"),
    ("nsfw", "nsfw"),
    ("csam", "csam"),
    ("unreadable", "unreadable"),
    ("not_media", "not media"),
    ("errors", "errors"),
    ("vanished", "vanished"),
    ("denied", "permission denied"),
    ("acted", "acted"),
    ("already_acted", "acted before"),
    ("action_failed", "action failed"),
    ("changed", "changed since judged"),
    ("bytes_read", "bytes read"),
]


def summary_table(counts: Counts, *, title: str = "summary") -> str:
    values = counts.as_dict()
    width = max(len(label) for _, label in SUMMARY_ROWS)
    lines = [title, "-" * (width + 14)]
    for key, label in SUMMARY_ROWS:
        value = values[key]
        if key in ("already_acted", "action_failed", "changed", "vanished", "denied") and not value:
            continue
        lines.append(f"{label:<{width}}  {value:>12,}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# No file finished for this long: the ETA says "stalled" instead of a figure (a rate
# averaged over the run would promise an end that is not coming).
STALLED_AFTER_S = 5.0


class _ClearingStream:
    """The log handler's stream while a bar is drawn on the same terminal: each log line
    first clears the bar's line, and the bar is drawn again below it on the next update."""

    def __init__(self, progress: Progress, stream: TextIO) -> None:
        self._progress = progress
        self.stream = stream

    def write(self, text: str) -> int:
        self._progress.clear_line()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """Redraws one status line on a terminal; logs a line every `log_every_s` otherwise."""

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, log_every_s: float = 10.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self._last = float("-inf")
        self.listing_done = False
        self._drawn = False
        self._last_done = -1
        self._done_changed = time.monotonic()
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
        if self.tty:
            self._share_terminal_with_logging()

    def _share_terminal_with_logging(self) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(_ClearingStream(self, self.stream))  # type: ignore[arg-type]
                self._handlers.append((handler, self.stream))

    def clear_line(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
            self._last = float("-inf")  # draw again at the next update

    def restart(self) -> None:
        self.started = time.monotonic()
        self.listing_done = False

    def _text(self, c: Counts) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        done = c.done
        rate = done / elapsed
        total = f"{c.listed:,}" if self.listing_done else f"{c.listed:,}+"
        now = time.monotonic()
        if done != self._last_done:
            self._last_done, self._done_changed = done, now
        left = max(0, c.listed - done)
        eta = "?"
        if self.listing_done and not left:
            eta = "-"  # finished
        elif left and now - self._done_changed >= STALLED_AFTER_S:
            eta = f"? (stalled {_duration(now - self._done_changed)})"
        elif self.listing_done and rate > 0:
            eta = _duration(max(1, math.ceil(left / rate)))
        return (
            f"{done:,}/{total} files  {rate:,.1f}/s  ETA {eta}  seen {c.seen:,}  "
            f"judged {c.judged + c.cached:,}  csam {c.csam}  nsfw {c.nsfw}  "
            f"unreadable {c.unreadable}  errors {c.errors + c.vanished + c.denied}  acted {c.acted}"
        )

    def update(self, c: Counts, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            bar = ""
            if self.listing_done and c.listed:
                filled = int(30 * min(1.0, c.done / c.listed))
                bar = "[" + "#" * filled + "." * (30 - filled) + "] "
            self.stream.write("\r\x1b[K" + bar + self._text(c))
            self.stream.flush()
            self._drawn = True
        elif force or now - self._last >= self.log_every_s:
            self._last = now
            log.info("scan progress: %s", self._text(c))

    def note(self, message: str) -> None:
        """A line that stays (a positive found, a problem), printed above the bar."""
        if self.tty:
            self.clear_line()
            self.stream.write(message + "\n")
            self.stream.flush()
        else:
            log.warning("%s", message)

    def close(self, c: Counts) -> None:
        self.update(c, force=True)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []
