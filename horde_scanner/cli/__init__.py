"""`horde-scanner`: the click entry point. Each command group lives in a module of its own
(serve, check, verdicts, sweep, lists, hashes, embeddings, models, policy, worker, config,
lemmy); this one holds the global options and puts the groups together."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from pydantic import ValidationError

from horde_scanner import __version__
from horde_scanner.cli import check, lists, serve, sweep, verdicts, worker
from horde_scanner.cli.common import ErrorsToExitCodes
from horde_scanner.cli.config import config as config_group
from horde_scanner.cli.embeddings import embeddings as embeddings_group
from horde_scanner.cli.embeddings import models as models_group
from horde_scanner.cli.hashes import hashes as hashes_group
from horde_scanner.cli.lemmy import access_log_cmd, evidence
from horde_scanner.cli.lemmy import lemmy as lemmy_group
from horde_scanner.cli.policy import policy as policy_group
from horde_scanner.cli.store import store as store_group
from horde_scanner.config import StoreSettings, load_settings


@click.group(cls=ErrorsToExitCodes)
@click.version_option(__version__, prog_name="horde-scanner")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    envvar="HORDE_SCANNER_CONFIG",
    help="TOML configuration file (env HORDE_SCANNER_CONFIG).",
)
@click.option(
    "--db",
    default=None,
    help="Store: a SQLite file path or a store URL (overrides store.path / store.url).",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, db: str | None) -> None:
    """Keep CSAM (and optionally NSFW media) out of pict-rs storage, without a GPU."""
    if ctx.invoked_subcommand == "config":
        # `config show|check` load the settings themselves (and say where each value came
        # from); a broken configuration is what they are there to report.
        ctx.obj = {"config_file": config_file, "db": db}
        return
    settings = load_settings(config_file)
    if db is not None:
        if "://" in db:
            try:
                settings.store = StoreSettings.model_validate(
                    {**settings.store.model_dump(), "url": db}
                )
            except ValidationError as exc:
                raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--db") from None
        else:
            settings.store.path, settings.store.url = Path(db), None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every migration context at INFO; store/schema.py logs the one line that
    # matters (which revisions were applied).
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = {"settings": settings}


main.add_command(serve.serve)
main.add_command(check.check)
main.add_command(verdicts.verdicts)
main.add_command(lists.allow)
main.add_command(lists.deny)
main.add_command(sweep.scan)
main.add_command(sweep.apply)
main.add_command(sweep.release)
main.add_command(hashes_group)
main.add_command(embeddings_group)
main.add_command(models_group)
main.add_command(policy_group)
main.add_command(store_group)
main.add_command(worker.worker)
main.add_command(config_group)
main.add_command(lemmy_group)
main.add_command(evidence)
main.add_command(access_log_cmd)


if __name__ == "__main__":
    main()
