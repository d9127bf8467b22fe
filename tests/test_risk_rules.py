"""Risk rules and the policy: each rule fires on its fact and only on it; the policy maps
hard rules and score sums to outcomes; bad policy files are refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.domain import APPROVE, DECLINE, REVIEW
from service.risk.policy import PolicyError, load_policy, parse_policy, stricter
from service.risk.rules import RiskContext
from service.store.lists import ListEntry, ListFacts
from service.store.velocity import Failures, VelocityFacts

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = load_policy()


def entry(subject: str) -> ListEntry:
    return ListEntry("X", subject, "fraud", "CASE-1", "op", NOW, "e")


def ctx(**changes: object) -> RiskContext:
    base = RiskContext(
        kind="VERIFY", now=NOW, customer_id="alice", device_id="kiosk-1", match_score=0.8,
        threshold=0.5, liveness_score=0.9, liveness_threshold=0.3, quality_score=80.0,
    )  # fmt: skip
    return replace(base, **changes)


def fired(context: RiskContext) -> set[str]:
    return {r.reason_code for r in POLICY.evaluate(context).rules if r.fired}


def test_a_clean_decision_fires_nothing_and_approves() -> None:
    assessment = POLICY.evaluate(ctx())
    assert fired(ctx()) == set()
    assert assessment.outcome == APPROVE and assessment.score == 0
    assert assessment.policy_version == POLICY.version
    assert {r.rule for r in assessment.rules} == {s.name for s in POLICY.rules}


@pytest.mark.parametrize(
    ("facts", "code"),
    [
        (ListFacts(blocklisted=entry("alice")), "BLOCKLISTED"),
        (ListFacts(device_blacklisted=entry("kiosk-1")), "DEVICE_BLACKLISTED"),
    ],
)
def test_list_hits_are_hard_declines(facts: ListFacts, code: str) -> None:
    assessment = POLICY.evaluate(ctx(lists=facts))
    assert fired(ctx(lists=facts)) == {code}
    assert assessment.outcome == DECLINE
    rule = next(r for r in assessment.rules if r.fired)
    assert rule.hard and "CASE-1" in rule.detail


def test_watchlist_hit_at_the_operating_threshold() -> None:
    assert fired(ctx(watchlist_hit=("w1", 0.49))) == set()
    assert fired(ctx(watchlist_hit=("w1", 0.5))) == {"WATCHLIST_HIT"}
    assert POLICY.evaluate(ctx(watchlist_hit=("w1", 0.7))).outcome == DECLINE


def test_duplicate_identity_is_hard_at_enrolment_and_reviewed_at_verification() -> None:
    other = ("bob", 0.6)
    at_verify = POLICY.evaluate(ctx(other_customer=other))
    assert "DUPLICATE_IDENTITY" in fired(ctx(other_customer=other))
    assert at_verify.outcome == REVIEW
    assert not any(r.hard for r in at_verify.rules)
    at_enrol = POLICY.evaluate(ctx(kind="ENROLL", match_score=None, other_customer=other))
    assert at_enrol.outcome == DECLINE and any(r.hard for r in at_enrol.rules)
    assert fired(ctx(other_customer=("bob", 0.45))) == set()  # below threshold: no duplicate


def test_velocity_locks_after_the_limit_and_cools_down() -> None:
    recent = Failures(5, NOW - timedelta(seconds=10), devices=2)
    assert fired(ctx(velocity=VelocityFacts(customer=Failures(4, NOW, 2)))) == set()
    locked = POLICY.evaluate(ctx(velocity=VelocityFacts(customer=recent)))
    assert locked.outcome == DECLINE and "VELOCITY" in locked.reason_codes
    cooled = VelocityFacts(customer=Failures(5, NOW - timedelta(seconds=901), 2))
    assert fired(ctx(velocity=cooled)) == set()
    device = VelocityFacts(device=Failures(10, NOW, 1))
    assert fired(ctx(velocity=device)) == {"VELOCITY"}


def test_one_device_locks_a_customer_out_only_at_that_device() -> None:
    one_device = Failures(50, NOW, devices=1)
    assert fired(ctx(velocity=VelocityFacts(customer=one_device))) == set()  # elsewhere
    here = POLICY.evaluate(ctx(velocity=VelocityFacts(customer_here=Failures(5, NOW, 1))))
    assert here.outcome == DECLINE
    assert "at this device" in next(r.detail for r in here.rules if r.fired)


def test_liveness_quality_and_margin() -> None:
    assert fired(ctx(session_liveness_passed=False)) == {"LIVENESS_FAILED"}
    assert POLICY.evaluate(ctx(session_liveness_passed=False)).outcome == DECLINE
    assert POLICY.evaluate(ctx(liveness_score=0.1)).outcome == REVIEW
    assert POLICY.evaluate(ctx(quality_score=30.0)).outcome == REVIEW
    weak = ctx(match_score=0.62, other_customer=("bob", 0.6))
    assert fired(weak) == {"WEAK_MATCH_MARGIN", "DUPLICATE_IDENTITY"}
    clear = ctx(match_score=0.9, other_customer=("bob", 0.2))
    assert fired(clear) == set()
    # two soft signals together reach the decline threshold (40 + 30 >= 70)
    assert POLICY.evaluate(ctx(liveness_score=0.1, quality_score=30.0)).outcome == DECLINE


def test_score_sum_thresholds() -> None:
    policy = parse_policy({
        "version": "t", "outcome": {"review_at": 30, "decline_at": 60},
        "rules": {"low_quality": {"score": 30, "min_quality": 50},
                  "liveness_weak": {"score": 30}},
    })  # fmt: skip
    assert policy.evaluate(ctx(quality_score=40.0)).outcome == REVIEW
    both = policy.evaluate(ctx(quality_score=40.0, liveness_score=0.1))
    assert both.outcome == DECLINE and both.score == 60


def test_stricter() -> None:
    assert stricter(APPROVE, REVIEW) == REVIEW
    assert stricter(DECLINE, REVIEW) == DECLINE


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"outcome": {"review_at": 1, "decline_at": 2}}, "version"),
        ({"version": "v"}, "review_at"),
        ({"version": "v", "outcome": {"review_at": 5, "decline_at": 2}}, "review_at <="),
        (
            {
                "version": "v",
                "outcome": {"review_at": 1, "decline_at": 2},
                "rules": {"no_such_rule": {}},
            },
            "unknown rules",
        ),
        (
            {
                "version": "v",
                "outcome": {"review_at": 1, "decline_at": 2},
                "rules": {"velocity": {"hard": True}},
            },
            "needs",
        ),
        (
            {
                "version": "v",
                "outcome": {"review_at": 1, "decline_at": 2},
                "rules": {"blocklisted": {"hard": "yes"}},
            },
            "hard",
        ),
    ],
)
def test_bad_policies_are_refused(data: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(data)


def test_policy_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("version = ")
    with pytest.raises(PolicyError, match=r"p\.toml"):
        load_policy(bad)
