"""The REVIEW queue's table and queries: claims and resolutions of decisions sent to review.

The queue is derived, not copied: every decision event with outcome REVIEW is a review, open
until its row here holds a resolution. So the hot decision write path stays untouched (a
REVIEW decision writes nothing here), and a row only appears when an analyst claims one.
A claim is a lease (`claim_expires_at`); the conditional updates below make a claim and a
resolution atomic against a second analyst doing the same at once, and a resolution appends
its REVIEW_RESOLVED event (with its outbox row, through the store's event hooks) in the same
transaction as the row change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, Index, Row, Select, String, Table, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from service.gallery.audit import NewEvent
from service.gallery.store import METADATA, Store, UTCDateTime, event_table

REVIEW = "REVIEW"
NOTE_CHARS = 500

review_table = Table(
    "reviews",
    METADATA,
    Column("event_id", String(36), primary_key=True),  # the reviewed decision event
    Column("claimed_by", String(128), nullable=False),
    Column("claim_expires_at", UTCDateTime(), nullable=False),
    Column("resolution", String(16)),  # APPROVE or DECLINE; NULL while open
    Column("note", String(NOTE_CHARS)),
    Column("resolved_by", String(128)),
    Column("resolved_at", UTCDateTime()),
    Column("resolution_event_id", String(36)),
)
# The queue query reads REVIEW events in chain order (the order they were appended in, so in
# time; ids never tie where timestamps can): this keeps it an index range scan per page.
Index("ix_events_outcome_id", event_table.c.outcome, event_table.c.id)


@dataclass(frozen=True)
class Review:
    """A REVIEW decision and where it stands (`claimed_by` empty: never claimed)."""

    event_id: str
    occurred_at: datetime
    type: str
    customer_id: str
    device_id: str
    claimed_by: str = ""
    claim_expires_at: datetime | None = None
    resolution: str = ""
    note: str = ""
    resolved_by: str = ""
    resolved_at: datetime | None = None
    resolution_event_id: str = ""
    row_id: int = 0
    reason_codes: tuple[str, ...] = ()


def _joined() -> object:
    return event_table.outerjoin(review_table, review_table.c.event_id == event_table.c.event_id)


_COLUMNS = (
    event_table.c.id, event_table.c.event_id, event_table.c.occurred_at, event_table.c.type,
    event_table.c.customer_id, event_table.c.device_id, event_table.c.payload,
    review_table.c.claimed_by,
    review_table.c.claim_expires_at, review_table.c.resolution, review_table.c.note,
    review_table.c.resolved_by, review_table.c.resolved_at, review_table.c.resolution_event_id,
)  # fmt: skip


def _review(row: Row[object]) -> Review:
    return Review(
        row.event_id, row.occurred_at, row.type, row.customer_id or "", row.device_id or "",
        row.claimed_by or "", row.claim_expires_at, row.resolution or "", row.note or "",
        row.resolved_by or "", row.resolved_at, row.resolution_event_id or "", row.id,
        tuple(json.loads(row.payload).get("reason_codes") or ()),
    )  # fmt: skip


def queue_query(limit: int, after: int, customer_id: str = "", device_id: str = "") -> Select:
    """The open-review page: REVIEW events without a resolution, in chain order. It reads the
    (outcome, id) index from `after` on; resolved reviews older than the oldest open one are
    passed over in that index on every first page."""
    query = (
        select(*_COLUMNS).select_from(_joined())
        .where(event_table.c.outcome == REVIEW, review_table.c.resolution.is_(None),
               event_table.c.id > after)
        .order_by(event_table.c.id).limit(limit)
    )  # fmt: skip
    if customer_id:
        query = query.where(event_table.c.customer_id == customer_id)
    if device_id:
        query = query.where(event_table.c.device_id == device_id)
    return query


class ReviewStore:
    """Claims and resolutions over the gallery store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open_reviews(
        self, limit: int, after: int, customer_id: str = "", device_id: str = ""
    ) -> list[Review]:
        """Unresolved REVIEW decisions, oldest first, from chain row `after` on (exclusive)."""
        with self.store.connect() as conn:
            return [_review(row) for row in conn.execute(
                queue_query(limit, after, customer_id, device_id)
            )]  # fmt: skip

    def get(self, event_id: str) -> Review | None:
        """The REVIEW decision `event_id` with its claim and resolution; None if no such
        event has outcome REVIEW."""
        query = (
            select(*_COLUMNS)
            .select_from(_joined())
            .where(event_table.c.event_id == event_id, event_table.c.outcome == REVIEW)
        )
        with self.store.connect() as conn:
            row = conn.execute(query).first()
        return _review(row) if row is not None else None

    def claim(self, event_id: str, analyst: str, now: datetime, expires_at: datetime) -> bool:
        """Take or renew the lease on an open review: True unless it is resolved or another
        analyst holds an unexpired claim (checked in the same statement, so two analysts
        never both win)."""
        values = {"claimed_by": analyst, "claim_expires_at": expires_at}
        taken = update(review_table).where(
            review_table.c.event_id == event_id, review_table.c.resolution.is_(None),
            or_(review_table.c.claimed_by == analyst, review_table.c.claim_expires_at <= now),
        )  # fmt: skip
        try:
            with self.store.transaction() as conn:
                if conn.execute(taken.values(**values)).rowcount == 1:
                    return True
                exists = select(review_table.c.event_id).where(review_table.c.event_id == event_id)
                if conn.execute(exists).first() is not None:
                    return False
                conn.execute(insert(review_table).values(event_id=event_id, **values))
                return True
        except IntegrityError:  # another analyst's first claim committed in between
            return False

    def resolve(
        self, event_id: str, analyst: str, resolution: str, note: str, now: datetime,
        event: NewEvent,
    ) -> bool:  # fmt: skip
        """Record the resolution and append `event` (its audit record) in one transaction;
        False, with nothing written, unless `analyst` holds an unexpired claim on it."""
        change = (
            update(review_table)
            .where(and_(
                review_table.c.event_id == event_id, review_table.c.resolution.is_(None),
                review_table.c.claimed_by == analyst, review_table.c.claim_expires_at > now,
            ))
            .values(resolution=resolution, note=note, resolved_by=analyst, resolved_at=now,
                    resolution_event_id=event.event_id)
        )  # fmt: skip
        with self.store.transaction() as conn:
            if conn.execute(change).rowcount != 1:
                return False
            self.store.append_event(conn, event)
        return True
