"""The durable gallery: customers, encrypted templates, consents and the audit chain.

`Store` is the source of truth that the vector index is rebuilt from. It speaks portable
SQLAlchemy Core to an embedded SQLite file (the default) or to PostgreSQL. Every change is
one transaction that also appends its audit event, so a crash leaves either all of it or
none of it. Template ids come from never-reused autoincrement keys (SQLite AUTOINCREMENT,
PostgreSQL sequences) because they double as the index's int64 ids: a reused id could make
a stale index entry point at someone else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from math import isfinite
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from service.domain import Consent
from service.store import audit_chain as audit
from service.store import changes, outbox, velocity
from service.store.audit_chain import ChainReport, EventRecord, EventType, NewEvent, check_text
from service.store.connection import WRITE, open_engine
from service.store.crypto import (
    Keyring,
    KeyringError,
    UnknownKeyError,
    open_vector,
    seal_vector,
)
from service.store.tables import (
    UTCDateTime,
    consent_table,
    customer_table,
    event_table,
    template_table,
)

log = logging.getLogger(__name__)

ACTIVE = "ACTIVE"
MAX_PAGE_SIZE = 1000
_IN_CHUNK = 500  # ids per IN (...) list, well under every driver's bound-parameter limit


class GalleryError(Exception):
    """Base of the store's domain errors."""


class CustomerExists(GalleryError):
    """Enrolment of a customer id that is already enrolled."""


class CustomerNotFound(GalleryError):
    """An operation on a customer id that is not enrolled."""


@dataclass(frozen=True, eq=False)
class NewTemplate:
    """A template to store: an embedding, the embedder version that made it, its quality."""

    vector: np.ndarray
    model: str
    quality: float

    def __post_init__(self) -> None:
        vector = np.asarray(self.vector)
        if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
            raise ValueError(f"template vector must be 1-D, non-empty, finite: {vector.shape}")
        check_text("model", self.model, 128)
        if not isfinite(self.quality):
            raise ValueError("template quality must be finite")


@dataclass(frozen=True, eq=False)
class StoredTemplate:
    """A decrypted template; `id` is also its id in the vector index."""

    id: int
    customer_id: str
    vector: np.ndarray
    model: str
    quality: float


@dataclass(frozen=True)
class CustomerRecord:
    """A customer's gallery entry; `embedder` is the model version of their newest template
    (`templates_of` shows each template's version while a model upgrade is under way)."""

    customer_id: str
    status: str
    template_count: int
    created_at: datetime
    updated_at: datetime
    consent: Consent | None
    embedder: str | None


@dataclass(frozen=True)
class CustomerActivity:
    """When a customer last used their biometrics (their latest event that was not a decline,
    or their record's last update if later), and whether their newest consent has expired."""

    customer_id: str
    last_activity: datetime
    consent_expired: bool


