"""The hash list exchange format: what `hashes export` writes, `hashes import` reads, and
`GET /api/v1/hashes` serves to subscribers. Never image bytes.

One entry per row, in CSV (header required) or JSON:

    signal,value,label,source,first_seen,note
    pdq,f8f8f0ce...4e9c9b22,csam,example.social,2024-05-01T12:00:00+00:00,
    sha256,9f86d081...b0f00a08,csam,example.social,,reported twice

    {"format": "horde-scanner-hashes", "version": 1, "entries": [
    {"signal": "pdq", "value": "f8f8...", "label": "csam", "source": "...",
     "first_seen": "...", "note": ""}
    ]}

A bare JSON array of entries is accepted too. `signal` is `sha256` (exact bytes) or `pdq` (256
bit perceptual hash); `value` is 64 hex characters either way; `label` is `csam` (default) or
`nsfw`; `first_seen` is ISO 8601 or Unix seconds, or empty. A bad row is reported with its line
number and skipped; only an unreadable document as a whole is an error.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from horde_scanner.media.hashing import is_pdq_hex, is_sha256_hex
from horde_scanner.timefmt import iso

FORMAT_NAME = "horde-scanner-hashes"
FORMAT_VERSION = 1
FIELDS = ("signal", "value", "label", "source", "first_seen", "note")
SIGNALS = ("sha256", "pdq")
LABELS = ("csam", "nsfw")
_MAX_TEXT = 1000
_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True, slots=True)
class HashEntry:
    signal: str
    value: str
    label: str = "csam"
    source: str = ""
    first_seen: float | None = None
    note: str = ""

    def record(self) -> dict[str, str]:
        return {
            "signal": self.signal,
            "value": self.value,
            "label": self.label,
            "source": self.source,
            "first_seen": iso(self.first_seen) if self.first_seen is not None else "",
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Bad:
    message: str


class ListFormatError(Exception):
    """The document as a whole cannot be read as a hash list."""


def entry_from_fields(fields: Mapping[str, Any]) -> HashEntry:
    """One entry from a row's fields; ValueError with a readable message when it is bad."""
    signal = _text(fields.get("signal"), "signal").lower()
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal type {signal!r} (expected sha256 or pdq)")
    value = _text(fields.get("value"), "value").lower()
    valid = is_sha256_hex(value) if signal == "sha256" else is_pdq_hex(value)
    if not valid:
        raise ValueError(
            f"{signal} value must be 64 hex characters, got {len(value)} characters"
            if len(value) != 64
            else f"{signal} value is not hexadecimal"
        )
    label = _text(fields.get("label"), "label").lower() or "csam"
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r} (expected csam or nsfw)")
    return HashEntry(
        signal=signal,
        value=value,
        label=label,
        source=_text(fields.get("source"), "source"),
        first_seen=_time(fields.get("first_seen")),
        note=_text(fields.get("note"), "note"),
    )


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{name} is longer than {_MAX_TEXT} characters")
    return value


def _time(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("first_seen must be a date or Unix seconds")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("first_seen must be a date or Unix seconds")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"first_seen {text!r} is not an ISO 8601 date or Unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# -- reading -----------------------------------------------------------------------------------


def parse(data: bytes | str, fmt: str | None = None) -> tuple[list[HashEntry], list[RowError]]:
    """Entries and the rows that were skipped. `fmt`: csv, json, or None to tell by content.

    Raises ListFormatError when the document is not a hash list at all."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ListFormatError(f"not UTF-8 text ({exc})") from None
    else:
        text = data
    if fmt is None:
        stripped = text.lstrip()
        fmt = "json" if stripped[:1] in ("{", "[") else "csv"
    rows = _json_rows(text) if fmt == "json" else _csv_rows(text)
    entries: list[HashEntry] = []
    errors: list[RowError] = []
    for line, fields in rows:
        if isinstance(fields, _Bad):
            errors.append(RowError(line, fields.message))
            continue
        if not isinstance(fields, Mapping):
            errors.append(RowError(line, "entry is not an object"))
            continue
        try:
            entries.append(entry_from_fields(fields))
        except ValueError as exc:
            errors.append(RowError(line, str(exc)))
    return entries, errors


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    # csv.reader, not DictReader: it yields blank lines too, so line numbers stay right.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        if not any(header):
            raise ListFormatError("empty document (a CSV list needs a header row)")
        missing = {"signal", "value"} - set(header)
        if missing:
            raise ListFormatError(
                f"CSV header {','.join(header)!r} lacks {', '.join(sorted(missing))} "
                f"(expected {','.join(FIELDS)})"
            )
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                yield line, _Bad(f"{len(row)} fields; the header has {len(header)}")
                continue
            yield line, dict(zip(header, row, strict=False))
    except csv.Error as exc:
        raise ListFormatError(f"line {reader.line_num}: unreadable CSV ({exc})") from None


def _json_rows(text: str) -> Iterator[tuple[int, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ListFormatError(f"not valid JSON ({exc})") from None
    if isinstance(doc, dict):
        if doc.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise ListFormatError(f"format {doc.get('format')!r} is not {FORMAT_NAME!r}")
        version = doc.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ListFormatError(f"format version {version!r} is newer than this reader")
        if not isinstance(doc.get("entries"), list):
            raise ListFormatError("the JSON object has no `entries` array")
    elif not isinstance(doc, list):
        raise ListFormatError("expected a JSON object with `entries`, or an array of entries")
    # The document is valid JSON; walk it again to know on which line each entry starts.
    return _walk_entries(text)


def _walk_entries(text: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if text[pos] == "{":
        pos += 1
        while True:
            pos = _skip(text, pos)
            key, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos) + 1  # ':'
            pos = _skip(text, pos)
            if key == "entries":
                break
            _, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos) + 1  # ','
    pos += 1  # '['
    line, counted = 1, 0
    while True:
        pos = _skip(text, pos)
        if text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        value, pos = decoder.raw_decode(text, pos)
        yield line, value
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos += 1


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


# -- writing -----------------------------------------------------------------------------------


def dump_json(entries: Iterable[HashEntry]) -> str:
    """One entry per line, so that errors found by a reader point at a useful line."""
    head = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION})[:-1]
    lines = [json.dumps(e.record(), separators=(", ", ": ")) for e in entries]
    return head + ', "entries": [\n' + ",\n".join(lines) + ("\n" if lines else "") + "]}\n"


def dump_csv(entries: Iterable[HashEntry]) -> str:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow(entry.record())
    return out.getvalue()
