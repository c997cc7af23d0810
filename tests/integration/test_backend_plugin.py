"""A new backend is one module plus its settings section: this module is that module. It
declares a backend and its options, registers the kind, and runs it through the real service
(configured from a TOML file, as an admin would), with nothing else in the code base edited:
uploads judged over loopback HTTP, its paths and own details in /readyz, its own figures on
/metrics, started with the store and closed at exit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from PIL import ImageStat
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from horde_scanner.backend_registry import register_backend, unregister_backend
from horde_scanner.backends.base import Backend, Readiness, gauge
from horde_scanner.backends.kinds import BuildContext
from horde_scanner.cli import main
from horde_scanner.config import ConfigError, Section, load_settings
from horde_scanner.media.decode import PreparedImage
from horde_scanner.testing import images
from horde_scanner.testing.pictrs import validate_upload
from horde_scanner.testing.service import CLIENT_ID, running_service
from horde_scanner.verdict import Signals

KIND = "tint"


class TintSettings(Section):
    """[backend.tint]: judges by colour (a stand-in for a real model)."""

    red_above: int = Field(200, ge=0, le=255, description="Mean red above this is nsfw.")
    caption: str = Field(
        "a photo of a young girl in a bedroom", description="The caption of an nsfw image."
    )


class TintBackend(Backend):
    name = KIND
    concurrency = 4

    def __init__(self, settings: TintSettings) -> None:
        self.settings = settings
        self.judged = 0
        self.started_with: object | None = None
        self.closed = False
        BUILT.append(self)

    async def start(self, store: object | None = None) -> None:
        self.started_with = store

    async def close(self) -> None:
        self.closed = True

    async def judge(self, image: PreparedImage) -> Signals:
        self.judged += 1
        r, g, b = ImageStat.Stat(image.image.convert("RGB")).mean
        if r > self.settings.red_above and g < 60 and b < 60:
            return Signals(backend=self.name, nsfw=True, caption=self.settings.caption)
        return Signals(backend=self.name, nsfw=False, caption="a landscape with trees")

    def readiness(self) -> Readiness:
        return Readiness(self.name, True, f"{self.judged} judged")

    def describe(self) -> dict[str, object]:
        return {"judged": self.judged, "red_above": self.settings.red_above}

    def metrics(self) -> Iterator[Metric]:
        yield gauge("tint_judged", "Images the tint backend judged.", self.judged)


def build_tint(ctx: BuildContext) -> Backend:
    section = ctx.section(KIND)
    assert isinstance(section, TintSettings)
    return TintBackend(section)


BUILT: list[TintBackend] = []


@pytest.fixture
def tint_registered() -> Iterator[None]:
    register_backend(KIND, build_tint, section=TintSettings, summary="judges by colour")
    BUILT.clear()
    try:
        yield
    finally:
        unregister_backend(KIND)


def _config(tmp_path: Path, tint: str | None) -> Path:
    path = tmp_path / "scanner.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "s.db"}"\n'
        f'[server]\nclient_ids = ["{CLIENT_ID}"]\n'
        "[validation]\ndeadline_s = 5.0\n"
        f'[backend]\nkind = "{KIND}"\n' + (f"[backend.{KIND}]\n{tint}" if tint is not None else "")
    )
    return path


async def _json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as resp:
        assert resp.status == 200
        body: dict = await resp.json()
        return body


async def test_a_backend_of_one_module_runs_through_the_service(
    tmp_path: Path, http: aiohttp.ClientSession, tint_registered: None
):
    settings = load_settings(_config(tmp_path, "red_above = 180\n"))
    assert settings.backend.kind == KIND
    async with running_service(settings) as svc:
        (backend,) = BUILT
        assert backend.settings.red_above == 180  # read from [backend.tint]
        assert backend.started_with is svc.parts.store
        red = images.jpeg("red", seed=71)
        green = images.jpeg("green", seed=72)
        rejected = await validate_upload(http, svc.scan_url(), red, "image/jpeg")
        assert rejected.status == 406, rejected.body
        assert rejected.body["label"] == "csam"
        accepted = await validate_upload(http, svc.scan_url(), green, "image/jpeg")
        assert accepted.status == 200, accepted.body
        assert accepted.body["label"] == "clean"
        assert backend.judged == 2

        ready = await _json(http, f"{svc.url}/readyz")
        assert ready["status"] == "ready"
        assert ready["backend"] == {"name": KIND, "live": True, "detail": "2 judged"}
        assert ready["paths"] == {KIND: {"live": True, "detail": "2 judged"}}
        # Its own details, under its name; nothing of the AI Horde's.
        assert ready[KIND] == {"judged": 2, "red_above": 180}
        assert "horde" not in ready

        async with http.get(f"{svc.url}/metrics") as resp:
            assert resp.status == 200
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(await resp.text())
                for s in family.samples
            }
        assert samples[("horde_scanner_tint_judged", ())] == 2
        assert samples[("horde_scanner_backend_up", (("backend", KIND),))] == 1
        judged = ("horde_scanner_judgements_total", (("backend", KIND), ("label", "csam")))
        assert samples[judged] == 1
        # Answered by this backend: the route is its name.
        route = (("answer", "reject"), ("label", "csam"), ("route", KIND))
        assert samples[("horde_scanner_answers_total", route)] == 1
        assert not any(name.startswith("horde_scanner_horde_") for name, _ in samples)
        assert not backend.closed
    assert backend.closed


def test_its_settings_section_is_checked_like_any_other(tmp_path: Path, tint_registered: None):
    with pytest.raises(ConfigError, match=r"backend\.tint\.red_abov.*did you mean 'red_above'"):
        load_settings(_config(tmp_path, "red_abov = 180\n"))
    with pytest.raises(ConfigError, match="red_above"):
        load_settings(_config(tmp_path, "red_above = 999\n"))


def test_an_unregistered_kind_is_refused_naming_the_known_ones(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown backend kind 'tint'; known: auto, horde"):
        load_settings(_config(tmp_path, None))
    # Its section is unknown too while the kind is not registered.
    with pytest.raises(ConfigError, match=r"unknown key 'backend\.tint'"):
        load_settings(_config(tmp_path, "red_above = 180\n"))


def test_config_show_and_check_see_its_section(tmp_path: Path, tint_registered: None):
    config = _config(tmp_path, "red_above = 180\n")
    runner = CliRunner()
    shown = runner.invoke(main, ["--config", str(config), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert f"[backend.{KIND}]\nred_above = 180  # config file {config}" in shown.output
    assert 'caption = "a photo of a young girl in a bedroom"  # default' in shown.output
    checked = runner.invoke(main, ["config", "check", str(config)])
    assert checked.exit_code == 0, checked.output
    assert "valid (5 options set in the file" in checked.output
