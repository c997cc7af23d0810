"""SOURCE argument -> Source: a path or file:// URL, s3://bucket/prefix, ssh://user@host:port/path."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from horde_scanner.config import Settings
from horde_scanner.sources.source import Source, SourceError


def quarantine_dir(settings: Settings) -> Path:
    configured = settings.scan.quarantine_path
    if configured is not None:
        return configured
    return Path(settings.store.path).resolve().parent / "quarantine"


def make_source(address: str, settings: Settings) -> Source:
    """Build (not open) the Source for `address`; SourceError names what is wrong with it."""
    if "://" not in address:
        from horde_scanner.sources.local import LocalSource

        return LocalSource(Path(address), quarantine_dir(settings))
    parts = urlsplit(address)
    scheme = parts.scheme.lower()
    if scheme == "file":
        from horde_scanner.sources.local import LocalSource

        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{address}: file URLs name a local path (file:///path)")
        return LocalSource(Path(unquote(parts.path)), quarantine_dir(settings))
    if scheme == "s3":
        from horde_scanner.sources.s3 import S3Source

        return S3Source(
            parts.netloc,
            unquote(parts.path),
            settings.scan.s3,
            max_connections=settings.scan.concurrency + 4,
        )
    if scheme in ("ssh", "sftp"):
        from horde_scanner.sources.ssh import SSHSource

        try:
            port = parts.port or 22
        except ValueError:
            raise SourceError(f"{address}: invalid port") from None
        return SSHSource(
            parts.hostname or "",
            port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.path),
            settings.scan.ssh,
        )
    raise SourceError(
        f"{address}: unknown kind of source {scheme!r} (use a path, file://, s3:// or ssh://)"
    )
