"""SQLite stores of the first releases, made like new ones: primary key columns NOT NULL and
unique constraints named.

The first releases' schema steps wrote `TEXT PRIMARY KEY` (which SQLite, unlike every other
database, lets hold NULL) and unnamed `UNIQUE (...)` constraints; the baseline (like the
metadata) declares the keys NOT NULL and names every constraint. A store stamped at the
baseline from those steps has its affected tables rebuilt here (batch mode: copy, drop,
rename; indexes kept, triggers made again). A store the baseline made, and every PostgreSQL
store (where both were always so), is left as it is.

Revision ID: 0002_sqlite_legacy_keys
Revises: 0001_baseline
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sqlite_legacy_keys"
down_revision: str | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAMING = {
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "pk": "%(table_name)s_pkey",
}
# Tables whose ids count on (SQLite's AUTOINCREMENT: an id is never used twice).
AUTOINCREMENT = {
    "audit", "horde_submits", "scan_runs", "scan_actions", "quarantine", "lemmy_actions",
    "verdict_embeddings", "embedding_entries",
}  # fmt: skip
# The first releases' unnamed CHECK constraints (batch mode leaves unnamed ones out of a
# rebuilt table): named as the baseline names them.
CHECKS = {
    "lists": ("kind", "kind IN ('allow', 'deny')"),
    "hash_generation": ("id", "id = 1"),
    "provenance": ("state", "state IN ('pending', 'resolved', 'no_alias')"),
    "hash_entries": ("signal", "signal IN ('sha256', 'pdq')"),
    "quarantine": ("state", "state IN ('held', 'released', 'deleted')"),
    "lemmy_actions": ("state", "state IN ('done', 'failed')"),
}
# The hash generation triggers (on lists and verdicts, updating hash_generation): dropped
# while tables are rebuilt (SQLite checks them on every rename), then made as the baseline
# makes them.
TRIGGERS = {
    "lists": [
        f"CREATE TRIGGER hashgen_lists_{event.lower()} AFTER {event} ON lists"
        " BEGIN UPDATE hash_generation SET n = n + 1; END"
        for event in ("INSERT", "UPDATE", "DELETE")
    ],
    "verdicts": [
        "CREATE TRIGGER hashgen_verdicts_insert AFTER INSERT ON verdicts"
        " WHEN NEW.label = 'csam' AND NEW.route != 'match'"
        " BEGIN UPDATE hash_generation SET n = n + 1; END",
        "CREATE TRIGGER hashgen_verdicts_update AFTER UPDATE OF label, route ON verdicts"
        " WHEN (OLD.label = 'csam' AND OLD.route != 'match')"
        " OR (NEW.label = 'csam' AND NEW.route != 'match')"
        " BEGIN UPDATE hash_generation SET n = n + 1; END",
        "CREATE TRIGGER hashgen_verdicts_delete AFTER DELETE ON verdicts"
        " WHEN OLD.label = 'csam' AND OLD.route != 'match'"
        " BEGIN UPDATE hash_generation SET n = n + 1; END",
    ],
}


def _needs_rebuild(inspector: sa.Inspector, table: str) -> list[Any]:
    """The primary key columns that accept NULL; [] also when only a unique constraint is
    unnamed (then the table is rebuilt all the same: see upgrade)."""
    keys = set(inspector.get_pk_constraint(table)["constrained_columns"])
    return [c for c in inspector.get_columns(table) if c["name"] in keys and c["nullable"]]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    inspector = sa.inspect(bind)
    rebuild = []
    for table in inspector.get_table_names():
        if table in ("alembic_version", "schema_migrations", "sqlite_sequence"):
            continue
        nullable_keys = _needs_rebuild(inspector, table)
        unnamed = [u for u in inspector.get_unique_constraints(table) if not u.get("name")]
        if nullable_keys or unnamed:
            rebuild.append((table, nullable_keys))
    if not rebuild:
        return
    for name in ("lists_insert", "lists_update", "lists_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS hashgen_{name}")
    for name in ("verdicts_insert", "verdicts_update", "verdicts_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS hashgen_{name}")
    for table, nullable_keys in rebuild:
        kwargs = {"sqlite_autoincrement": True} if table in AUTOINCREMENT else {}
        checks = []
        if table in CHECKS:
            column, text = CHECKS[table]
            checks.append(sa.CheckConstraint(text, name=f"{table}_{column}_check"))
        with op.batch_alter_table(
            table,
            recreate="always",
            naming_convention=NAMING,
            table_kwargs=kwargs,
            table_args=tuple(checks),
        ) as batch:
            for key in nullable_keys:
                batch.alter_column(str(key["name"]), existing_type=key["type"], nullable=False)
    for statements in TRIGGERS.values():
        for statement in statements:
            op.execute(statement)


def downgrade() -> None:
    """Nothing to undo: the rebuilt tables hold what they held, under stricter keys."""
