"""Alembic's environment for the store: run programmatically (store/schema.py), always on a
connection the store hands over (`config.attributes["connection"]`), never from a URL."""

from __future__ import annotations

from alembic import context

from horde_scanner.store.metadata import all_tables
from horde_scanner.store.schema import include_name


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the store's migrations run on the store's own connection")
    context.configure(
        connection=connection,
        target_metadata=all_tables(),
        render_as_batch=True,  # SQLite alters a table by copying it (batch mode)
        include_name=include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file to migrate; anything else importing it (a tool walking the package)
# finds no migration under way and nothing to do.
if getattr(context, "config", None) is not None:
    run()
