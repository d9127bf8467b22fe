"""Outbox claims: every replica runs a dispatcher, and a row is delivered by the one that holds
its lease (`claimed_by` until `claim_expires_at`), so each callback goes out once across the
fleet and a dispatcher that dies mid-delivery only delays its rows by the lease. Columns are
added only where missing: a pre-migration database made by today's create_all has them when it
is stamped at the baseline and upgraded.

Revision ID: 0003_outbox_claims
Revises: 0002_velocity_calibrations
"""

import sqlalchemy as sa
from alembic import op

from service.store.tables import UTCDateTime

revision = "0003_outbox_claims"
down_revision = "0002_velocity_calibrations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("outbox")}
    wanted = [
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claim_expires_at", UTCDateTime(), nullable=True),
    ]
    for column in wanted:
        if column.name not in present:
            op.add_column("outbox", column)


def downgrade() -> None:
    raise NotImplementedError("faceguard does not downgrade a schema: restore a backup instead")
