"""The hash list exchange format: what `hashes export` writes, `hashes import` reads, and
`GET /api/v1/hashes` serves to subscribers. Never image bytes.

One entry per row, in CSV (header required) or JSON:

    signal,value,label,source,first_seen,note,confirmed_by,confirmed_at
    pdq,f8f8...9b22,csam,example.social,2024-05-01T12:00:00+00:00,,api:alice,1714568400
    sha256,9f86...0a08,csam,example.social,,reported twice,import:cli,1714640400

    {"format": "horde-scanner-hashes", "version": 1, "entries": [
    {"signal": "pdq", "value": "f8f8...", "label": "csam", "source": "...",
     "first_seen": "...", "note": ""}
    ]}

A bare JSON array of entries is accepted too. `signal` is `sha256` (exact bytes) or `pdq` (256
bit perceptual hash); `value` is 64 hex characters either way; `label` is `csam` (default) or
`nsfw`; `first_seen` is ISO 8601 or Unix seconds, or empty; `confirmed_by` and `confirmed_at`
say which admin of the publisher confirmed the entry and when (optional; older lists lack
them). A bad row is reported with its line number and skipped; only an unreadable document as
a whole is an error. Documents are read as a stream (`read_entries`), with a cap on rows and
on the errors remembered.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from horde_scanner.errors import InvalidInput
from horde_scanner.media.hashing import is_pdq_hex, is_sha256_hex
from horde_scanner.timefmt import iso

FORMAT_NAME = "horde-scanner-hashes"
FORMAT_VERSION = 1
FIELDS = (
    "signal",
    "value",
    "label",
    "source",
    "first_seen",
    "note",
    "confirmed_by",
    "confirmed_at",
)
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
    # Who confirmed the entry at its publisher, and when (empty: an unreviewed machine verdict,
    # published only where its admin chose hashes.publish_unreviewed).
    confirmed_by: str = ""
    confirmed_at: float | None = None

    def record(self) -> dict[str, str]:
        return {"signal": self.signal, "value": self.value, **description_record(self)}


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Bad:
    message: str


class ListFormatError(InvalidInput):
    """The document as a whole cannot be read as a hash list."""


class TooManyRows(ListFormatError):
    """The document has more rows than the reader takes (its message quotes nothing of it)."""


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
    return HashEntry(signal, value, **described(fields))


def described(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What an entry of any list (hashes, embeddings) says about itself besides its signal:
    label, source, first seen, note, who confirmed it and when; ValueError when it is bad."""
    label = _text(fields.get("label"), "label").lower() or "csam"
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r} (expected csam or nsfw)")
    return {
        "label": label,
        "source": _text(fields.get("source"), "source"),
        "first_seen": _time(fields.get("first_seen")),
        "note": _text(fields.get("note"), "note"),
        "confirmed_by": _text(fields.get("confirmed_by"), "confirmed_by"),
        "confirmed_at": _time(fields.get("confirmed_at"), "confirmed_at"),
    }


class Described(Protocol):
    """An entry's description (HashEntry, EmbeddingEntry)."""

    @property
    def label(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def first_seen(self) -> float | None: ...
    @property
    def note(self) -> str: ...
    @property
    def confirmed_by(self) -> str: ...
    @property
    def confirmed_at(self) -> float | None: ...


def description_record(entry: Described) -> dict[str, str]:
    """The description as the exchange formats write it (times in ISO 8601, or empty)."""
    return {
        "label": entry.label,
        "source": entry.source,
        "first_seen": iso(entry.first_seen) if entry.first_seen is not None else "",
        "note": entry.note,
        "confirmed_by": entry.confirmed_by,
        "confirmed_at": iso(entry.confirmed_at) if entry.confirmed_at is not None else "",
    }


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{name} is longer than {_MAX_TEXT} characters")
    if "\x00" in value:  # no store keeps one alike (PostgreSQL's text cannot hold it)
        raise ValueError(f"{name} holds a NUL character")
    return value


def _time(value: Any, name: str = "first_seen") -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a date or Unix seconds")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a date or Unix seconds")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an ISO 8601 date or Unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# -- reading -----------------------------------------------------------------------------------
#
# A list is read as a stream: a row at a time from a text file, so what a read costs is the
# entries it keeps, never the size of the document (a gzip bomb of `0`s is rows, and rows are
# capped). Errors are counted, and only the first few are kept with their line numbers.

