"""S3-compatible object storage through aiobotocore (extra `[s3]`).

Keys are listed in S3's own (byte-wise) order with `StartAfter`, so a sweep resumes from its
checkpoint without listing what it finished, and a follow cycle over a pict-rs >= 0.5.7 bucket
starts listing at the UUIDv7 key prefix of its last moment instead of listing the whole bucket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from horde_scanner.config import S3Settings
from horde_scanner.sources.layout import v7_key_prefix
from horde_scanner.sources.source import Denied, Entry, ItemError, SourceError, Vanished

log = logging.getLogger(__name__)

_HEX_DIR_RE = re.compile(r"^[0-9a-f]{2}/")
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden"}


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Source:
    kind = "s3"

    def __init__(
        self, bucket: str, prefix: str, settings: S3Settings, *, max_connections: int = 16
    ) -> None:
        if not bucket:
            raise SourceError("s3 source: no bucket in the URL (expected s3://bucket/prefix)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self._settings = settings
        self.quarantine_bucket = settings.quarantine_bucket or bucket
        self.quarantine_prefix = settings.quarantine_prefix.strip("/") + "/"
        self._max_connections = max_connections
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self.list_errors = 0
        # Objects returned by listing calls, for the follow mode's "no full listing" promise.
        self.listed = 0

    async def open(self) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
            from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        except ImportError:
            raise SourceError(
                "s3 sources need the [s3] extra: pip install 'horde-scanner[s3]'"
            ) from None
        s = self._settings
        kwargs: dict[str, Any] = {
            "region_name": s.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            "config": AioConfig(
                max_pool_connections=self._max_connections,
                connect_timeout=s.timeout_s,
                read_timeout=s.timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": s.addressing_style},
            ),
        }
        if s.endpoint_url:
            kwargs["endpoint_url"] = s.endpoint_url
        if s.access_key_id or s.secret_access_key:
            kwargs["aws_access_key_id"] = s.access_key_id
            kwargs["aws_secret_access_key"] = s.secret_access_key
        where = s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        try:
            self._client = await self._stack.enter_async_context(
                get_session().create_client("s3", **kwargs)
            )
            await self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except NoCredentialsError:
            await self.close()
            raise SourceError(
                "no S3 credentials: set scan.s3.access_key_id / secret_access_key or "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from None
        except ClientError as exc:
            await self.close()
            code = _code(exc)
            if code in _BAD_CREDENTIALS:
                raise SourceError(f"S3 at {where} rejected the credentials ({code})") from None
            if code == "NoSuchBucket":
                raise SourceError(f"S3 at {where}: no bucket named {self.bucket!r}") from None
            if code in _DENIED:
                raise SourceError(
                    f"S3 at {where}: access to bucket {self.bucket!r} denied ({code}); "
                    "check the credentials and the bucket policy"
                ) from None
            raise SourceError(f"S3 at {where}: {code or exc}") from None
        except (BotoCoreError, OSError) as exc:
            await self.close()
            raise SourceError(f"cannot reach S3 at {where}: {exc}") from None

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def _skip(self, key: str) -> bool:
        return key.endswith("/") or (
            self.quarantine_bucket == self.bucket and key.startswith(self.quarantine_prefix)
        )

    async def _pages(self, start_after: str | None) -> AsyncIterator[list[dict[str, Any]]]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        if start_after:
            params["StartAfter"] = start_after
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(**params):
            contents = page.get("Contents") or []
            self.listed += len(contents)
            yield contents

    def _entry(self, obj: dict[str, Any]) -> Entry:
        key = str(obj["Key"])
        return Entry(key[len(self.prefix) :], int(obj["Size"]), obj["LastModified"].timestamp())

    async def list(self, start_after: str | None = None) -> AsyncIterator[Entry]:
        after = self.prefix + start_after if start_after else None
        async for page in self._pages(after):
            for obj in page:
                if not self._skip(obj["Key"]):
                    yield self._entry(obj)

    async def list_new(self, since: float, *, time_ordered: bool) -> AsyncIterator[Entry]:
        found: list[Entry] = []
        after = self.prefix + v7_key_prefix(since) if time_ordered else None
        async for page in self._pages(after):
            stop = False
            for obj in page:
                key = obj["Key"]
                if time_ordered and not _HEX_DIR_RE.match(key[len(self.prefix) :]):
                    stop = True  # past the UUIDv7 keys: nothing newer follows
                    break
                if self._skip(key):
                    continue
                entry = self._entry(obj)
                if entry.mtime >= since:
                    found.append(entry)
            if stop:
                break
        found.sort(key=lambda e: e.mtime, reverse=True)
        for entry in found:
            yield entry

    def _key(self, identifier: str) -> str:
        return self.prefix + identifier

    async def stat(self, identifier: str) -> Entry | None:
        from botocore.exceptions import ClientError

        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=self._key(identifier))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _item_error(exc, identifier) from None
        return Entry(identifier, int(head["ContentLength"]), head["LastModified"].timestamp())

    async def read(self, entry: Entry, limit: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(entry.identifier)}
        if limit is not None:
            params["Range"] = f"bytes=0-{max(0, limit - 1)}"
        try:
            resp = await self._client.get_object(**params)
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            raise _item_error(exc, entry.identifier) from None
        return data

    def quarantine_location(self, name: str) -> str:
        return f"s3://{self.quarantine_bucket}/{self.quarantine_prefix}{name}"

    async def quarantine(self, identifier: str, name: str) -> str:
        dest = self.quarantine_prefix + name
        await self._copy(self.bucket, self._key(identifier), self.quarantine_bucket, dest)
        await self._delete(self.bucket, self._key(identifier), identifier)
        return self.quarantine_location(name)

    async def restore(self, location: str, identifier: str) -> None:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if await self.stat(identifier) is not None:
            raise ItemError(f"{self.url}{identifier} exists already; not overwriting it")
        await self._copy(bucket, key, self.bucket, self._key(identifier))
        await self._delete(bucket, key, location)

    async def delete(self, identifier: str) -> None:
        await self._delete(self.bucket, self._key(identifier), identifier)

    async def _copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            await self._client.copy_object(
                Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}
            )
        except ClientError as exc:
            raise _item_error(exc, src_key) from None

    async def _delete(self, bucket: str, key: str, label: str) -> None:
        from botocore.exceptions import ClientError

        try:
            await self._client.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise _item_error(exc, label) from None


def _item_error(exc: Exception, label: str) -> ItemError:
    code = _code(exc)
    if code in _MISSING:
        return Vanished(f"{label}: no longer there")
    if code in _DENIED:
        return Denied(f"{label}: access denied")
    return ItemError(f"{label}: {code or exc}")
