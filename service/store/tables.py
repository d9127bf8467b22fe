"""The tables of the store that customers, templates, consents and the audit chain live in,
and the types every table of the store shares (`METADATA`, `ROW_ID`, `UTCDateTime`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite itself stores naive text).

    Aware values on the way in and out keep comparisons and the audit hash identical across
    SQLite and PostgreSQL; a naive datetime is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; the gallery stores UTC-aware times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Stable constraint names keep later migrations identical on both backends.
METADATA = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
# Row ids: BIGINT on PostgreSQL; SQLite only autoincrements a column declared exactly INTEGER.
ROW_ID = BigInteger().with_variant(Integer(), "sqlite")
_CUSTOMER_ID = String(128)

customer_table = Table(
    "customers",
    METADATA,
    Column("customer_id", _CUSTOMER_ID, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)


def sealed_template_columns() -> list[Column[Any]]:
    """The columns of an encrypted template row, after its id and owner: customer templates
    and watchlist templates are stored, sealed and rotated alike."""
    return [
        Column("key_id", String(64), nullable=False),
        Column("ciphertext", LargeBinary(), nullable=False),
        Column("model", String(128), nullable=False),
        Column("quality", Float(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
    ]


template_table = Table(
    "templates",
    METADATA,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column(
        "customer_id",
        _CUSTOMER_ID,
        ForeignKey("customers.customer_id"),
        nullable=False,
        index=True,
    ),
    *sealed_template_columns(),
    sqlite_autoincrement=True,
)
consent_table = Table(
    "consents",
    METADATA,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column(
        "customer_id",
        _CUSTOMER_ID,
        ForeignKey("customers.customer_id"),
        nullable=False,
        index=True,
    ),
    Column("purpose", String(64), nullable=False),
    Column("given_at", UTCDateTime(), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("operator_id", String(128)),
    Column("expires_at", UTCDateTime()),
    Column("recorded_at", UTCDateTime(), nullable=False),
    sqlite_autoincrement=True,
)
event_table = Table(
    "events",
    METADATA,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("type", String(32), nullable=False),
    Column("customer_id", _CUSTOMER_ID, index=True),  # no FK: events outlive erasure
    Column("device_id", String(128)),
    Column("outcome", String(32), nullable=False),
    Column("payload", Text(), nullable=False),
    Column("prev_hash", String(64), nullable=False, unique=True),  # one successor: no forks
    Column("hash", String(64), nullable=False),
    sqlite_autoincrement=True,
)
