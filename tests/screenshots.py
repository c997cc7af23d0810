"""The docs' pictures, taken by the suite's Chromium (Debian's package, driven by Playwright):
the review page, the policy dry-run report, and the Grafana dashboard's panels drawn from a
real Prometheus scraping a service under load.

    make screenshots            (python -m tests.screenshots docs/images)

tests/integration/test_screenshots.py runs the same code into a temporary directory, so the
pictures can always be made again; nobody edits them by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import math
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from horde_scanner.backends.mock import MockBackend
from horde_scanner.media.hashing import sha256_hex
from horde_scanner.store.sqlite import Store
from horde_scanner.testing import images
from horde_scanner.testing.horde import FakeHorde
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.prometheus import (
    DASHBOARD,
    query_range,
    running_prometheus,
    wait_for_scrapes,
)
from horde_scanner.testing.service import make_settings, running_service
from tests.admin_helpers import admin_settings
from tests.integration.test_admin_page import CHROMIUM, CHROMIUM_ARGS, _log_in

VIEWPORT = {"width": 1280, "height": 900}
ROOT = Path(__file__).resolve().parent.parent
NAMES = ("review.png", "policy-dry-run.png", "metrics.png")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def review_page(browser: Any, workdir: Path, out: Path) -> Path:
    """The review queue with a few undecided positives, one of them held in quarantine."""
    settings = admin_settings(workdir, admin={"previews": True})
    async with (
        running_service(settings, backend=MockBackend()) as svc,
        aiohttp.ClientSession() as http,
    ):
        held = images.jpeg("red", size=(400, 300), seed=4001)
        for data in (held, images.jpeg("red", seed=4002), images.jpeg("magenta", seed=4003)):
            await validate_upload(http, svc.scan_url(), data, "image/jpeg")
        stored_at = workdir / "pictrs" / "files" / "upload.jpg"
        stored_at.parent.mkdir(parents=True, exist_ok=True)
        stored_at.write_bytes(held)
        await svc.parts.quarantine.admit_file(sha256_hex(held), stored_at, origin="local")
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        await _log_in(page, svc.url)
        await page.locator("#positives").wait_for()
        await page.screenshot(path=str(out), full_page=True)
        await context.close()
    return out


async def policy_page(browser: Any, workdir: Path, out: Path) -> Path:
    """The dry run of the bundled policy against a history judged by the previous one."""
    from tests.policy_history import fill

    settings = admin_settings(workdir)
    async with await Store.open(settings.store.path) as store:
        await fill(store)
    candidate = ROOT / "horde_scanner" / "data" / "policy.toml"
    async with running_service(settings, backend=MockBackend()) as svc:
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        await _log_in(page, svc.url)
        await page.click("header a[href='/admin/policy']")
        await page.set_input_files("input[name=policy]", str(candidate))
        await page.click("#policy-diff")
        await page.locator("#policy-summary").wait_for()
        await page.screenshot(path=str(out), full_page=True)
        await context.close()
    return out


# --- the metrics view: the dashboard's panels, queried from a real Prometheus ---------------


async def _load(svc: Any, http: aiohttp.ClientSession, seconds: float) -> None:
    """Uploads as a small instance sees them: mostly repeats (cache hits), some new images
    (the AI Horde judges them, a few after the deadline), a few positives, one sweep."""
    rng = random.Random(7)
    seen: list[bytes] = [images.jpeg("green", seed=5000 + i) for i in range(20)]
    sweep = svc.parts.sweeps.start("local:/srv/pictrs/files", total=int(seconds * 4))
    tasks: set[asyncio.Task[Any]] = set()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        roll = rng.random()
        if roll < 0.65:
            data = rng.choice(seen)
        else:
            colour = "red" if roll < 0.68 else "magenta" if roll < 0.72 else "blue"
            data = images.jpeg(colour, seed=6000 + n)
            seen.append(data)
        task = asyncio.create_task(validate_upload(http, svc.scan_url(), data, "image/jpeg"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if n % 3 == 0:
            sweep.advance(1, label="clean")
        await asyncio.sleep(rng.uniform(0.05, 0.25))
    await asyncio.gather(*tasks, return_exceptions=True)


def _format(value: float, unit: str | None) -> str:
    if math.isnan(value) or math.isinf(value):
        return "–" if math.isnan(value) else "∞"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit or "", "")
    text = f"{value:.2f}" if abs(value) < 10 and value != int(value) else f"{value:.0f}"
    return text + suffix


def _legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    for key, value in labels.items():
        fmt = fmt.replace("{{" + key + "}}", value)
    return fmt


PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a"]


def _colour_for(value: float, defaults: dict[str, Any]) -> str:
    steps = defaults.get("thresholds", {}).get("steps")
    if not steps:
        return "#73bf69"
    colour = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            colour = step["color"]
    return {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c"}.get(colour, colour)


def _stat(panel: dict[str, Any], series: list[tuple[str, list[tuple[float, float]]]]) -> str:
    defaults = panel["fieldConfig"]["defaults"]
    parts = []
    for name, points in series:
        values = [v for _, v in points if not math.isnan(v)]
        value = values[-1] if values else float("nan")
        text = _format(value, defaults.get("unit"))
        for mapping in defaults.get("mappings", []):
            options = mapping.get("options", {})
            if not math.isnan(value) and str(int(value)) in options:
                text = options[str(int(value))]["text"]
        colour = _colour_for(value, defaults) if not math.isnan(value) else "#8e8e8e"
        label = f'<div class="sub">{html.escape(name)}</div>' if len(series) > 1 else ""
        parts.append(f'<div class="stat" style="color:{colour}">{html.escape(text)}{label}</div>')
    return '<div class="stats">' + ("".join(parts) or '<div class="stat">No data</div>') + "</div>"


def _timeseries(
    panel: dict[str, Any], series: list[tuple[str, list[tuple[float, float]]]], w: int, h: int
) -> str:
    unit = panel["fieldConfig"]["defaults"].get("unit")
    finite = [v for _, pts in series for _, v in pts if math.isfinite(v)]
    times = [t for _, pts in series for t, _ in pts]
    if not finite or not times:
        return '<div class="nodata">No data</div>'
    lo, hi = min(0.0, min(finite)), max(finite)
    hi = hi if hi > lo else lo + 1
    t0, t1 = min(times), max(times)
    t1 = t1 if t1 > t0 else t0 + 1
    left, right, top, bottom = 64, 8, 6, 20
    pw, ph = w - left - right, h - top - bottom

    def xy(t: float, v: float) -> str:
        return f"{left + (t - t0) / (t1 - t0) * pw:.1f},{top + (1 - (v - lo) / (hi - lo)) * ph:.1f}"

    svg = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = top + (1 - i / 4) * ph
        svg.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        svg.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_format(v, unit)}</text>'
        )
    for i in range(4):
        t = t0 + (t1 - t0) * i / 3
        stamp = time.strftime("%H:%M:%S", time.gmtime(t))
        anchor = ("start", "middle", "middle", "end")[i]
        svg.append(
            f'<text x="{left + pw * i / 3:.1f}" y="{h - 4}" text-anchor="{anchor}">{stamp}</text>'
        )
    legend = []
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(xy(t, v) for t, v in pts if math.isfinite(v))
        if path:
            svg.append(f'<polyline points="{path}" stroke="{colour}" class="line"/>')
        legend.append(f'<span><i style="background:{colour}"></i>{html.escape(name)}</span>')
    svg.append("</svg>")
    return "".join(svg) + '<div class="legend">' + "".join(legend) + "</div>"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; background: #111217; color: #ccccdc; font: 13px/1.3 sans-serif; }}
header {{ padding: 10px 16px; font-size: 17px; color: #fff; border-bottom: 1px solid #2c3235; }}
header small {{ color: #8e8e8e; font-size: 12px; margin-left: 12px; }}
.grid-area {{ position: relative; margin: 8px; width: {width}px; height: {height}px; }}
.panel {{ position: absolute; background: #181b1f; border: 1px solid #2c3235; border-radius: 2px;
          box-sizing: border-box; overflow: hidden; }}
.panel h2 {{ margin: 0; padding: 6px 8px; font-size: 13px; font-weight: 500; color: #fff; }}
.stats {{ display: flex; justify-content: space-around; align-items: center;
          height: calc(100% - 32px); }}
.stat {{ font-size: 30px; font-weight: 500; text-align: center; }}
.stat .sub {{ font-size: 11px; color: #8e8e8e; }}
svg text {{ fill: #8e8e8e; font-size: 10px; }}
svg .grid {{ stroke: #2c3235; }}
svg .line {{ fill: none; stroke-width: 1.6; }}
.legend {{ padding: 2px 8px; font-size: 11px; }}
.legend span {{ margin-right: 12px; white-space: nowrap; }}
.legend i {{ display: inline-block; width: 12px; height: 3px; margin: 0 4px 3px 0; }}
.nodata {{ color: #8e8e8e; text-align: center; margin-top: 40px; }}
</style></head><body><header>{title}<small>{subtitle}</small></header>
<div class="grid-area">{panels}</div></body></html>"""


