"""The append-only, hash-chained audit trail of every decision and every gallery change.

Each event row carries `hash = sha256(prev_hash + canonical JSON of its fields)`, where
`prev_hash` is the hash of the row before it (64 zeros for the first row). Editing, deleting,
inserting or reordering rows breaks a link that `verify` finds and names. Rewriting the whole
tail from the edit onwards is only caught against a head hash kept elsewhere, which is why
`ChainReport` reports the head.

Appends are serialised so the chain never forks: the `Store` opens SQLite write transactions
with `BEGIN IMMEDIATE` (the database write lock), and on PostgreSQL `append` takes a
transaction-scoped advisory lock. A unique `prev_hash` column backs both up in the schema.
Each append runs inside the transaction of the change it describes, so the event and the
change commit or vanish together.

There is deliberately no update or delete path for events: erasing a customer keeps their
events, which never hold images or embeddings (`encode_payload` refuses both).
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
from sqlalchemy import Connection, Insert, RowMapping, Select, Table, func, insert, select

GENESIS = "0" * 64
MAX_PAYLOAD_CHARS = 16_384
# Longer runs of numbers look like an embedding, which must never reach the audit trail;
# the smallest common face embeddings have 128 dimensions.
MAX_NUMBERS_IN_A_LIST = 64
# One fixed key for pg_advisory_xact_lock, derived from a name so it is unlikely to collide
# with another application's advisory locks on the same database.
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"faceguard.events").digest()[:8], "big", signed=True)
_HASHED_FIELDS = (
    "event_id",
    "occurred_at",
    "type",
    "customer_id",
    "device_id",
    "outcome",
    "payload",
)


class EventType(StrEnum):
    ENROLL = "ENROLL"
    VERIFY = "VERIFY"
    IDENTIFY = "IDENTIFY"
    DELETE = "DELETE"
    UPDATE_TEMPLATES = "UPDATE_TEMPLATES"
    KEY_ROTATION = "KEY_ROTATION"


class InvalidEvent(ValueError):
    """An event that must not be recorded: malformed, oversized, or carrying biometric data."""


@dataclass(frozen=True)
class NewEvent:
    """An event to append. `event_id` is made here so the caller knows it before the commit.

    For customer operations the `Store` fills `customer_id` from the operation itself.
    """

    type: str
    outcome: str
    device_id: str | None = None
    customer_id: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        check_text("type", self.type, 32)
        check_text("outcome", self.outcome, 32)
        if self.device_id is not None:
            check_text("device_id", self.device_id, 128)
        if self.customer_id is not None:
            check_text("customer_id", self.customer_id, 128)
        try:
            valid_id = str(uuid.UUID(self.event_id)) == self.event_id
        except (TypeError, ValueError, AttributeError):
            valid_id = False
        if not valid_id:
            raise InvalidEvent(f"event_id must be a lower-case UUID string, got {self.event_id!r}")


@dataclass(frozen=True)
class EventRecord:
    """An event as stored, with its place in the chain."""

    id: int
    event_id: str
    occurred_at: datetime
    type: str
    customer_id: str | None
    device_id: str | None
    outcome: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    """The outcome of `verify`.

    `rows` counts the rows verified intact before the first broken one (all rows when ok);
    `first_broken` is that row's `id`; `head_hash` is the hash of the last intact row, the
    value to anchor outside the database.
    """

    ok: bool
    rows: int
    first_broken: int | None
    reason: str
    head_hash: str | None = None


def encode_payload(payload: Mapping[str, Any]) -> str:
    """Canonical JSON text (sorted keys, no spaces) of a payload of plain values.

    numpy scalars are accepted as numbers; arrays, bytes, NaN and long numeric lists are
    refused so that images and embeddings cannot slip into the audit trail.
    """
    _refuse_vectors(payload)
    try:
        text = json.dumps(
            payload,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=plain_scalar,
        )
    except (TypeError, ValueError) as err:
        raise InvalidEvent(f"event payload is not plain JSON: {err}") from None
    if len(text) > MAX_PAYLOAD_CHARS:
        raise InvalidEvent(f"event payload is {len(text)} characters, over {MAX_PAYLOAD_CHARS}")
    return text


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """sha256 hex of `prev_hash` followed by the canonical JSON of the row's fields."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev_hash.encode("ascii") + canonical.encode("utf-8")).hexdigest()


