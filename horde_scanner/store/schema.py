"""The store's schema: brought to the newest Alembic revision (store/migrations/) when a store
opens and by `horde-scanner store upgrade`.

    new store ─────────────────────────────► upgrade to head (0001_baseline, then the rest)
    store of the first releases (0.1):
      schema_migrations holds every step ──► stamp 0001_baseline ──► upgrade to head
      schema_migrations holds some steps ──► StoreError: finish them with 0.1 first
      schema_migrations holds unknown steps► StoreError: written by a newer release
    alembic_version at a revision we lack ─► StoreError: written by a newer horde-scanner

It runs in one transaction that holds the database's lock for migrations, so processes and
replicas starting together apply each revision once: SQLite's write lock (BEGIN IMMEDIATE,
waited for up to the busy timeout), PostgreSQL's advisory lock (DDL is transactional there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

from horde_scanner.store.database import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001_baseline"
# The schema steps of the first releases (0.1, up to commit 2fa284f), all of which the
# baseline revision stands for.
LEGACY_STEPS = (
    "0001-core",
    "0300-scan",
    "0500-hashes",
    "0700-admin",
    "0710-hash-entries-added",
    "1100-horde-kudos",
    "1300-verdict-route",
    "1500-replicas",
    "2000-horde-requests",
    "2300-provenance",
    "2400-embeddings",
)
# Kept by the store itself, outside the metadata: the first releases' record of schema steps
# (read to stamp an old store at the baseline; left in place so nothing of it is lost).
KEPT_OUTSIDE = frozenset({"schema_migrations", "sqlite_sequence"})
_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('horde_scanner:migrate'))"


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """What Alembic compares: everything but the tables kept outside the metadata."""
    return not (type_ == "table" and name in KEPT_OUTSIDE)


def _differences(connection: sa.Connection) -> list[Any]:
    from alembic.autogenerate import compare_metadata

    from horde_scanner.store.metadata import all_tables

    context = MigrationContext.configure(
        connection, opts={"include_name": include_name, "compare_type": True}
    )
    return list(compare_metadata(context, all_tables()))


async def differences(conn: AsyncConnection) -> list[Any]:
    """Where the database on `conn` and the tables the parts declare disagree (Alembic's
    autogenerate comparison); empty when the revisions made exactly what the metadata says."""
    return await conn.run_sync(_differences)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    return str(ScriptDirectory.from_config(alembic_config()).get_current_head())


def _upgrade(connection: sa.Connection, where: str) -> list[str]:
    """Bring the schema on `connection` (inside the caller's transaction) to head; the
    revisions applied."""
    config = alembic_config(connection)
    scripts = ScriptDirectory.from_config(config)
    tables = set(sa.inspect(connection).get_table_names())
    current = MigrationContext.configure(connection).get_current_heads()
    if current:
        unknown = [rev for rev in current if not _known(scripts, rev)]
        if unknown:
            raise StoreError(
                f"store {where} was written by a newer horde-scanner (schema revision"
                f" {', '.join(unknown)}); upgrade horde-scanner"
            )
    elif "schema_migrations" in tables:
        _stamp_legacy(connection, config, where)
    before = set(MigrationContext.configure(connection).get_current_heads())
    command.upgrade(config, "head")
    after = MigrationContext.configure(connection).get_current_heads()
    if set(after) == before:
        return []
    return [
        script.revision
        for script in scripts.iterate_revisions(after[0], next(iter(before), None) or "base")
        if script.revision not in before
    ][::-1]


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except Exception:  # alembic's "Can't locate revision"
        return False


def _stamp_legacy(connection: sa.Connection, config: Config, where: str) -> None:
    applied = {str(r[0]) for r in connection.exec_driver_sql("SELECT name FROM schema_migrations")}
    unknown = sorted(applied - set(LEGACY_STEPS))
    if unknown:
        raise StoreError(
            f"store {where} was written by a newer horde-scanner (schema steps"
            f" {', '.join(unknown)}); upgrade horde-scanner"
        )
    missing = [step for step in LEGACY_STEPS if step not in applied]
    if missing and applied:
        raise StoreError(
            f"store {where} was left by horde-scanner 0.1 without its schema steps"
            f" {', '.join(missing)}: start horde-scanner 0.1 (commit 2fa284f) on it once so"
            " that it finishes them, then this version upgrades it"
        )
    if applied:
        command.stamp(config, BASELINE)


async def upgrade(conn: AsyncConnection, where: str) -> list[str]:
    """Bring the store on `conn` (an autocommit connection of its own) to the newest
    revision, under the migration lock; the revisions applied."""
    postgres = conn.dialect.name == "postgresql"
    await conn.exec_driver_sql("BEGIN" if postgres else "BEGIN IMMEDIATE")
    try:
        if postgres:
            await conn.exec_driver_sql(_PG_LOCK)
        applied = await conn.run_sync(_upgrade, where)
    except BaseException:
        await conn.exec_driver_sql("ROLLBACK")
        raise
    await conn.exec_driver_sql("COMMIT")
    if applied:
        log.info("store %s: schema revisions applied: %s", where, ", ".join(applied))
    return applied
