"""`horde-scanner embeddings ...` (lists of image embeddings, calibration) and
`horde-scanner models export` (the image encoder's ONNX file)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import click
from PIL import Image, UnidentifiedImageError

from horde_scanner.cli.common import (
    OUTPUT_OPTION,
    import_list,
    open_input,
    read_list,
    run,
    settings_of,
    write_output,
)
from horde_scanner.signals.embedding_exchange import published
from horde_scanner.signals.embedding_list import (
    EmbeddingEntry,
    Model,
    OtherModel,
    dump_hma,
    dump_json,
    read_entries,
)
from horde_scanner.signals.hash_list import ParseReport
from horde_scanner.store.factory import open_store
from horde_scanner.store.hashes import LOCAL

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


def _model(ctx: click.Context) -> Model:
    s = settings_of(ctx).embeddings
    return Model(s.model_id, s.preprocess, s.dim)


@click.group()
def embeddings() -> None:
    """Image embeddings: export and import lists, calibrate a threshold."""


@embeddings.command("export")
@click.option("--format", "fmt", type=click.Choice(["json", "hma"]), default="json")
@OUTPUT_OPTION
@click.pass_context
def export(ctx: click.Context, fmt: str, output: Path | None) -> None:
    """Write this instance's confirmed embeddings: what GET /api/v1/embeddings publishes
    (json, with the model in its header), or one HMA CLIP signal per line (hma)."""
    settings = settings_of(ctx)
    model = _model(ctx)

    async def go() -> list[EmbeddingEntry]:
        async with await open_store(settings.store) as store:
            return await published(
                store, model, settings.hashes.publish_source, settings.embeddings.threshold
            )

    entries = run(go)
    text = dump_json(model, entries) if fmt == "json" else dump_hma(entries)
    write_output(output, text, f"{len(entries)} entries")


@embeddings.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "hma"]),
    default=None,
    help="json or hma (default: told by the content).",
)
@click.option(
    "--model",
    "model_id",
    default=None,
    help="The model an HMA file (no header) was made with; it must be embeddings.model_id.",
)
@click.option("--source", default="", help="Source for rows that name none.")
@click.pass_context
def import_(
    ctx: click.Context, file: Path, fmt: str | None, model_id: str | None, source: str
) -> None:
    """Add the embeddings of FILE to this instance's list (origin `local`). A list of another
    model is refused; bad rows are reported with their line numbers and skipped (exit 1)."""
    settings = settings_of(ctx).embeddings
    model = _model(ctx)
    if model_id is not None and model_id != model.model:
        raise OtherModel(
            f"{file}: made with model {model_id!r}; this instance uses {model.model!r}"
            " (embeddings.model_id), whose vectors do not compare"
        )
    report = ParseReport(max_errors=settings.max_row_errors)
    with open_input(file) as raw:
        if fmt is None:
            fmt = "json" if _starts_json(raw) else "hma"
        if fmt == "hma" and model_id is None:
            raise click.UsageError(
                f"{file}: an HMA list has no header: say which model made it with --model"
            )
        entries = read_list(
            file,
            raw,
            lambda text: read_entries(text, fmt, model, report, max_rows=settings.max_list_rows),
        )
    if source:
        entries = [
            e if e.source else EmbeddingEntry(e.vector, e.label, source, e.first_seen, e.note)
            for e in entries
        ]

    async def go() -> int:
        async with await open_store(settings_of(ctx).store) as store:
            written = await store.add_embedding_entries(
                LOCAL, model.model, entries, by="cli:import"
            )
            await store.audit(
                "embeddings_imported",
                action="import",
                source="cli",
                detail={"file": str(file), "entries": written, "skipped": report.skipped},
            )
            return written

    import_list(file, report, go)


def _starts_json(raw: IO[bytes]) -> bool:
    start = raw.tell()
    head = raw.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    raw.seek(start)
    return head[:1] in (b"{", b"[")


@embeddings.command("calibrate")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--index-size",
    type=click.IntRange(min=1),
    default=None,
    help="Entries to scale the false-match rate to (default: the entries stored now, at"
    " least 100,000).",
)
@click.option("--limit", type=click.IntRange(min=2), default=500, show_default=True)
@click.pass_context
def calibrate_(ctx: click.Context, directory: Path, index_size: int | None, limit: int) -> None:
    """Similarities of variants (JPEG quality, resize, 10-30 % crop, flip, text overlay) and
    of unrelated pairs among benign images in DIRECTORY, and the false-match rate each
    threshold would give at the index's size."""
    from horde_scanner.signals.calibrate import calibrate, report
    from horde_scanner.signals.encoder import ImageEncoder

    settings = settings_of(ctx)
    cfg = settings.embeddings
    encoder = ImageEncoder(
        cfg.model_path, cfg.preprocess, cfg.dim, intra_op_threads=cfg.intra_op_threads
    )
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )[:limit]
    images: list[Image.Image] = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.draft("RGB", (1024, 1024))  # JPEGs decode small: variants need no more
                images.append(img.convert("RGB"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            click.echo(f"{path}: skipped ({exc})", err=True)
    if len(images) < 2:
        raise click.ClickException(f"{directory}: needs at least 2 readable images")
    if index_size is None:

        async def count() -> int:
            async with await open_store(settings.store) as store:
                return await store.embedding_entry_count(cfg.model_id)

        index_size = max(100_000, run(count))
    click.echo(f"model {cfg.model_id} ({cfg.model_path})")
    click.echo(report(calibrate(images, encoder.encode), index_size))


@click.group()
def models() -> None:
    """Model files the service runs (no download at run time)."""


@models.command("export")
@OUTPUT_OPTION
@click.option("--model-name", default=None, help="OpenCLIP model (default: HMA's CLIP).")
@click.option("--pretrained", default=None, help="OpenCLIP weights (default: HMA's CLIP).")
@click.pass_context
def export_model(
    ctx: click.Context, output: Path | None, model_name: str | None, pretrained: str | None
) -> None:
    """Write the CLIP image encoder as ONNX (default: to embeddings.model_path), from
    OpenCLIP's weights: needs the extra [export] (torch, open_clip) and a machine that may
    download the weights. Another model needs its own embeddings.model_id."""
    from horde_scanner.signals.export import (
        OPENCLIP_MODEL,
        OPENCLIP_PRETRAINED,
        export_openclip,
    )

    target = output or settings_of(ctx).embeddings.model_path
    path = export_openclip(target, model_name or OPENCLIP_MODEL, pretrained or OPENCLIP_PRETRAINED)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")
