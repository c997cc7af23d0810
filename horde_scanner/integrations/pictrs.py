"""pict-rs internal API client: find the aliases of a stored file by its sha256, and purge.

pict-rs has no lookup by hash. Its hash is sha256(stored bytes) + 6-byte big-endian size +
1 format byte (78 hex characters), and `/internal/hashes` lists hashes newest first with their
aliases, so the sha256 we computed of the bytes pict-rs sent us is the first 64 hex characters
of one of those entries. A late positive is by nature recent, so it is found in the first pages.

`/internal/hashes` exists from pict-rs 0.5.0: on 0.4.x there is no way from a sha256 to an
alias, and every lookup raises PictrsUnsupported (callers fall back to recording).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from horde_scanner.errors import FinalError

log = logging.getLogger(__name__)


class PictrsError(FinalError):
    """pict-rs refused or could not be reached; the message says which."""


class PictrsUnsupported(PictrsError):
    """This pict-rs is too old for the call (no /internal/hashes before 0.5.0)."""


HASHES_MISSING = (
    "pict-rs has no /internal/hashes (it came in pict-rs 0.5.0; this looks like 0.4.x): "
    "late positives cannot be purged through its API"
)


@dataclass
class PurgeResult:
    sha256: str
    aliases: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.aliases)


class PictrsClient:
    def __init__(
        self,
        url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        search_pages: int = 20,
        page_size: int = 100,
        timeout_s: float = 10.0,
    ) -> None:
        self._base = url.rstrip("/")
        self._headers = {"X-Api-Token": api_key}
        self._session = session
        self.search_pages = search_pages
        self.page_size = page_size
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _request(self, method: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            async with self._session.request(
                method,
                self._base + path,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status == 401:
                    raise PictrsError("pict-rs rejected the API key (invalid-api-token)")
                if resp.status == 404 and path == "/internal/hashes":
                    raise PictrsUnsupported(HASHES_MISSING)
                if resp.status >= 400 or not isinstance(body, dict):
                    code = body.get("code") if isinstance(body, dict) else None
                    raise PictrsError(f"pict-rs {method} {path}: HTTP {resp.status} {code or ''}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PictrsError(f"pict-rs unreachable: {type(exc).__name__} {exc}") from None

    async def supports_hashes(self) -> bool:
        """Whether this pict-rs lists hashes (0.5.0+); PictrsError when it cannot be asked."""
        try:
            await self._request("GET", "/internal/hashes", {"limit": "1"})
        except PictrsUnsupported:
            return False
        return True

    async def aliases_for_sha256(self, sha256: str) -> list[str]:
        slug: str | None = None
        for _ in range(self.search_pages):
            params = {"limit": str(self.page_size)}
            if slug:
                params["slug"] = slug
            body = await self._request("GET", "/internal/hashes", params)
            page = body.get("page") or {}
            for entry in page.get("hashes") or []:
                if str(entry.get("hex", "")).lower().startswith(sha256):
                    return [str(a) for a in entry.get("aliases") or []]
            slug = page.get("next")
            if not slug:
                break
        return []

    async def purge(self, alias: str) -> list[str]:
        body = await self._request("POST", "/internal/purge", {"alias": alias})
        return [str(a) for a in body.get("aliases") or [alias]]

    async def purge_sha256(self, sha256: str) -> PurgeResult:
        """Purge every alias of the file with this sha256 (one purge wipes all of them)."""
        aliases = await self.aliases_for_sha256(sha256)
        result = PurgeResult(sha256)
        if aliases:
            result.aliases = await self.purge(aliases[0])
        return result


class HashIndex:
    """sha256 -> aliases over a whole pict-rs store, for sweeps that delete many files.

    Pages of /internal/hashes are fetched only as far as needed and remembered, so looking up
    N hashes costs at most one pass over the listing instead of N searches.
    """

    def __init__(self, client: PictrsClient) -> None:
        self._client = client
        self._known: dict[str, list[str]] = {}
        self._slug: str | None = None
        self._exhausted = False
        self._unsupported = False
        self._lock = asyncio.Lock()
        self.pages = 0

    async def aliases(self, sha256: str) -> list[str]:
        if sha256 in self._known:
            return self._known[sha256]
        try:
            return await self._aliases(sha256)
        except PictrsUnsupported:
            self._unsupported = True  # pict-rs 0.4.x: asking again cannot help
            raise

    async def _aliases(self, sha256: str) -> list[str]:
        async with self._lock:
            if self._unsupported:
                raise PictrsUnsupported(HASHES_MISSING)
            while sha256 not in self._known and not self._exhausted:
                params = {"limit": str(self._client.page_size)}
                if self._slug:
                    params["slug"] = self._slug
                body = await self._client._request("GET", "/internal/hashes", params)
                self.pages += 1
                page = body.get("page") or {}
                for entry in page.get("hashes") or []:
                    hex_hash = str(entry.get("hex", "")).lower()
                    aliases = [str(a) for a in entry.get("aliases") or []]
                    if len(hex_hash) >= 64 and aliases:
                        self._known[hex_hash[:64]] = aliases
                self._slug = page.get("next")
                self._exhausted = not self._slug
            if sha256 not in self._known:
                # Uploaded since the pass began? Those are on the first (newest) page.
                body = await self._client._request(
                    "GET", "/internal/hashes", {"limit": str(self._client.page_size)}
                )
                self.pages += 1
                for entry in (body.get("page") or {}).get("hashes") or []:
                    hex_hash = str(entry.get("hex", "")).lower()
                    if hex_hash.startswith(sha256):
                        return [str(a) for a in entry.get("aliases") or []]
        return self._known.get(sha256, [])

    def forget(self, sha256: str) -> None:
        self._known.pop(sha256, None)
