"""The embedding list exchange format: what `embeddings export` writes, `embeddings import`
reads, and `GET /api/v1/embeddings` serves to subscribers. Never image bytes.

JSON, the model and its preprocessing in the header, before the entries:

    {"format": "horde-scanner-embeddings", "version": 1,
     "model": "xlm-roberta-base-ViT-B-32-laion5b_s13b_b90k-normalized",
     "preprocess": "resize224-bicubic-centercrop-clipnorm", "dim": 512, "entries": [
    {"embedding": "52dadfbc...", "label": "csam", "source": "example.social",
     "first_seen": "2024-05-01T12:00:00+00:00", "note": "", "confirmed_by": "api:alice",
     "confirmed_at": "2024-05-02T08:00:00+00:00"}
    ]}

`embedding` is HMA's CLIP signal form: the float32 components, little-endian, as hex (512
dimensions: 4,096 characters), L2-normalised. A list whose `model` or `preprocess` is not this
instance's is refused as a whole, by name: vectors of different models are not comparable.

HMA form (`--format hma`): one signal per line, as HMA's `local_file` exchange reads and
writes them: the bare hex, or `<signal type> <hex>`. It has no header, so whoever imports it
names its model.

Bad rows are reported with their line number and skipped; a document that is not such a list
is refused. Reading is a stream with a cap on rows (signals/subscribe reads from a file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from horde_scanner.signals.hash_list import (
    ListFormatError,
    ParseReport,
    TooManyRows,
    _first_char,
    _json_object,
    _JsonStream,
    described,
    description_record,
)
from horde_scanner.signals.vectors import BadVector, digest, from_hex, to_blob, to_hex

FORMAT_NAME = "horde-scanner-embeddings"
FORMAT_VERSION = 1
_HMA_TYPES = ("clip", "clip_float", "hash_clip", "hash_clip_float")


@dataclass(frozen=True, slots=True)
class Model:
    """What every vector of a list was made with."""

    model: str
    preprocess: str
    dim: int


class OtherModel(ListFormatError):
    """The list was made with another model (or preprocessing): its vectors do not compare."""


@dataclass(frozen=True, slots=True)
class EmbeddingEntry:
    vector: np.ndarray
    label: str = "csam"
    source: str = ""
    first_seen: float | None = None
    note: str = ""
    confirmed_by: str = ""
    confirmed_at: float | None = None

    @property
    def digest(self) -> str:
        return digest(self.vector)

    @property
    def blob(self) -> bytes:
        return to_blob(self.vector)

    @property
    def hex(self) -> str:
        return to_hex(self.vector)

    def record(self) -> dict[str, str]:
        return {"embedding": self.hex, **description_record(self)}


def entry_from_fields(fields: Mapping[str, Any], dim: int) -> EmbeddingEntry:
    """One entry; ValueError (BadVector among them) with a readable message when it is bad."""
    vector = from_hex(fields.get("embedding"), dim)  # type: ignore[arg-type]
    return EmbeddingEntry(vector, **described(fields))


# -- reading -----------------------------------------------------------------------------------


def read_entries(
    stream: TextIO,
    fmt: str | None,
    expected: Model,
    report: ParseReport,
    *,
    max_rows: int | None = None,
) -> Iterator[EmbeddingEntry]:
    """Entries of a list read from `stream` (text). `fmt`: json, hma, or None to tell by the
    first character. Rows beyond `max_rows`: TooManyRows; another model: OtherModel."""
    try:
        if fmt is None:
            fmt = "json" if _first_char(stream) in ("{", "[") else "hma"
        rows = _json_rows(stream, expected) if fmt == "json" else _hma_rows(stream)
        for line, fields in rows:
            report.rows += 1
            if max_rows is not None and report.rows > max_rows:
                raise TooManyRows(f"more than {max_rows} rows (embeddings.max_list_rows)")
            if isinstance(fields, str):
                report.skip(line, fields)
                continue
            if not isinstance(fields, Mapping):
                report.skip(line, "entry is not an object")
                continue
            try:
                yield entry_from_fields(fields, expected.dim)
            except (ValueError, BadVector) as exc:
                report.skip(line, str(exc))
    except UnicodeDecodeError as exc:
        raise ListFormatError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_rows(stream: TextIO, expected: Model) -> Iterator[tuple[int, Any]]:
    doc = _JsonStream(stream)
    header: dict[str, Any] = {}
    yield from _json_object(
        doc,
        opening="to open the document (an object with a header and `entries`)",
        on_value=header.__setitem__,
        before_entries=lambda: _check_header(header, expected),
    )
    if doc.peek() != "":
        raise ListFormatError("not valid JSON (extra data after the document)")


def _check_header(header: Mapping[str, Any], expected: Model) -> None:
    """The header comes before the entries: a list of another model is refused before any
    of its rows is read."""
    name = header.get("format")
    if name != FORMAT_NAME:
        raise ListFormatError(f"format {str(name)[:80]!r} is not {FORMAT_NAME!r}")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ListFormatError(f"format version {str(version)[:20]!r} is not one this reads")
    model = header.get("model")
    if model != expected.model:
        raise OtherModel(
            f"list made with model {_shown(model)!r}; this instance uses"
            f" {expected.model!r} (embeddings.model_id), whose vectors do not compare"
        )
    preprocess = header.get("preprocess")
    if preprocess != expected.preprocess:
        raise OtherModel(
            f"list made with preprocessing {_shown(preprocess)!r}; this instance uses"
            f" {expected.preprocess!r} (embeddings.preprocess)"
        )
    dim = header.get("dim")
    if dim != expected.dim:
        raise OtherModel(f"list has {_shown(dim)}-dimensional vectors, the model {expected.dim}")


def _shown(value: Any) -> str:
    """A header value as it may appear in a message: what a source sends is never echoed
    beyond a short name of safe characters."""
    return re.sub(r"[^A-Za-z0-9._:/+-]", "?", str(value)[:120])


def _hma_rows(stream: TextIO) -> Iterator[tuple[int, Any]]:
    """HMA `local_file` lines: `<hex>` or `<signal type> <hex>`; blank and `#` lines skipped.
    A line is read with a cap, so one endless line is one bad row, not unbounded memory."""
    line_no = 0
    while True:
        line = stream.readline(_MAX_LINE)
        if not line:
            return
        line_no += 1
        if len(line) >= _MAX_LINE and not line.endswith("\n"):
            while (rest := stream.readline(_MAX_LINE)) and not rest.endswith("\n"):
                pass
            yield line_no, f"a line longer than {_MAX_LINE} characters"
            continue
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) == 2 and parts[0].lower() in _HMA_TYPES:
            parts = parts[1:]
        if len(parts) != 1:
            yield line_no, "expected `<hex>` or `<signal type> <hex>`"
            continue
        yield line_no, {"embedding": parts[0]}


_MAX_LINE = 64 * 1024


# -- writing -----------------------------------------------------------------------------------


def dump_json(model: Model, entries: Iterable[EmbeddingEntry]) -> str:
    head = json.dumps(
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": model.model,
            "preprocess": model.preprocess,
            "dim": model.dim,
        }
    )[:-1]
    lines = [json.dumps(e.record(), separators=(", ", ": ")) for e in entries]
    return head + ', "entries": [\n' + ",\n".join(lines) + ("\n" if lines else "") + "]}\n"


def dump_hma(entries: Iterable[EmbeddingEntry]) -> str:
    """One bare signal per line (HMA local_file with its signal type set to CLIP)."""
    return "".join(e.hex + "\n" for e in entries)
