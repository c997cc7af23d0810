"""The AI Horde's daily kudos budget."""

from __future__ import annotations

from horde_scanner.store.tables import SchemaStep, Tables

STEPS = [
    SchemaStep(
        "1100-horde-kudos",
        """
    CREATE TABLE horde_kudos (
        day TEXT PRIMARY KEY,
        spent REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    ),
]


class KudosTables(Tables):
    pass
