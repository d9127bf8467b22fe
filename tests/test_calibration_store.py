"""The calibration tables and gallery sample on SQLite and PostgreSQL: the sample's bounds and
embedder filter, and a proposal's status moving once, even under two deciders at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from service.domain import Consent
from service.errors import NotFound, Unprocessable
from service.store import calibrations
from service.store.audit_chain import NewEvent
from service.store.calibrations import (
    APPLIED,
    PROPOSED,
    REJECTED,
    SUPERSEDED,
    NewProposal,
    TargetCalibration,
)
from service.store.customers import Store
from service.store.gallery_sample import sample_gallery
from tests.test_store import (  # noqa: F401 (keyring, store, url: on SQLite, then PostgreSQL)
    MODEL,
    consent,
    event,
    keyring,
    new_templates,
    store,
    url,
)


def proposal(threshold: float = 0.6) -> NewProposal:
    target = TargetCalibration(
        "1e-4", True, "", threshold, threshold - 0.01, threshold + 0.01, 9e-5, 0.53, 4e-4, 4.0
    )
    return NewProposal("op-1", MODEL, 40, 120, 7000, 0.95, (target,), "manifest:x:y")


def decision_event(kind: str = "CALIBRATION_APPLIED") -> NewEvent:
    return NewEvent(kind, "OK", payload={"operator": "op-2"})


def current_consent() -> Consent:
    """Consent given a year ago that runs for ten years."""
    given = datetime.now(UTC) - timedelta(days=365)
    return Consent("identity-verification", given, "branch-kiosk", "op-17",
                         given + timedelta(days=3650))  # fmt: skip


def test_the_sample_is_bounded_and_of_one_embedder(store: Store) -> None:  # noqa: F811
    for n in range(6):
        templates = new_templates(*range(10 * n, 10 * n + 5))
        store.enroll(f"c{n}", templates, current_consent(), event())
    old = new_templates(90, 91, model="older-embedder@1")
    store.enroll("old", old, current_consent(), event())
    mixed = [*new_templates(95, model="older-embedder@1"), *new_templates(96)]
    store.enroll("mixed", mixed, current_consent(), event())
    store.enroll("lapsed", new_templates(97, 98), consent(), event())  # expired in 2026-03

    sample = sample_gallery(store, MODEL, customers=100, per_customer=3)
    assert sample.people == 7 and "old" not in sample.owners and "lapsed" not in sample.owners
    assert sample.owners.count("mixed") == 1 and len(sample.owners) == 6 * 3 + 1
    for owner, vector in zip(sample.owners, sample.vectors, strict=True):
        stored = {t.id: t.vector for t in store.templates_of(owner) if t.model == MODEL}
        assert any(np.array_equal(vector, v) for v in stored.values())
    assert sample_gallery(store, MODEL, customers=4, per_customer=1).people == 4
    assert sample_gallery(store, "unknown@1", customers=4, per_customer=1).people == 0


def test_a_proposal_is_decided_once_and_one_is_applied(store: Store) -> None:  # noqa: F811
    first = calibrations.add_proposal(store, proposal(0.6), NewEvent("CALIBRATION_PROPOSED", "OK"))
    assert first.status == PROPOSED and first.version == f"gallery:{first.id}"
    assert first.targets == proposal().targets
    applied = calibrations.decide(
        store, first.id, APPLIED, "op-2", "ok", decision_event(), {"1e-4": 0.6, "1e-5": 0.6}
    )
    assert applied.status == APPLIED and applied.decided_at is not None
    with pytest.raises(Unprocessable) as err:
        calibrations.decide(store, first.id, REJECTED, "op-3", "no", decision_event())
    assert err.value.reason == "CALIBRATION_ALREADY_DECIDED"
    with pytest.raises(NotFound):
        calibrations.get(store, 10**30)

    second = calibrations.add_proposal(store, proposal(0.7), NewEvent("CALIBRATION_PROPOSED", "OK"))
    calibrations.decide(
        store, second.id, APPLIED, "op-2", "newer", decision_event(), {"1e-4": 0.7, "1e-5": 0.6}
    )
    assert calibrations.get(store, first.id).status == SUPERSEDED
    live = calibrations.applied(store)
    assert live is not None and live.id == second.id
    assert live.proposed_thresholds() == {"1e-4": 0.7}
    assert live.applied_thresholds == {"1e-4": 0.7, "1e-5": 0.6}
    page, cursor = calibrations.page(store, 1, None)
    assert [r.id for r in page] == [second.id] and cursor == second.id
    assert [r.id for r in calibrations.page(store, 1, cursor)[0]] == [first.id]
    assert store.verify_chain().ok


def test_two_deciders_at_once_one_wins(store: Store) -> None:  # noqa: F811
    made = calibrations.add_proposal(store, proposal(), NewEvent("CALIBRATION_PROPOSED", "OK"))
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def decide(status: str) -> None:
        start.wait()
        try:
            thresholds = {"1e-4": 0.6} if status == APPLIED else None
            calibrations.decide(store, made.id, status, "op", "race", decision_event(), thresholds)
            outcomes.append(status)
        except Unprocessable as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=decide, args=(s,)) for s in (APPLIED, REJECTED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes, key=len) in ([APPLIED, "CALIBRATION_ALREADY_DECIDED"],
                                         [REJECTED, "CALIBRATION_ALREADY_DECIDED"])  # fmt: skip
    winner = next(o for o in outcomes if o in (APPLIED, REJECTED))
    assert calibrations.get(store, made.id).status == winner
    assert store.verify_chain().ok
