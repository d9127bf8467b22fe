"""The callback outbox: one row per decision event, written in the event's own transaction.

The store writes the row (`enqueue`) in the transaction that appends the audit event
(`Store.record_event` and the customer changes), so the event and its outbox row commit or
vanish together: a decision the caller saw is always delivered, whatever is killed when. Rows
stay PENDING until delivered (DELIVERED) or out of attempts (DEAD, the dead letters, which an
administrator can replay). The dispatcher reads only the oldest undelivered row of each
ordering key (the customer, else the device), so one customer's events leave in order.

Every replica runs a dispatcher; each delivers only the rows it has claimed (`claim`): a lease
(`claimed_by` until `claim_expires_at`) taken in one write transaction, with `SELECT ... FOR
UPDATE SKIP LOCKED` on PostgreSQL (two dispatchers never wait for, nor take, each other's rows)
and under SQLite's single write lock there. A claimed head row stays PENDING, so the next row of
its ordering key is not a head until it is settled: per-customer order holds across the fleet.
A dispatcher killed mid-delivery leaves its claims to expire; another then claims and delivers
them (at least once: the receiver drops a repeat by event id).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    Select,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from service.store import audit_chain as audit
from service.store.audit_chain import NewEvent, check_text, plain_scalar
from service.store.tables import METADATA, ROW_ID, UTCDateTime, event_table

if TYPE_CHECKING:
    from service.store.customers import Store

PENDING, DELIVERED, DEAD = "PENDING", "DELIVERED", "DEAD"

outbox_table = Table(
    "outbox",
    METADATA,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),  # the delivery sequence
    Column("event_id", String(36), nullable=False, unique=True),
    Column("ordering_key", String(140), nullable=False),
    Column("document", Text(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("last_error", String(512), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    Column("claimed_by", String(64)),  # the dispatcher delivering it, until its lease ends
    Column("claim_expires_at", UTCDateTime()),
    Index("ix_outbox_status_key_id", "status", "ordering_key", "id"),
    sqlite_autoincrement=True,
)

_INSERT = insert(outbox_table)  # built once: it runs with every decision


@dataclass(frozen=True)
class OutboxItem:
    """One event to deliver; `document` is the event as the fraud engine receives it."""

    id: int
    event_id: str
    document: dict[str, Any]
    attempts: int
    status: str = PENDING
    last_error: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits initial*2^(n-1), capped, times U(0.5, 1).

    The jitter spreads retries of many events after an outage so they do not arrive together.
    """

    initial_s: float = 0.5
    max_s: float = 60.0
    dead_after: int = 10

    def delay(self, attempts: int) -> float:
        base = min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1))
        return base * random.uniform(0.5, 1.0)


def document(event: NewEvent, occurred_at: datetime) -> dict[str, Any]:
    """The event as the fraud engine receives it. Its payload is taken as it is: the outbox
    row is written after the audit append in the same transaction has checked and encoded that
    payload (no vectors, no images)."""
    return {
        "event_id": event.event_id,
        "type": event.type,
        "occurred_at": occurred_at.isoformat(timespec="microseconds"),
        "customer_id": event.customer_id or "",
        "device_id": event.device_id or "",
        "outcome": event.outcome,
        "payload": event.payload,
    }


def enqueue(conn: Connection, event: NewEvent) -> None:
    """The event's outbox row, in the transaction that appends the event (see `Store`)."""
    now = datetime.now(UTC)
    conn.execute(_INSERT, {
        "event_id": event.event_id, "ordering_key": ordering_key(event),
        "document": json.dumps(document(event, now), separators=(",", ":"), default=plain_scalar),
        "status": PENDING, "attempts": 0, "next_attempt_at": now, "last_error": "",
        "created_at": now,
    })  # fmt: skip


def ordering_key(event: NewEvent) -> str:
    if event.customer_id:
        return f"customer:{event.customer_id}"
    return f"device:{event.device_id}" if event.device_id else f"event:{event.event_id}"


