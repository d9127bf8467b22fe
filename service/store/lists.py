"""Risk lists beside the gallery: blocklisted customers and blacklisted devices.

The lists live in the store's database (its `METADATA`), and every change appends its audit
event in the same transaction, like every gallery change. `facts` gathers everything the risk
rules need to know about one decision's customer and device in one read connection, so the
checks add a few indexed lookups to a verify, not a round trip per rule.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    PrimaryKeyConstraint,
    ScalarSelect,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from service.store import audit_chain as audit
from service.store.audit_chain import NewEvent, check_text
from service.store.customers import Store
from service.store.tables import METADATA, UTCDateTime, event_table

log = logging.getLogger(__name__)

CUSTOMER_BLOCKLIST, DEVICE_BLACKLIST = "CUSTOMER_BLOCKLIST", "DEVICE_BLACKLIST"
LISTS = (CUSTOMER_BLOCKLIST, DEVICE_BLACKLIST)

list_entry_table = Table(
    "risk_list_entries",
    METADATA,
    Column("list", String(32), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("reason", String(256), nullable=False),
    Column("case_ref", String(128), nullable=False),
    Column("operator_id", String(128), nullable=False),
    Column("added_at", UTCDateTime(), nullable=False),
    Column("event_id", String(36), nullable=False),
    PrimaryKeyConstraint("list", "subject"),
)


@dataclass(frozen=True)
class ListEntry:
    list: str
    subject: str
    reason: str
    case_ref: str
    operator_id: str
    added_at: datetime
    event_id: str


@dataclass(frozen=True)
class ListFacts:
    """What the lists say about one decision's customer and device."""

    blocklisted: ListEntry | None = None
    device_blacklisted: ListEntry | None = None


def _check_list(name: str) -> str:
    if name not in LISTS:
        raise ValueError(f"unknown risk list {name!r}; one of {', '.join(LISTS)}")
    return name


class RiskLists:
    """The blocklist and device blacklist over the gallery store; thread-safe as the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(
        self, list_name: str, subject: str, reason: str, case_ref: str, operator_id: str
    ) -> ListEntry:
        """Put a subject on a list, or update its reason and case; audited."""
        _check_list(list_name)
        check_text("subject", subject, 128)
        check_text("reason", reason, 256)
        check_text("case_ref", case_ref, 128)
        check_text("operator_id", operator_id, 128)
        event = NewEvent(
            type=f"{list_name}_ADD", outcome="OK", **_subject(list_name, subject),
            payload={"reason": reason, "case_ref": case_ref, "operator": operator_id},
        )  # fmt: skip
        entry = ListEntry(list_name, subject, reason, case_ref, operator_id, datetime.now(UTC),
                          event.event_id)  # fmt: skip
        values = {k: v for k, v in asdict(entry).items() if k not in ("list", "subject")}
        key = and_(list_entry_table.c.list == list_name, list_entry_table.c.subject == subject)
        with self.store.transaction() as conn:
            if conn.execute(update(list_entry_table).where(key).values(**values)).rowcount == 0:
                conn.execute(insert(list_entry_table).values(list=list_name, subject=subject,
                                                             **values))  # fmt: skip
            audit.append(conn, event_table, event)
        log.info("%s: entry added for case %s", list_name, case_ref)
        return entry

    def remove(self, list_name: str, subject: str, reason: str, operator_id: str) -> str | None:
        """Take a subject off a list; the audit event id, or None when it was not listed."""
        _check_list(list_name)
        check_text("operator_id", operator_id, 128)
        event = NewEvent(
            type=f"{list_name}_REMOVE", outcome="OK", **_subject(list_name, subject),
            payload={"reason": reason, "operator": operator_id},
        )  # fmt: skip
        key = and_(list_entry_table.c.list == list_name, list_entry_table.c.subject == subject)
        with self.store.transaction() as conn:
            if conn.execute(delete(list_entry_table).where(key)).rowcount == 0:
                return None
            audit.append(conn, event_table, event)
        return event.event_id

    def entries(
        self, list_name: str, page_size: int, after: str | None
    ) -> tuple[list[ListEntry], str | None]:
        """One page of a list in subject order, and the cursor of the next page (or None)."""
        _check_list(list_name)
        query = (
            select(list_entry_table)
            .where(list_entry_table.c.list == list_name)
            .order_by(list_entry_table.c.subject)
            .limit(page_size + 1)
        )
        if after:
            query = query.where(list_entry_table.c.subject > after)
        with self.store.connect() as conn:
            rows = conn.execute(query).all()
        page = [ListEntry(**row._mapping) for row in rows[:page_size]]
        return page, page[-1].subject if len(rows) > page_size else None

    def facts(self, customer_id: str, device_id: str) -> ListFacts:
        """List hits for a customer and a device (either may be "").

        One prepared statement of scalar subqueries answers the common case (no hit) in a
        single round trip on every verify; the entries are read only when one is listed.
        """
        params = {"customer_id": customer_id, "device_id": device_id}
        with self.store.connect() as conn:
            row = conn.execute(_LISTED, params).one()
            hits = {}
            if row[0] or row[1]:
                hits = {
                    entry.list: ListEntry(**entry._mapping)
                    for entry in conn.execute(_ENTRIES, params)
                }
        return ListFacts(hits.get(CUSTOMER_BLOCKLIST), hits.get(DEVICE_BLACKLIST))


def _key(list_name: str, subject: str) -> ColumnElement[bool]:
    return (list_entry_table.c.list == list_name) & (
        list_entry_table.c.subject == bindparam(subject)
    )


def _listed(list_name: str, subject: str) -> ScalarSelect[Any]:
    return select(func.count()).where(_key(list_name, subject)).scalar_subquery()


# Built once: constructing SQLAlchemy expressions per call cost more than running them.
_LISTED = select(_listed(CUSTOMER_BLOCKLIST, "customer_id"), _listed(DEVICE_BLACKLIST, "device_id"))
_ENTRIES = select(list_entry_table).where(
    _key(CUSTOMER_BLOCKLIST, "customer_id") | _key(DEVICE_BLACKLIST, "device_id")
)


def _subject(list_name: str, subject: str) -> dict[str, str]:
    """The audit event names the customer or device it concerns, so queries find it."""
    return {"customer_id" if list_name == CUSTOMER_BLOCKLIST else "device_id": subject}
