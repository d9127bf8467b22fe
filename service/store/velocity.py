"""Velocity: failed attempts per device and per customer, the lockouts they cause, and lifts.

Who can lock whom out is the point of this module. One kiosk certificate must not be able to
lock a customer out everywhere, so a failed attempt is counted against:

- the device, always (a refusal before any decision too: bad image, no face, unknown id);
- the customer it names, only when a face was compared with that customer and did not match
  (`NO_MATCH` with a score). An attempt without a face says nothing about the customer.

The velocity rule (`rules.velocity`, limits in the policy) then locks out:

- a device with `device_failures` failed attempts in `device_window_s`;
- a customer *at one device* after `customer_failures` non-matching faces from that device in
  `customer_window_s` (the customer is still served elsewhere);
- a customer *everywhere* only when those non-matching faces came from at least
  `customer_devices` different devices;

each until `cooldown_s` after the latest counted attempt. An admin lifts a lockout with a
reason (`RiskAdmin.LiftLockout`, audited with the operator's identity): the attempts it was
built on stop counting, so the rule respects the lift at once.

The attempts live in their own table, written by the store (`record_attempt`) in the
transaction of the decision's audit event, so a recorded decision is always counted and the
count never needs to parse event payloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Index,
    String,
    Table,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    select,
    update,
)

from service.store import audit_chain as audit
from service.store.audit_chain import NewEvent
from service.store.tables import METADATA, ROW_ID, UTCDateTime, event_table

if TYPE_CHECKING:
    from service.store.customers import Store

# Decisions whose DECLINE is a failed attempt.
ATTEMPT_TYPES = ("VERIFY", "IDENTIFY")
LIFT_EVENT = "LOCKOUT_LIFT"
# Attempts older than every window (and a day) are dropped with every PRUNE_EVERY-th attempt
# row; the audit chain keeps the events themselves.
KEEP = timedelta(days=1)
PRUNE_EVERY = 1000
DEVICE, CUSTOMER_AT_DEVICE, CUSTOMER = "DEVICE", "CUSTOMER_AT_DEVICE", "CUSTOMER"

attempt_table = Table(
    "velocity_attempts",
    METADATA,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("device_id", String(128)),
    # The customer named, only when a face was compared with them and did not match.
    Column("customer_id", String(128)),
    Column("device_lifted", Boolean(), nullable=False, default=False),
    Column("customer_lifted", Boolean(), nullable=False, default=False),
    sqlite_autoincrement=True,
)
attempts_by_device = Index(
    "ix_velocity_attempts_device", attempt_table.c.device_id, attempt_table.c.occurred_at
)
attempts_by_customer = Index(
    "ix_velocity_attempts_customer", attempt_table.c.customer_id, attempt_table.c.occurred_at
)


@dataclass(frozen=True)
class Limits:
    """The velocity rule's parameters from the policy."""

    device_failures: int
    device_window_s: float
    customer_failures: int
    customer_window_s: float
    customer_devices: int
    cooldown_s: float

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Limits:
        return cls(
            int(params["device_failures"]), float(params["device_window_s"]),
            int(params["customer_failures"]), float(params["customer_window_s"]),
            int(params["customer_devices"]), float(params["cooldown_s"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Failures:
    """Counted failed attempts within a window: how many, the latest, from how many devices."""

    count: int = 0
    latest: datetime | None = None
    devices: int = 0

    def locked_for(self, limit: int, now: datetime, cooldown_s: float) -> float:
        """Seconds of lockout left: `limit` failures, the latest within the cool-down."""
        if self.count < limit or self.latest is None:
            return 0.0
        return max(0.0, cooldown_s - (now - self.latest).total_seconds())


@dataclass(frozen=True)
class VelocityFacts:
    """What the velocity rule needs about one decision's device and customer."""

    device: Failures = field(default_factory=Failures)
    customer_here: Failures = field(default_factory=Failures)  # from this device
    customer: Failures = field(default_factory=Failures)  # from every device


@dataclass(frozen=True)
class Lockout:
    """A lockout in force: its scope, subject, the attempts behind it and when it ends."""

    scope: str  # DEVICE, CUSTOMER_AT_DEVICE or CUSTOMER
    customer_id: str
    device_id: str
    failures: int
    devices: int
    until: datetime


class NotLocked(LookupError):
    """A lift for a subject with no lockout in force."""


def counts_against_customer(event: NewEvent) -> bool:
    """A face was compared with the named customer and did not match."""
    payload = event.payload
    return (
        event.customer_id is not None
        and payload.get("match_score") is not None
        and "NO_MATCH" in (payload.get("reason_codes") or ())
    )


def record_attempt(conn: Connection, event: NewEvent, keep: timedelta) -> None:
    """Count a declined attempt, in the transaction of its audit event (see `Store`); every
    PRUNE_EVERY-th row also drops the attempts older than `keep`."""
    if event.type not in ATTEMPT_TYPES or event.outcome != "DECLINE":
        return
    customer = event.customer_id if counts_against_customer(event) else None
    if event.device_id is None and customer is None:
        return  # counts against no one (an investigator's refused search): no row
    now = datetime.now(UTC)
    row_id = conn.execute(
        insert(attempt_table).values(
            event_id=event.event_id, occurred_at=now,
            device_id=event.device_id, customer_id=customer,
            device_lifted=False, customer_lifted=False,
        )
    ).inserted_primary_key[0]  # fmt: skip
    if row_id % PRUNE_EVERY == 0:  # ids are never reused: one prune per PRUNE_EVERY attempts
        conn.execute(delete(attempt_table).where(attempt_table.c.occurred_at < now - keep))


def _counted_since(who: str, since: str, lifted: str) -> tuple[Any, ...]:
    """The conditions of one subject's attempts that still count: in the window, not lifted."""
    c = attempt_table.c
    return (
        c[who] == bindparam(who),
        c.occurred_at >= bindparam(since, type_=UTCDateTime()),
        c[lifted] == false(),
    )


def _counted(rows: tuple[Any, ...]) -> Failures:
    count, latest, devices = rows
    if isinstance(latest, str):  # SQLite's max() returns the stored text
        latest = datetime.fromisoformat(latest).replace(tzinfo=UTC)
    return Failures(int(count or 0), latest, int(devices or 0))


def _aggregate(*where: Any) -> list[Any]:
    c = attempt_table.c
    return [
        select(func.count()).where(*where).scalar_subquery(),
        select(func.max(c.occurred_at)).where(*where).scalar_subquery(),
        select(func.count(c.device_id.distinct())).where(*where).scalar_subquery(),
    ]


_DEVICE = _counted_since("device_id", "device_since", "device_lifted")
_CUSTOMER = _counted_since("customer_id", "customer_since", "customer_lifted")
# Built once: one round trip of scalar subqueries on every decision.
_FACTS = select(
    *_aggregate(*_DEVICE),
    *_aggregate(*_CUSTOMER, attempt_table.c.device_id == bindparam("device_id")),
    *_aggregate(*_CUSTOMER),
)


class Velocity:
    """Failed attempts and lockouts over the store's database; thread-safe as the store."""

    def __init__(self, store: Store, limits: Limits | None) -> None:
        self.store = store
        self.limits = limits
        longest = max(limits.device_window_s, limits.customer_window_s) if limits else 0.0
        self.keep = max(KEEP, timedelta(seconds=longest))  # how long attempt rows must stay

    def facts(self, customer_id: str, device_id: str) -> VelocityFacts:
        """The counted failures of a device, of a customer at it, and of the customer."""
        if self.limits is None:
            return VelocityFacts()
        now = datetime.now(UTC)
        params = {
            "customer_id": customer_id,
            "device_id": device_id,
            "customer_since": now - timedelta(seconds=self.limits.customer_window_s),
            "device_since": now - timedelta(seconds=self.limits.device_window_s),
        }
        with self.store.connect() as conn:
            row = conn.execute(_FACTS, params).one()
        return VelocityFacts(_counted(row[0:3]), _counted(row[3:6]), _counted(row[6:9]))

    def device_locked(self, device_id: str) -> bool:
        """Whether the device is locked out now."""
        if self.limits is None or not device_id:
            return False
        failures = self.facts("", device_id).device
        lim = self.limits
        return bool(failures.locked_for(lim.device_failures, datetime.now(UTC), lim.cooldown_s))

    def lockouts(self, limit: int) -> list[Lockout]:
        """The lockouts in force now, latest ending first, at most `limit`."""
        if self.limits is None:
            return []
        lim, now, c = self.limits, datetime.now(UTC), attempt_table.c
        device_since = now - timedelta(seconds=lim.device_window_s)
        customer_since = now - timedelta(seconds=lim.customer_window_s)
        stats = (func.count(), func.max(c.occurred_at), func.count(c.device_id.distinct()))
        queries = (
            (DEVICE, lim.device_failures, select(literal(""), c.device_id, *stats)
             .where(c.device_id.is_not(None), c.occurred_at >= device_since, ~c.device_lifted)
             .group_by(c.device_id)),
            (CUSTOMER_AT_DEVICE, lim.customer_failures, select(c.customer_id, c.device_id, *stats)
             .where(c.customer_id.is_not(None), c.occurred_at >= customer_since,
                    ~c.customer_lifted)
             .group_by(c.customer_id, c.device_id)),
            (CUSTOMER, lim.customer_failures, select(c.customer_id, literal(""), *stats)
             .where(c.customer_id.is_not(None), c.occurred_at >= customer_since,
                    ~c.customer_lifted)
             .group_by(c.customer_id)),
        )  # fmt: skip
        found = []
        with self.store.connect() as conn:
            for scope, needed, query in queries:
                for customer, device, *counts in conn.execute(query.having(stats[0] >= needed)):
                    failures = _counted(tuple(counts))
                    if scope == CUSTOMER and failures.devices < lim.customer_devices:
                        continue
                    left = failures.locked_for(needed, now, lim.cooldown_s)
                    if left:
                        until = now + timedelta(seconds=left)
                        found.append(Lockout(scope, customer, device or "", failures.count,
                                             failures.devices, until))  # fmt: skip
        found.sort(key=lambda lockout: lockout.until, reverse=True)
        return found[:limit]

    def lift(
        self, customer_id: str, device_id: str, reason: str, operator: str
    ) -> tuple[str, list[Lockout]]:
        """Lift the lockouts of a customer (everywhere, or at `device_id`) or of a device: the
        attempts behind them stop counting. Audited; the event id and the lockouts lifted."""
        held = [
            lockout
            for lockout in self.lockouts(limit=1_000_000)
            if _covers(lockout, customer_id, device_id)
        ]
        if not held:
            raise NotLocked(customer_id or device_id)
        c = attempt_table.c
        if customer_id:
            where = [c.customer_id == customer_id] + ([c.device_id == device_id] if device_id
                                                      else [])  # fmt: skip
            change = update(attempt_table).where(and_(*where), ~c.customer_lifted)
            change = change.values(customer_lifted=True)
        else:
            change = update(attempt_table).where(c.device_id == device_id, ~c.device_lifted)
            change = change.values(device_lifted=True)
        event = NewEvent(
            type=LIFT_EVENT, outcome="OK", customer_id=customer_id or None,
            device_id=device_id or None,
            payload={
                "reason": reason, "operator": operator,
                "lifted": [{"scope": h.scope, "customer_id": h.customer_id,
                            "device_id": h.device_id, "failures": h.failures} for h in held],
            },
        )  # fmt: skip
        with self.store.transaction() as conn:
            conn.execute(change)
            audit.append(conn, event_table, event)
        return event.event_id, held


def _covers(lockout: Lockout, customer_id: str, device_id: str) -> bool:
    """Whether a lift of (customer, device) ends this lockout."""
    if customer_id and device_id:
        pair = (lockout.customer_id, lockout.device_id)
        return lockout.scope == CUSTOMER_AT_DEVICE and pair == (customer_id, device_id)
    if customer_id:
        return lockout.customer_id == customer_id
    return lockout.scope == DEVICE and lockout.device_id == device_id
