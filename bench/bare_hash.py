"""The floor for the cache-hit benchmark: a bare aiohttp handler that only reads the body and
hashes it (sha256), answering a small JSON body. bench.validate measures the service against it.

Run: .venv/bin/python -m bench.bare_hash --port PORT
"""

from __future__ import annotations

import argparse
import hashlib

from aiohttp import web


async def scan(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"sha256": hashlib.sha256(body).hexdigest(), "answer": "accept"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/api/v1/scan/{client_id}", scan)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
