"""Baseline: the schema of the last release (commit 2e79320), as its create_all made it.

Every create is `if_not_exists` so that a database made by create_all before migrations
existed, with only some of these tables (a tool that imported fewer modules), is completed
rather than refused; see `service.store.schema.migrate.adopt_legacy`.

Revision ID: 0001_baseline
Revises:
"""

import sqlalchemy as sa
from alembic import op

from service.store.tables import UTCDateTime

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

# Row ids: BIGINT on PostgreSQL; SQLite only autoincrements a column declared exactly INTEGER.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _sealed_template_columns() -> list[sa.Column]:
    return [
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_customers"),
        if_not_exists=True,
    )
    op.create_table(
        "templates",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        *_sealed_template_columns(),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.customer_id"], name="fk_templates_customer_id_customers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("ix_templates_customer_id", "templates", ["customer_id"], if_not_exists=True)
    op.create_table(
        "consents",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("given_at", UTCDateTime(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.String(length=128), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.customer_id"], name="fk_consents_customer_id_customers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_consents"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("ix_consents_customer_id", "consents", ["customer_id"], if_not_exists=True)
    op.create_table(
        "events",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=True),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.UniqueConstraint("prev_hash", name="uq_events_prev_hash"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("ix_events_customer_id", "events", ["customer_id"], if_not_exists=True)
    # The release counted velocity failures from the events table through these two; 0002
    # moves that to velocity_attempts and drops them.
    op.create_index(
        "ix_events_device_outcome_time",
        "events",
        ["device_id", "outcome", "occurred_at"],
        if_not_exists=True,
    )
    op.create_index(
        "ix_events_customer_outcome_time",
        "events",
        ["customer_id", "outcome", "occurred_at"],
        if_not_exists=True,
    )
    op.create_table(
        "outbox",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("ordering_key", sa.String(length=140), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.String(length=512), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index(
        "ix_outbox_status_key_id", "outbox", ["status", "ordering_key", "id"], if_not_exists=True
    )
    op.create_table(
        "risk_list_entries",
        sa.Column("list", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("case_ref", sa.String(length=128), nullable=False),
        sa.Column("operator_id", sa.String(length=128), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("list", "subject", name="pk_risk_list_entries"),
        if_not_exists=True,
    )
    op.create_table(
        "watchlist_entries",
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("case_ref", sa.String(length=128), nullable=False),
        sa.Column("operator_id", sa.String(length=128), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", name="pk_watchlist_entries"),
        if_not_exists=True,
    )
    op.create_table(
        "watchlist_templates",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        *_sealed_template_columns(),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["watchlist_entries.entry_id"],
            name="fk_watchlist_templates_entry_id_watchlist_entries",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_watchlist_templates"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index(
        "ix_watchlist_templates_entry_id", "watchlist_templates", ["entry_id"], if_not_exists=True
    )


def downgrade() -> None:
    raise NotImplementedError("faceguard does not downgrade a schema: restore a backup instead")
