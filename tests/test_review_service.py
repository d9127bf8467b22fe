"""The REVIEW queue end to end over mutual TLS: a kiosk's Verify that the risk policy sends to
review is listed, claimed and resolved by an analyst; the resolution is in the audit chain
(`faceguard audit verify` still passes) and reaches the fraud engine (the reference sink);
a kiosk is refused every review call; the CLI works the same flow."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from service.risk.policy import DEFAULT_POLICY
from tests.service_helpers import (
    FACEGUARD,
    SMALL_FACE_ENV,
    image,
    mtls_settings,
    people_with,
    sink_risk,
    with_sections,
)
from tests.test_service import enroll, expect_error
from tools.fraud_sink import RunningSink, stored_event_ids

REVIEW = common_pb2.REVIEW


def review_policy(folder: Path) -> Path:
    """The shipped policy, but every face below quality 100 (all of them) is LOW_QUALITY:
    30 points, the policy's review_at, so a matching Verify ends in REVIEW."""
    text = DEFAULT_POLICY.read_text().replace("min_quality = 40.0", "min_quality = 100.0")
    path = folder / "policy.toml"
    path.write_text(text.replace('version = "default-', 'version = "review-test-'))
    return path


@pytest.fixture(scope="module")
def people(shared_data: Path) -> list[tuple[str, list[Path]]]:
    return people_with(shared_data, minimum=3, count=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reviews")


@pytest.fixture(scope="module")
def served(folder: Path, sink: RunningSink, pki: Path, serve) -> Running:
    settings = mtls_settings(folder / "data", pki, device_burst=100)
    risk = sink_risk(review_policy(folder), folder / "hmac.key", sink.port, hmac_key_id="k1")
    return serve(with_sections(settings, risk=risk))


@pytest.fixture(scope="module")
def channels(tls_client) -> dict[str, grpc.Channel]:
    return {
        name: tls_client(name) for name in ("kiosk-K-001", "enrollment-desk", "analyst", "admin")
    }


def risk_admin(channels: dict[str, grpc.Channel], who: str) -> risk_pb2_grpc.RiskAdminStub:
    return risk_pb2_grpc.RiskAdminStub(channels[who])


def reviewed_verify(channels: dict[str, grpc.Channel], person: tuple[str, list[Path]]) -> str:
    """Enrol a person and verify them at kiosk K-001: a REVIEW decision; its event id."""
    name, images = person
    enroll(enrollment_pb2_grpc.EnrollmentStub(channels["enrollment-desk"]), name, images[:1])
    kiosk = verification_pb2_grpc.FaceVerificationStub(channels["kiosk-K-001"])
    reply = kiosk.Verify(
        verification_pb2.VerifyRequest(customer_id=name, frames=[image(images[1])]), timeout=60
    )
    assert reply.decision.outcome == REVIEW, reply.decision.reason_codes
    assert "LOW_QUALITY" in reply.decision.reason_codes
    return reply.decision.event_id


def wait_at_sink(event_ids: set[str], db: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not event_ids <= stored_event_ids(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert event_ids <= stored_event_ids(db), "events missing at the fraud engine"


def audit_verify(folder: Path) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", "--data-dir", str(folder / "data"), "--json")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGUARD), *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **SMALL_FACE_ENV},
    )  # fmt: skip


def test_an_analyst_claims_and_resolves_a_review_over_grpc(
    served: Running, channels, people, folder: Path
) -> None:
    event_id = reviewed_verify(channels, people[0])
    analyst, admin = risk_admin(channels, "analyst"), risk_admin(channels, "admin")
    queue = analyst.ListReviews(risk_pb2.ListReviewsRequest(), timeout=10)
    (review,) = [r for r in queue.reviews if r.event_id == event_id]
    assert review.customer_id == people[0][0] and review.device_id == "K-001"
    assert "LOW_QUALITY" in review.reason_codes and not review.claimed_by

    claimed = analyst.ClaimReview(risk_pb2.ClaimReviewRequest(event_id=event_id), timeout=10)
    assert claimed.claimed_by == "analyst" and claimed.claim_expires_at.seconds > time.time()
    expect_error(admin.ClaimReview, risk_pb2.ClaimReviewRequest(event_id=event_id),
                 grpc.StatusCode.FAILED_PRECONDITION, "REVIEW_CLAIMED")  # fmt: skip
    not_mine = risk_pb2.ResolveReviewRequest(
        event_id=event_id, resolution=common_pb2.DECLINE, note="not my claim"
    )
    expect_error(admin.ResolveReview, not_mine, grpc.StatusCode.FAILED_PRECONDITION,
                 "REVIEW_NOT_CLAIMED")  # fmt: skip
    for bad, reason in (
        (risk_pb2.ResolveReviewRequest(event_id=event_id, resolution=REVIEW, note="x"),
         "INVALID_RESOLUTION"),
        (risk_pb2.ResolveReviewRequest(event_id=event_id, resolution=common_pb2.APPROVE),
         "INVALID_NOTE"),
        (risk_pb2.ResolveReviewRequest(event_id=event_id, resolution=common_pb2.APPROVE,
                                       note="n" * 501), "INVALID_NOTE"),
        (risk_pb2.ResolveReviewRequest(event_id=event_id.upper(), resolution=common_pb2.APPROVE,
                                       note="x"), "INVALID_EVENT_ID"),
    ):  # fmt: skip
        expect_error(analyst.ResolveReview, bad, grpc.StatusCode.INVALID_ARGUMENT, reason)
    resolve = risk_pb2.ResolveReviewRequest(
        event_id=event_id, resolution=common_pb2.APPROVE, note="known customer, ID checked"
    )
    resolved = analyst.ResolveReview(resolve, timeout=10)
    assert (resolved.resolution, resolved.resolved_by) == ("APPROVE", "analyst")
    assert resolved.resolution_event_id
    expect_error(analyst.ResolveReview, resolve, grpc.StatusCode.FAILED_PRECONDITION,
                 "REVIEW_RESOLVED")  # fmt: skip
    queue = analyst.ListReviews(risk_pb2.ListReviewsRequest(), timeout=10)
    assert event_id not in {r.event_id for r in queue.reviews}

    wait_at_sink({event_id, resolved.resolution_event_id}, folder / "sink.db")
    found = analyst.QueryEvents(
        risk_pb2.QueryEventsRequest(type="REVIEW_RESOLVED", customer_id=people[0][0]), timeout=10
    )
    (event,) = found.events
    assert event.event_id == resolved.resolution_event_id and event.outcome == "APPROVE"
    assert dict(event.payload) == {
        "reviewed_event_id": event_id, "analyst": "analyst", "resolution": "APPROVE",
        "note": "known customer, ID checked",
    }  # fmt: skip
    verified = audit_verify(folder)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout

    detail = analyst.GetDecision(risk_pb2.GetDecisionRequest(event_id=event_id), timeout=10)
    decision = detail.decision
    assert decision.outcome == REVIEW and decision.policy_version.startswith("review-test-")
    assert decision.match_score >= decision.threshold > 0
    assert decision.model_versions.embedder and len(decision.rules) >= 9
    low = next(r for r in decision.rules if r.reason_code == "LOW_QUALITY")
    assert low.fired and low.score == 30 and low.detail
    assert any(not r.fired for r in decision.rules)
    assert detail.callback.status == "DELIVERED" and detail.callback.attempts >= 1
    assert detail.review.resolution == "APPROVE" and detail.event.event_id == event_id
    assert b"\xff\xd8" not in detail.SerializeToString()  # no image in the answer
    expect_error(analyst.GetDecision,
                 risk_pb2.GetDecisionRequest(event_id=resolved.resolution_event_id),
                 grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")  # fmt: skip


def test_event_filters_over_grpc(served: Running, channels, people) -> None:
    analyst = risk_admin(channels, "analyst")
    event_id = reviewed_verify(channels, people[1])
    by_reason = analyst.QueryEvents(
        risk_pb2.QueryEventsRequest(reason_code="LOW_QUALITY", outcome="REVIEW", page_size=500),
        timeout=10,
    )
    assert event_id in {e.event_id for e in by_reason.events}
    assert all("LOW_QUALITY" in e.payload["reason_codes"] for e in by_reason.events)
    none = analyst.QueryEvents(
        risk_pb2.QueryEventsRequest(reason_code="BLOCKLISTED", device_id="K-001"), timeout=10
    )
    assert none.events == [] and none.next_page_token == ""
    since = risk_pb2.QueryEventsRequest(customer_id=people[1][0])
    since.since.GetCurrentTime()
    since.until.FromSeconds(since.since.seconds - 10)
    for request, code, reason in (
        (since, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIME_RANGE"),
        (risk_pb2.QueryEventsRequest(outcome="approve"), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_OUTCOME"),
        (risk_pb2.QueryEventsRequest(reason_code="LOW QUALITY"),
         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REASON_CODE"),
        (risk_pb2.QueryEventsRequest(type="x" * 100), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_TYPE"),
        (risk_pb2.QueryEventsRequest(customer_id="a\\n"), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_CUSTOMER_ID"),
        (risk_pb2.QueryEventsRequest(page_token="9" * 40), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_PAGE_TOKEN"),
        (risk_pb2.QueryEventsRequest(page_token="\u00b2"), grpc.StatusCode.INVALID_ARGUMENT,
         "INVALID_PAGE_TOKEN"),  # a digit to str.isdigit, not to int()
        (risk_pb2.QueryEventsRequest(page_size=501), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "PAGE_TOO_LARGE"),
    ):  # fmt: skip
        expect_error(analyst.QueryEvents, request, code, reason)
    expect_error(analyst.ListReviews, risk_pb2.ListReviewsRequest(page_size=10_000),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "PAGE_TOO_LARGE")  # fmt: skip


def test_a_kiosk_gets_no_review_call_and_an_analyst_changes_nothing_else(channels, people) -> None:
    kiosk = risk_admin(channels, "kiosk-K-001")
    some = "00000000-0000-4000-8000-000000000000"
    for call, request in (
        (kiosk.ListReviews, risk_pb2.ListReviewsRequest()),
        (kiosk.ClaimReview, risk_pb2.ClaimReviewRequest(event_id=some)),
        (kiosk.ResolveReview, risk_pb2.ResolveReviewRequest(event_id=some)),
        (kiosk.GetDecision, risk_pb2.GetDecisionRequest(event_id=some)),
        (kiosk.QueryEvents, risk_pb2.QueryEventsRequest()),
    ):
        expect_error(call, request, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    analyst = risk_admin(channels, "analyst")
    change = risk_pb2.AddListEntryRequest(
        list=risk_pb2.DEVICE_BLACKLIST, subject="K-9", reason="r", case_ref="c", operator_id="o"
    )
    expect_error(analyst.AddListEntry, change, grpc.StatusCode.PERMISSION_DENIED,
                 "ROLE_NOT_ALLOWED")  # fmt: skip
    expect_error(analyst.LiftLockout, risk_pb2.LiftLockoutRequest(device_id="K-1", reason="r"),
                 grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")  # fmt: skip
    expect_error(analyst.ClaimReview, risk_pb2.ClaimReviewRequest(event_id=some),
                 grpc.StatusCode.NOT_FOUND, "REVIEW_NOT_FOUND")  # fmt: skip


def test_the_cli_works_the_queue(
    served: Running, channels, people, pki: Path, folder: Path
) -> None:
    def as_(client: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--server", f"localhost:{served.port}", "--tls-ca", str(pki / "ca.pem"),
                   "--tls-cert", str(pki / f"{client}.pem"),
                   "--tls-key", str(pki / f"{client}.key"))  # fmt: skip

    event_id = reviewed_verify(channels, people[2])
    # (the policy also sent the enrolment to review: an ENROLL with outcome REVIEW)
    listed = as_("analyst", "review", "list", "--customer-id", people[2][0], "--device-id",
                 "K-001")  # fmt: skip
    (line,) = listed.stdout.strip().splitlines()
    assert listed.returncode == 0 and event_id in line and "LOW_QUALITY" in line
    claimed = as_("analyst", "review", "claim", event_id, "--json")
    assert claimed.returncode == 0 and json.loads(claimed.stdout)["claimed_by"] == "analyst"
    taken = as_("admin", "review", "claim", event_id, "--json")
    assert taken.returncode == 4
    assert json.loads(taken.stdout)["error"]["reason"] == "REVIEW_CLAIMED"
    resolved = as_("analyst", "review", "resolve", event_id, "--decline", "--note", "not them")
    assert resolved.returncode == 0 and "DECLINE" in resolved.stdout, resolved.stderr
    again = as_("analyst", "review", "resolve", event_id, "--approve", "--note", "x")
    assert again.returncode == 4 and "REVIEW_RESOLVED" in again.stderr
    shown = as_("analyst", "review", "show", event_id)
    assert shown.returncode == 0 and shown.stdout.startswith("REVIEW")
    assert "DECLINE by analyst: not them" in shown.stdout and "LOW_QUALITY" in shown.stdout
    assert "blocklisted" in shown.stdout  # rules that did not fire are shown too
    events = as_("analyst", "risk", "events", "--customer-id", people[2][0], "--reason",
                 "LOW_QUALITY", "--outcome", "REVIEW", "--type", "VERIFY",
                 "--limit", "5")  # fmt: skip
    (line,) = events.stdout.strip().splitlines()
    assert events.returncode == 0 and event_id in line and "  VERIFY  REVIEW  " in line
    everything = as_("analyst", "risk", "events", "--customer-id", people[2][0], "--json")
    types = [e["type"] for e in json.loads(everything.stdout)["events"]]
    assert types == ["ENROLL", "VERIFY", "REVIEW_RESOLVED"]
    refused = as_("kiosk-K-001", "review", "list", "--json")
    assert refused.returncode == 4
    assert json.loads(refused.stdout)["error"]["reason"] == "ROLE_NOT_ALLOWED"
    bad = as_("analyst", "risk", "events", "--reason", "low quality")
    assert bad.returncode == 4 and "INVALID_REASON_CODE" in bad.stderr
    verified = audit_verify(folder)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"], verified.stdout
