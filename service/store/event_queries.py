"""Read queries over the audit chain's events for the people behind the decisions: a filtered,
paged event list and one event by id. Rows come back as `EventRecord`s, payload decoded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, select

from service.gallery.audit import EventRecord
from service.gallery.store import Store, event_table


@dataclass(frozen=True)
class EventFilter:
    """Empty fields do not filter; `until` is exclusive."""

    customer_id: str = ""
    device_id: str = ""
    outcome: str = ""
    type: str = ""
    since: datetime | None = None
    until: datetime | None = None


def _record(row: Row[object]) -> EventRecord:
    return EventRecord(
        row.id, row.event_id, row.occurred_at, row.type, row.customer_id, row.device_id,
        row.outcome, json.loads(row.payload), row.prev_hash, row.hash,
    )  # fmt: skip


def events_after(store: Store, where: EventFilter, after: int, limit: int) -> list[EventRecord]:
    """Up to `limit` events matching `where`, in chain order, from chain row `after` on
    (exclusive)."""
    query = (
        select(event_table).where(event_table.c.id > after).order_by(event_table.c.id)
        .limit(limit)
    )  # fmt: skip
    for column, value in (
        (event_table.c.customer_id, where.customer_id), (event_table.c.device_id, where.device_id),
        (event_table.c.outcome, where.outcome), (event_table.c.type, where.type),
    ):  # fmt: skip
        if value:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(event_table.c.occurred_at >= where.since)
    if where.until is not None:
        query = query.where(event_table.c.occurred_at < where.until)
    with store.connect() as conn:
        return [_record(row) for row in conn.execute(query)]


def event_by_id(store: Store, event_id: str) -> EventRecord | None:
    with store.connect() as conn:
        row = conn.execute(select(event_table).where(event_table.c.event_id == event_id)).first()
    return _record(row) if row is not None else None