class Outbox:
    """Outbox rows over the gallery store; all state is in the database (kill -9 safe)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def due(self, limit: int) -> list[OutboxItem]:
        """The oldest pending row of each ordering key, if its retry time has come (leased or
        not: a read-only view; dispatchers `claim`)."""
        with self.store.connect() as conn:
            return [_item(row) for row in conn.execute(_due(datetime.now(UTC), limit))]

    def claim(self, owner: str, limit: int, lease_s: float) -> list[OutboxItem]:
        """Lease up to `limit` due head rows (see `due`) that no live lease holds, for `owner`
        for `lease_s` seconds: only their holder delivers them (see the module docstring)."""
        now = datetime.now(UTC)
        expires = outbox_table.c.claim_expires_at
        query = _due(now, limit).where(or_(expires.is_(None), expires <= now))
        with self.store.connect() as conn:  # idle rounds take no write lock
            if conn.execute(query.limit(1)).first() is None:
                return []
        with self.store.transaction() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    update(outbox_table)
                    .where(outbox_table.c.id.in_([row.id for row in rows]))
                    .values(claimed_by=owner, claim_expires_at=now + timedelta(seconds=lease_s))
                )
        return [_item(row) for row in rows]

    def settle(
        self,
        delivered: list[OutboxItem],
        failed: list[tuple[OutboxItem, str]],
        backoff: Backoff,
        owner: str | None = None,
    ) -> list[str]:
        """Mark a batch's results in one transaction and end their leases; returns the newly
        dead event ids. With `owner`, only rows that owner still holds are settled (a lease
        that ran out belongs to whoever claimed the row since)."""
        now = datetime.now(UTC)
        dead = []
        released = {"claimed_by": None, "claim_expires_at": None}
        with self.store.transaction() as conn:
            for item in delivered:
                conn.execute(
                    update(outbox_table)
                    .where(outbox_table.c.id == item.id, *_held_by(owner))
                    .values(status=DELIVERED, attempts=item.attempts + 1, delivered_at=now,
                            last_error="", **released)
                )  # fmt: skip
            for item, error in failed:
                attempts = item.attempts + 1
                status = DEAD if attempts >= backoff.dead_after else PENDING
                if status == DEAD:
                    dead.append(item.event_id)
                conn.execute(
                    update(outbox_table)
                    .where(outbox_table.c.id == item.id, *_held_by(owner))
                    .values(status=status, attempts=attempts, last_error=error[:512],
                            next_attempt_at=now + timedelta(seconds=backoff.delay(attempts)),
                            **released)
                )  # fmt: skip
        return dead

    def get(self, event_id: str) -> OutboxItem | None:
        """One event's outbox row, whatever its status."""
        with self.store.connect() as conn:
            row = conn.execute(
                select(outbox_table).where(outbox_table.c.event_id == event_id)
            ).first()
        return _item(row) if row is not None else None

    def dead_letters(self, limit: int) -> list[OutboxItem]:
        query = (
            select(outbox_table)
            .where(outbox_table.c.status == DEAD)
            .order_by(outbox_table.c.id)
            .limit(limit)
        )
        with self.store.connect() as conn:
            return [_item(row) for row in conn.execute(query)]

    def replay(self, event_ids: list[str], operator_id: str) -> tuple[int, str]:
        """Send dead letters again (all of them when `event_ids` is empty); audited."""
        check_text("operator_id", operator_id, 128)
        where = [outbox_table.c.status == DEAD]
        if event_ids:
            where.append(outbox_table.c.event_id.in_(event_ids))
        with self.store.transaction() as conn:
            count = conn.execute(
                update(outbox_table)
                .where(*where)
                .values(
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=datetime.now(UTC),
                    claimed_by=None,
                    claim_expires_at=None,
                )
            ).rowcount
            event = NewEvent(
                type="CALLBACK_REPLAY", outcome="OK",
                payload={"replayed": count, "event_ids": event_ids[:50], "operator": operator_id},
            )  # fmt: skip
            audit.append(conn, event_table, event)
        return count, event.event_id

    def statuses(self, event_ids: list[str]) -> dict[str, str]:
        """Delivery status of the given events (events never sent are left out)."""
        if not event_ids:
            return {}
        query = select(outbox_table.c.event_id, outbox_table.c.status).where(
            outbox_table.c.event_id.in_(event_ids)
        )
        with self.store.connect() as conn:
            return dict(conn.execute(query).all())

    def prune_delivered(self, before: datetime, batch: int = 10_000) -> int:
        """Delete rows delivered before `before`; returns how many.

        A delivered row has done its job (the audit chain keeps the event itself), and its
        document names a customer, so it should not outlive the retention period. Deleted in
        batches of `batch`, each its own short transaction, so decisions keep being recorded
        meanwhile.
        """
        oldest = (
            select(outbox_table.c.id)
            .where(outbox_table.c.status == DELIVERED, outbox_table.c.delivered_at < before)
            .order_by(outbox_table.c.id)
            .limit(batch)
        )
        pruned = 0
        while True:
            with self.store.transaction() as conn:
                gone = conn.execute(delete(outbox_table).where(outbox_table.c.id.in_(oldest)))
            pruned += gone.rowcount
            if gone.rowcount < batch:
                return pruned

    def backlog(self) -> tuple[int, datetime | None]:
        """Pending rows and when the oldest of them was written (None: none pending)."""
        query = select(func.count(), func.min(outbox_table.c.created_at)).where(
            outbox_table.c.status == PENDING
        )
        with self.store.connect() as conn:
            depth, oldest = conn.execute(query).one()
        return int(depth), oldest

    def counts(self) -> dict[str, int]:
        """Rows per status: the queue depth and the dead letters, for metrics and benches."""
        query = select(outbox_table.c.status, func.count()).group_by(outbox_table.c.status)
        with self.store.connect() as conn:
            found = dict(conn.execute(query).all())
        return {status: int(found.get(status, 0)) for status in (PENDING, DELIVERED, DEAD)}


def _due(now: datetime, limit: int) -> Select[Any]:
    """The oldest pending row of each ordering key whose retry time has come, oldest first."""
    heads = (
        select(func.min(outbox_table.c.id))
        .where(outbox_table.c.status == PENDING)
        .group_by(outbox_table.c.ordering_key)
    )
    return (
        select(outbox_table)
        .where(outbox_table.c.id.in_(heads), outbox_table.c.next_attempt_at <= now)
        .order_by(outbox_table.c.id)
        .limit(limit)
    )


def _held_by(owner: str | None) -> list[Any]:
    """The condition that `owner` (None: anyone) holds a row's claim."""
    return [] if owner is None else [outbox_table.c.claimed_by == owner]


def _item(row: Any) -> OutboxItem:
    document = json.loads(row.document)
    document["sequence"] = int(row.id)
    return OutboxItem(
        id=int(row.id), event_id=row.event_id, document=document, attempts=int(row.attempts),
        status=row.status, last_error=row.last_error, created_at=row.created_at,
    )  # fmt: skip
