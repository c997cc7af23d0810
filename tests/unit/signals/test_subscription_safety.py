"""What a subscribed source can and cannot do: redirect us elsewhere, get its words into our
logs and CLI, or make us remember every one of its bad rows."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from horde_scanner.backends.mock import MockBackend
from horde_scanner.cli import main
from horde_scanner.signals.hash_list import HashEntry, dump_json, parse
from horde_scanner.testing.server import AppServer
from horde_scanner.testing.service import make_settings, running_service

GOOD = [HashEntry("sha256", "ab" * 32), HashEntry("sha256", "cd" * 32)]
SECRET = "hunter2-words-of-the-source"


class Source(AppServer):
    """A list server on loopback; each instance is its own origin (its own port)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.routes: dict[str, object] = {}

        async def dispatch(request: web.Request) -> web.StreamResponse:
            self.seen.append(dict(request.headers))
            handler = self.routes.get(request.path)
            if handler is None:
                raise web.HTTPNotFound()
            return await handler(request)  # type: ignore[operator]

        app = web.Application()
        app.router.add_get("/{tail:.*}", dispatch)
        super().__init__(app)

    def route(self, path: str, handler) -> None:
        self.routes[path] = handler

    def redirect(self, path: str, kind: type[web.HTTPRedirection], location: str) -> None:
        """`path` answers with a redirect (of that kind) to `location`."""

        async def away(request: web.Request) -> web.Response:
            raise kind(location)

        self.route(path, away)


def _list(request: web.Request) -> web.Response:
    return web.Response(text=dump_json(GOOD), content_type="application/json")


async def _good(request: web.Request) -> web.Response:
    return _list(request)


def settings(tmp_path: Path, url: str, **sub):
    return make_settings(
        tmp_path / "s.db",
        "http://127.0.0.1:9/api",
        hashes={
            "subscriptions": [
                {"name": "src", "url": url, "refresh_s": 3600, "token": "list-token-1", **sub}
            ]
        },
    )


async def _refresh(tmp_path: Path, url: str, **sub):
    config = settings(tmp_path, url, **sub)
    async with running_service(config, backend=MockBackend()) as svc:
        subscriber = svc.parts.subscriber
        outcome = await subscriber.refresh(config.hashes.subscriptions[0])
        state = await svc.parts.hashes.store.hash_subscription("src")
    return outcome, state


async def test_redirect_to_another_origin_is_refused(tmp_path: Path):
    async with Source() as home, Source() as elsewhere:
        elsewhere.route("/list", _good)
        home.redirect("/list", web.HTTPFound, f"{elsewhere.url}/list")
        outcome, state = await _refresh(tmp_path, f"{home.url}/list")
        assert outcome == "failed" and state.entries == 0
        assert "redirect to another origin" in state.last_error
        assert elsewhere.seen == []  # never asked


async def test_redirect_within_the_origin_is_followed(tmp_path: Path):
    async with Source() as home:
        home.route("/new", _good)
        home.redirect("/list", web.HTTPMovedPermanently, "/new")
        outcome, state = await _refresh(tmp_path, f"{home.url}/list")
        assert outcome == "changed" and state.entries == 2
        # (The service's own first refresh asks too: each refresh is two requests.)
        assert {h.get("Authorization") for h in home.seen} == {"Bearer list-token-1"}
        assert len(home.seen) >= 2


async def test_configured_redirect_origin_is_followed_without_the_token(tmp_path: Path):
    async with Source() as home, Source() as mirror:
        mirror.route("/list", _good)
        home.redirect("/list", web.HTTPTemporaryRedirect, f"{mirror.url}/list")
        outcome, state = await _refresh(tmp_path, f"{home.url}/list", redirect_origins=[mirror.url])
        assert outcome == "changed" and state.entries == 2
        assert {h.get("Authorization") for h in home.seen} == {"Bearer list-token-1"}
        assert mirror.seen and not any("Authorization" in h for h in mirror.seen)


@pytest.mark.parametrize(
    "body, content_type",
    [
        (f"<html><body>{SECRET}</body></html>", "text/html"),
        (f"{SECRET},more\n1,2\n", "text/csv"),  # a CSV header that is not ours
        (f'[{{"signal": "{SECRET}", "value": "00"}}]', "application/json"),  # rows all bad
        (f'{{"format": "{SECRET}", "entries": []}}', "application/json"),
    ],
)
async def test_a_bad_body_is_never_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str, content_type: str
):
    async with Source() as home:

        async def serve(request: web.Request) -> web.Response:
            return web.Response(text=body, content_type=content_type)

        home.route("/list", serve)
        with caplog.at_level(logging.INFO):
            outcome, state = await _refresh(tmp_path, f"{home.url}/list")
        assert outcome == "failed"
        assert f"HTTP 200, {content_type}, {len(body)} bytes" in state.last_error
        assert SECRET not in state.last_error
        assert SECRET not in caplog.text
        shown = await asyncio.to_thread(
            CliRunner().invoke, main, ["--db", str(tmp_path / "s.db"), "hashes", "subscriptions"]
        )
        assert shown.exit_code == 0 and "last problem" in shown.output
        assert SECRET not in shown.output


async def test_bad_rows_are_counted_and_only_some_remembered(tmp_path: Path, caplog):
    rows = [{"signal": "pdq", "value": SECRET}] * 500 + [e.record() for e in GOOD]
    async with Source() as home:

        async def serve(request: web.Request) -> web.Response:
            return web.json_response(rows)

        home.route("/list", serve)
        with caplog.at_level(logging.INFO):
            outcome, state = await _refresh(tmp_path, f"{home.url}/list")
    assert outcome == "changed" and state.entries == 2 and state.skipped == 500
    assert "skipped 500 bad rows (first at line 1)" in caplog.text
    assert SECRET not in caplog.text


def test_import_lists_the_first_errors_and_counts_the_rest(tmp_path: Path):
    listing = tmp_path / "list.csv"
    good = "pdq," + "f" * 64 + ",csam,,,\n"
    listing.write_text("signal,value,label,source,first_seen,note\n" + "md5,00,,,,\n" * 150 + good)
    result = CliRunner().invoke(
        main, ["--db", str(tmp_path / "s.db"), "hashes", "import", str(listing)]
    )
    assert result.exit_code == 1
    assert "imported 1 entries" in result.output and "skipped 150 rows" in result.output
    assert result.output.count("unknown signal type") == 100
    assert "50 more bad rows (not listed)" in result.output
    # Published as the admin's own entry: who added it and when.
    exported = CliRunner().invoke(
        main, ["--db", str(tmp_path / "s.db"), "hashes", "export", "--format", "json"]
    )
    (entry,) = parse(exported.output)[0]
    assert entry.confirmed_by == "cli:import" and entry.confirmed_at is not None


def test_a_list_with_too_many_rows_is_refused(tmp_path: Path):
    listing = tmp_path / "list.json"
    listing.write_text("[" + ",".join(["0"] * 20) + "]")
    result = CliRunner().invoke(
        main,
        ["--db", str(tmp_path / "s.db"), "hashes", "import", str(listing)],
        env={"HORDE_SCANNER_HASHES__MAX_LIST_ROWS": "10"},
    )
    assert result.exit_code == 2 and "more than 10 rows" in result.output
