"""The callback outbox and dispatcher against the reference sink, in-process and fast:
same-transaction outbox rows, at-least-once delivery through outages and injected failures,
per-customer order, signatures, dead letters and replay."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from faceguard.v1 import fraud_engine_pb2
from service.app.retention import purge
from service.risk.callback import FraudEngineClient, SigningKey, channel_for
from service.risk.dispatcher import Dispatcher
from service.store import outbox as outbox_module
from service.store import velocity as velocity_module
from service.store.audit_chain import InvalidEvent, NewEvent
from service.store.crypto import generate_keyring
from service.store.customers import Store
from service.store.lists import CUSTOMER_BLOCKLIST, DEVICE_BLACKLIST, ListFacts, RiskLists
from service.store.outbox import DEAD, DELIVERED, PENDING, Backoff, Outbox
from service.store.velocity import Limits, Velocity
from tests.service_helpers import free_port
from tools.fraud_sink import Behaviour, sink_stats, start_sink, stored_event_ids

KEY = SigningKey("k1", bytes(range(32)))
FAST = Backoff(initial_s=0.01, max_s=0.05, dead_after=50)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    with Store(database_url, generate_keyring()) as store:
        store.create_schema()
        yield store


@pytest.fixture
def outbox(store: Store) -> Outbox:
    return Outbox(store)


def decide(store: Store, customer: str, outcome: str = "APPROVE", device: str = "k1") -> str:
    return store.record_event(
        NewEvent("VERIFY", outcome, device_id=device, customer_id=customer,
                 payload={"outcome": outcome, "reason_codes": ["MATCH"], "risk_score": 0.0,
                          "policy_version": "t", "rules": []})
    )  # fmt: skip


def dispatcher(outbox: Outbox, port: int, key: SigningKey = KEY, backoff: Backoff = FAST,
               timeout_s: float = 2.0) -> Dispatcher:  # fmt: skip
    client = FraudEngineClient(channel_for(f"127.0.0.1:{port}", None, None, None), key, timeout_s)
    return Dispatcher(outbox, client.deliver, backoff, workers=4, poll_interval_s=0.02)


def drain(outbox: Outbox, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while outbox.counts()[PENDING] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox.counts()[PENDING] == 0, outbox.counts()


def test_event_and_outbox_row_commit_together(
    store: Store, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    event_id = decide(store, "alice")
    assert outbox.statuses([event_id]) == {event_id: PENDING}
    item = outbox.due(10)[0]
    assert item.document["event_id"] == event_id and item.document["sequence"] == item.id
    with pytest.raises(InvalidEvent):  # the event fails inside the transaction: no outbox row
        store.record_event(NewEvent("VERIFY", "APPROVE", payload={"v": list(range(100))}))
    assert outbox.counts()[PENDING] == 1

    def broken_enqueue(conn, event) -> None:
        raise RuntimeError("outbox write failed")

    monkeypatch.setattr(outbox_module, "enqueue", broken_enqueue)
    with pytest.raises(RuntimeError):
        decide(store, "bob")
    assert store.events_of("bob") == []  # the outbox row failing rolls the event back too


def test_a_declined_attempt_is_event_outbox_row_and_velocity_row_in_one_transaction(
    store: Store, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store.record_event writes the three rows itself, in one transaction: a velocity row
    that fails takes the event and its outbox row with it."""
    velocity = Velocity(store, Limits(3, 60.0, 3, 60.0, 2, 60.0))
    declined = decide(store, "alice", outcome="DECLINE", device="k9")
    assert outbox.statuses([declined]) == {declined: PENDING}
    assert velocity.facts("alice", "k9").device.count == 1

    def broken_attempt(conn, event, keep) -> None:
        raise RuntimeError("velocity write failed")

    monkeypatch.setattr(velocity_module, "record_attempt", broken_attempt)
    with pytest.raises(RuntimeError):
        decide(store, "bob", outcome="DECLINE", device="k9")
    assert store.events_of("bob") == [] and outbox.counts()[PENDING] == 1
    assert velocity.facts("bob", "k9").device.count == 1


