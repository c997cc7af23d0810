"""A subscribed source serving hostile lists (a gzip bomb of `0`s, a quarter gigabyte of junk
rows) costs the service little memory: the real service in its own process, so that its peak
RSS is its own, and a source over loopback."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from horde_scanner.testing.net import free_port, wait_port
from horde_scanner.testing.server import AppServer
from tests.proc import start_cli

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
# The target; the service idles near 100 MB.
RSS_BOUND_MB = 400


def _gzip(pieces: Iterator[bytes]) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [packer.compress(piece) for piece in pieces]
    out.append(packer.flush())
    return b"".join(out)


def zeros_json(size: int) -> bytes:
    """A valid JSON array of `0`s, `size` bytes long, gzipped."""
    block = b"0," * (MIB // 2)

    def pieces() -> Iterator[bytes]:
        yield b"["
        for _ in range(size // MIB - 1):
            yield block
        yield b"0," * (MIB // 2 - 1) + b"0]"

    return _gzip(pieces())


def junk_csv(size: int) -> bytes:
    """A CSV list with a good header and `size` bytes of rows that are all wrong, gzipped."""
    row = b"pdq,not-a-hash-at-all,csam,junk.example,yesterday,junk\n"
    block = row * (MIB // len(row))

    def pieces() -> Iterator[bytes]:
        yield b"signal,value,label,source,first_seen,note\n"
        for _ in range(size // len(block)):
            yield block

    return _gzip(pieces())


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_hostile_lists_keep_the_service_small(tmp_path: Path):
    bodies = {
        "zeros": (await asyncio.to_thread(zeros_json, 64 * MIB), "application/json"),
        "junk": (await asyncio.to_thread(junk_csv, 255 * MIB), "text/csv"),
    }
    assert len(bodies["zeros"][0]) < 128 * 1024

    async def serve(request: web.Request) -> web.Response:
        body, content_type = bodies[request.match_info["name"]]
        return web.Response(
            body=body, headers={"Content-Type": content_type, "Content-Encoding": "gzip"}
        )

    source = web.Application()
    source.router.add_get("/{name}", serve)
    server = AppServer(source)
    base = await server.start()
    port = free_port()
    db = tmp_path / "s.db"
    config = tmp_path / "scanner.toml"
    subs = "".join(
        f'[[hashes.subscriptions]]\nname = "{name}"\nurl = "{base}/{name}"\nrefresh_s = 3600\n'
        for name in bodies
    )
    config.write_text(
        f'[store]\npath = "{db}"\n[server]\nport = {port}\nclient_ids = ["x"]\n'
        f'[horde]\nurl = "http://127.0.0.1:{free_port()}/api"\n{subs}'
    )
    env = {**os.environ, "HORDE_SCANNER_CONFIG": str(config)}
    proc = await start_cli(
        ["serve"],
        env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    log = asyncio.create_task(proc.stderr.read())  # type: ignore[union-attr]
    try:
        await asyncio.to_thread(wait_port, port)
        start_mb = _peak_rss_mb(proc.pid)

        def states() -> dict[str, tuple[str | None, int]]:
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "SELECT name, last_error, bytes_fetched FROM hash_subscriptions"
                    " WHERE last_checked IS NOT NULL"
                ).fetchall()
            return {r[0]: (r[1], r[2]) for r in rows}

        for _ in range(600):
            found = await asyncio.to_thread(states)
            if len(found) == len(bodies):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"subscriptions not refreshed: {found}")
        peak_mb = _peak_rss_mb(proc.pid)
        print(f"\nservice RSS: {start_mb:.0f} MB at start, peak {peak_mb:.0f} MB after the lists")
        print({name: error for name, (error, _) in found.items()})
        assert peak_mb < RSS_BOUND_MB

        # Both refused as a whole, with a description that carries none of their words.
        for error, _ in found.values():
            assert error is not None and error.startswith("more than 1000000 rows"), error
            assert "(HTTP 200, " in error
            assert "0,0" not in error and "junk" not in error and "yesterday" not in error
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "horde_scanner.cli", "hashes", "subscriptions"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert "zeros: 0 entries" in shown.stdout and "max_list_rows" in shown.stdout
        assert "junk.example" not in shown.stdout and "yesterday" not in shown.stdout
        assert "0,0" not in shown.stdout
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        err = await log
        await server.stop()
    assert b"junk.example" not in err and b"yesterday" not in err  # nor in the log
