"""The fraud watchlist's rows: known fraudsters' faces, searched 1:N on every decision.

Kept apart from customers on purpose: a watchlist entry is not a customer (it has a label and a
case, no consent record, no customer id), and its templates live in their own tables and their
own vector index, so a watchlist hit can never be mistaken for a customer match. Templates are
encrypted like customer templates (AES-GCM under the store's keyring, the row id in the AAD).
The in-memory index searched on every decision (`service.gallery.watchlist`) is rebuilt from
these rows at start: they are the source of truth.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    Column,
    ForeignKey,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)

from service.store import audit_chain as audit
from service.store import changes
from service.store.audit_chain import NewEvent, check_text
from service.store.crypto import open_vector, seal_vector
from service.store.customers import NewTemplate, Store
from service.store.tables import METADATA, ROW_ID, UTCDateTime, event_table, sealed_template_columns

log = logging.getLogger(__name__)


watchlist_entry_table = Table(
    "watchlist_entries",
    METADATA,
    Column("entry_id", String(36), primary_key=True),
    Column("label", String(128), nullable=False),
    Column("reason", String(256), nullable=False),
    Column("case_ref", String(128), nullable=False),
    Column("operator_id", String(128), nullable=False),
    Column("added_at", UTCDateTime(), nullable=False),
    Column("event_id", String(36), nullable=False),
)
watchlist_template_table = Table(
    "watchlist_templates",
    METADATA,
    # Never-reused ids, as for customer templates: they double as the index's int64 ids.
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column(
        "entry_id",
        String(36),
        ForeignKey("watchlist_entries.entry_id"),
        nullable=False,
        index=True,
    ),
    *sealed_template_columns(),
    sqlite_autoincrement=True,
)


@dataclass(frozen=True)
class WatchlistEntry:
    entry_id: str
    label: str
    reason: str
    case_ref: str
    operator_id: str
    added_at: datetime
    event_id: str
    template_count: int = 0


def watchlist_aad(entry_id: str, template_id: int) -> bytes:
    """Ties a watchlist ciphertext to its entry and row, distinct from customer templates."""
    return b"faceguard/watchlist/v1\0%s\0%d" % (entry_id.encode("ascii"), template_id)


def create_tables(store: Store) -> None:
    """Create the watchlist tables where missing (a database older than them)."""
    with store.transaction() as conn:
        watchlist_entry_table.create(conn, checkfirst=True)
        watchlist_template_table.create(conn, checkfirst=True)


def load_templates(store: Store) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Every watchlist template decrypted, in id order: (int64 ids, vectors, entry ids)."""
    with store.connect() as conn:
        rows = conn.execute(
            select(watchlist_template_table).order_by(watchlist_template_table.c.id)
        ).all()
    ids = np.fromiter((row.id for row in rows), np.int64, len(rows))
    vectors = [
        open_vector(store.keyring, row.key_id, row.ciphertext, watchlist_aad(row.entry_id, row.id))
        for row in rows
    ]
    return ids, vectors, [row.entry_id for row in rows]