def test_backlog_is_the_pending_rows_and_the_oldest_one(store: Store, outbox: Outbox) -> None:
    """What the metrics endpoint reports as the callback queue (api/operations.outbox_stats)."""
    assert outbox.backlog() == (0, None)
    before = datetime.now(UTC)
    first = decide(store, "alice")
    decide(store, "bob")
    depth, oldest = outbox.backlog()
    assert depth == 2 and before <= oldest <= datetime.now(UTC)
    assert oldest == outbox.get(first).created_at
    outbox.settle(outbox.due(10), [], FAST)
    assert outbox.backlog() == (0, None)


def test_due_yields_only_the_head_of_each_customer(store: Store, outbox: Outbox) -> None:
    a1, b1, a2 = decide(store, "alice"), decide(store, "bob"), decide(store, "alice")
    assert [i.event_id for i in outbox.due(10)] == [a1, b1]
    outbox.settle([outbox.due(10)[0]], [], FAST)
    assert {i.event_id for i in outbox.due(10)} == {a2, b1}


def test_delivered_rows_are_pruned_after_the_retention_period(store: Store, outbox: Outbox) -> None:
    """Delivered rows older than the cut-off go, in batches; pending and dead ones stay, and
    so do the audit events."""
    delivered = [decide(store, f"c{i}") for i in range(5)]
    waiting = decide(store, "c0")  # behind c0's first event: still pending after one round
    outbox.settle(outbox.due(10), [], FAST)
    assert outbox.statuses(delivered) == dict.fromkeys(delivered, DELIVERED)
    now = datetime.now(UTC)
    assert outbox.prune_delivered(now - timedelta(days=1)) == 0  # all delivered just now
    assert outbox.prune_delivered(now + timedelta(seconds=1), batch=2) == 5
    assert outbox.statuses([*delivered, waiting]) == {waiting: PENDING}
    assert all(store.events_of(f"c{i}") for i in range(5))
    later = now + timedelta(days=31)
    outbox.settle(outbox.due(10), [], FAST)
    report = purge(store, store.delete_customer, None, later, outbox_keep_days=30)
    assert report.callbacks_pruned == 1 and report.purged == []
    assert outbox.counts() == {PENDING: 0, DELIVERED: 0, DEAD: 0}


def test_outage_then_recovery_delivers_everything_once_in_order(
    tmp_path: Path, store: Store, outbox: Outbox
) -> None:
    port = free_port()
    sink_db = tmp_path / "sink.db"
    # Retries come every few ms here, and after the outage gRPC's own reconnect backoff fails
    # calls at once for a while: allow the attempts that the production backoff (0.5 s doubling
    # to 60 s) spreads over minutes, so the outage ends before anything dead-letters.
    sent = dispatcher(outbox, port, backoff=Backoff(0.01, 0.05, dead_after=100_000))
    sent.start()
    try:
        ids = [decide(store, f"c{i % 7}") for i in range(40)]  # the sink is down
        time.sleep(0.5)
        assert outbox.counts()[PENDING] == 40
        sink = start_sink(sink_db, {"k1": KEY}, Behaviour(fail_rate=0.3, rng=random.Random(1)),
                          port=port)  # fmt: skip
        ids += [decide(store, f"c{i % 7}") for i in range(40)]
        drain(outbox)
        sink.stop()
    finally:
        sent.stop()
    stats = sink_stats(sink_db)
    assert stored_event_ids(sink_db) == set(ids)  # none lost
    assert stats["stored"] == stats["distinct"] == 80  # none stored twice
    assert stats["duplicates"] > 0  # redeliveries after lost acknowledgements were dropped
    assert stats["out_of_order"] == 0 and stats["bad_signature"] == 0
    assert outbox.counts() == {PENDING: 0, DELIVERED: 80, DEAD: 0}


