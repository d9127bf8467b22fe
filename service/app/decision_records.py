"""Use cases over recorded decisions for analysts: filtered event pages and one decision in
full (every rule, scores against thresholds, liveness checks, versions, callback state).

Answers carry the audit payloads, which never hold images or embeddings (the audit chain
refuses both), so nothing biometric leaves through here.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from service.app.decision import Decision
from service.app.engine import Engine
from service.app.requests import check_customer_id, page_limit, require_text, row_after
from service.errors import InvalidInput, NotFound
from service.liveness.report import LivenessCheck, LivenessReport
from service.risk.results import RuleResult
from service.store.audit_chain import EventRecord
from service.store.customers import Store
from service.store.event_queries import EventFilter, event_by_id, events_after
from service.store.outbox import Outbox, OutboxItem
from service.store.reviews import Review, ReviewStore

# A reason-code filter is applied to the decoded payloads: one call reads at most this many
# events, then answers with what it found and a token to read on from (maybe an empty page).
MAX_SCAN = 5000
_SCAN_BATCH = 500
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_DECISION_KEYS = frozenset({"outcome", "reason_codes", "rules"})


@dataclass(frozen=True)
class EventPage:
    """Events in chain order, each one's callback delivery state (PENDING, DELIVERED, DEAD;
    absent: not sent), and the token of the next page ("" at the end)."""

    events: list[EventRecord]
    deliveries: dict[str, str]
    next_page_token: str


@dataclass(frozen=True)
class DecisionDetail:
    """One decision: its audit record, the decision rebuilt from it, the outbox row of its
    callback (None: not sent to a fraud engine) and, for a REVIEW, the review's state."""

    record: EventRecord
    decision: Decision
    callback: OutboxItem | None
    review: Review | None


def check_event_id(event_id: str) -> str:
    """An event id as the service writes them: a lower-case UUID (INVALID_EVENT_ID)."""
    try:
        valid = str(uuid.UUID(event_id)) == event_id
    except ValueError:
        valid = False
    if not valid:
        raise InvalidInput("INVALID_EVENT_ID", "event_id must be a lower-case UUID")
    return event_id


def _code(name: str, value: str) -> str:
    if value and not _CODE.fullmatch(value):
        raise InvalidInput(
            f"INVALID_{name.upper()}", f"{name} must be upper-case letters, digits and _"
        )
    return value


def event_filter(
    customer_id: str = "", device_id: str = "", outcome: str = "", event_type: str = "",
    since: datetime | None = None, until: datetime | None = None,
) -> EventFilter:  # fmt: skip
    """A validated filter: ids as the service accepts them, codes upper-case, since < until."""
    if customer_id:
        check_customer_id(customer_id)
    if device_id:
        require_text("device_id", device_id, 128)
    if since is not None and until is not None and until <= since:
        raise InvalidInput("INVALID_TIME_RANGE", "until must be later than since")
    return EventFilter(
        customer_id, device_id, _code("outcome", outcome), _code("type", event_type), since, until
    )


def query_events(
    store: Store, outbox: Outbox, where: EventFilter, reason_code: str, size: int, token: str
) -> EventPage:
    """A page of events matching `where` and, if given, naming `reason_code` among their
    decision's reason codes."""
    reason = _code("reason_code", reason_code)
    found, last = _scan(store, where, reason, row_after(token), page_limit(size))
    deliveries = outbox.statuses([r.event_id for r in found])
    return EventPage(found, deliveries, str(last) if last is not None else "")


def _scan(
    store: Store, where: EventFilter, reason: str, after: int, size: int
) -> tuple[list[EventRecord], int | None]:
    """The matching events and the chain row to continue after (None: nothing more)."""
    if not reason:
        rows = events_after(store, where, after, size + 1)
        return rows[:size], rows[size - 1].id if len(rows) > size else None
    found: list[EventRecord] = []
    for _ in range(MAX_SCAN // _SCAN_BATCH):
        batch = events_after(store, where, after, _SCAN_BATCH)
        for record in batch:
            after = record.id
            if reason in (record.payload.get("reason_codes") or ()):
                found.append(record)
                if len(found) == size:
                    return found, after
        if len(batch) < _SCAN_BATCH:
            return found, None
    return found, after


def get_decision(store: Store, outbox: Outbox, event_id: str) -> DecisionDetail:
    """One decision event in full (DECISION_NOT_FOUND: no such event, or not a decision)."""
    record = event_by_id(store, check_event_id(event_id))
    if record is None or not _DECISION_KEYS <= record.payload.keys():
        raise NotFound("DECISION_NOT_FOUND", f"no decision event {event_id}")
    review = ReviewStore(store).get(event_id) if record.outcome == "REVIEW" else None
    return DecisionDetail(record, decision_of(record), outbox.get(event_id), review)


def decision_of(record: EventRecord) -> Decision:
    """The `Decision` a decision event's audit payload records (`Decision.audit_payload`)."""
    payload = record.payload
    liveness = payload.get("liveness")
    return Decision(
        event_id=record.event_id, outcome=record.outcome, customer_id=record.customer_id or "",
        match_score=payload.get("match_score"), threshold=payload.get("threshold"),
        fmr_target=payload.get("fmr_target") or "",
        quality_score=payload.get("quality_score"), liveness_score=payload.get("liveness_score"),
        reason_codes=tuple(payload.get("reason_codes") or ()),
        model_versions=dict(payload.get("model_versions") or {}), decided_at=record.occurred_at,
        device_id=record.device_id or "", risk_score=payload.get("risk_score"),
        policy_version=payload.get("policy_version") or "",
        rules=tuple(_known(RuleResult, rule) for rule in payload.get("rules") or ()),
        liveness=_liveness(liveness) if liveness else None,
        calibration_version=payload.get("calibration_version") or "",
    )  # fmt: skip


def _liveness(report: dict[str, Any]) -> LivenessReport:
    checks = tuple(_known(LivenessCheck, check) for check in report.get("checks") or ())
    return _known(LivenessReport, {**report, "checks": checks})


def _known(kind: type[Any], values: dict[str, Any]) -> Any:
    """`kind` from the fields of `values` it has (older events may lack newer fields)."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in values.items() if k in names})


def engine_parts(engine: Engine) -> tuple[Store, Outbox]:
    """The store and outbox of a service built with risk checks (the RiskAdmin service)."""
    if engine.risk is None:
        raise ValueError("the engine was built without risk checks")
    return engine.gallery.store, engine.risk.outbox
