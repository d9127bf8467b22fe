"""The console's read queries over a real store: decisions newest first in pages, filters
(outcome, reason code confirmed on the parsed reasons, customer, device, time), the
dashboard's counts, and a customer's last activity."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.store import console_queries as queries
from service.store.audit_chain import NewEvent
from service.store.crypto import generate_keyring
from service.store.customers import Store


def decision(
    outcome: str, reasons: list[str], customer: str = "c1", device: str = "K-1",
    rules: list[dict[str, object]] | None = None,
) -> NewEvent:  # fmt: skip
    return NewEvent(
        type="VERIFY", outcome=outcome, customer_id=customer, device_id=device,
        payload={"outcome": outcome, "reason_codes": reasons, "rules": rules or []},
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'gallery.db'}", generate_keyring()) as opened:
        opened.create_schema()
        yield opened


def test_decisions_page_newest_first_and_the_cursor_reaches_every_one(store: Store) -> None:
    ids = [store.record_event(decision("APPROVE", ["MATCH"])) for _ in range(5)]
    store.record_event(NewEvent(type="LOCKOUT_LIFT", outcome="OK"))  # not a decision
    seen, cursor, pages = [], None, 0
    while True:
        rows, cursor = queries.decisions(store, queries.DecisionFilter(), 2, cursor)
        seen += [row.event_id for row in rows]
        pages += 1
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3


def test_filters(store: Store) -> None:
    # A rule that did not fire names its code in the payload too: it must not match.
    quiet = [{"rule": "low_quality", "fired": False, "reason_code": "LOW_QUALITY"}]
    plain = store.record_event(decision("APPROVE", ["MATCH"], rules=quiet))
    weak = store.record_event(decision("REVIEW", ["MATCH", "LOW_QUALITY"], customer="c2"))
    other = store.record_event(decision("DECLINE", ["NO_MATCH"], device="K-2"))

    def found(**wanted: object) -> list[str]:
        rows, _ = queries.decisions(store, queries.DecisionFilter(**wanted), 50)
        return [row.event_id for row in rows]

    assert found(outcome="REVIEW") == [weak]
    assert found(reason="LOW_QUALITY") == [weak]
    assert found(customer_id="c2") == [weak]
    assert found(device_id="K-2") == [other]
    assert found(until=datetime.now(UTC) - timedelta(hours=1)) == []
    assert set(found(since=datetime.now(UTC) - timedelta(hours=1))) == {plain, weak, other}
    with pytest.raises(ValueError):
        found(reason="LOW%")


def test_dashboard_counts_and_last_activity(store: Store) -> None:
    for outcome, reasons, device in (
        ("APPROVE", ["MATCH"], "K-1"), ("REVIEW", ["LOW_QUALITY"], "K-1"),
        ("DECLINE", ["NO_MATCH"], "K-2"), ("DECLINE", ["NO_MATCH"], "K-2"),
    ):  # fmt: skip
        store.record_event(decision(outcome, reasons, device=device))
    figures = queries.dashboard(store)
    assert figures.outcomes == {"APPROVE": 1, "REVIEW": 1, "DECLINE": 2}
    assert figures.per_hour["DECLINE"][-1] == 2 and len(figures.hours) == 24
    assert figures.reasons[0] == ("NO_MATCH", 2)
    assert figures.devices[0] == ("K-2", {"DECLINE": 2})
    last = queries.last_activity(store, "c1")
    assert last is not None and last.outcome == "DECLINE"
    assert queries.last_activity(store, "nobody") is None