def test_signature_idempotency_key_and_bad_key(
    tmp_path: Path, store: Store, outbox: Outbox
) -> None:
    sink = start_sink(tmp_path / "sink.db", {"k1": KEY})
    try:
        event_id = decide(store, "alice")
        wrong = dispatcher(outbox, sink.port, key=SigningKey("k1", b"x" * 32))
        assert wrong.run_once() == 1
        failed = outbox.get(event_id)
        assert failed.status == PENDING and failed.attempts == 1
        assert failed.last_error.startswith("UNAUTHENTICATED")
        assert sink_stats(tmp_path / "sink.db")["bad_signature"] == 1
        time.sleep(0.1)  # past the retry delay
        assert dispatcher(outbox, sink.port).run_once() == 1
        assert outbox.get(event_id).status == DELIVERED
        client = FraudEngineClient(grpc.insecure_channel(f"127.0.0.1:{sink.port}"), KEY, 2.0)
        client.deliver(failed)  # a redelivery is acknowledged, not stored again
        stats = sink_stats(tmp_path / "sink.db")
        assert stats["stored"] == 1 and stats["duplicates"] == 1
        forged = fraud_engine_pb2.OnIdentityEventRequest(
            event=b"\n\x01x", signature=KEY.sign(b"\n\x01x"), key_id="k1", idempotency_key="y"
        )
        with pytest.raises(grpc.RpcError) as err:
            client.stub.OnIdentityEvent(forged, timeout=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # key is not the event id
    finally:
        sink.stop()


def test_dead_letter_and_replay(tmp_path: Path, store: Store, outbox: Outbox) -> None:
    behaviour = Behaviour(fail_all=True)
    sink = start_sink(tmp_path / "sink.db", {"k1": KEY}, behaviour)
    sent = dispatcher(outbox, sink.port, backoff=Backoff(0.01, 0.02, dead_after=3))
    try:
        first, second = decide(store, "alice"), decide(store, "alice")
        for _ in range(50):
            sent.run_once()
            if outbox.counts()[DEAD] == 2:
                break
            time.sleep(0.03)
        dead = outbox.dead_letters(10)
        assert [d.event_id for d in dead] == [first, second] and dead[0].attempts == 3
        behaviour.fail_all = False
        assert sent.run_once() == 0  # dead letters are not retried on their own
        replayed, audit_id = outbox.replay([first], "op-1")
        assert replayed == 1 and audit_id
        assert sent.run_once() == 1
        assert outbox.statuses([first, second]) == {first: DELIVERED, second: DEAD}
        assert outbox.replay([], "op-1")[0] == 1
        sent.run_once()
        assert stored_event_ids(tmp_path / "sink.db") == {first, second}
    finally:
        sink.stop()


def test_a_hanging_sink_times_out_and_is_retried(
    tmp_path: Path, store: Store, outbox: Outbox
) -> None:
    behaviour = Behaviour(hang=True)
    sink = start_sink(tmp_path / "sink.db", {"k1": KEY}, behaviour)
    try:
        event_id = decide(store, "alice")
        sent = dispatcher(outbox, sink.port, timeout_s=0.3)
        started = time.monotonic()
        sent.run_once()
        assert time.monotonic() - started < 5
        assert outbox.get(event_id).last_error.startswith("DEADLINE_EXCEEDED")
        behaviour.hang = False
        time.sleep(0.1)
        assert sent.run_once() == 1
        assert outbox.statuses([event_id]) == {event_id: DELIVERED}
    finally:
        sink.stop()


def test_list_facts(store: Store) -> None:
    lists = RiskLists(store)
    assert lists.facts("alice", "k1") == ListFacts()
    entry = lists.add(CUSTOMER_BLOCKLIST, "alice", "mule", "CASE-1", "op")
    lists.add(DEVICE_BLACKLIST, "k9", "stolen", "CASE-2", "op")
    facts = lists.facts("alice", "k1")
    assert facts.blocklisted == entry and facts.device_blacklisted is None
    assert lists.facts("alice", "k9").device_blacklisted.case_ref == "CASE-2"
    assert lists.remove(CUSTOMER_BLOCKLIST, "alice", "cleared", "op")
    assert lists.remove(CUSTOMER_BLOCKLIST, "alice", "cleared", "op") is None
    page, cursor = lists.entries(DEVICE_BLACKLIST, 10, None)
    assert [e.subject for e in page] == ["k9"] and cursor is None
    types = [e.type for e in store.events_of("alice")][-2:]
    assert types == ["CUSTOMER_BLOCKLIST_ADD", "CUSTOMER_BLOCKLIST_REMOVE"]


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0)
    delays = [backoff.delay(n) for n in range(1, 7)]
    assert 0.5 <= delays[0] <= 1.0 and 2.0 <= delays[2] <= 4.0
    assert all(d <= 8.0 for d in delays) and delays[5] >= 4.0
    assert len({backoff.delay(3) for _ in range(20)}) > 1  # jittered
