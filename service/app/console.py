"""The web console's use cases: what its pages read and the actions they take.

Reads: the decisions page and its CSV export, the dashboard's figures, a customer's last
activity (queries of `service.store.console_queries`), with the filter a page asks for checked
here. Actions: each goes through the service's own use cases (the risk admin's lists and
lockouts, the enrolment's erasure, the review queue), which audit the change itself, and is
then recorded as a CONSOLE_ACTION event through the store, naming the operator by their
certificate. That event, like a decision, gets an outbox row and so reaches the fraud engine.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from service.app.engine import Engine
from service.app.reviews import Reviews
from service.errors import InvalidInput
from service.store import console_queries as queries
from service.store.audit_chain import NewEvent
from service.store.console_queries import OUTCOMES, Dashboard, DecisionFilter, DecisionRow
from service.store.reviews import Review

log = logging.getLogger(__name__)

ACTION_EVENT = "CONSOLE_ACTION"


class Operator(Protocol):
    """Who acts: the client certificate's name and SHA-256 (the console's identity)."""

    client: str
    fingerprint: str | None


def decision_filter(
    outcome: str, reason: str, customer_id: str, device_id: str,
    since: datetime | None, until: datetime | None,
) -> DecisionFilter:  # fmt: skip
    """The decisions a page asks for; an unknown outcome or a malformed reason code is refused
    (INVALID_OUTCOME, INVALID_REASON)."""
    if outcome and outcome not in OUTCOMES:
        raise InvalidInput("INVALID_OUTCOME", f"outcome is one of {', '.join(OUTCOMES)}")
    if reason and not queries.REASON_CODE.fullmatch(reason):
        raise InvalidInput("INVALID_REASON", "a reason code is letters, digits and underscores")
    return DecisionFilter(outcome, reason, customer_id, device_id, since, until)


def decisions(
    engine: Engine, wanted: DecisionFilter, size: int, before: int | None
) -> tuple[list[DecisionRow], int | None]:
    """A page of decisions, newest first, and the position the next page starts before."""
    return queries.decisions(engine.gallery.store, wanted, size, before)


def dashboard(engine: Engine) -> Dashboard:
    """The last 24 hours: decisions per hour by outcome, top reasons, per device."""
    return queries.dashboard(engine.gallery.store)


def last_activity(engine: Engine, customer_id: str) -> DecisionRow | None:
    """The customer's latest decision."""
    return queries.last_activity(engine.gallery.store, customer_id)


def record_action(
    engine: Engine, operator: Operator, action: str, customer_id: str = "", device_id: str = "",
    **details: Any,
) -> str:  # fmt: skip
    """Audit one console action (and queue it for the fraud engine); its event id."""
    event = NewEvent(
        type=ACTION_EVENT, outcome="OK", customer_id=customer_id or None,
        device_id=device_id or None,
        payload={"action": action, "operator": operator.client,
                 "operator_certificate": operator.fingerprint or "", **details},
    )  # fmt: skip
    log.info("console action %s by %s", action, operator.client)
    return engine.gallery.store.record_event(event)


def lift_lockout(
    engine: Engine, operator: Operator, customer_id: str, device_id: str, reason: str
) -> str:
    event_id, lifted = engine.risk_admin.lift_lockout(customer_id, device_id, reason,
                                                      operator.client)  # fmt: skip
    return record_action(
        engine, operator, "LOCKOUT_LIFT", customer_id, device_id, reason=reason,
        lifted=len(lifted), audit_event=event_id,
    )  # fmt: skip


def add_list_entry(
    engine: Engine, operator: Operator, list_name: str, subject: str, reason: str, case_ref: str
) -> str:
    entry = engine.risk_admin.add_entry(list_name, subject, reason, case_ref, operator.client)
    return record_action(
        engine, operator, f"{list_name}_ADD", subject=subject, reason=reason, case_ref=case_ref,
        audit_event=entry.event_id,
    )  # fmt: skip


def remove_list_entry(
    engine: Engine, operator: Operator, list_name: str, subject: str, reason: str
) -> str:
    event_id = engine.risk_admin.remove_entry(list_name, subject, reason, operator.client)
    return record_action(
        engine, operator, f"{list_name}_REMOVE", subject=subject, reason=reason,
        audit_event=event_id,
    )  # fmt: skip


def remove_watchlist_entry(engine: Engine, operator: Operator, entry_id: str, reason: str) -> str:
    event_id = engine.risk_admin.remove_watchlist(entry_id, reason, operator.client)
    return record_action(
        engine, operator, "WATCHLIST_REMOVE", entry_id=entry_id, reason=reason,
        audit_event=event_id,
    )  # fmt: skip


def erase_customer(engine: Engine, operator: Operator, customer_id: str, reason: str) -> str:
    event_id = engine.enrolment.delete(customer_id, reason, operator.client)
    return record_action(
        engine, operator, "ERASE", customer_id, reason=reason, audit_event=event_id
    )


def export_decisions(engine: Engine, operator: Operator, rows: int, query: str) -> str:
    """A CSV export is data leaving the service: audited like an action."""
    return record_action(engine, operator, "EXPORT_DECISIONS", rows=rows, query=query[:512])


def claim_review(engine: Engine, reviews: Reviews, operator: Operator, event_id: str) -> str:
    """Take the review's claim for the operator (a lease: `reviews.claim_ttl_s`)."""
    review = reviews.claim(event_id, operator.client)
    return record_action(
        engine, operator, "REVIEW_CLAIM", review.customer_id, review.device_id,
        reviewed_event_id=event_id,
        claim_expires_at=review.claim_expires_at.isoformat() if review.claim_expires_at else "",
    )  # fmt: skip


def resolve_review(
    reviews: Reviews, operator: Operator, event_id: str, resolution: str, note: str
) -> Review:
    """APPROVE or DECLINE a claimed review: the use case writes the REVIEW_RESOLVED event
    (the operator's certificate name, the note), which reaches the fraud engine itself."""
    return reviews.resolve(event_id, operator.client, resolution, note)