async def dashboard_html(http: aiohttp.ClientSession, prom: str, start: float, end: float) -> str:
    dash = json.loads(DASHBOARD.read_text())
    col, row = 1264 / 24, 30
    out = []
    bottom = 0
    step = max(1.0, (end - start) / 120)
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"] * col, grid["y"] * row, grid["w"] * col - 6, grid["h"] * row - 6
        bottom = max(bottom, y + h)
        series = []
        for target in panel["targets"]:
            expr = target["expr"].replace("$instance", ".*")
            for result in await query_range(http, prom, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]]
                series.append((_legend(target.get("legendFormat", ""), result["metric"]), points))
        body = (
            _stat(panel, series)
            if panel["type"] == "stat"
            else _timeseries(panel, series, int(w) - 2, int(h) - 60)
        )
        out.append(
            f'<div class="panel" style="left:{x:.0f}px;top:{y:.0f}px;width:{w:.0f}px;'
            f'height:{h:.0f}px"><h2>{html.escape(panel["title"])}</h2>{body}</div>'
        )
    since, until = (
        time.strftime("%H:%M", time.gmtime(start)),
        time.strftime("%H:%M", time.gmtime(end)),
    )
    subtitle = f"deploy/grafana/{DASHBOARD.name}, queried from Prometheus · {since}–{until} UTC"
    return PAGE.format(
        width=1264, height=int(bottom) + 8, title=html.escape(dash["title"]),
        subtitle=html.escape(subtitle), panels="".join(out),
    )  # fmt: skip