DEFAULT_MAX_ERRORS = 100
# One JSON value (an entry, or a top-level key's value) longer than this is not a hash entry.
_MAX_VALUE_CHARS = 64 * 1024
_READ_CHARS = 1 << 16


@dataclass(slots=True)
class ParseReport:
    """What a read found besides its entries: rows read, rows skipped, the first errors."""

    max_errors: int | None = DEFAULT_MAX_ERRORS
    rows: int = 0
    skipped: int = 0
    errors: list[RowError] = field(default_factory=list)

    def skip(self, line: int, message: str) -> None:
        self.skipped += 1
        if self.max_errors is None or len(self.errors) < self.max_errors:
            self.errors.append(RowError(line, message))

    @property
    def unlisted(self) -> int:
        """Skipped rows whose error was counted but not kept."""
        return self.skipped - len(self.errors)


def parse(data: bytes | str, fmt: str | None = None) -> tuple[list[HashEntry], list[RowError]]:
    """Entries and the rows that were skipped (every one). `fmt`: csv, json, or None to tell
    by content. Raises ListFormatError when the document is not a hash list at all."""
    report = ParseReport(max_errors=None)
    if isinstance(data, bytes):
        stream: TextIO = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    else:
        stream = io.StringIO(data, newline="")
    entries = list(read_entries(stream, fmt, report))
    return entries, report.errors


def read_entries(
    stream: TextIO, fmt: str | None, report: ParseReport, *, max_rows: int | None = None
) -> Iterator[HashEntry]:
    """Entries of a list read from `stream` (text, newline=""), rows beyond `max_rows`
    refused: ListFormatError, like a document that is not a hash list."""
    try:
        if fmt is None:
            fmt = "json" if _first_char(stream) in ("{", "[") else "csv"
        rows = _json_rows(stream) if fmt == "json" else _csv_rows(stream)
        for line, fields in rows:
            report.rows += 1
            if max_rows is not None and report.rows > max_rows:
                raise TooManyRows(f"more than {max_rows} rows (hashes.max_list_rows)")
            if isinstance(fields, _Bad):
                report.skip(line, fields.message)
                continue
            if not isinstance(fields, Mapping):
                report.skip(line, "entry is not an object")
                continue
            try:
                yield entry_from_fields(fields)
            except ValueError as exc:
                report.skip(line, str(exc))
    except UnicodeDecodeError as exc:
        raise ListFormatError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _first_char(stream: TextIO) -> str:
    """The first character that is not white space, leaving the stream where it was."""
    start = stream.tell()
    while chunk := stream.read(_READ_CHARS):
        stripped = chunk.lstrip()
        if stripped:
            stream.seek(start)
            return stripped[0]
    stream.seek(start)
    return ""


