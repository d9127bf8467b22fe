"""The append-only, hash-chained audit trail of every decision and every gallery change.

Each event row carries `hash = sha256(prev_hash + canonical JSON of its fields)`, where
`prev_hash` is the hash of the row before it (64 zeros for the first row). Editing, deleting,
inserting or reordering rows breaks a link that `verify` finds and names.

A plain hash can be recomputed by anyone who can write the table, so the chain is keyed: from
an `AUDIT_CHAIN_KEYED` row on (written once, when a store first opens with a `ChainKey`), each
row's hash is `HMAC-SHA256(audit key, prev_hash + canonical JSON)`, with the key kept outside
the database (`ChainKey`, a file beside the template keyring). Rows before that marker keep
their plain hash (existing chains stay verifiable); the first keyed row links to them, so
rewriting them breaks it too. Deleting the newest rows leaves a shorter intact chain: signed
checkpoints of the head, shipped out of the database (`service.store.checkpoints`), catch
that, and a tail rewritten back to plain hashes.

Appends are serialised so the chain never forks: the `Store` opens SQLite write transactions
with `BEGIN IMMEDIATE` (the database write lock), and on PostgreSQL `append` takes a
transaction-scoped advisory lock. A unique `prev_hash` column backs both up in the schema.
Each append runs inside the transaction of the change it describes, so the event and the
change commit or vanish together.

There is deliberately no update or delete path for events: erasing a customer keeps their
events, which never hold images or embeddings (`encode_payload` refuses both).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import numbers
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Insert, RowMapping, Select, Table, func, insert, select

GENESIS = "0" * 64
# The execution option by which a store's write connections carry its `ChainKey`.
CHAIN_KEY_OPTION = "faceguard_chain_key"
KEYED_MARKER = "AUDIT_CHAIN_KEYED"
_KEY_BYTES = 32
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
    AUDIT_CHAIN_KEYED = KEYED_MARKER


class InvalidEvent(ValueError):
    """An event that must not be recorded: malformed, oversized, or carrying biometric data."""


class ChainKeyError(ValueError):
    """An audit key that cannot be loaded, or that is not the one the chain was keyed with.
    Messages never contain key material."""


@dataclass(frozen=True, repr=False)
class ChainKey:
    """The audit key: HMAC-SHA256 of the chain's rows, and (a key derived from it) of the
    checkpoints. Its id is derived from the key, so a wrong key file is named, not guessed."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != _KEY_BYTES:
            raise ChainKeyError(f"the audit key is {len(self.secret)} bytes, expected {_KEY_BYTES}")

    def __repr__(self) -> str:
        return f"ChainKey(key_id={self.key_id!r})"

    @functools.cached_property
    def key_id(self) -> str:
        return hashlib.sha256(b"faceguard audit key id\0" + self.secret).hexdigest()[:16]

    def chain_hash(self, prev_hash: str, fields: Mapping[str, Any]) -> str:
        """The keyed form of `chain_hash`: the same bytes, under HMAC-SHA256."""
        return hmac.new(self.secret, _chained(prev_hash, fields), hashlib.sha256).hexdigest()

    def sign(self, data: bytes) -> str:
        """A checkpoint's signature, under a key derived for that purpose alone."""
        return hmac.new(self._checkpoint_key, data, hashlib.sha256).hexdigest()

    @functools.cached_property
    def _checkpoint_key(self) -> bytes:
        return hmac.new(self.secret, b"faceguard audit checkpoint", hashlib.sha256).digest()

    @classmethod
    def generate(cls) -> ChainKey:
        return cls(os.urandom(_KEY_BYTES))

    @classmethod
    def from_file(cls, path: Path) -> ChainKey:
        """Read `{"key": "<base64 of 32 bytes>"}`."""
        try:
            document = json.loads(Path(path).read_text())
            return cls(base64.b64decode(document["key"], validate=True))
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ChainKeyError(f"audit key file {path}: {type(exc).__name__}") from None

    def dump(self, path: Path) -> None:
        """Write a new key file, mode 0600; never replaces an existing one (that would orphan
        the chain it keys)."""
        text = json.dumps({"key_id": self.key_id, "key": base64.b64encode(self.secret).decode()})
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())


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
    head_row: int | None = None  # the id of the last intact row
    keyed_from: int | None = None  # the id of the AUDIT_CHAIN_KEYED row, None: not keyed


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
    return hashlib.sha256(_chained(prev_hash, fields)).hexdigest()


def _chained(prev_hash: str, fields: Mapping[str, Any]) -> bytes:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return prev_hash.encode("ascii") + canonical.encode("utf-8")


def _row_hash(key: ChainKey | None, prev_hash: str, fields: Mapping[str, Any]) -> str:
    return key.chain_hash(prev_hash, fields) if key is not None else chain_hash(prev_hash, fields)


def append(
    conn: Connection, events: Table, event: NewEvent, facts: Mapping[str, Any] | None = None
) -> str:
    """Append `event` (its payload merged with store-recorded `facts`) to the chain.

    Must run inside the write transaction of the change it records; returns the event id.
    The row is keyed when the connection carries the store's `ChainKey` (`CHAIN_KEY_OPTION`).
    """
    key = conn.get_execution_options().get(CHAIN_KEY_OPTION)
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
        insert_row, {**row, "prev_hash": prev_hash, "hash": _row_hash(key, prev_hash, _hashed(row))}
    )
    return event.event_id


