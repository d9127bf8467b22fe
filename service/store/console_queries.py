"""The web console's read queries: decisions filtered and paged, one decision, the
dashboard's figures and a customer's last activity.

Decisions are the audit chain's VERIFY, IDENTIFY, CHECK_LIVENESS, ENROLL and UPDATE_TEMPLATES
events, and CALL (a call refused for its caller, recorded as a declined decision); their scores,
rules and reasons are in the event's JSON payload, which is read here, never in the pages.
A reason-code filter is matched in SQL on the payload text (a code is `[A-Z0-9_]+`, quoted)
and confirmed on the parsed reason list, so a rule that did not fire never matches.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, select

from service.store.customers import Store
from service.store.tables import event_table

DECISION_TYPES = ("VERIFY", "IDENTIFY", "CHECK_LIVENESS", "ENROLL", "UPDATE_TEMPLATES", "CALL")
OUTCOMES = ("APPROVE", "REVIEW", "DECLINE")
REASON_CODE = re.compile(r"[A-Z0-9_]{1,64}")
# Rows a filtered page reads at most before it answers with what it found (a reason code that
# few decisions carry must not make one request scan the whole chain).
SCAN_LIMIT = 5_000
# The dashboard reads at most this many decisions of its window.
DASHBOARD_ROWS = 50_000


@dataclass(frozen=True)
class DecisionFilter:
    """What the decisions page asks for; empty fields do not filter."""

    outcome: str = ""
    reason: str = ""
    customer_id: str = ""
    device_id: str = ""
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class DecisionRow:
    """One decision as the console lists and shows it."""

    id: int
    event_id: str
    occurred_at: datetime
    type: str
    customer_id: str
    device_id: str
    outcome: str
    payload: dict[str, Any]

    @property
    def reason_codes(self) -> list[str]:
        return [str(code) for code in self.payload.get("reason_codes") or []]


@dataclass(frozen=True)
class Dashboard:
    """Decisions of the last `hours` hours: per hour by outcome, top reasons, per device."""

    hours: list[datetime]
    per_hour: dict[str, list[int]]
    reasons: list[tuple[str, int]]
    devices: list[tuple[str, dict[str, int]]]
    total: int
    truncated: bool = False
    outcomes: dict[str, int] = field(default_factory=dict)


def _row(row: Any) -> DecisionRow:
    return DecisionRow(
        int(row.id), row.event_id, row.occurred_at, row.type, row.customer_id or "",
        row.device_id or "", row.outcome, json.loads(row.payload),
    )  # fmt: skip


def _filtered(query: Select[Any], wanted: DecisionFilter) -> Select[Any]:
    c = event_table.c
    query = query.where(c.type.in_(DECISION_TYPES))
    if wanted.outcome:
        query = query.where(c.outcome == wanted.outcome)
    if wanted.customer_id:
        query = query.where(c.customer_id == wanted.customer_id)
    if wanted.device_id:
        query = query.where(c.device_id == wanted.device_id)
    if wanted.since is not None:
        query = query.where(c.occurred_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(c.occurred_at < wanted.until)
    if wanted.reason:
        if not REASON_CODE.fullmatch(wanted.reason):
            raise ValueError("a reason code is upper-case letters, digits and underscores")
        query = query.where(c.payload.contains(f'"{wanted.reason}"', autoescape=True))
    return query


def decisions(
    store: Store, wanted: DecisionFilter, limit: int, before: int | None = None
) -> tuple[list[DecisionRow], int | None]:
    """Decisions newest first, at most `limit`, below the chain id `before`; returns the page
    and the cursor of the next one (None on the last page)."""
    query = _filtered(select(event_table), wanted).order_by(event_table.c.id.desc())
    if before is not None:
        query = query.where(event_table.c.id < before)
    found: list[DecisionRow] = []
    scanned = 0
    with store.connect() as conn:
        for raw in conn.execute(query.limit(SCAN_LIMIT)):
            scanned += 1
            row = _row(raw)
            if wanted.reason and wanted.reason not in row.reason_codes:
                continue
            if len(found) == limit:
                return found, found[-1].id
            found.append(row)
    # The scan stopped at its limit with rows left: the next page starts where it stopped.
    return found, (raw.id if scanned == SCAN_LIMIT else None)


def last_activity(store: Store, customer_id: str) -> DecisionRow | None:
    """A customer's newest event of any kind (a decision, an enrolment, a change)."""
    query = (
        select(event_table)
        .where(event_table.c.customer_id == customer_id)
        .order_by(event_table.c.id.desc())
        .limit(1)
    )
    with store.connect() as conn:
        row = conn.execute(query).first()
    return _row(row) if row is not None else None


def dashboard(store: Store, hours: int = 24, now: datetime | None = None) -> Dashboard:
    """The dashboard's figures over the last `hours` whole hours (the current one included)."""
    now = now or datetime.now(UTC)
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    slots = [first + timedelta(hours=i) for i in range(hours)]
    per_hour = {outcome: [0] * hours for outcome in OUTCOMES}
    reasons: Counter[str] = Counter()
    devices: dict[str, Counter[str]] = {}
    c = event_table.c
    query = (
        select(c.occurred_at, c.outcome, c.device_id, c.payload)
        .where(c.type.in_(DECISION_TYPES), c.occurred_at >= first)
        .order_by(c.id.desc())
        .limit(DASHBOARD_ROWS + 1)
    )
    with store.connect() as conn:
        rows = conn.execute(query).all()
    for row in rows[:DASHBOARD_ROWS]:
        slot = int((row.occurred_at - first).total_seconds() // 3600)
        if row.outcome in per_hour and 0 <= slot < hours:
            per_hour[row.outcome][slot] += 1
        reasons.update(json.loads(row.payload).get("reason_codes") or [])
        devices.setdefault(row.device_id or "(none)", Counter())[row.outcome] += 1
    by_device = sorted(devices.items(), key=lambda item: -sum(item[1].values()))[:10]
    total = min(len(rows), DASHBOARD_ROWS)
    outcomes = {outcome: sum(per_hour[outcome]) for outcome in OUTCOMES}
    return Dashboard(
        slots, per_hour, reasons.most_common(10), [(d, dict(n)) for d, n in by_device],
        total, len(rows) > DASHBOARD_ROWS, outcomes,
    )  # fmt: skip