class Store:
    """Customers, encrypted templates, consents and the audit chain behind one database URL.

    Thread-safe: connections come from SQLAlchemy's pool, and the keyring is immutable and
    swapped whole by `rotate_keys`.
    """

    def __init__(self, url: str, keyring: Keyring, chain_key: audit.ChainKey | None = None) -> None:
        """`chain_key`: the audit key that keys the event chain (see `audit`); without one the
        store appends plain-hashed rows (tests, tools that only read)."""
        self._keyring = keyring
        self.chain_key = chain_key
        self._engine = open_engine(url)
        self._writer = self._engine.execution_options(
            **{WRITE: True, audit.CHAIN_KEY_OPTION: chain_key}
        )
        # How long velocity attempt rows stay (the velocity rule's longest window, a day at least).
        self.attempts_kept = velocity.KEEP
        self._reload_keyring: Callable[[], None] | None = None

    def _append(
        self, conn: Connection, event: NewEvent, facts: dict[str, Any] | None = None
    ) -> str:
        """Append a customer change's event and its outbox row (the fraud engine hears of
        every enrolment, update and erasure) in the change's transaction."""
        event_id = audit.append(conn, event_table, event, facts)
        outbox.enqueue(conn, event)
        changes.notify(conn)
        return event_id

    def append_event(self, conn: Connection, event: NewEvent) -> str:
        """Append `event` inside a `transaction()` of a module's own change, with the event
        hooks (its outbox row) like every event this store records."""
        return self._append(conn, event)

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction, for modules that keep their own tables in `METADATA`."""
        return self._writer.begin()

    def connect(self) -> Connection:
        """A read connection, for modules that keep their own tables in `METADATA`."""
        return self._engine.connect()

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @property
    def url(self) -> str:
        """The database URL, password included (for a connection of one's own)."""
        return self._engine.url.render_as_string(hide_password=False)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_schema(self, migrate: bool = True) -> None:
        """Bring the schema to this code's revision (`service.store.schema.migrate`: under a lock,
        safe on every start and from replicas at once), or with `migrate=False` only check
        that it is there (a shared database migrated by `faceguard db upgrade`)."""
        from service.store.schema import migrate as schema

        with self._writer.begin() as conn:
            if migrate:
                schema.upgrade(conn)
            else:
                schema.require_head(conn)
        if self.chain_key is not None:
            with self._writer.begin() as conn:
                if audit.key_chain(conn, event_table, self.chain_key):
                    log.info("audit chain keyed from now on (key %s)", self.chain_key.key_id)
        log.info("gallery schema ready on %s", self._engine.url.render_as_string())

    # --- changes: one transaction each, event included ---------------------------------

    def enroll(
        self,
        customer_id: str,
        templates: Sequence[NewTemplate],
        consent: Consent,
        event: NewEvent,
    ) -> list[int]:
        """Enrol a new customer with templates and consent; returns the new template ids."""
        event = _for_customer(event, customer_id)
        _check_templates(templates)
        with self._writer.begin() as conn:
            now = datetime.now(UTC)
            try:
                conn.execute(
                    insert(customer_table).values(
                        customer_id=customer_id, status=ACTIVE, created_at=now, updated_at=now
                    )
                )
            except IntegrityError:
                raise CustomerExists(customer_id) from None
            ids = self._insert_templates(conn, customer_id, templates, now)
            conn.execute(
                insert(consent_table).values(
                    customer_id=customer_id, **_consent_values(consent), recorded_at=now
                )
            )
            self._append(conn, event, {"template_ids_added": ids})
        log.debug("enrolled a customer with %d templates", len(ids))
        return ids

    def add_templates(
        self,
        customer_id: str,
        templates: Sequence[NewTemplate],
        replace: bool,
        event: NewEvent,
    ) -> tuple[list[int], list[int]]:
        """Add templates, or with `replace` swap all existing ones; returns (added, removed)."""
        event = _for_customer(event, customer_id)
        _check_templates(templates)
        with self._writer.begin() as conn:
            _lock_customer(conn, customer_id)
            removed = _delete_templates(conn, customer_id) if replace else []
            now = datetime.now(UTC)
            added = self._insert_templates(conn, customer_id, templates, now)
            conn.execute(
                update(customer_table)
                .where(customer_table.c.customer_id == customer_id)
                .values(updated_at=now)
            )
            facts = {"template_ids_added": added, "template_ids_removed": removed}
            self._append(conn, event, facts)
        if removed:
            self.scrub_log()
        return added, removed

    def delete_customer(self, customer_id: str, event: NewEvent) -> list[int]:
        """Erase a customer's templates, consents and row; returns the removed template ids.

        The audit events stay: they name the customer id but hold no biometric data.
        """
        event = _for_customer(event, customer_id)
        with self._writer.begin() as conn:
            _lock_customer(conn, customer_id)
            removed = _delete_templates(conn, customer_id)
            conn.execute(delete(consent_table).where(consent_table.c.customer_id == customer_id))
            conn.execute(delete(customer_table).where(customer_table.c.customer_id == customer_id))
            self._append(conn, event, {"template_ids_removed": removed})
        self.scrub_log()
        return removed

    def scrub_log(self) -> None:
        """SQLite: checkpoint the WAL into the database and truncate it, so the frames that
        held an erased customer's rows leave the disk with the call (secure_delete has zeroed
        them in the database pages). Waits for readers up to the busy timeout; logs when it
        could not finish (the next checkpoint completes it)."""
        if self._engine.dialect.name != "sqlite":
            return
        raw = self._engine.raw_connection()  # outside a transaction: a checkpoint needs that
        try:
            busy = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            raw.close()
        if busy:
            log.warning("WAL checkpoint after an erasure was blocked by a reader")

    def record_event(self, event: NewEvent) -> str:
        """Record a decision (verify, identify, liveness, a refusal) in one transaction: its
        audit event, its outbox row for the fraud engine and, for a declined attempt, its
        velocity attempt row. All of them commit, or none does."""
        with self._writer.begin() as conn:
            event_id = audit.append(conn, event_table, event)
            outbox.enqueue(conn, event)
            velocity.record_attempt(conn, event, self.attempts_kept)
        return event_id

    def rotate_keys(self, keyring: Keyring, batch: int = 1000) -> int:
        """Re-encrypt every template not under `keyring`'s active key; returns how many.

        The new keyring is used for all reads and writes from now on, so it must still hold
        every key in use. Each batch is its own transaction with its own KEY_ROTATION event,
        so rotation runs beside live traffic. A row written under the old key by a transaction
        that began before the switch is re-encrypted by running this again.
        """
        missing = (self._key_ids_in_use() | {self._keyring.active}) - set(keyring.key_ids)
        if missing:
            raise KeyringError(f"the new keyring lacks keys still in use: {sorted(missing)}")
        self._keyring = keyring
        return self.reseal(template_table, "customer_id", template_aad, batch)

    def reseal(
        self, table: Table, owner: str, aad: Callable[[str, int], bytes], batch: int = 1000
    ) -> int:
        """Re-encrypt the rows of an encrypted-template `table` (see `sealed_template_columns`)
        not under the active key, `aad(owner, id)` binding each; returns how many. Each batch
        is its own transaction with its own KEY_ROTATION event."""
        keyring = self._keyring
        total, last_id = 0, 0
        while True:
            with self._writer.begin() as conn:
                rows = _rows_not_under(conn, table, owner, keyring.active, last_id, batch)
                if not rows:
                    return total
                done = sum(_reseal(conn, keyring, table, row, aad) for row in rows)
                payload = {
                    "key_id": keyring.active,
                    "table": table.name,
                    "reencrypted": done,
                    "first_template_id": rows[0].id,
                    "last_template_id": rows[-1].id,
                }
                audit.append(
                    conn, event_table, NewEvent(EventType.KEY_ROTATION, "OK", payload=payload)
                )
            total, last_id = total + done, rows[-1].id
            log.info("re-encrypted %d %s under key %s", total, table.name, keyring.active)

    def _insert_templates(
        self, conn: Connection, customer_id: str, new: Sequence[NewTemplate], now: datetime
    ) -> list[int]:
        """Insert rows, then seal each vector with its row id in the AAD, in one transaction.

        The id is only known after the insert, so the row starts with an empty ciphertext
        that is replaced before the transaction can commit: no plaintext is ever written.
        """
        keyring = self._keyring  # one keyring for the whole operation, even mid-rotation
        ids = []
        for template in new:
            row_id = conn.execute(
                insert(template_table).values(
                    customer_id=customer_id,
                    key_id=keyring.active,
                    ciphertext=b"",
                    model=template.model,
                    quality=float(template.quality),
                    created_at=now,
                )
            ).inserted_primary_key[0]
            key_id, blob = seal_vector(keyring, template.vector, template_aad(customer_id, row_id))
            conn.execute(
                update(template_table)
                .where(template_table.c.id == row_id)
                .values(key_id=key_id, ciphertext=blob)
            )
            ids.append(int(row_id))
        return ids

    # --- reads ---------------------------------------------------------------------------

    def has_customer(self, customer_id: str) -> bool:
        """Whether the customer is enrolled: one indexed lookup, for the per-request check."""
        query = select(customer_table.c.customer_id).where(
            customer_table.c.customer_id == customer_id
        )
        with self._engine.connect() as conn:
            return conn.execute(query).first() is not None

    def consent_expiry(self, customer_id: str) -> tuple[bool, datetime | None]:
        """Whether the customer is enrolled, and when their latest consent expires (None:
        never, or no consent). One prepared statement: it runs on every verification."""
        with self._engine.connect() as conn:
            row = conn.execute(_CONSENT_EXPIRY, {"customer_id": customer_id}).first()
        return (False, None) if row is None else (True, row.expires_at)

    def get_customer(self, customer_id: str) -> CustomerRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(customer_table).where(customer_table.c.customer_id == customer_id)
            ).first()
            return _customer_records(conn, [row])[0] if row is not None else None

    def list_customers(
        self, page_size: int = 100, after: str | None = None
    ) -> tuple[list[CustomerRecord], str | None]:
        """One page in customer id order, after the cursor `after`; the cursor of the next
        page, or None on the last one. Keyset paging stays fast and stable under inserts."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1-{MAX_PAGE_SIZE}, got {page_size}")
        query = select(customer_table).order_by(customer_table.c.customer_id).limit(page_size + 1)
        if after is not None:
            query = query.where(customer_table.c.customer_id > after)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            page = rows[:page_size]
            cursor = page[-1].customer_id if len(rows) > page_size else None
            return _customer_records(conn, page), cursor

    def activity(self, now: datetime) -> list[CustomerActivity]:
        """Every customer's last activity and consent state at `now`, in customer id order
        (for the retention purge)."""
        last = (
            select(
                event_table.c.customer_id,
                func.max(event_table.c.occurred_at, type_=UTCDateTime()).label("last"),
            )
            .where(event_table.c.customer_id.is_not(None), event_table.c.outcome != "DECLINE")
            .group_by(event_table.c.customer_id)
            .subquery()
        )
        newest_consent = (
            select(func.max(consent_table.c.id))
            .group_by(consent_table.c.customer_id)
            .scalar_subquery()
        )
        expired = select(consent_table.c.customer_id).where(
            consent_table.c.id.in_(newest_consent),
            consent_table.c.expires_at.is_not(None),
            consent_table.c.expires_at <= literal(now, UTCDateTime()),
        )
        query = select(
            customer_table.c.customer_id,
            customer_table.c.updated_at,
            last.c.last,
            customer_table.c.customer_id.in_(expired).label("expired"),
        ).outerjoin(last, last.c.customer_id == customer_table.c.customer_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(customer_table.c.customer_id)).all()
        return [
            CustomerActivity(
                row.customer_id,
                max(row.updated_at, row.last) if row.last is not None else row.updated_at,
                bool(row.expired),
            )
            for row in rows
        ]

    def templates_of(self, customer_id: str) -> list[StoredTemplate]:
        """A customer's decrypted templates in id order (empty for an unknown customer)."""
        with self._engine.connect() as conn:
            rows = conn.execute(_TEMPLATES_OF, {"customer_id": customer_id}).all()
        return [
            StoredTemplate(row.id, row.customer_id, self._open(row), row.model, row.quality)
            for row in rows
        ]

    def template_models(self, customer_id: str) -> set[str]:
        """The embedder versions of a customer's templates, read without decrypting any."""
        query = select(template_table.c.model).where(template_table.c.customer_id == customer_id)
        with self._engine.connect() as conn:
            return set(conn.execute(query.distinct()).scalars())

    def iter_templates(
        self, batch: int = 10_000, model: str | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Yield (int64 ids, float32 vectors 2-D, customer ids) batches for an index rebuild.

        Each batch is read in its own short transaction, so a long rebuild never pins an old
        snapshot; pass `model` to rebuild one embedder's index when versions are mixed.
        """
        last_id = 0
        while True:
            query = select(template_table).where(template_table.c.id > last_id)
            if model is not None:
                query = query.where(template_table.c.model == model)
            with self._engine.connect() as conn:
                rows = conn.execute(query.order_by(template_table.c.id).limit(batch)).all()
            if not rows:
                return
            vectors = [self._open(row) for row in rows]
            if len({v.shape for v in vectors}) > 1:
                raise ValueError("templates of different dimensions; pass the embedder `model`")
            ids = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
            yield ids, np.stack(vectors), [row.customer_id for row in rows]
            last_id = rows[-1].id

    def template_ids(self, model: str | None = None) -> np.ndarray:
        """All template ids (int64, ascending), without decrypting anything."""
        query = select(template_table.c.id).order_by(template_table.c.id)
        if model is not None:
            query = query.where(template_table.c.model == model)
        with self._engine.connect() as conn:
            return np.fromiter(conn.execute(query).scalars(), dtype=np.int64)

    def template_count(self, model: str) -> int:
        """How many templates embedder `model` made (a cheap check of a replayed index)."""
        query = select(func.count()).select_from(template_table)
        with self._engine.connect() as conn:
            return int(conn.execute(query.where(template_table.c.model == model)).scalar())

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Decrypted vectors of the given template ids, in that order (for healing the index).

        Raises KeyError for an id the store does not hold.
        """
        wanted = [int(i) for i in ids]
        found: dict[int, np.ndarray] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                query = select(template_table).where(template_table.c.id.in_(chunk))
                found.update({row.id: self._open(row) for row in conn.execute(query)})
        return np.stack([found[i] for i in wanted]).astype(np.float32)

    def templates_by_id(self, ids: Iterable[int]) -> dict[int, StoredTemplate]:
        """Template id -> decrypted template, for re-scoring an index's candidates exactly;
        ids the store no longer holds (erased, replaced) are left out."""
        wanted = [int(i) for i in ids]
        found: dict[int, StoredTemplate] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                query = select(template_table).where(template_table.c.id.in_(chunk))
                for row in conn.execute(query):
                    found[row.id] = StoredTemplate(
                        row.id, row.customer_id, self._open(row), row.model, row.quality
                    )
        return found

    def templates_among(self, ids: np.ndarray, model: str) -> tuple[np.ndarray, np.ndarray]:
        """The given template ids that the store still holds for embedder `model`, ascending,
        and their decrypted vectors: what a replica following the change feed indexes (an id
        erased since its enrolment is simply not there)."""
        wanted = sorted({int(i) for i in ids})
        rows = []
        with self._engine.connect() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                query = select(template_table).where(
                    template_table.c.id.in_(chunk), template_table.c.model == model
                )
                rows.extend(conn.execute(query.order_by(template_table.c.id)))
        found = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return found, np.zeros((0, 0), np.float32)
        return found, np.stack([self._open(row) for row in rows]).astype(np.float32)

    def customer_of(self, ids: Iterable[int]) -> dict[int, str]:
        """Template id -> customer id for search results; unknown ids are left out."""
        wanted = [int(i) for i in ids]
        found: dict[int, str] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                rows = conn.execute(_OWNERS, {"ids": chunk})
                found.update({row.id: row.customer_id for row in rows})
        return found

    def events_of(self, customer_id: str) -> list[EventRecord]:
        """A customer's audit events in chain order, including after their erasure."""
        with self._engine.connect() as conn:
            return audit.events_of(conn, event_table, customer_id)

    def find_events(
        self,
        customer_id: str | None = None,
        device_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: int = 0,
        limit: int = MAX_PAGE_SIZE,
    ) -> list[EventRecord]:
        """Audit events in chain order, filtered; `after` is a chain id (`EventRecord.id`)."""
        with self._engine.connect() as conn:
            return audit.find_events(
                conn, event_table, customer_id, device_id, since, until, after, limit
            )

    def has_audit_events(self) -> bool:
        """Whether the database holds the audit events table: a faceguard database, not an
        empty or foreign one (checked before reading a store that should already exist)."""
        with self._engine.connect() as conn:
            return inspect(conn).has_table(event_table.name)

    def verify_chain(self) -> ChainReport:
        """Check the whole audit chain; see `audit.verify`."""
        with self._engine.connect() as conn:
            return audit.verify(conn, event_table, self.chain_key)

    def _key_ids_in_use(self) -> set[str]:
        with self._engine.connect() as conn:
            return set(conn.execute(select(template_table.c.key_id).distinct()).scalars())

    def _open(self, row: Row[Any]) -> np.ndarray:
        aad = template_aad(row.customer_id, row.id)
        try:
            return open_vector(self._keyring, row.key_id, row.ciphertext, aad)
        except UnknownKeyError:
            if self._reload_keyring is None:
                raise
            # Another process rotated the keys: re-read the key file once and try again.
            self._reload_keyring()
            return open_vector(self._keyring, row.key_id, row.ciphertext, aad)

    def on_unknown_key(self, reload: Callable[[], None]) -> None:
        """Call `reload` (which should `use_keyring` a fresh copy of the key file) when a row
        names a key this store's keyring lacks, as after `faceguard keys rotate`."""
        self._reload_keyring = reload

    def use_keyring(self, keyring: Keyring) -> None:
        """Read and write under `keyring` from now on, without re-encrypting anything (a
        running service picking up a rotated key file); it must hold every key in use."""
        missing = self._key_ids_in_use() - set(keyring.key_ids)
        if missing:
            raise KeyringError(f"the keyring lacks keys still in use: {sorted(missing)}")
        self._keyring = keyring


def template_aad(customer_id: str, template_id: int) -> bytes:
    """The AAD that ties a ciphertext to its customer and row (ids hold no NUL characters)."""
    return b"faceguard/template/v1\0%s\0%d" % (customer_id.encode("utf-8"), template_id)


def _for_customer(event: NewEvent, customer_id: str) -> NewEvent:
    check_text("customer_id", customer_id, 128)
    if event.customer_id not in (None, customer_id):
        raise ValueError(f"event is for {event.customer_id!r}, operation for {customer_id!r}")
    return replace(event, customer_id=customer_id)


def _check_templates(new: Sequence[NewTemplate]) -> None:
    if not new:
        raise ValueError("at least one template is required")
    if not all(isinstance(t, NewTemplate) for t in new):
        raise TypeError("templates must be NewTemplate instances")


def _consent_values(consent: Consent) -> dict[str, Any]:
    return {
        "purpose": consent.purpose,
        "given_at": consent.given_at,
        "channel": consent.channel,
        "operator_id": consent.operator_id,
        "expires_at": consent.expires_at,
    }


def _lock_customer(conn: Connection, customer_id: str) -> None:
    """Lock the customer row for this transaction (FOR UPDATE; a no-op under SQLite's
    database lock) so concurrent changes to one customer apply one after the other."""
    found = conn.execute(
        select(customer_table.c.customer_id)
        .where(customer_table.c.customer_id == customer_id)
        .with_for_update()
    ).first()
    if found is None:
        raise CustomerNotFound(customer_id)


def _delete_templates(conn: Connection, customer_id: str) -> list[int]:
    ids = list(
        conn.execute(
            select(template_table.c.id)
            .where(template_table.c.customer_id == customer_id)
            .order_by(template_table.c.id)
        ).scalars()
    )
    conn.execute(delete(template_table).where(template_table.c.customer_id == customer_id))
    return ids


def _rows_not_under(
    conn: Connection, table: Table, owner: str, key_id: str, after: int, limit: int
) -> list[Row[Any]]:
    query = (
        select(table.c.id, table.c[owner].label("owner"), table.c.key_id, table.c.ciphertext)
        .where(table.c.id > after, table.c.key_id != key_id)
        .order_by(table.c.id)
        .limit(limit)
    )
    return list(conn.execute(query).all())


def _reseal(
    conn: Connection,
    keyring: Keyring,
    table: Table,
    row: Row[Any],
    aad: Callable[[str, int], bytes],
) -> int:
    """Re-encrypt one row under the active key; 0 if it changed since it was read."""
    bound = aad(row.owner, row.id)
    key_id, blob = keyring.encrypt(keyring.decrypt(row.key_id, row.ciphertext, bound), bound)
    result = conn.execute(
        update(table)
        .where(table.c.id == row.id, table.c.key_id == row.key_id)
        .values(key_id=key_id, ciphertext=blob)
    )
    return result.rowcount


def _customer_records(conn: Connection, rows: Sequence[Row[Any]]) -> list[CustomerRecord]:
    """Records for a page of customer rows, in three set queries rather than three per row."""
    ids = [row.customer_id for row in rows]
    if not ids:
        return []
    counts = dict(
        conn.execute(
            select(template_table.c.customer_id, func.count())
            .where(template_table.c.customer_id.in_(ids))
            .group_by(template_table.c.customer_id)
        ).all()
    )
    newest = (
        select(func.max(template_table.c.id))
        .where(template_table.c.customer_id.in_(ids))
        .group_by(template_table.c.customer_id)
    )
    embedders = dict(
        conn.execute(
            select(template_table.c.customer_id, template_table.c.model).where(
                template_table.c.id.in_(newest)
            )
        ).all()
    )
    latest = _latest_consents(conn, ids)
    return [
        CustomerRecord(
            customer_id=row.customer_id,
            status=row.status,
            template_count=counts.get(row.customer_id, 0),
            created_at=row.created_at,
            updated_at=row.updated_at,
            consent=latest.get(row.customer_id),
            embedder=embedders.get(row.customer_id),
        )
        for row in rows
    ]


_CONSENT_EXPIRY = select(
    customer_table.c.customer_id,
    select(consent_table.c.expires_at)
    .where(consent_table.c.customer_id == customer_table.c.customer_id)
    .order_by(consent_table.c.id.desc())
    .limit(1)
    .scalar_subquery()
    .label("expires_at"),
).where(customer_table.c.customer_id == bindparam("customer_id"))


# Statements that run on every verification, built once (SQLAlchemy's construction of a
# statement costs more than SQLite's execution of these).
_TEMPLATES_OF = (
    select(template_table)
    .where(template_table.c.customer_id == bindparam("customer_id"))
    .order_by(template_table.c.id)
)
_OWNERS = select(template_table.c.id, template_table.c.customer_id).where(
    template_table.c.id.in_(bindparam("ids", expanding=True))
)


def _latest_consents(conn: Connection, ids: list[str]) -> dict[str, Consent]:
    """Each customer's most recently recorded consent (highest id: ids follow recording)."""
    newest = (
        select(func.max(consent_table.c.id))
        .where(consent_table.c.customer_id.in_(ids))
        .group_by(consent_table.c.customer_id)
    )
    return {
        row.customer_id: Consent(
            purpose=row.purpose,
            given_at=row.given_at,
            channel=row.channel,
            operator_id=row.operator_id,
            expires_at=row.expires_at,
            recorded_at=row.recorded_at,
        )
        for row in conn.execute(select(consent_table).where(consent_table.c.id.in_(newest)))
    }
