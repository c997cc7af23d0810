"""`horde-scanner config ...`: the configuration in effect (and where each value came from),
a file checked without starting anything, and the generated reference page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, SecretStr

from horde_scanner import config_reference as reference
from horde_scanner.cli.common import EXIT_ERROR
from horde_scanner.config import ConfigError, Settings, load_settings, value_sources

MASK = "********"
# The password in a URL's user information (postgresql://user:password@host/db).
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)([^@]*)(@)", re.I)


@click.group()
def config() -> None:
    """Show the configuration in effect, check a file, write the reference page."""


def _db_override(db: str | None) -> dict[str, Any]:
    if db is None:
        return {}
    if "://" in db:
        return {"store": {"url": db}}
    return {"store": {"path": db, "url": None}}


def _masked(value: Any, secret: bool) -> Any:
    """A value as `config show` prints it: secrets masked, a URL's password masked."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, BaseModel):
        return {
            name: _masked(getattr(value, name), reference.secret_name(name))
            for name in type(value).model_fields
        }
    if isinstance(value, list):
        return [_masked(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: _masked(v, secret) for k, v in value.items()}
    if value is None:
        return None
    if secret:
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m[1] + MASK + m[3], value)
    return value


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per option, one a line.")
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Print the configuration in effect, secrets masked, with where each value came from
    (default, config file, .env, env, command line)."""
    config_file: Path | None = ctx.obj["config_file"]
    db: str | None = ctx.obj["db"]
    settings = load_settings(config_file, **_db_override(db))
    origins = value_sources(config_file)
    if db is not None:
        origins[("store", "url")] = origins[("store", "path")] = "command line --db"
    section = None
    for opt in reference.all_options(Settings):
        if "[]" in opt.path:
            continue  # items of a list of tables: shown with the list itself
        value: Any = settings
        for part in opt.path:
            value = getattr(value, part)
        shown = _masked(value, opt.secret)
        origin = origins.get(opt.path, "default")
        if as_json:
            click.echo(json.dumps({"key": opt.key, "value": _jsonable(shown), "from": origin,
                                   "env": opt.env}))  # fmt: skip
            continue
        if opt.table != section:
            section = opt.table
            if section:
                click.echo(f"\n{section}")
        name = opt.path[-1]
        if shown is None:
            click.echo(f"# {name} = (unset)  # {origin}")
        else:
            click.echo(f"{name} = {reference.toml_value(shown)}  # {origin}")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def check(ctx: click.Context, file: Path) -> None:
    """Validate a TOML configuration FILE without starting anything: as `--config FILE` would
    load it (the environment and .env included). A bad key or value is named, with why."""
    try:
        settings = load_settings(file)
        origins = value_sources(file)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        ctx.exit(EXIT_ERROR)
    problems = _referenced_files(settings)
    if problems:
        click.echo("invalid configuration:\n  " + "\n  ".join(problems), err=True)
        ctx.exit(EXIT_ERROR)
    from_file = sum(1 for origin in origins.values() if origin.startswith("config file"))
    others = len(origins) - from_file
    tail = f"; {others} more from the environment and .env" if others else ""
    click.echo(f"{file}: valid ({from_file} options set in the file{tail})")


def _referenced_files(settings: Settings) -> list[str]:
    """Files the configuration names that start-up reads: checked here too."""
    problems = []
    if settings.policy.path is not None:
        from horde_scanner.policy.rules import Policy, PolicyError

        try:
            Policy.load(settings.policy.path)
        except PolicyError as exc:
            problems.append(f"policy.path: {exc}")
    return problems


@config.command("reference")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the page here instead of printing it.")  # fmt: skip
@click.option("--check", "check_only", is_flag=True,
              help="Exit 1 when the page at --output is stale, writing nothing.")  # fmt: skip
def reference_page(output: Path | None, check_only: bool) -> None:
    """The configuration reference (docs/reference/configuration.md), generated from the
    Settings models: every option with its type, default, environment variable, TOML key and
    description."""
    missing = reference.missing_descriptions(Settings)
    if missing:
        raise click.ClickException("options without a description: " + ", ".join(missing))
    text = reference.render(Settings)
    if output is None:
        click.echo(text, nl=False)
        return
    current = output.read_text() if output.is_file() else None
    if check_only:
        if current != text:
            raise click.ClickException(f"{output} is stale: run `make config-reference`")
        return
    if current != text:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(f"{output} is up to date")
