"""Lemmy's database, read-only: who uploaded an image and where it is used (lemmy.database_url).

Lemmy's tables changed between versions (reference/lemmy.md §1); the version is told from the
columns present, read from the catalogue (pg_attribute sees every column, granted or not):

    0.18            no upload table: no uploader is recorded anywhere
    0.19.0-0.19.3   image_upload(local_user_id NOT NULL, pictrs_alias, published)
    0.19.4+         local_image(local_user_id NULL = a generated thumbnail, ..., published)
    1.0             local_image(person_id, thumbnail_for_post_id, published_at); ap_id on person

Every column read is then checked for the role's privilege, so a missing grant is named (table
and columns) before any query runs. The queries themselves are data
(`horde_scanner/data/lemmy_queries.sql`): the admin can read exactly what runs. Content refers
to images only by link text (no foreign keys), so usages are found with LIKE on the alias in
both link forms. Comment and post bodies have no index on links: those scans are bounded by time
(`lemmy.usage_window_days` from the upload, on Lemmy's published-time indexes) and by row count,
and each statement by `lemmy.query_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from horde_scanner.config import LemmySettings
from horde_scanner.errors import HordeScannerError

log = logging.getLogger(__name__)

# Rows of one kind of usage listed at most (a count beyond says "more").
MAX_USAGES = 500
# An image cannot be linked before it exists; the slack covers clocks and pict-rs's own time.
_BEFORE_SLACK = timedelta(hours=1)
_ALIAS_OK = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


class LemmyDbError(HordeScannerError):
    """Lemmy's database could not be asked; `retry` says whether asking again may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry
        # Which branch of errors.py it is on depends on the cause (a restart, or a refusal).
        self.retry_later = retry


@dataclass(frozen=True, slots=True)
class LemmySchema:
    """Which Lemmy the database belongs to, and the names its queries use."""

    version: str  # "0.18" | "0.19.0-0.19.3" | "0.19.4+" | "1.0"
    uploads: str | None  # the upload table, None on 0.18
    published: str  # published | published_at
    actor: str  # actor_id | ap_id
    community_text: str  # description | sidebar
    person_uploader: bool  # 1.0: local_image.person_id (else local_user_id -> local_user)

    @property
    def api(self) -> str:
        """The HTTP API form this Lemmy speaks (0.18 auth in the body, 0.19 bearer, 1.0 v4)."""
        if self.version == "0.18":
            return "0.18"
        return "1.0" if self.version == "1.0" else "0.19"

    def columns(self) -> dict[str, list[str]]:
        """Every column the queries read, by table (what the role must be granted)."""
        pub, actor = self.published, self.actor
        cols: dict[str, list[str]] = {
            "instance": ["id", "domain"],
            "local_site": ["site_id"],
            "site": ["id", "name", "icon", "banner", "sidebar", "instance_id", actor],
            "person": ["id", "name", "display_name", "avatar", "banner", "bio", "local"]
            + ["instance_id", actor],
            "community": ["id", "name", "icon", "banner", "local", "instance_id", actor]
            + [self.community_text],
            "post": ["id", "name", "url", "thumbnail_url", "body", "ap_id", "local", pub]
            + ["removed", "deleted", "community_id", "creator_id"],
            "comment": ["id", "ap_id", "local", pub, "removed", "deleted", "post_id"]
            + ["creator_id", "content"],
            "private_message": ["id", "ap_id", "local", pub, "deleted", "creator_id"]
            + ["recipient_id", "content"],
            "custom_emoji": ["id", "shortcode", "image_url"],
        }
        if self.uploads is not None:
            if self.person_uploader:
                cols[self.uploads] = ["pictrs_alias", pub, "person_id", "thumbnail_for_post_id"]
            else:
                cols[self.uploads] = ["pictrs_alias", pub, "local_user_id"]
                cols["local_user"] = ["id", "person_id"]
        return cols


