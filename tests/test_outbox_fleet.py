"""Outbox dispatchers of several replicas on one database: each event delivered once across the
fleet, in per-customer order, and a dispatcher killed mid-delivery loses nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from service.risk.dispatcher import Dispatcher
from service.store.audit_chain import NewEvent
from service.store.crypto import generate_keyring
from service.store.customers import Store
from service.store.outbox import DELIVERED, PENDING, Backoff, Outbox, OutboxItem

FAST = Backoff(initial_s=0.01, max_s=0.05, dead_after=50)


@pytest.fixture
def stores(database_url: str) -> Iterator[list[Store]]:
    """Three replicas' stores on one database."""
    keyring = generate_keyring()
    opened = [Store(database_url, keyring) for _ in range(3)]
    for store in opened:
        store.create_schema()
    yield opened
    for store in opened:
        store.close()


class RecordingSink:
    """The fraud engine: records each delivery (event id, customer, outbox sequence) in the
    order received, slowly enough that dispatchers overlap."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def send(self, item: OutboxItem) -> None:
        time.sleep(0.002)
        with self._lock:
            document = item.document
            self.received.append((item.event_id, document["customer_id"], document["sequence"]))


def decide(store: Store, customer: str) -> str:
    return store.record_event(NewEvent("VERIFY", "APPROVE", device_id="k1", customer_id=customer))


def dispatcher(store: Store, sink: RecordingSink, lease_s: float = 30.0) -> Dispatcher:
    return Dispatcher(Outbox(store), sink.send, FAST, workers=4, poll_interval_s=0.01,
                      lease_s=lease_s)  # fmt: skip


def wait_delivered(outbox: Outbox, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while outbox.counts()[DELIVERED] < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert outbox.counts() == {PENDING: 0, DELIVERED: count, "DEAD": 0}


def test_three_dispatchers_deliver_each_event_once_in_customer_order(
    stores: list[Store],
) -> None:
    events = [decide(stores[i % 3], f"c-{i % 7}") for i in range(120)]
    sink = RecordingSink()
    running = [dispatcher(store, sink) for store in stores]
    for each in running:
        each.start()
    try:
        wait_delivered(Outbox(stores[0]), len(events))
    finally:
        for each in running:
            each.stop()
    delivered = [event_id for event_id, _, _ in sink.received]
    assert sorted(delivered) == sorted(events)  # every event, and none twice
    by_customer: dict[str, list[int]] = {}
    for _, customer, sequence in sink.received:
        by_customer.setdefault(customer, []).append(sequence)
    assert all(sequences == sorted(sequences) for sequences in by_customer.values())
    owners = {each.owner for each in running}
    assert len(owners) == 3


def test_a_killed_dispatchers_rows_are_delivered_by_another_after_its_lease(
    stores: list[Store],
) -> None:
    events = [decide(stores[0], f"c-{i % 3}") for i in range(9)]
    hung, release = RecordingSink(), threading.Event()
    hung.send = lambda item: release.wait(30)  # type: ignore[method-assign]
    killed = dispatcher(stores[0], hung, lease_s=1.0)
    # Killed mid-delivery: it has claimed the three customers' first rows and never settles.
    victim = threading.Thread(target=killed.run_once, daemon=True)
    victim.start()
    time.sleep(0.3)
    claimed = time.monotonic()
    sink = RecordingSink()
    other = dispatcher(stores[1], sink)
    other.start()
    try:
        time.sleep(0.3)
        assert sink.received == []  # leased heads hold back their customers' later events
        wait_delivered(Outbox(stores[1]), len(events))
        assert time.monotonic() - claimed >= 0.6  # only after the lease ran out
    finally:
        other.stop()
        release.set()
        victim.join(10)
    assert sorted(event_id for event_id, _, _ in sink.received) == sorted(events)
    # The killed one's late settle changes nothing: the rows are no longer its own.
    assert Outbox(stores[0]).counts() == {PENDING: 0, DELIVERED: len(events), "DEAD": 0}
