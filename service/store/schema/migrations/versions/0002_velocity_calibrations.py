"""Velocity attempts and calibration proposals, added after the release at 2e79320.

Velocity now counts declined attempts in its own table, so the two events indexes the release
used for it are dropped. Creates are `if_not_exists`: a pre-migration database run by today's
create_all already has these tables when it is stamped at the baseline and upgraded.

Revision ID: 0002_velocity_calibrations
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

from service.store.tables import UTCDateTime

revision = "0002_velocity_calibrations"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.drop_index("ix_events_device_outcome_time", table_name="events", if_exists=True)
    op.drop_index("ix_events_customer_outcome_time", table_name="events", if_exists=True)
    op.create_table(
        "velocity_attempts",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("customer_id", sa.String(length=128), nullable=True),
        sa.Column("device_lifted", sa.Boolean(), nullable=False),
        sa.Column("customer_lifted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_velocity_attempts"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index(
        "ix_velocity_attempts_device",
        "velocity_attempts",
        ["device_id", "occurred_at"],
        if_not_exists=True,
    )
    op.create_index(
        "ix_velocity_attempts_customer",
        "velocity_attempts",
        ["customer_id", "occurred_at"],
        if_not_exists=True,
    )
    op.create_table(
        "calibrations",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("proposer", sa.String(length=128), nullable=False),
        sa.Column("embedder", sa.String(length=128), nullable=False),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("templates", sa.Integer(), nullable=False),
        sa.Column("impostor_pairs", sa.BigInteger(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("targets", sa.Text(), nullable=False),
        sa.Column("live_version", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("event_id", sa.String(length=36), nullable=True),
        sa.Column("applied_thresholds", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_calibrations"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("ix_calibrations_status", "calibrations", ["status"], if_not_exists=True)


def downgrade() -> None:
    raise NotImplementedError("faceguard does not downgrade a schema: restore a backup instead")