def key_chain(conn: Connection, events: Table, key: ChainKey) -> bool:
    """Start the keyed chain (append its AUDIT_CHAIN_KEYED row) unless it has started; refuse
    a key other than the one it was started with. Returns whether it started now."""
    query = select(events.c.payload).where(events.c.type == KEYED_MARKER).limit(1)
    marker = conn.execute(query).scalar()
    if marker is not None:
        keyed_with = _marker_key_id(marker)
        if keyed_with != key.key_id:
            raise ChainKeyError(
                f"the audit chain is keyed with key {keyed_with}, not with the configured "
                f"audit key {key.key_id}"
            )
        return False
    append(conn, events, NewEvent(EventType.AUDIT_CHAIN_KEYED, "OK", payload={
        "key_id": key.key_id}))  # fmt: skip
    return True


def head(conn: Connection, events: Table) -> tuple[int, str] | None:
    """The last row's id and hash, or None for an empty chain."""
    row = conn.execute(select(events.c.id, events.c.hash).order_by(events.c.id.desc()).limit(1))
    found = row.first()
    return (int(found[0]), found[1]) if found is not None else None


def hash_at(conn: Connection, events: Table, row_id: int) -> str | None:
    """The hash of row `row_id`, or None when there is no such row."""
    return conn.execute(select(events.c.hash).where(events.c.id == row_id)).scalar()


@functools.cache
def _append_statements(events: Table) -> tuple[Select[tuple[str]], Insert]:
    """The chain head query and the row insert, built once per table (every decision runs
    them; building a statement costs more than SQLite's running it)."""
    return select(events.c.hash).order_by(events.c.id.desc()).limit(1), insert(events)


def verify(
    conn: Connection, events: Table, key: ChainKey | None = None, batch: int = 10_000
) -> ChainReport:
    """Walk the chain in id order, in batches, and name the first row that breaks it. From the
    AUDIT_CHAIN_KEYED row on, every hash must be the keyed one (so `key` is needed)."""
    prev_hash, rows, last_id, keyed_from = GENESIS, 0, None, None
    while True:
        query = select(events).order_by(events.c.id).limit(batch)
        if last_id is not None:
            query = query.where(events.c.id > last_id)
        chunk = conn.execute(query).mappings().all()
        for row in chunk:
            problem = _key_problem(row, key) if row["type"] == KEYED_MARKER else None
            if problem is None and row["type"] == KEYED_MARKER and keyed_from is None:
                keyed_from = row["id"]
            problem = problem or _row_problem(row, prev_hash, key if keyed_from else None)
            if problem:
                head = prev_hash if rows else None
                return ChainReport(False, rows, row["id"], problem, head, last_id, keyed_from)
            prev_hash, rows, last_id = row["hash"], rows + 1, row["id"]
        if len(chunk) < batch:
            break
    return ChainReport(True, rows, None, "intact", prev_hash if rows else None, last_id, keyed_from)


def _marker_key_id(payload: str) -> object:
    """The key id an AUDIT_CHAIN_KEYED row names; None for an edited payload that names none
    (it is then a key mismatch at that row, not a crash of the check)."""
    try:
        return json.loads(payload).get("key_id")
    except (ValueError, AttributeError):
        return None


def _key_problem(row: RowMapping, key: ChainKey | None) -> str | None:
    """Whether the chain can be checked past its AUDIT_CHAIN_KEYED row with `key`."""
    keyed_with = _marker_key_id(row["payload"])
    if key is None:
        return f"row {row['id']}: the chain is keyed (key {keyed_with}); the audit key is needed"
    if keyed_with != key.key_id:
        return f"row {row['id']}: the chain is keyed with key {keyed_with}, not {key.key_id}"
    return None


def events_of(conn: Connection, events: Table, customer_id: str) -> list[EventRecord]:
    """A customer's events in chain order (they outlive the customer's erasure)."""
    query = select(events).where(events.c.customer_id == customer_id).order_by(events.c.id)
    return [_record(row) for row in conn.execute(query).mappings()]


def find_events(
    conn: Connection,
    events: Table,
    customer_id: str | None,
    device_id: str | None,
    since: datetime | None,
    until: datetime | None,
    after: int,
    limit: int,
) -> list[EventRecord]:
    """Up to `limit` events in chain order after chain id `after`, for the given customer,
    device and time range [since, until) (None: any)."""
    query = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    if customer_id:
        query = query.where(events.c.customer_id == customer_id)
    if device_id:
        query = query.where(events.c.device_id == device_id)
    if since is not None:
        query = query.where(events.c.occurred_at >= since)
    if until is not None:
        query = query.where(events.c.occurred_at < until)
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


def _row_problem(row: RowMapping, prev_hash: str, key: ChainKey | None) -> str | None:
    if row["prev_hash"] != prev_hash:
        expected = "the chain start" if prev_hash == GENESIS else "the row before it"
        return (
            f"row {row['id']}: prev_hash does not link to {expected} "
            "(a row was deleted, inserted or reordered)"
        )
    if _row_hash(key, prev_hash, _hashed(row)) != row["hash"]:
        if key is not None:
            return (
                f"row {row['id']}: hash is not the audit key's for its contents "
                "(the row was edited, or the chain rewritten without the key)"
            )
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