def _csv_rows(stream: TextIO) -> Iterator[tuple[int, Any]]:
    # csv.reader, not DictReader: it yields blank lines too, so line numbers stay right.
    reader = csv.reader(stream)
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        if not any(header):
            raise ListFormatError("empty document (a CSV list needs a header row)")
        missing = {"signal", "value"} - set(header)
        if missing:
            raise ListFormatError(
                f"CSV header {','.join(header)[:200]!r} lacks {', '.join(sorted(missing))} "
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


class _JsonStream:
    """JSON values one at a time from a text stream, with the line each one starts on."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._line = 1
        self._counted = 0  # position in _buf up to which newlines are in _line
        self._decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._stream.read(_READ_CHARS)
        if not chunk:
            self._eof = True
            return False
        if self._pos > _READ_CHARS:  # drop what was consumed: memory stays one chunk or two
            self._line += self._buf.count("\n", self._counted, self._pos)
            self._buf = self._buf[self._pos :]
            self._pos = self._counted = 0
        self._buf += chunk
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            match = _WS.match(self._buf, self._pos)
            self._pos = match.end() if match else self._pos
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def expect(self, char: str, where: str) -> None:
        found = self.peek()
        if found != char:
            got = "the end of the document" if not found else "something else"
            raise ListFormatError(f"not valid JSON: expected {char!r} {where}, found {got}")
        self._pos += 1

    def line(self) -> int:
        self._line += self._buf.count("\n", self._counted, self._pos)
        self._counted = self._pos
        return self._line

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buf) - self._pos > _MAX_VALUE_CHARS:
                    raise ListFormatError(
                        f"line {self.line()}: a value longer than {_MAX_VALUE_CHARS} characters"
                    ) from None
                if self._more():
                    continue
                raise ListFormatError(f"not valid JSON ({exc.msg}, line {self.line()})") from None
            # A number (or the end of the buffer) may go on in the next chunk: decode again.
            if end == len(self._buf) and self._more():
                continue
            if end - self._pos > _MAX_VALUE_CHARS:
                raise ListFormatError(
                    f"line {self.line()}: a value longer than {_MAX_VALUE_CHARS} characters"
                )
            self._pos = end
            return value


def _json_rows(stream: TextIO) -> Iterator[tuple[int, Any]]:
    doc = _JsonStream(stream)
    first = doc.peek()
    if first == "[":
        yield from _json_array(doc)
    elif first == "{":
        yield from _json_object(doc, on_value=_check_format)
    else:
        raise ListFormatError("expected a JSON object with `entries`, or an array of entries")
    if doc.peek() != "":
        raise ListFormatError("not valid JSON (extra data after the document)")


def _json_object(
    doc: _JsonStream,
    *,
    opening: str = "to open the document",
    on_value: Callable[[str, Any], None] | None = None,
    before_entries: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """The rows of a list document `{"key": value, ..., "entries": [...]}`: every other key's
    value goes to `on_value` as it is read (it raises ListFormatError to refuse the list),
    and `before_entries` runs before the first row (the header is read by then)."""
    doc.expect("{", opening)
    seen_entries = False
    if doc.peek() == "}":
        doc.expect("}", "")
        raise ListFormatError("the JSON object has no `entries` array")
    while True:
        key = doc.value()
        if not isinstance(key, str):
            raise ListFormatError("not valid JSON (an object key is not a string)")
        doc.expect(":", "after an object key")
        if key == "entries":
            if before_entries is not None:
                before_entries()
            if doc.peek() != "[":
                raise ListFormatError("the JSON object has no `entries` array")
            seen_entries = True
            yield from _json_array(doc)
        else:
            value = doc.value()
            if on_value is not None:
                on_value(key, value)
        if doc.peek() == ",":
            doc.expect(",", "")
            continue
        doc.expect("}", "to close the document")
        break
    if not seen_entries:
        raise ListFormatError("the JSON object has no `entries` array")


def _check_format(key: str, value: Any) -> None:
    """A hash list's header, checked as each key is read."""
    if key == "format" and value != FORMAT_NAME:
        raise ListFormatError(f"format {str(value)[:80]!r} is not {FORMAT_NAME!r}")
    if key == "version" and (not isinstance(value, int) or value > FORMAT_VERSION):
        raise ListFormatError(f"format version {str(value)[:20]!r} is newer than this reader")


def _json_array(doc: _JsonStream) -> Iterator[tuple[int, Any]]:
    doc.expect("[", "to open the entries")
    if doc.peek() == "]":
        doc.expect("]", "")
        return
    while True:
        doc.peek()
        line = doc.line()
        yield line, doc.value()
        if doc.peek() == ",":
            doc.expect(",", "")
            continue
        doc.expect("]", "after an entry")
        return


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
