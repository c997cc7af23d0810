"""A directory on another host, over SSH/SFTP with asyncssh (extra `[ssh]`).

Everything happens on the remote host: quarantine moves files into a 0700 directory there,
delete removes them there (fedi-safety's remote script deleted local paths by mistake).
The host key is checked against known_hosts unless `scan.ssh.check_host_key` is false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import stat as statmod
from collections.abc import AsyncIterator
from typing import Any

from horde_scanner.config import SSHSettings
from horde_scanner.sources.layout import DirItem, walk, walk_new
from horde_scanner.sources.source import Denied, Entry, ItemError, SourceError, Vanished

log = logging.getLogger(__name__)


class SSHSource:
    kind = "ssh"

    def __init__(
        self, host: str, port: int, user: str | None, path: str, settings: SSHSettings
    ) -> None:
        if not host:
            raise SourceError("ssh source: no host in the URL (expected ssh://user@host:port/path)")
        self.host = host
        self.port = port
        self.user = user
        self.root = path or "."
        self._settings = settings
        self.quarantine_dir = settings.quarantine_path
        self._conn: Any = None
        self._sftp: Any = None
        self.list_errors = 0
        self.listed = 0
        self.url = self._url()

    def _url(self) -> str:
        who = f"{self.user}@" if self.user else ""
        root = self.root if self.root.startswith("/") else "/" + self.root
        return f"ssh://{who}{self.host}:{self.port}{root.rstrip('/') or '/'}"

    async def open(self) -> None:
        try:
            import asyncssh
        except ImportError:
            raise SourceError(
                "ssh sources need the [ssh] extra: pip install 'horde-scanner[ssh]'"
            ) from None
        s = self._settings
        where = f"{self.host}:{self.port}"
        options: dict[str, Any] = {"port": self.port}
        if self.user:
            options["username"] = self.user
        if not s.check_host_key:
            log.warning("ssh: host key of %s NOT checked (scan.ssh.check_host_key=false)", where)
            options["known_hosts"] = None
        elif s.known_hosts is not None:
            if not s.known_hosts.is_file():
                raise SourceError(f"scan.ssh.known_hosts: {s.known_hosts} not found")
            options["known_hosts"] = str(s.known_hosts)
        if s.key_path is not None:
            if not s.key_path.is_file():
                raise SourceError(f"scan.ssh.key_path: {s.key_path} not found")
            options["client_keys"] = [str(s.key_path)]
        if s.passphrase is not None:
            options["passphrase"] = s.passphrase
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                self._conn = await asyncssh.connect(self.host, **options)
                self._sftp = await self._conn.start_sftp_client()
                self.root = await self._sftp.realpath(self.root)
                attrs = await self._sftp.stat(self.root)
                if not statmod.S_ISDIR(attrs.permissions or 0):
                    raise SourceError(f"{self.url}: not a directory")
                qdir = self.quarantine_dir
                if not qdir.startswith("/"):
                    qdir = posixpath.join(await self._sftp.realpath("."), qdir)
                self.quarantine_dir = posixpath.normpath(qdir)
        except SourceError:
            await self.close()
            raise
        except asyncssh.HostKeyNotVerifiable as exc:
            await self.close()
            raise SourceError(
                f"ssh {where}: host key not trusted ({exc.reason}); add it to "
                f"{s.known_hosts or '~/.ssh/known_hosts'} (ssh-keyscan -p {self.port} "
                f"{self.host}) or set scan.ssh.known_hosts"
            ) from None
        except asyncssh.PermissionDenied:
            await self.close()
            raise SourceError(
                f"ssh {where}: authentication as {self.user or 'the current user'} failed; "
                "check scan.ssh.key_path, the agent and authorized_keys"
            ) from None
        except asyncssh.KeyImportError as exc:
            await self.close()
            raise SourceError(f"scan.ssh.key_path: cannot load the key ({exc})") from None
        except asyncssh.SFTPNoSuchFile:
            await self.close()
            raise SourceError(f"{self.url}: no such directory on {self.host}") from None
        except asyncssh.SFTPPermissionDenied:
            await self.close()
            raise SourceError(f"{self.url}: permission denied on {self.host}") from None
        except TimeoutError:
            await self.close()
            raise SourceError(f"ssh {where}: no answer within {s.connect_timeout_s:g} s") from None
        except (OSError, asyncssh.Error) as exc:
            await self.close()
            raise SourceError(f"ssh {where}: {exc}") from None
        self.url = self._url()

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
            self._conn = None

    def _abs(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def _skip(self, rel: str) -> bool:
        path = self._abs(rel)
        return path == self.quarantine_dir or path.startswith(self.quarantine_dir + "/")

    async def _listdir(self, rel: str) -> list[DirItem]:
        import asyncssh

        try:
            names = await self._sftp.readdir(self._abs(rel))
        except asyncssh.SFTPNoSuchFile:
            return []
        except asyncssh.SFTPPermissionDenied:
            self.list_errors += 1
            log.warning("cannot list %s on %s: permission denied", self._abs(rel), self.host)
            return []
        items = []
        for name in names:
            if name.filename in (".", ".."):
                continue
            mode = name.attrs.permissions or 0
            if statmod.S_ISDIR(mode):
                items.append(DirItem(name.filename, True, 0, 0.0))
            elif statmod.S_ISREG(mode):
                items.append(
                    DirItem(
                        name.filename, False, name.attrs.size or 0, float(name.attrs.mtime or 0)
                    )
                )
        self.listed += sum(1 for item in items if not item.is_dir)
        return items

    async def list(self, start_after: str | None = None) -> AsyncIterator[Entry]:
        async for entry in walk(self._listdir, start_after, self._skip):
            yield entry

    async def list_new(self, since: float, *, time_ordered: bool) -> AsyncIterator[Entry]:
        for entry in await walk_new(self._listdir, since, time_ordered, self._skip):
            yield entry

    async def stat(self, identifier: str) -> Entry | None:
        import asyncssh

        try:
            attrs = await self._sftp.stat(self._abs(identifier))
        except asyncssh.SFTPNoSuchFile:
            return None
        except asyncssh.SFTPPermissionDenied:
            raise Denied(f"{identifier}: permission denied") from None
        return Entry(identifier, attrs.size or 0, float(attrs.mtime or 0))

    async def read(self, entry: Entry, limit: int | None = None) -> bytes:
        import asyncssh

        try:
            async with self._sftp.open(self._abs(entry.identifier), "rb") as fh:
                data: bytes = await fh.read(-1 if limit is None else limit)
        except asyncssh.SFTPNoSuchFile:
            raise Vanished(f"{entry.identifier}: no longer there") from None
        except asyncssh.SFTPPermissionDenied:
            raise Denied(f"{entry.identifier}: permission denied") from None
        except asyncssh.SFTPError as exc:
            raise ItemError(f"{entry.identifier}: {exc.reason}") from None
        return data

    async def _move(self, src: str, dest: str, label: str) -> None:
        import asyncssh

        try:
            try:
                await self._sftp.posix_rename(src, dest)
            except asyncssh.SFTPOpUnsupported:
                await self._sftp.rename(src, dest)
        except asyncssh.SFTPNoSuchFile:
            raise Vanished(f"{label}: no longer there") from None
        except asyncssh.SFTPPermissionDenied:
            raise Denied(f"{label}: permission denied") from None
        except asyncssh.SFTPFailure:
            # Most likely another filesystem: copy on the remote side, then remove.
            try:
                await self._sftp.copy(src, dest + ".part", preserve=True)
                await self._sftp.posix_rename(dest + ".part", dest)
                await self._sftp.remove(src)
            except asyncssh.SFTPError as exc:
                raise ItemError(f"{label}: cannot move to {dest}: {exc.reason}") from None

    def quarantine_location(self, name: str) -> str:
        return posixpath.join(self.quarantine_dir, name)

    async def quarantine(self, identifier: str, name: str) -> str:
        import asyncssh

        qdir = self.quarantine_dir
        try:
            await self._sftp.makedirs(
                qdir, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True
            )
            await self._sftp.chmod(qdir, 0o700)
        except asyncssh.SFTPError as exc:
            raise ItemError(
                f"cannot prepare quarantine {qdir} on {self.host}: {exc.reason}"
            ) from None
        dest = self.quarantine_location(name)
        await self._move(self._abs(identifier), dest, identifier)
        return dest

    async def restore(self, location: str, identifier: str) -> None:
        import asyncssh

        target = self._abs(identifier)
        if await self._sftp.exists(target):
            raise ItemError(f"{target} exists already on {self.host}; not overwriting it")
        try:
            await self._sftp.makedirs(posixpath.dirname(target), exist_ok=True)
        except asyncssh.SFTPError as exc:
            raise ItemError(f"cannot create {posixpath.dirname(target)}: {exc.reason}") from None
        await self._move(location, target, location)

    async def delete(self, identifier: str) -> None:
        import asyncssh

        try:
            await self._sftp.remove(self._abs(identifier))
        except asyncssh.SFTPNoSuchFile:
            raise Vanished(f"{identifier}: no longer there") from None
        except asyncssh.SFTPPermissionDenied:
            raise Denied(f"{identifier}: permission denied") from None