def templates_among(
    store: Store, ids: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """The given watchlist template ids the store still holds, ascending, with their vectors
    and entry ids (what a replica following the change feed indexes)."""
    wanted = sorted({int(i) for i in ids})
    with store.connect() as conn:
        rows = list(conn.execute(
            select(watchlist_template_table)
            .where(watchlist_template_table.c.id.in_(wanted))
            .order_by(watchlist_template_table.c.id)
        )) if wanted else []  # fmt: skip
    found = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
    vectors = [
        open_vector(store.keyring, row.key_id, row.ciphertext, watchlist_aad(row.entry_id, row.id))
        for row in rows
    ]
    return found, vectors, [row.entry_id for row in rows]


def add_entry(
    store: Store, label: str, templates: list[NewTemplate], reason: str, case_ref: str,
    operator_id: str,
) -> tuple[WatchlistEntry, list[int]]:  # fmt: skip
    """Store a new watchlist entry with its sealed templates, audited in the same transaction;
    the entry and its template ids."""
    check_text("label", label, 128)
    check_text("reason", reason, 256)
    check_text("case_ref", case_ref, 128)
    check_text("operator_id", operator_id, 128)
    entry_id = str(uuid.uuid4())
    event = NewEvent(
        type="WATCHLIST_ADD", outcome="OK",
        payload={"entry_id": entry_id, "reason": reason, "case_ref": case_ref,
                 "operator": operator_id, "templates": len(templates)},
    )  # fmt: skip
    now = datetime.now(UTC)
    entry = WatchlistEntry(entry_id, label, reason, case_ref, operator_id, now, event.event_id,
                           len(templates))  # fmt: skip
    keyring = store.keyring
    with store.transaction() as conn:
        conn.execute(insert(watchlist_entry_table).values(
            entry_id=entry_id, label=label, reason=reason, case_ref=case_ref,
            operator_id=operator_id, added_at=now, event_id=event.event_id,
        ))  # fmt: skip
        ids = []
        for template in templates:
            row_id = conn.execute(insert(watchlist_template_table).values(
                entry_id=entry_id, key_id=keyring.active, ciphertext=b"",
                model=template.model, quality=float(template.quality), created_at=now,
            )).inserted_primary_key[0]  # fmt: skip
            key_id, blob = seal_vector(keyring, template.vector, watchlist_aad(entry_id, row_id))
            conn.execute(
                update(watchlist_template_table)
                .where(watchlist_template_table.c.id == row_id)
                .values(key_id=key_id, ciphertext=blob)
            )
            ids.append(int(row_id))
        audit.append(conn, event_table, event, {changes.ADDED: ids})
        changes.notify(conn)
    return entry, ids


def remove_entry(
    store: Store, entry_id: str, reason: str, operator_id: str
) -> tuple[str, list[int]] | None:
    """Delete an entry and its templates, audited; the event id and the removed template ids,
    or None for an unknown entry. The caller scrubs the log once its index has followed."""
    check_text("operator_id", operator_id, 128)
    event = NewEvent(
        type="WATCHLIST_REMOVE", outcome="OK",
        payload={"entry_id": entry_id, "reason": reason, "operator": operator_id},
    )  # fmt: skip
    with store.transaction() as conn:
        ids = list(conn.execute(
            select(watchlist_template_table.c.id)
            .where(watchlist_template_table.c.entry_id == entry_id)
        ).scalars())  # fmt: skip
        conn.execute(delete(watchlist_template_table).where(
            watchlist_template_table.c.entry_id == entry_id))  # fmt: skip
        gone = conn.execute(delete(watchlist_entry_table).where(
            watchlist_entry_table.c.entry_id == entry_id)).rowcount  # fmt: skip
        if not gone:
            return None
        audit.append(conn, event_table, event, {changes.REMOVED: ids})
        changes.notify(conn)
    return event.event_id, ids


def entries(
    store: Store, page_size: int, after: str | None
) -> tuple[list[WatchlistEntry], str | None]:
    """One page in entry id order with template counts, and the next page's cursor."""
    counts = (
        select(watchlist_template_table.c.entry_id, func.count().label("n"))
        .group_by(watchlist_template_table.c.entry_id)
        .subquery()
    )
    query = (
        select(watchlist_entry_table, func.coalesce(counts.c.n, 0).label("template_count"))
        .outerjoin(counts, counts.c.entry_id == watchlist_entry_table.c.entry_id)
        .order_by(watchlist_entry_table.c.entry_id)
        .limit(page_size + 1)
    )
    if after:
        query = query.where(watchlist_entry_table.c.entry_id > after)
    with store.connect() as conn:
        rows = conn.execute(query).all()
    page = [WatchlistEntry(**row._mapping) for row in rows[:page_size]]
    return page, page[-1].entry_id if len(rows) > page_size else None


def rotate_watchlist_keys(store: Store, batch: int = 1000) -> int:
    """Re-encrypt watchlist templates not under the store's active key; returns how many.

    Runs after `Store.rotate_keys` switched the store to the new keyring.
    """
    return store.reseal(watchlist_template_table, "entry_id", watchlist_aad, batch)
