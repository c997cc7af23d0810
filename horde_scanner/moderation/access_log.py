"""Who sent an upload that was rejected at validation: the one honest route.

pict-rs sends the validator only the bytes (no uploader, address or alias), deletes the file
when it is rejected, and Lemmy then records nothing. What is known here is the exact time the
request came and was answered, its size, which pict-rs sent it and its hashes. A reverse
proxy's access log in nginx's `combined` format knows the address, time and user agent of every
`POST /pictrs/image` (0.18/0.19) and `POST /api/v4/image` (1.0, also its avatar, banner and icon
uploads). Matching the two by time gives candidates, not proof:

- the log's time has one-second resolution and is written when the request ends;
- `combined` has no request size ($body_bytes_sent is the response), so size cannot be matched;
- two uploads within the window are both candidates;
- behind a CDN or another proxy, the address is that proxy's unless the log records
  X-Forwarded-For (then it is what the client claimed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from horde_scanner.store.provenance import RejectedUpload
from horde_scanner.timefmt import iso

# nginx `combined`: $remote_addr - $remote_user [$time_local] "$request" $status
# $body_bytes_sent "$http_referer" "$http_user_agent" (anything after is ignored).
_COMBINED = re.compile(
    r'^(?P<addr>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+)'
    r'(?: [^"]*)?" (?P<status>\d{3}) (?P<bytes>\S+) "(?P<referer>(?:[^"\\]|\\.)*)" '
    r'"(?P<agent>(?:[^"\\]|\\.)*)"'
)
# Upload routes: Lemmy 0.18/0.19 and 1.0 (user image, avatar, banner, community and site images).
_UPLOAD_PATH = re.compile(
    r"^/(?:pictrs/image|api/v4/image|api/v4/account/(?:avatar|banner)"
    r"|api/v4/community/(?:icon|banner)|api/v4/site/(?:icon|banner))(?:[?/]|$)"
)
_TIME = "%d/%b/%Y:%H:%M:%S %z"
# An upload's line is written when its request ends: after our answer, plus pict-rs deleting
# the file and Lemmy answering the client.
DEFAULT_BEFORE_S = 2.0
DEFAULT_AFTER_S = 10.0


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    address: str
    method: str
    path: str
    status: int
    user_agent: str
    line_no: int


def parse(lines: Iterable[str]) -> Iterator[LogLine]:
    """The upload requests of a combined-format log (other lines and garbage are skipped)."""
    for number, line in enumerate(lines, 1):
        m = _COMBINED.match(line)
        if m is None or m["method"] != "POST" or not _UPLOAD_PATH.match(m["path"]):
            continue
        try:
            at = datetime.strptime(m["time"], _TIME).timestamp()
        except ValueError:
            continue
        yield LogLine(at, m["addr"], m["method"], m["path"], int(m["status"]), m["agent"], number)


def match(
    rejected: list[RejectedUpload],
    lines: Iterable[LogLine],
    *,
    before_s: float = DEFAULT_BEFORE_S,
    after_s: float = DEFAULT_AFTER_S,
) -> list[dict[str, Any]]:
    """Each rejected upload with the log's upload requests that ended in its window."""
    uploads = sorted(lines, key=lambda x: x.at)
    out = []
    for r in rejected:
        low, high = int(r.received_at - before_s), r.answered_at + after_s
        candidates = [
            {
                "address": x.address,
                "time": iso(x.at),
                "seconds_after_answer": round(x.at - r.answered_at, 1),
                "request": f"{x.method} {x.path}",
                "status": x.status,
                "user_agent": x.user_agent,
                "log_line": x.line_no,
            }
            for x in uploads
            if low <= x.at <= high
        ]
        out.append(
            {
                "sha256": r.sha256,
                "received_at": iso(r.received_at),
                "answered_at": iso(r.answered_at),
                "size": r.size,
                "media_type": r.media_type,
                "client": r.client,
                "label": r.label,
                "window": [iso(low), iso(high)],
                "candidates": candidates,
            }
        )
    return out


def describe(found: list[dict[str, Any]]) -> str:
    """The matches as text for the terminal."""
    if not found:
        return "no upload was rejected at validation in that time\n"
    lines = []
    for f in found:
        lines.append(
            f"{f['answered_at']} rejected {f['sha256']} ({f['label']}, {f['size']} bytes, "
            f"{f['media_type']}, from {f['client']})"
        )
        if not f["candidates"]:
            lines.append("  no upload request in the log between " + " and ".join(f["window"]))
        for c in f["candidates"]:
            lines.append(
                f"  candidate {c['address']}  {c['time']} ({c['seconds_after_answer']:+} s)  "
                f'{c["request"]} -> {c["status"]}  "{c["user_agent"]}"  (line {c["log_line"]})'
            )
    lines.append(
        "Candidates match by time only (one-second log times, no request size in nginx's "
        "combined format): more than one upload in a window are all listed."
    )
    return "\n".join(lines) + "\n"
