# ruff: noqa: E501  (frozen SQL of the first releases, kept on one line each)
"""The baseline: the whole schema as the first releases (0.1, up to commit 2fa284f) left it
after their last schema step (2400-embeddings), for a new store. A store those releases wrote
is stamped at this revision instead (store/schema.py), its rows untouched.

Frozen: it never imports the parts' table declarations, which change with later revisions.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The first releases' types: INTEGER / REAL / BLOB / TEXT on SQLite; BIGINT / DOUBLE
# PRECISION / BYTEA / TEXT on PostgreSQL.
INT: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
REAL: sa.types.TypeEngine[float] = sa.Double().with_variant(sa.REAL(), "sqlite")
BLOB = sa.LargeBinary()
TEXT = sa.Text()

# hash_generation is bumped by every change to what the hash index matches against.
SQLITE_TRIGGERS = [
    "CREATE TRIGGER hashgen_lists_insert AFTER INSERT ON lists BEGIN UPDATE hash_generation SET n = n + 1; END",
    "CREATE TRIGGER hashgen_lists_update AFTER UPDATE ON lists BEGIN UPDATE hash_generation SET n = n + 1; END",
    "CREATE TRIGGER hashgen_lists_delete AFTER DELETE ON lists BEGIN UPDATE hash_generation SET n = n + 1; END",
    "CREATE TRIGGER hashgen_verdicts_insert AFTER INSERT ON verdicts WHEN NEW.label = 'csam' AND NEW.route != 'match' BEGIN UPDATE hash_generation SET n = n + 1; END",
    "CREATE TRIGGER hashgen_verdicts_update AFTER UPDATE OF label, route ON verdicts WHEN (OLD.label = 'csam' AND OLD.route != 'match') OR (NEW.label = 'csam' AND NEW.route != 'match') BEGIN UPDATE hash_generation SET n = n + 1; END",
    "CREATE TRIGGER hashgen_verdicts_delete AFTER DELETE ON verdicts WHEN OLD.label = 'csam' AND OLD.route != 'match' BEGIN UPDATE hash_generation SET n = n + 1; END",
]
POSTGRES_FUNCTIONS_AND_TRIGGERS = [
    "CREATE FUNCTION hs_hashgen_bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE hash_generation SET n = n + 1; RETURN NULL; END $$",
    "CREATE FUNCTION hs_hashgen_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('horde_scanner', 'hashes:'); RETURN NULL; END $$",
    "CREATE TRIGGER hashgen_notify AFTER UPDATE ON hash_generation FOR EACH STATEMENT EXECUTE FUNCTION hs_hashgen_notify()",
    "CREATE TRIGGER hashgen_lists AFTER INSERT OR UPDATE OR DELETE ON lists FOR EACH ROW EXECUTE FUNCTION hs_hashgen_bump()",
    "CREATE TRIGGER hashgen_verdicts_insert AFTER INSERT ON verdicts FOR EACH ROW WHEN (NEW.label = 'csam' AND NEW.route != 'match') EXECUTE FUNCTION hs_hashgen_bump()",
    "CREATE TRIGGER hashgen_verdicts_update AFTER UPDATE OF label, route ON verdicts FOR EACH ROW WHEN ((OLD.label = 'csam' AND OLD.route != 'match') OR (NEW.label = 'csam' AND NEW.route != 'match')) EXECUTE FUNCTION hs_hashgen_bump()",
    "CREATE TRIGGER hashgen_verdicts_delete AFTER DELETE ON verdicts FOR EACH ROW WHEN (OLD.label = 'csam' AND OLD.route != 'match') EXECUTE FUNCTION hs_hashgen_bump()",
] + [
    # Replicas hear of each other's changes (store/postgres.py listens).
    """CREATE FUNCTION hs_notify_row() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE sha TEXT;
    BEGIN
        IF TG_OP = 'DELETE' THEN sha := OLD.sha256; ELSE sha := NEW.sha256; END IF;
        PERFORM pg_notify('horde_scanner', TG_ARGV[0] || ':' || sha);
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER notify_verdicts AFTER INSERT OR UPDATE OR DELETE ON verdicts"
    " FOR EACH ROW EXECUTE FUNCTION hs_notify_row('verdict')",
    "CREATE TRIGGER notify_lists AFTER INSERT OR UPDATE OR DELETE ON lists"
    " FOR EACH ROW EXECUTE FUNCTION hs_notify_row('list')",
    "CREATE TRIGGER notify_jobs AFTER INSERT ON jobs"
    " FOR EACH ROW EXECUTE FUNCTION hs_notify_row('job')",
]
TABLES = (
    "audit cluster_turns embedding_entries hash_entries hash_flags hash_generation"
    " hash_subscriptions horde_kudos horde_requests horde_submits jobs late_positives"
    " lemmy_actions lists provenance quarantine scan_actions scan_files scan_runs"
    " verdict_embeddings verdict_pdq verdicts"
).split()


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("ts", REAL, nullable=False),
        sa.Column("sha256", TEXT, nullable=True),
        sa.Column("event", TEXT, nullable=False),
        sa.Column("label", TEXT, nullable=True),
        sa.Column("action", TEXT, nullable=True),
        sa.Column("source", TEXT, nullable=True),
        sa.Column("detail", TEXT, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("audit_pkey")),
        sqlite_autoincrement=True,
    )
    op.create_index("audit_sha", "audit", ["sha256"], unique=False)
    op.create_table(
        "cluster_turns",
        sa.Column("name", TEXT, nullable=False),
        sa.Column("holder", TEXT, nullable=False),
        sa.Column("taken_at", REAL, nullable=False),
        sa.Column("until", REAL, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("cluster_turns_pkey")),
    )
    op.create_table(
        "embedding_entries",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("origin", TEXT, nullable=False),
        sa.Column("model", TEXT, nullable=False),
        sa.Column("digest", TEXT, nullable=False),
        sa.Column("vector", BLOB, nullable=False),
        sa.Column("label", TEXT, nullable=False),
        sa.Column("source", TEXT, server_default="", nullable=False),
        sa.Column("first_seen", REAL, nullable=True),
        sa.Column("note", TEXT, server_default="", nullable=False),
        sa.Column("added_by", TEXT, server_default="", nullable=False),
        sa.Column("added_at", REAL, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("embedding_entries_pkey")),
        sa.UniqueConstraint(
            "origin", "model", "digest", name=op.f("embedding_entries_origin_model_digest_key")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "embedding_entries_model", "embedding_entries", ["model", "origin"], unique=False
    )
    op.create_table(
        "hash_entries",
        sa.Column("origin", TEXT, nullable=False),
        sa.Column("signal", TEXT, nullable=False),
        sa.Column("value", TEXT, nullable=False),
        sa.Column("label", TEXT, nullable=False),
        sa.Column("source", TEXT, server_default="", nullable=False),
        sa.Column("first_seen", REAL, nullable=True),
        sa.Column("note", TEXT, server_default="", nullable=False),
        sa.Column("added_by", TEXT, server_default="", nullable=False),
        sa.Column("added_at", REAL, nullable=True),
        sa.CheckConstraint("signal IN ('sha256', 'pdq')", name=op.f("hash_entries_signal_check")),
        sa.PrimaryKeyConstraint("signal", "value", "origin", name=op.f("hash_entries_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_index("hash_entries_origin", "hash_entries", ["origin"], unique=False)
    op.create_table(
        "hash_flags",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("origin", TEXT, nullable=False),
        sa.Column("signal", TEXT, nullable=False),
        sa.Column("value", TEXT, nullable=False),
        sa.Column("distance", INT, nullable=False),
        sa.Column("source", TEXT, nullable=True),
        sa.Column("flagged_at", REAL, nullable=False),
        sa.PrimaryKeyConstraint(
            "sha256", "origin", "signal", "value", name=op.f("hash_flags_pkey")
        ),
    )
    op.create_table(
        "hash_generation",
        sa.Column("id", INT, autoincrement=False, nullable=False),
        sa.Column("n", INT, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("hash_generation_id_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("hash_generation_pkey")),
    )
    op.create_table(
        "hash_subscriptions",
        sa.Column("name", TEXT, nullable=False),
        sa.Column("url", TEXT, nullable=False),
        sa.Column("etag", TEXT, nullable=True),
        sa.Column("entries", INT, server_default=sa.text("0"), nullable=False),
        sa.Column("skipped", INT, server_default=sa.text("0"), nullable=False),
        sa.Column("last_ok", REAL, nullable=True),
        sa.Column("last_checked", REAL, nullable=True),
        sa.Column("last_status", INT, nullable=True),
        sa.Column("last_error", TEXT, nullable=True),
        sa.Column("bytes_fetched", INT, server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("hash_subscriptions_pkey")),
    )
    op.create_table(
        "horde_kudos",
        sa.Column("day", TEXT, nullable=False),
        sa.Column("spent", REAL, nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("horde_kudos_pkey")),
    )
    op.create_table(
        "horde_requests",
        sa.Column("image_key", TEXT, nullable=False),
        sa.Column("request_id", TEXT, nullable=False),
        sa.Column("submitted_at", REAL, nullable=False),
        sa.Column("holder", TEXT, nullable=False),
        sa.PrimaryKeyConstraint("image_key", name=op.f("horde_requests_pkey")),
    )
    op.create_table(
        "horde_submits",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("holder", TEXT, nullable=False),
        sa.Column("taken_at", REAL, nullable=False),
        sa.Column("done_at", REAL, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("horde_submits_pkey")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "jobs",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("payload", BLOB, nullable=False),
        sa.Column("media_type", TEXT, nullable=True),
        sa.Column("size", INT, nullable=True),
        sa.Column("source", TEXT, nullable=True),
        sa.Column("answered", TEXT, nullable=True),
        sa.Column("state", TEXT, server_default="pending", nullable=False),
        sa.Column("attempts", INT, server_default="0", nullable=False),
        sa.Column("not_before", REAL, server_default="0", nullable=False),
        sa.Column("last_error", TEXT, nullable=True),
        sa.Column("created_at", REAL, nullable=False),
        sa.Column("lease_until", REAL, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("jobs_pkey")),
    )
    op.create_index("jobs_ready", "jobs", ["state", "not_before", "created_at"], unique=False)
    op.create_table(
        "late_positives",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("label", TEXT, nullable=False),
        sa.Column("found_at", REAL, nullable=False),
        sa.Column("enforcement", TEXT, nullable=False),
        sa.Column("detail", TEXT, nullable=True),
        sa.Column("updated_at", REAL, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("late_positives_pkey")),
    )
    op.create_table(
        "lemmy_actions",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("action", TEXT, nullable=False),
        sa.Column("target", TEXT, nullable=False),
        sa.Column("request", TEXT, nullable=False),
        sa.Column("state", TEXT, nullable=False),
        sa.Column("status", INT, nullable=True),
        sa.Column("answer", TEXT, nullable=True),
        sa.Column("requested_by", TEXT, nullable=False),
        sa.Column("requested_at", REAL, nullable=False),
        sa.Column("attempts", INT, server_default=sa.text("1"), nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.CheckConstraint("state IN ('done', 'failed')", name=op.f("lemmy_actions_state_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("lemmy_actions_pkey")),
        sqlite_autoincrement=True,
    )
    op.create_index("lemmy_actions_sha", "lemmy_actions", ["sha256", "id"], unique=False)
    op.create_table(
        "lists",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("kind", TEXT, nullable=False),
        sa.Column("note", TEXT, nullable=True),
        sa.Column("added_by", TEXT, nullable=True),
        sa.Column("added_at", REAL, nullable=False),
        sa.CheckConstraint("kind IN ('allow', 'deny')", name=op.f("lists_kind_check")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("lists_pkey")),
    )
    op.create_table(
        "provenance",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("state", TEXT, nullable=False),
        sa.Column("why", TEXT, nullable=False),
        sa.Column("aliases", TEXT, server_default="[]", nullable=False),
        sa.Column("seen_at", REAL, nullable=True),
        sa.Column("record", TEXT, nullable=True),
        sa.Column("error", TEXT, nullable=True),
        sa.Column("tries", INT, server_default=sa.text("0"), nullable=False),
        sa.Column("next_try", REAL, nullable=False),
        sa.Column("created_at", REAL, nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'resolved', 'no_alias')", name=op.f("provenance_state_check")
        ),
        sa.PrimaryKeyConstraint("sha256", name=op.f("provenance_pkey")),
    )
    op.create_index("provenance_due", "provenance", ["state", "next_try"], unique=False)
    op.create_table(
        "quarantine",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("origin", TEXT, nullable=False),
        sa.Column("identifier", TEXT, nullable=False),
        sa.Column("path", TEXT, nullable=False),
        sa.Column("size", INT, nullable=True),
        sa.Column("state", TEXT, server_default="held", nullable=False),
        sa.Column("quarantined_at", REAL, nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.Column("updated_by", TEXT, nullable=True),
        sa.Column("detail", TEXT, nullable=True),
        sa.CheckConstraint(
            "state IN ('held', 'released', 'deleted')", name=op.f("quarantine_state_check")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("quarantine_pkey")),
        sqlite_autoincrement=True,
    )
    op.create_index("quarantine_sha", "quarantine", ["sha256", "state"], unique=False)
    op.create_table(
        "scan_actions",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("source", TEXT, nullable=False),
        sa.Column("identifier", TEXT, nullable=False),
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("size", INT, nullable=True),
        sa.Column("mtime", REAL, nullable=True),
        sa.Column("action", TEXT, nullable=False),
        sa.Column("state", TEXT, nullable=False),
        sa.Column("label", TEXT, nullable=True),
        sa.Column("reasons", TEXT, nullable=True),
        sa.Column("location", TEXT, nullable=True),
        sa.Column("detail", TEXT, nullable=True),
        sa.Column("created_at", REAL, nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("scan_actions_pkey")),
        sa.UniqueConstraint(
            "source", "identifier", "sha256", name=op.f("scan_actions_source_identifier_sha256_key")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("scan_actions_state", "scan_actions", ["source", "state"], unique=False)
    op.create_table(
        "scan_files",
        sa.Column("source", TEXT, nullable=False),
        sa.Column("identifier", TEXT, nullable=False),
        sa.Column("size", INT, nullable=False),
        sa.Column("mtime", REAL, nullable=False),
        sa.Column("sha256", TEXT, nullable=True),
        sa.Column("media_type", TEXT, nullable=True),
        sa.Column("status", TEXT, nullable=False),
        sa.Column("label", TEXT, nullable=True),
        sa.Column("reasons", TEXT, nullable=True),
        sa.Column("seen_at", REAL, nullable=False),
        sa.Column("judged_at", REAL, nullable=True),
        sa.Column("action", TEXT, nullable=True),
        sa.PrimaryKeyConstraint("source", "identifier", name=op.f("scan_files_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_index("scan_files_label", "scan_files", ["label", "judged_at"], unique=False)
    op.create_index("scan_files_sha", "scan_files", ["sha256"], unique=False)
    op.create_table(
        "scan_runs",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("source", TEXT, nullable=False),
        sa.Column("action", TEXT, nullable=False),
        sa.Column("follow", INT, server_default=sa.text("0"), nullable=False),
        sa.Column("state", TEXT, nullable=False),
        sa.Column("phase", TEXT, server_default="sweep", nullable=False),
        sa.Column("cursor", TEXT, nullable=True),
        sa.Column("watermark", REAL, nullable=True),
        sa.Column("time_ordered", INT, server_default=sa.text("0"), nullable=False),
        sa.Column("started_at", REAL, nullable=False),
        sa.Column("updated_at", REAL, nullable=False),
        sa.Column("counts", TEXT, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("scan_runs_pkey")),
        sqlite_autoincrement=True,
    )
    op.create_index("scan_runs_source", "scan_runs", ["source", "state"], unique=False)
    op.create_table(
        "verdict_embeddings",
        sa.Column("id", INT, sa.Identity(always=False), nullable=False),
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("model", TEXT, nullable=False),
        sa.Column("vector", BLOB, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("verdict_embeddings_pkey")),
        sa.UniqueConstraint("sha256", "model", name=op.f("verdict_embeddings_sha256_model_key")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "verdict_pdq",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("frame", INT, server_default=sa.text("0"), nullable=False),
        sa.Column("pdq", TEXT, nullable=False),
        sa.Column("quality", INT, nullable=False),
        sa.PrimaryKeyConstraint("sha256", "frame", name=op.f("verdict_pdq_pkey")),
    )
    op.create_index("verdict_pdq_value", "verdict_pdq", ["pdq"], unique=False)
    op.create_table(
        "verdicts",
        sa.Column("sha256", TEXT, nullable=False),
        sa.Column("label", TEXT, nullable=False),
        sa.Column("reasons", TEXT, nullable=False),
        sa.Column("signals", TEXT, nullable=True),
        sa.Column("backend", TEXT, nullable=False),
        sa.Column("policy_version", TEXT, nullable=False),
        sa.Column("media_type", TEXT, nullable=True),
        sa.Column("size", INT, nullable=True),
        sa.Column("source", TEXT, nullable=True),
        sa.Column("first_seen", REAL, nullable=False),
        sa.Column("judged_at", REAL, nullable=False),
        sa.Column("route", TEXT, server_default="judged", nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("verdicts_pkey")),
    )
    op.create_index("verdicts_judged", "verdicts", ["judged_at"], unique=False)
    op.create_index("verdicts_label", "verdicts", ["label", "judged_at"], unique=False)
    op.execute("INSERT INTO hash_generation (id, n) VALUES (1, 0)")
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_FUNCTIONS_AND_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS hs_notify_row, hs_hashgen_bump, hs_hashgen_notify CASCADE"
        )
    for table in reversed(TABLES):
        op.drop_table(table)
