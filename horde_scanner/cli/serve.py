"""`horde-scanner serve`: the validation service for pict-rs."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import click

from horde_scanner.cli.common import settings_of


@click.command()
@click.option("--host", default=None, help="Bind address (server.host).")
@click.option("--port", type=int, default=None, help="Port (server.port, default 14051).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the validation service for pict-rs."""
    from horde_scanner.service.serve import serve as serve_forever
    from horde_scanner.service.serving import is_child, supervise

    settings = settings_of(ctx)
    _return_big_buffers_to_the_os()
    host = host if host is not None else settings.server.host
    port = port if port is not None else settings.server.port
    if settings.server.processes > 1:
        sys.exit(supervise(settings))
    loop = _new_event_loop()
    try:
        loop.run_until_complete(serve_forever(settings, host, port, reuse_port=is_child()))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _return_big_buffers_to_the_os() -> None:
    """Upload bodies are large and short-lived. glibc raises its mmap threshold after the first
    such buffer is freed and then serves them from a heap that never shrinks; pinning the
    threshold keeps RSS near what is really in use after a burst.

    Pinned at 512 KiB, not glibc's starting 128 KiB: below the threshold a body's buffer comes
    from the heap and its pages are reused by the next request, above it each buffer is
    mapped afresh and faulted in page by page. At 128 KiB a 250 KB cache hit took 15-27 page
    faults, some 50 us of its ~400 us (bench.validate prints faults per hit); at 512 KiB none,
    and 1.2x the throughput. The price, measured with 1,000 such bodies arriving at once
    (Horde 30 s): peak RSS 565 MB instead of 591, but 565 MB instead of 509 kept after the
    burst. Bodies over 512 KiB are still mapped and given back whole.

    The heap's top is given back only past 16 MiB free (glibc trims at 128 KiB): every cache
    hit allocates and frees its body's chunks there, and trimming after each one made the next
    one fault its pages in again (about a third of a hit's CPU time in bench.validate). At most
    16 MiB more stay resident."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        m_mmap_threshold, m_trim_threshold = -3, -1
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(name)
            libc.mallopt(m_mmap_threshold, 512 * 1024)
            libc.mallopt(m_trim_threshold, 16 * 1024 * 1024)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    # uvloop roughly halves the per-request cost of the cache-hit path; asyncio works too.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