def append(
    conn: Connection, events: Table, event: NewEvent, facts: Mapping[str, Any] | None = None
) -> str:
    """Append `event` (its payload merged with store-recorded `facts`) to the chain.

    Must run inside the write transaction of the change it records; returns the event id.
    """
    payload = encode_payload({**event.payload, **(facts or {})})
    _serialise_appends(conn)
    head_query, insert_row = _append_statements(events)
    head = conn.execute(head_query).scalar()
    prev_hash = head if head is not None else GENESIS
    row = {
        "event_id": event.event_id,
        "occurred_at": datetime.now(UTC),
        "type": event.type,
        "customer_id": event.customer_id,
        "device_id": event.device_id,
        "outcome": event.outcome,
        "payload": payload,
    }
    conn.execute(
        insert_row, {**row, "prev_hash": prev_hash, "hash": chain_hash(prev_hash, _hashed(row))}
    )
    return event.event_id


@functools.cache
def _append_statements(events: Table) -> tuple[Select[tuple[str]], Insert]:
    """The chain head query and the row insert, built once per table (every decision runs
    them; building a statement costs more than SQLite's running it)."""
    return select(events.c.hash).order_by(events.c.id.desc()).limit(1), insert(events)


def verify(conn: Connection, events: Table, batch: int = 10_000) -> ChainReport:
    """Walk the chain in id order, in batches, and name the first row that breaks it."""
    prev_hash, rows, last_id = GENESIS, 0, None
    while True:
        query = select(events).order_by(events.c.id).limit(batch)
        if last_id is not None:
            query = query.where(events.c.id > last_id)
        chunk = conn.execute(query).mappings().all()
        for row in chunk:
            problem = _row_problem(row, prev_hash)
            if problem:
                head = prev_hash if rows else None
                return ChainReport(False, rows, row["id"], problem, head)
            prev_hash, rows = row["hash"], rows + 1
        if len(chunk) < batch:
            break
        last_id = chunk[-1]["id"]
    return ChainReport(True, rows, None, "intact", prev_hash if rows else None)


def events_of(conn: Connection, events: Table, customer_id: str) -> list[EventRecord]:
    """A customer's events in chain order (they outlive the customer's erasure)."""
    query = select(events).where(events.c.customer_id == customer_id).order_by(events.c.id)
    return [_record(row) for row in conn.execute(query).mappings()]


def _serialise_appends(conn: Connection) -> None:
    """Hold the chain's append lock until commit (SQLite: already held via BEGIN IMMEDIATE)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
    elif dialect != "sqlite":
        raise NotImplementedError(f"no append lock for the {dialect} dialect")


def _hashed(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields covered by the hash, with the timestamp in one fixed UTC text form."""
    fields = {name: row[name] for name in _HASHED_FIELDS}
    fields["occurred_at"] = row["occurred_at"].astimezone(UTC).isoformat(timespec="microseconds")
    return fields


def _row_problem(row: RowMapping, prev_hash: str) -> str | None:
    if row["prev_hash"] != prev_hash:
        expected = "the chain start" if prev_hash == GENESIS else "the row before it"
        return (
            f"row {row['id']}: prev_hash does not link to {expected} "
            "(a row was deleted, inserted or reordered)"
        )
    if chain_hash(prev_hash, _hashed(row)) != row["hash"]:
        return f"row {row['id']}: hash does not match its contents (the row was edited)"
    return None


def _record(row: RowMapping) -> EventRecord:
    return EventRecord(**{**row, "payload": json.loads(row["payload"])})


def check_text(name: str, value: object, limit: int) -> None:
    """Identifiers and labels: 1-`limit` printable characters (so never a NUL or newline)."""
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise ValueError(f"{name} must be 1-{limit} printable characters, got {value!r}")


def plain_scalar(value: object) -> object:
    """json.dumps fallback: numpy scalars become Python numbers; anything else is refused."""
    if isinstance(value, np.generic) and isinstance(value, numbers.Number):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not allowed in an event payload")


_BINARY = bytes | bytearray | memoryview
_SCALARS = (str, int, float, bool, type(None))


def _refuse_vectors(value: object) -> None:
    if type(value) in _SCALARS:  # most of a payload; exact types, as ABC checks are slow
        return
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_vectors(item)
    elif isinstance(value, Sequence) and not isinstance(value, str | _BINARY):
        numeric = sum(isinstance(x, numbers.Number) and not isinstance(x, bool) for x in value)
        if numeric > MAX_NUMBERS_IN_A_LIST:
            raise InvalidEvent(
                f"event payload holds a list of {numeric} numbers; embeddings never go in events"
            )
        for item in value:
            _refuse_vectors(item)
    elif isinstance(value, np.ndarray | _BINARY):
        raise InvalidEvent(f"{type(value).__name__} is not allowed in an event payload")
