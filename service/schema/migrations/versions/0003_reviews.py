"""The REVIEW queue's claims and resolutions, and the events index its queue query reads.

Creates are `if_not_exists`, like 0002: a database made by today's create_all and stamped at
an earlier revision already has them.

Revision ID: 0003_reviews
Revises: 0002_velocity_calibrations
"""

import sqlalchemy as sa
from alembic import op

from service.gallery.store import UTCDateTime

revision = "0003_reviews"
down_revision = "0002_velocity_calibrations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=False),
        sa.Column("claim_expires_at", UTCDateTime(), nullable=False),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("resolution_event_id", sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name="pk_reviews"),
        if_not_exists=True,
    )
    op.create_index("ix_events_outcome_id", "events", ["outcome", "id"], if_not_exists=True)


def downgrade() -> None:
    raise NotImplementedError("faceguard does not downgrade a schema: restore a backup instead")
