"""Long reads on PostgreSQL: the hash index loaded from a shared store, streamed through a
server-side cursor (`PgStream`, what `hash_index_rows` gets on `Store.aside()`) against the
same rows fetched whole (what every read did before), in the same run.

Run: .venv/bin/python -m bench.pg_long_read [--entries 300000]

Prints the Python memory each read peaks at (tracemalloc) and how long it takes. Needs
PostgreSQL (Debian `postgresql`); starts its own.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import tracemalloc
from collections.abc import Awaitable, Callable

from horde_scanner.signals.hash_list import HashEntry
from horde_scanner.store.sqlite import Store
from horde_scanner.testing.pg import PgServer

_QUERY = "SELECT value, origin FROM hash_entries WHERE signal='pdq'"


async def _measure(name: str, read: Callable[[], Awaitable[int]]) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    rows = await read()
    took = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<34} {rows:>9,} rows  peak {peak / 2**20:7.1f} MiB  {took:6.2f} s")


async def run(entries: int) -> None:
    server = PgServer().start()
    try:
        async with await Store.open(server.new_database()) as store:
            batch = [
                HashEntry("pdq", secrets.token_hex(32), "csam", "bench") for _ in range(entries)
            ]
            started = time.perf_counter()
            await store.add_hash_entries("bench", batch)
            print(f"{entries:,} PDQ entries written in {time.perf_counter() - started:.1f} s")
            del batch

            async def streamed() -> int:
                count = 0
                async for values, _ in store.hash_index_rows(min_quality=50):
                    count += len(values)
                return count

            async def whole() -> int:
                async with store.aside() as db:
                    rows = await db.execute_fetchall(_QUERY)
                values = [r[0] for r in rows]
                return len(values)

            await _measure("fetched whole (before)", whole)
            await _measure("streamed (hash_index_rows)", streamed)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=300_000)
    args = parser.parse_args()
    asyncio.run(run(args.entries))


if __name__ == "__main__":
    main()
