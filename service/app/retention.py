"""Retention: purge the biometric data of customers who stopped using it, or whose consent ran out.

A customer's last activity is their latest audit event that was not a decline (a refused
attempt by someone claiming their id is not their use), or their record's last update if
later; no extra column is needed. Customers inactive for `privacy.inactive_days`, and those
whose latest consent has expired, are erased exactly as `Enrollment.Delete` erases
(templates, consents, record, index entry), each with its own audited RETENTION_PURGE event,
so the audit chain stays whole and says why. The same run deletes fraud-engine callbacks
delivered more than `privacy.outbox_keep_days` ago: their documents name customers, and the
audit chain keeps the events. Runs as `faceguard retention run`, or inside the service every
`privacy.purge_every_hours`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service.store.customers import CustomerNotFound, NewEvent, Store
from service.store.outbox import Outbox

log = logging.getLogger(__name__)

EVENT_TYPE = "RETENTION_PURGE"
INACTIVE = "INACTIVE"
CONSENT_EXPIRED = "CONSENT_EXPIRED"

Eraser = Callable[[str, NewEvent], object]


@dataclass(frozen=True)
class Due:
    customer_id: str
    reason: str
    last_activity: datetime


@dataclass
class PurgeReport:
    purged: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    callbacks_pruned: int = 0


def due_for_purge(store: Store, now: datetime, inactive_days: float | None) -> list[Due]:
    """Customers to purge now, in customer id order: expired consent first, then inactive."""
    cutoff = now - timedelta(days=inactive_days) if inactive_days is not None else None
    due = []
    for customer in store.activity(now):
        if customer.consent_expired:
            due.append(Due(customer.customer_id, CONSENT_EXPIRED, customer.last_activity))
        elif cutoff is not None and customer.last_activity < cutoff:
            due.append(Due(customer.customer_id, INACTIVE, customer.last_activity))
    return due


def purge(
    store: Store,
    erase: Eraser,
    inactive_days: float | None,
    now: datetime | None = None,
    dry_run: bool = False,
    outbox_keep_days: float | None = None,
) -> PurgeReport:
    """Erase every customer due; `erase(customer_id, event)` is `Gallery.delete` in the
    service (index kept in step) or `Store.delete_customer` from the command line. Then
    delete the callbacks delivered more than `outbox_keep_days` ago (None: none)."""
    now = now or datetime.now(UTC)
    report = PurgeReport()
    if outbox_keep_days is not None and not dry_run:
        before = now - timedelta(days=outbox_keep_days)
        report.callbacks_pruned = Outbox(store).prune_delivered(before)
    for item in due_for_purge(store, now, inactive_days):
        if not dry_run:
            event = NewEvent(
                type=EVENT_TYPE, outcome="PURGED",
                payload={
                    "reason": item.reason,
                    "last_activity": item.last_activity.isoformat(timespec="seconds"),
                    "inactive_days": inactive_days,
                },
            )  # fmt: skip
            try:
                erase(item.customer_id, event)
            except CustomerNotFound:
                continue  # erased meanwhile (Enrollment.Delete): nothing left to purge
        report.purged.append(item.customer_id)
        report.reasons[item.reason] = report.reasons.get(item.reason, 0) + 1
    if report.purged or report.callbacks_pruned:
        log.info(
            "retention purge: %d customers %s, %d delivered callbacks",
            len(report.purged), report.reasons, report.callbacks_pruned,
        )  # fmt: skip
    return report


class PurgeSchedule:
    """Runs `purge` (or another job, named `name`) every `interval_s` in a daemon thread
    until `stop`."""

    def __init__(
        self, run: Callable[[], object], interval_s: float, name: str = "retention"
    ) -> None:
        self._run = run
        self._interval = interval_s
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._run()
            except Exception:  # the next round tries again; the service keeps serving
                log.exception("%s job failed", self._name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_retention(
    store: Store, inactive_days: float | None, dry_run: bool, outbox_keep_days: float | None
) -> int:
    """`faceguard retention run`: prints counts only (customer ids stay in the audit trail)."""
    report = purge(
        store, store.delete_customer, inactive_days, dry_run=dry_run,
        outbox_keep_days=outbox_keep_days,
    )  # fmt: skip
    summary = {
        "dry_run": dry_run, "purged": len(report.purged), "reasons": report.reasons,
        "callbacks_pruned": report.callbacks_pruned,
    }  # fmt: skip
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