class UnknownSchema(LemmyDbError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


def detect_schema(tables: dict[str, set[str]]) -> LemmySchema:
    """The Lemmy version from {table: columns}; UnknownSchema when it is none we know."""
    person = tables.get("person", set())
    if not person or "post" not in tables or "comment" not in tables:
        raise UnknownSchema("not a Lemmy database (no person, post or comment table)")
    actor = "ap_id" if "ap_id" in person else "actor_id" if "actor_id" in person else None
    if actor is None:
        raise UnknownSchema("unknown Lemmy schema: person has neither actor_id nor ap_id")
    community = tables.get("community", set())
    text = "sidebar" if "sidebar" in community else "description"
    image = tables.get("local_image")
    if image is not None:
        if {"person_id", "thumbnail_for_post_id", "published_at"} <= image:
            return LemmySchema("1.0", "local_image", "published_at", actor, text, True)
        if {"local_user_id", "published"} <= image:
            return LemmySchema("0.19.4+", "local_image", "published", actor, text, False)
        raise UnknownSchema(
            f"unknown Lemmy schema: local_image has columns {sorted(image)} (expected "
            "local_user_id + published (0.19.4+) or person_id + thumbnail_for_post_id + "
            "published_at (1.0))"
        )
    upload = tables.get("image_upload")
    if upload is not None:
        if {"local_user_id", "published"} <= upload:
            return LemmySchema("0.19.0-0.19.3", "image_upload", "published", actor, text, False)
        raise UnknownSchema(f"unknown Lemmy schema: image_upload has columns {sorted(upload)}")
    pub = "published_at" if "published_at" in tables["post"] else "published"
    return LemmySchema("0.18", None, pub, actor, text, False)


def raw_queries() -> dict[str, str]:
    """The named queries of data/lemmy_queries.sql, names not filled in."""
    text = resources.files("horde_scanner.data").joinpath("lemmy_queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in text.split("-- name: ")[1:]:
        name, _, sql = block.partition("\n")
        queries[name.strip()] = sql.strip()
    return queries


def load_queries(schema: LemmySchema) -> dict[str, str]:
    """The named queries of data/lemmy_queries.sql with this version's names filled in."""
    if schema.person_uploader:
        join, thumb = "LEFT JOIN person p ON p.id = u.person_id", "u.thumbnail_for_post_id"
    else:
        join = (
            "LEFT JOIN local_user lu ON lu.id = u.local_user_id "
            "LEFT JOIN person p ON p.id = lu.person_id"
        )
        thumb = "NULL::int"
    names = {
        "published": schema.published,
        "actor": schema.actor,
        "uploads": schema.uploads or "",
        "uploader_join": join,
        "thumb_col": thumb,
        "community_text": schema.community_text,
    }
    return {name: sql.format(**names) for name, sql in raw_queries().items()}


def link_patterns(aliases: list[str]) -> list[str]:
    """LIKE patterns for every link form of these aliases (0.18/0.19 and 1.0)."""
    out = []
    for alias in aliases:
        escaped = alias.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        out += [f"%/pictrs/image/{escaped}%", f"%/api/v4/image/{escaped}%"]
    return out


def host_of(url: str | None) -> str | None:
    return urlsplit(url).hostname if url else None


def _when(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def _person(row: Any, at: int) -> dict[str, Any] | None:
    """id, name, display_name, actor URL, local, instance at row[at:at+6]."""
    if row[at] is None:
        return None
    return {
        "id": row[at],
        "name": row[at + 1],
        "display_name": row[at + 2],
        "actor_url": row[at + 3],
        "local": bool(row[at + 4]),
        "instance": row[at + 5],
    }


def _community(row: Any, at: int) -> dict[str, Any]:
    return {"id": row[at], "name": row[at + 1], "actor_url": row[at + 2], "instance": row[at + 3]}


@dataclass
class Lookup:
    """One image's provenance as Lemmy's database tells it (JSON-ready via `as_dict`)."""

    schema: str
    aliases: list[str]
    uploads: list[dict[str, Any]] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    searched: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        origins = sorted({u["origin_instance"] for u in self.usages if u.get("origin_instance")})
        return {
            "schema": self.schema,
            "aliases": self.aliases,
            "uploads": self.uploads,
            "usages": self.usages,
            "origin_instances": origins,
            "searched": self.searched,
            "notes": self.notes,
        }


class LemmyDb:
    """A small pool of read-only connections to Lemmy's database, opened on first use."""

    def __init__(self, settings: LemmySettings) -> None:
        assert settings.database_url is not None
        self._settings = settings
        self._url = settings.database_url.get_secret_value()
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self.schema: LemmySchema | None = None
        self.own_host: str | None = settings.hostname
        self._queries: dict[str, str] = {}

    @property
    def where(self) -> str:
        from horde_scanner.store.postgres import redact

        return redact(self._url)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _connect(self) -> Any:
        try:
            import asyncpg
        except ImportError:
            raise LemmyDbError(
                "lemmy.database_url needs asyncpg (pip install 'horde-scanner[postgres]')",
                retry=False,
            ) from None
        timeout_ms = int(self._settings.query_timeout_s * 1000)
        try:
            return await asyncpg.create_pool(
                self._url,
                min_size=0,
                max_size=2,
                timeout=self._settings.connect_timeout_s,
                command_timeout=self._settings.query_timeout_s + 5,
                server_settings={
                    "application_name": "horde-scanner-provenance",
                    "default_transaction_read_only": "on",
                    "statement_timeout": str(timeout_ms),
                },
            )
        except Exception as exc:  # asyncpg's connect errors have no common root
            raise _db_error(exc, self.where) from None

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await self._connect()
        try:
            async with self._pool.acquire(timeout=self._settings.connect_timeout_s) as conn:
                return list(await conn.fetch(sql, *args))
        except LemmyDbError:
            raise
        except Exception as exc:
            raise _db_error(exc, self.where) from None

    async def check(self) -> LemmySchema:
        """Connect, tell the version, and check every column read is granted (or say which
        are not). Raises LemmyDbError (retry=False for an unknown schema or missing grants)."""
        raw = raw_queries()
        rows = await self._fetch(raw["columns"])
        tables: dict[str, set[str]] = {}
        for table, column in rows:
            tables.setdefault(table, set()).add(column)
        schema = detect_schema(tables)
        wanted = [(t, c) for t, cols in schema.columns().items() for c in cols]
        granted = await self._fetch(
            raw["grants"],
            [t for t, _ in wanted],
            [c for _, c in wanted],
        )
        missing: dict[str, list[str]] = {}
        for table, column, ok in granted:
            if not ok:
                missing.setdefault(table, []).append(column)
        if missing:
            named = "; ".join(f"table {t} (columns {', '.join(cs)})" for t, cs in missing.items())
            raise LemmyDbError(
                f"Lemmy {schema.version} database {self.where}: no SELECT on {named}; "
                "grant them (see the read-only role SQL in the docs)",
                retry=False,
            )
        self._queries = load_queries(schema)
        if self.own_host is None:
            found = await self._fetch(self._queries["own_host"])
            self.own_host = found[0][0] if found else None
        self.schema = schema
        return schema

    async def uploads(self, aliases: list[str]) -> list[dict[str, Any]]:
        """The upload rows of these aliases: uploader, time, or "generated thumbnail"."""
        if self.schema is None:
            await self.check()
        assert self.schema is not None
        if self.schema.uploads is None:
            return []
        rows = await self._fetch(self._queries["uploads"], aliases)
        return [self._upload(row) | {"_published": row[1]} for row in rows]

    async def lookup(self, aliases: list[str], seen_at: float | None) -> Lookup:
        """Uploads and usages of these aliases. `seen_at`: when the scanner first met the
        bytes (bounds the body scans when Lemmy recorded no upload time)."""
        if self.schema is None:
            await self.check()
        schema = self.schema
        assert schema is not None
        aliases = [a for a in dict.fromkeys(aliases) if _ALIAS_OK.match(a)]
        found = Lookup(schema.version, aliases)
        if not aliases:
            return found
        q = self._queries
        patterns = link_patterns(aliases)
        uploaded: list[datetime] = []
        recorded: set[str] = set()
        if schema.uploads is not None:
            for up in await self.uploads(aliases):
                recorded.add(up["alias"])
                uploaded.append(up.pop("_published"))
                found.uploads.append(up)
        else:
            found.notes.append(
                "Lemmy 0.18 records no uploads: the uploader cannot be read from its database"
            )
        start = min(uploaded) if uploaded else None
        if seen_at is not None:
            seen = datetime.fromtimestamp(seen_at, UTC)
            start = seen if start is None else min(start, seen)
        window = self._settings.usage_window_days
        if start is None or window is None:
            low, high = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
        else:
            low, high = start - _BEFORE_SLACK, start + timedelta(days=window)
        found.searched = {
            "from": _when(low) if start is not None and window is not None else None,
            "to": _when(high) if start is not None and window is not None else None,
            "bounded": start is not None and window is not None,
            "link_forms": ["/pictrs/image/<alias>", "/api/v4/image/<alias>"],
        }
        posts = await self._fetch(q["posts"], patterns, low, high, MAX_USAGES)
        comments = await self._fetch(q["comments"], patterns, low, high, MAX_USAGES)
        messages = await self._fetch(q["private_messages"], patterns, low, high, MAX_USAGES)
        persons = await self._fetch(q["persons"], patterns, MAX_USAGES)
        communities = await self._fetch(q["communities"], patterns, MAX_USAGES)
        sites = await self._fetch(q["sites"], patterns, MAX_USAGES)
        emoji = await self._fetch(q["custom_emoji"], patterns, MAX_USAGES)
        for row in posts:
            found.usages += _post_usages(row)
        found.usages += [_comment_usage(r) for r in comments]
        found.usages += [_message_usage(r) for r in messages]
        for row in persons:
            found.usages += _owner_usages(row, "person")
        for row in communities:
            found.usages += _owner_usages(row, "community")
        for row in sites:
            found.usages += _site_usages(row)
        found.usages += [
            {"kind": "custom_emoji", "id": r[0], "name": r[1], "origin_instance": self.own_host}
            for r in emoji
        ]
        if any(len(rows) >= MAX_USAGES for rows in (posts, comments, messages, persons)):
            found.notes.append(f"more than {MAX_USAGES} usages of one kind: the list is cut")
        thumbs = {u["post_id"] for u in found.usages if u["kind"] == "post_thumbnail"}
        for alias in aliases:
            if alias not in recorded and schema.uploads is not None:
                found.notes.append(
                    f"{alias}: no upload row (a thumbnail Lemmy generated before 0.19.4, an "
                    "image imported into pict-rs directly, or a row deleted since)"
                )
        for up in found.uploads:
            if up["kind"] == "thumbnail" and up.get("thumbnail_for_post") is None and thumbs:
                up["thumbnail_for_post"] = min(thumbs)
        unrecorded = [a for a in aliases if a not in recorded]
        has_thumb = any(u["kind"] == "thumbnail" for u in found.uploads)
        if unrecorded and thumbs and not has_thumb:
            found.uploads.append(
                {
                    "alias": None,
                    "kind": "thumbnail",
                    "thumbnail_for_post": min(thumbs),
                    "uploaded_at": None,
                    "uploader": None,
                    "recorded": False,
                }
            )
        return found

    def _upload(self, row: Any) -> dict[str, Any]:
        alias, published, thumb_post = row[0], row[1], row[2]
        person = _person(row, 3)
        # 0.19.4+: a row with no user is a generated thumbnail; 1.0 says so with the post id
        # (its person is then the post's author, not an uploader).
        thumbnail = thumb_post is not None or person is None
        return {
            "alias": alias,
            "kind": "thumbnail" if thumbnail else "upload",
            "thumbnail_for_post": thumb_post,
            "uploaded_at": _when(published),
            "uploader": None if thumbnail else person,
            "post_author": person if thumbnail else None,
            "recorded": True,
        }


def _post_usages(row: Any) -> list[dict[str, Any]]:
    base = {
        "post_id": row[0],
        "title": row[1],
        "url": row[2],
        "local": bool(row[3]),
        "published": _when(row[4]),
        "removed": bool(row[5]),
        "deleted": bool(row[6]),
        "community": _community(row, 10),
        "creator": _person(row, 14),
        "origin_instance": host_of(row[2]),
    }
    kinds = [k for k, hit in (("post_url", row[7]), ("post_thumbnail", row[8])) if hit]
    kinds += ["post_body"] if row[9] else []
    return [{"kind": k, **base} for k in kinds]


def _comment_usage(row: Any) -> dict[str, Any]:
    return {
        "kind": "comment",
        "comment_id": row[0],
        "url": row[1],
        "local": bool(row[2]),
        "published": _when(row[3]),
        "removed": bool(row[4]),
        "deleted": bool(row[5]),
        "post_id": row[6],
        "title": row[7],
        "post_url": row[8],
        "community": _community(row, 9),
        "creator": _person(row, 13),
        "origin_instance": host_of(row[1]),
    }


def _message_usage(row: Any) -> dict[str, Any]:
    return {
        "kind": "private_message",
        "private_message_id": row[0],
        "url": row[1],
        "local": bool(row[2]),
        "published": _when(row[3]),
        "deleted": bool(row[4]),
        "creator": _person(row, 5),
        "recipient": {"id": row[11], "name": row[12], "actor_url": row[13]},
        "origin_instance": host_of(row[1]),
    }


def _owner_usages(row: Any, owner: str) -> list[dict[str, Any]]:
    if owner == "person":
        who = _person(row, 0)
        flags = (("avatar", row[6]), ("banner", row[7]), ("bio", row[8]))
        url = row[3]
    else:
        who = {"id": row[0], "name": row[1], "actor_url": row[2], "local": bool(row[3])}
        who["instance"] = row[4]
        flags = (("icon", row[5]), ("banner", row[6]), ("description", row[7]))
        url = row[2]
    return [
        {"kind": f"{owner}_{name}", owner: who, "url": url, "origin_instance": host_of(url)}
        for name, hit in flags
        if hit
    ]


def _site_usages(row: Any) -> list[dict[str, Any]]:
    site = {"id": row[0], "name": row[1], "actor_url": row[2], "instance": row[3]}
    flags = (("icon", row[4]), ("banner", row[5]), ("sidebar", row[6]))
    return [
        {"kind": f"site_{n}", "site": site, "url": row[2], "origin_instance": host_of(row[2])}
        for n, hit in flags
        if hit
    ]


def _db_error(exc: Exception, where: str) -> LemmyDbError:
    """Say what went wrong in the admin's words; whether a retry may help."""
    name = type(exc).__name__
    text = str(exc).strip() or name
    if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return LemmyDbError(f"Lemmy database {where}: login refused ({text})", retry=True)
    if name == "InsufficientPrivilegeError":
        return LemmyDbError(f"Lemmy database {where}: {text}", retry=False)
    if name == "QueryCanceledError":
        return LemmyDbError(
            f"Lemmy database {where}: a query ran past lemmy.query_timeout_s ({text})", retry=True
        )
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError) or "Connection" in name:
        return LemmyDbError(f"Lemmy database {where} unreachable: {name} {text}", retry=True)
    return LemmyDbError(f"Lemmy database {where}: {name}: {text}", retry=True)
