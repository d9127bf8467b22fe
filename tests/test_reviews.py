"""The REVIEW queue's use cases over a real store (SQLite and PostgreSQL): the queue is the
unresolved REVIEW decisions, claims are leases, only the claimer resolves, once; a resolution
is an audited event with its outbox row. Filtered event pages and one decision in full."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.app.decision_records import EventFilter, event_filter, get_decision, query_events
from service.app.reviews import Reviews
from service.errors import FaceguardError, InvalidInput, NotFound, TooLarge, Unprocessable
from service.store.audit_chain import NewEvent
from service.store.crypto import generate_keyring
from service.store.customers import Store
from service.store.outbox import PENDING, Outbox
from service.store.reviews import queue_query


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    with Store(database_url, generate_keyring()) as store:
        store.create_schema()
        yield store


@pytest.fixture
def outbox(store: Store) -> Outbox:
    return Outbox(store)  # the store writes each event's outbox row itself


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reviews(store: Store, clock: Clock) -> Reviews:
    return Reviews(store, claim_ttl_s=900, clock=clock)


def decide(store: Store, customer: str, outcome: str, codes: list[str], device: str = "k1") -> str:
    rules = [
        {"rule": "low_quality", "fired": "LOW_QUALITY" in codes, "reason_code": "LOW_QUALITY",
         "score": 30.0, "hard": False, "detail": "quality 35 < 40"},
        {"rule": "blocklisted", "fired": False, "reason_code": "BLOCKLISTED", "score": 0.0,
         "hard": True, "detail": ""},
    ]  # fmt: skip
    payload = {
        "outcome": outcome, "reason_codes": codes, "risk_score": 30.0, "rules": rules,
        "policy_version": "test-1", "match_score": 0.71, "threshold": 0.42,
        "model_versions": {"embedder": "e1"}, "liveness": {
            "score": 0.9, "passed": True, "challenge": "TURN_LEFT", "response": "TURN_LEFT",
            "checks": [{"name": "motion", "passed": True, "score": 0.8, "weight": 1.0,
                        "detail": ""}],
        },
    }  # fmt: skip
    return store.record_event(
        NewEvent("VERIFY", outcome, device_id=device, customer_id=customer, payload=payload)
    )


def reason(call, *args) -> str:
    with pytest.raises(FaceguardError) as caught:
        call(*args)
    return caught.value.reason


def test_the_queue_is_the_unresolved_review_decisions_oldest_first(
    store: Store, outbox: Outbox, reviews: Reviews
) -> None:
    decide(store, "c-0", "APPROVE", ["MATCH"])
    first = decide(store, "c-1", "REVIEW", ["MATCH", "LOW_QUALITY"])
    second = decide(store, "c-2", "REVIEW", ["MATCH", "LIVENESS_WEAK"], device="k2")
    page, token = reviews.open(0, "")
    assert [r.event_id for r in page] == [first, second] and token == ""
    assert page[0].reason_codes == ("MATCH", "LOW_QUALITY") and page[0].claimed_by == ""
    page, token = reviews.open(1, "")
    assert [r.event_id for r in page] == [first] and token
    assert [r.event_id for r in reviews.open(1, token)[0]] == [second]
    assert [r.event_id for r in reviews.open(0, "", device_id="k2")[0]] == [second]
    assert [r.event_id for r in reviews.open(0, "", customer_id="c-1")[0]] == [first]
    assert isinstance(_raised(reviews.open, 501, ""), TooLarge)
    assert reason(reviews.open, 0, "x") == "INVALID_PAGE_TOKEN"
    assert reason(reviews.open, 0, "\u00b2") == "INVALID_PAGE_TOKEN"
    assert reason(reviews.open, 0, "", "bad id\n") == "INVALID_CUSTOMER_ID"


def _raised(call, *args) -> Exception:
    with pytest.raises(FaceguardError) as caught:
        call(*args)
    return caught.value


def test_claim_resolve_once_and_only_by_the_claimer(
    store: Store, outbox: Outbox, reviews: Reviews, clock: Clock
) -> None:
    event_id = decide(store, "c-1", "REVIEW", ["MATCH", "LOW_QUALITY"])
    claimed = reviews.claim(event_id, "alice")
    assert claimed.claimed_by == "alice" and claimed.claim_expires_at > clock.now
    assert reviews.claim(event_id, "alice").claimed_by == "alice"  # renewing is fine
    error = _raised(reviews.claim, event_id, "bob")
    assert isinstance(error, Unprocessable) and error.reason == "REVIEW_CLAIMED"
    assert reason(reviews.resolve, event_id, "bob", "APPROVE", "looks fine") == (
        "REVIEW_NOT_CLAIMED"
    )
    assert reason(reviews.resolve, event_id, "alice", "REVIEW", "x") == "INVALID_RESOLUTION"
    assert reason(reviews.resolve, event_id, "alice", "APPROVE", "") == "INVALID_NOTE"
    assert reason(reviews.resolve, event_id, "alice", "APPROVE", "n" * 501) == "INVALID_NOTE"
    assert reason(reviews.resolve, event_id, "alice", "APPROVE", "a\nb") == "INVALID_NOTE"
    done = reviews.resolve(event_id, "alice", "DECLINE", "ID photo does not match the face")
    assert (done.resolution, done.resolved_by) == ("DECLINE", "alice")
    assert reviews.open(0, "")[0] == []
    assert reason(reviews.resolve, event_id, "alice", "APPROVE", "again") == "REVIEW_RESOLVED"
    assert reason(reviews.claim, event_id, "bob") == "REVIEW_RESOLVED"
    (event,) = [e for e in store.events_of("c-1") if e.type == "REVIEW_RESOLVED"]
    assert event.event_id == done.resolution_event_id and event.outcome == "DECLINE"
    assert event.payload == {
        "reviewed_event_id": event_id, "analyst": "alice", "resolution": "DECLINE",
        "note": "ID photo does not match the face",
    }  # fmt: skip
    assert event.device_id == "k1"
    item = outbox.get(done.resolution_event_id)
    assert item is not None and item.status == PENDING
    assert item.document["type"] == "REVIEW_RESOLVED"
    assert store.verify_chain().ok


def test_an_expired_claim_can_be_taken_over_and_the_old_claimer_cannot_resolve(
    store: Store, outbox: Outbox, reviews: Reviews, clock: Clock
) -> None:
    event_id = decide(store, "c-1", "REVIEW", ["LOW_QUALITY"])
    reviews.claim(event_id, "alice")
    clock.now += timedelta(seconds=901)
    assert reason(reviews.resolve, event_id, "alice", "APPROVE", "late") == "REVIEW_NOT_CLAIMED"
    assert reviews.claim(event_id, "bob").claimed_by == "bob"
    assert reason(reviews.resolve, event_id, "alice", "APPROVE", "late") == "REVIEW_NOT_CLAIMED"
    assert reviews.resolve(event_id, "bob", "APPROVE", "fine").resolution == "APPROVE"


def test_unknown_and_non_review_events_are_not_reviews(
    store: Store, outbox: Outbox, reviews: Reviews
) -> None:
    approved = decide(store, "c-1", "APPROVE", ["MATCH"])
    missing = "00000000-0000-4000-8000-000000000000"
    assert isinstance(_raised(reviews.claim, missing, "alice"), NotFound)
    assert reason(reviews.claim, approved, "alice") == "REVIEW_NOT_FOUND"
    assert reason(reviews.claim, "not-a-uuid", "alice") == "INVALID_EVENT_ID"
    assert reason(reviews.get, approved.upper()) == "INVALID_EVENT_ID"


def test_event_filters_and_paging(store: Store, outbox: Outbox) -> None:
    ids = [decide(store, f"c-{i % 3}", "REVIEW" if i % 2 else "APPROVE",
                  ["MATCH", "LOW_QUALITY"] if i % 4 == 1 else ["MATCH"], device=f"k{i % 2}")
           for i in range(12)]  # fmt: skip
    everything = query_events(store, outbox, EventFilter(), "", 0, "")
    assert [e.event_id for e in everything.events] == ids and everything.next_page_token == ""
    assert set(everything.deliveries.values()) == {PENDING}
    reviews_only = query_events(store, outbox, event_filter(outcome="REVIEW"), "", 0, "")
    assert [e.event_id for e in reviews_only.events] == ids[1::2]
    low = query_events(store, outbox, EventFilter(), "LOW_QUALITY", 0, "")
    assert [e.event_id for e in low.events] == ids[1::4]  # a rule that did not fire: not named
    first = query_events(store, outbox, EventFilter(), "LOW_QUALITY", 2, "")
    rest = query_events(store, outbox, EventFilter(), "LOW_QUALITY", 2, first.next_page_token)
    assert [e.event_id for e in first.events + rest.events] == ids[1::4]
    pages, token = [], ""
    while True:
        page = query_events(store, outbox, event_filter(customer_id="c-1"), "", 3, token)
        pages += page.events
        token = page.next_page_token
        if not token:
            break
    assert [e.event_id for e in pages] == ids[1::3]
    assert [e.event_id for e in query_events(
        store, outbox, event_filter(device_id="k0", outcome="APPROVE"), "", 0, "").events
    ] == ids[0::2]  # fmt: skip
    now = datetime.now(UTC)
    assert query_events(store, outbox, event_filter(since=now), "", 0, "").events == []
    assert reason(event_filter, "", "", "", "", now, now) == "INVALID_TIME_RANGE"
    assert reason(event_filter, "", "", "review") == "INVALID_OUTCOME"
    assert reason(query_events, store, outbox, EventFilter(), "low quality", 0, "") == (
        "INVALID_REASON_CODE"
    )
    assert reason(query_events, store, outbox, EventFilter(), "", 501, "") == "PAGE_TOO_LARGE"
    assert reason(query_events, store, outbox, EventFilter(), "", 0, "-1") == "INVALID_PAGE_TOKEN"
    assert isinstance(_raised(event_filter, "", "d" * 129), InvalidInput)


def test_one_decision_in_full(store: Store, outbox: Outbox, reviews: Reviews) -> None:
    event_id = decide(store, "c-1", "REVIEW", ["MATCH", "LOW_QUALITY"])
    detail = get_decision(store, outbox, event_id)
    decision = detail.decision
    assert decision.outcome == "REVIEW" and decision.policy_version == "test-1"
    assert (decision.match_score, decision.threshold) == (0.71, 0.42)
    assert [(r.rule, r.fired, r.score) for r in decision.rules] == [
        ("low_quality", True, 30.0),
        ("blocklisted", False, 0.0),
    ]
    assert decision.liveness is not None and decision.liveness.challenge == "TURN_LEFT"
    assert decision.liveness.checks[0].name == "motion"
    assert detail.callback is not None and detail.callback.status == PENDING
    assert detail.review is not None and detail.review.resolution == ""
    reviews.claim(event_id, "alice")
    resolved = reviews.resolve(event_id, "alice", "APPROVE", "customer known to the branch")
    assert reason(get_decision, store, outbox, resolved.resolution_event_id) == (
        "DECISION_NOT_FOUND"
    )
    assert get_decision(store, outbox, event_id).review.resolution == "APPROVE"  # type: ignore[union-attr]
    assert reason(get_decision, store, outbox, "00000000-0000-4000-8000-000000000000") == (
        "DECISION_NOT_FOUND"
    )


def test_the_queue_query_reads_the_outcome_index_in_order(tmp_path: Path) -> None:
    """No scan of every event and no sort: the open-review page is an index range read."""
    from sqlalchemy import text

    with Store(f"sqlite:///{tmp_path / 'g.db'}", generate_keyring()) as store:
        store.create_schema()
        with store.connect() as conn:
            sql = queue_query(51, 0).compile(conn, compile_kwargs={"literal_binds": True})
            plan = [row[3] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
    assert plan[0] == "SEARCH events USING INDEX ix_events_outcome_id (outcome=? AND id>?)"
    assert not any("TEMP B-TREE" in step or step.startswith("SCAN") for step in plan), plan


def test_analysts_claiming_at_once_get_one_claim(store: Store, outbox: Outbox) -> None:
    from concurrent.futures import ThreadPoolExecutor

    event_id = decide(store, "c-1", "REVIEW", ["LOW_QUALITY"])
    reviews = Reviews(store, claim_ttl_s=900)

    def claim(analyst: str) -> str:
        try:
            return reviews.claim(event_id, analyst).claimed_by
        except Unprocessable as refused:
            return refused.reason

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(claim, [f"analyst-{i}" for i in range(8)]))
    winners = [a for a in answers if a.startswith("analyst-")]
    assert len(winners) == 1 and answers.count("REVIEW_CLAIMED") == 7
    assert reviews.get(event_id).claimed_by == winners[0]