async def metrics_view(browser: Any, workdir: Path, out: Path, load_s: float) -> Path:
    rng = random.Random(11)
    async with FakeHorde(latency=lambda: rng.uniform(0.4, 5.0)) as horde:
        settings = make_settings(
            workdir / "metrics.db",
            horde.url,
            # Under the 4 s latency bucket: answered at the deadline reads as <= 4 s, not 6.
            validation={"deadline_s": 3.8},
            horde={"max_kudos_per_day": 2000.0, "performance_interval_s": 2.0},
        )
        horde.extra_queued_forms = 40
        async with running_service(settings) as svc, aiohttp.ClientSession() as http:
            target = svc.url.removeprefix("http://")
            async with running_prometheus([target], workdir / "prometheus") as prom:
                await wait_for_scrapes(http, prom, count=2)
                start = time.time()
                await _load(svc, http, load_s)
                await asyncio.sleep(3)  # the last scrapes
                page_html = await dashboard_html(http, prom, start, time.time())
    context = await browser.new_context(viewport={"width": 1290, "height": 800})
    page = await context.new_page()
    await page.set_content(page_html)
    await page.screenshot(path=str(out), full_page=True)
    await context.close()
    return out


def _mkdirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


async def take_all(out_dir: Path, *, load_s: float = 90.0) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="hs-shots-") as tmp:
        work = Path(tmp)
        _mkdirs(out_dir, work / "review", work / "policy")
        async with chromium() as browser:
            return [
                await review_page(browser, work / "review", out_dir / NAMES[0]),
                await policy_page(browser, work / "policy", out_dir / NAMES[1]),
                await metrics_view(browser, work / "metrics", out_dir / NAMES[2], load_s),
            ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=ROOT / "docs" / "images")
    parser.add_argument("--load-s", type=float, default=90.0, help="seconds of load for metrics")
    args = parser.parse_args()
    for path in asyncio.run(take_all(args.out_dir, load_s=args.load_s)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
