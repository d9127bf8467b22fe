"""Calibration proposals in the gallery's database: what was proposed, and what was decided.

One row per proposal, in the store's `METADATA` like the risk lists. Its status moves once,
from PROPOSED to APPLIED or REJECTED, in one transaction with its audit event, guarded by the
status it was read with, so two admins deciding at once cannot both win. At most one row is
APPLIED: applying another marks the previous one SUPERSEDED in the same transaction, so the
live calibration after a restart is simply the APPLIED row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from service.errors import NotFound, Unprocessable
from service.store import audit_chain as audit
from service.store.audit_chain import NewEvent
from service.store.customers import Store
from service.store.tables import METADATA, ROW_ID, UTCDateTime, event_table

PROPOSED, APPLIED, REJECTED, SUPERSEDED = "PROPOSED", "APPLIED", "REJECTED", "SUPERSEDED"
VERSION_PREFIX = "gallery:"

calibration_table = Table(
    "calibrations",
    METADATA,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("proposer", String(128), nullable=False),
    Column("embedder", String(128), nullable=False),
    Column("people", Integer(), nullable=False),
    Column("templates", Integer(), nullable=False),
    Column("impostor_pairs", BigInteger(), nullable=False),
    Column("confidence", Float(), nullable=False),
    Column("targets", Text(), nullable=False),  # JSON list of TargetCalibration
    Column("live_version", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("decided_by", String(128)),
    Column("decided_at", UTCDateTime()),
    Column("reason", String(256)),
    Column("event_id", String(36)),
    Column("applied_thresholds", Text()),  # JSON {target: threshold} made live on approval
    sqlite_autoincrement=True,
)


@dataclass(frozen=True)
class TargetCalibration:
    """One FMR target of a proposal: the proposed threshold, and the live one's drift."""

    target_fmr: str
    resolvable: bool
    reason: str
    threshold: float | None
    ci_low: float | None
    ci_high: float | None
    estimated_fmr: float | None  # the sample's FMR at the proposed threshold
    live_threshold: float
    live_estimated_fmr: float  # the sample's FMR at the live threshold
    live_fmr_ratio: float  # live_estimated_fmr / target


@dataclass(frozen=True)
class NewProposal:
    proposer: str
    embedder: str
    people: int
    templates: int
    impostor_pairs: int
    confidence: float
    targets: tuple[TargetCalibration, ...]
    live_version: str


@dataclass(frozen=True)
class CalibrationRecord(NewProposal):
    id: int
    created_at: datetime
    status: str
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    event_id: str | None
    applied_thresholds: dict[str, float] | None = None

    @property
    def version(self) -> str:
        """What every decision made under this calibration records."""
        return f"{VERSION_PREFIX}{self.id}"

    def proposed_thresholds(self) -> dict[str, float]:
        """The thresholds of the targets its sample resolved."""
        return {t.target_fmr: t.threshold for t in self.targets if t.threshold is not None}


def _record(row: Row[Any]) -> CalibrationRecord:
    targets = tuple(TargetCalibration(**t) for t in json.loads(row.targets))
    return CalibrationRecord(
        proposer=row.proposer, embedder=row.embedder, people=row.people,
        templates=row.templates, impostor_pairs=row.impostor_pairs, confidence=row.confidence,
        targets=targets, live_version=row.live_version, id=row.id, created_at=row.created_at,
        status=row.status, decided_by=row.decided_by, decided_at=row.decided_at,
        reason=row.reason, event_id=row.event_id,
        applied_thresholds=json.loads(row.applied_thresholds) if row.applied_thresholds else None,
    )  # fmt: skip


def add_proposal(store: Store, proposal: NewProposal, event: NewEvent) -> CalibrationRecord:
    """Store a proposal (PROPOSED) with its audit event; `event`'s payload gains its id."""
    values = asdict(proposal)
    values["targets"] = json.dumps(values["targets"])  # a NewProposal has no applied ones
    with store.transaction() as conn:
        result = conn.execute(
            insert(calibration_table).values(
                **values, created_at=datetime.now(UTC), status=PROPOSED
            )
        )
        new_id = int(result.inserted_primary_key[0])
        payload = {**event.payload, "calibration_id": new_id}
        audit.append(conn, event_table, NewEvent(**{**asdict(event), "payload": payload}))
        return _get(conn, new_id)


def _get(conn: Connection, calibration_id: int) -> CalibrationRecord:
    row = None
    if 0 < calibration_id < 2**63:  # ids beyond int64 cannot exist (nor be bound)
        row = conn.execute(
            select(calibration_table).where(calibration_table.c.id == calibration_id)
        ).first()
    if row is None:
        raise NotFound("CALIBRATION_NOT_FOUND", f"no calibration {calibration_id}")
    return _record(row)


def get(store: Store, calibration_id: int) -> CalibrationRecord:
    """The proposal, or NotFound (CALIBRATION_NOT_FOUND)."""
    with store.connect() as conn:
        return _get(conn, calibration_id)


def page(store: Store, size: int, before: int | None) -> tuple[list[CalibrationRecord], int | None]:
    """Newest first, below id `before`; the next page's cursor, or None on the last page."""
    query = select(calibration_table).order_by(calibration_table.c.id.desc()).limit(size + 1)
    if before is not None:
        query = query.where(calibration_table.c.id < before)
    with store.connect() as conn:
        rows = conn.execute(query).all()
    records = [_record(row) for row in rows[:size]]
    return records, records[-1].id if len(rows) > size else None


def applied(store: Store) -> CalibrationRecord | None:
    """The live calibration approved on the gallery, if any."""
    query = select(calibration_table).where(calibration_table.c.status == APPLIED)
    with store.connect() as conn:
        rows = conn.execute(query.order_by(calibration_table.c.id.desc())).all()
    return _record(rows[0]) if rows else None


def decide(
    store: Store,
    calibration_id: int,
    status: str,
    decided_by: str,
    reason: str,
    event: NewEvent,
    thresholds: dict[str, float] | None = None,
) -> CalibrationRecord:
    """Move a PROPOSED row to `status` (APPLIED, with the `thresholds` made live, or
    REJECTED) with its audit event, in one transaction; NotFound or Unprocessable
    (CALIBRATION_ALREADY_DECIDED) otherwise."""
    if (status == APPLIED) != (thresholds is not None) or status not in (APPLIED, REJECTED):
        raise ValueError(f"a decision applies (with thresholds) or rejects, not {status}")
    with store.transaction() as conn:
        current = _get(conn, calibration_id)
        if current.status != PROPOSED:
            raise already_decided(current)
        decision = {
            "status": status, "decided_by": decided_by, "decided_at": datetime.now(UTC),
            "reason": reason, "event_id": event.event_id,
            "applied_thresholds": json.dumps(thresholds) if thresholds is not None else None,
        }  # fmt: skip
        if status == APPLIED:
            conn.execute(
                update(calibration_table)
                .where(calibration_table.c.status == APPLIED)
                .values(status=SUPERSEDED)
            )
        changed = conn.execute(
            update(calibration_table)
            .where(calibration_table.c.id == calibration_id)
            .where(calibration_table.c.status == PROPOSED)
            .values(decision)
        ).rowcount
        if changed != 1:  # decided by another transaction since the read (PostgreSQL)
            raise already_decided(_get(conn, calibration_id))
        audit.append(conn, event_table, event)
        return _get(conn, calibration_id)


def already_decided(record: CalibrationRecord) -> Unprocessable:
    return Unprocessable(
        "CALIBRATION_ALREADY_DECIDED",
        f"calibration {record.id} is already {record.status.lower()}",
        status=record.status,
    )
