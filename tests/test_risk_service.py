"""Risk checks and fraud-engine callbacks end to end: a real service over gRPC, the reference
sink as the bank's fraud engine, RiskAdmin for the lists and the watchlist, and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from service.risk.callback import load_signing_key, write_signing_key
from service.risk.policy import DEFAULT_POLICY
from tests.service_helpers import (
    FACEGUARD,
    SMALL_FACE_ENV,
    free_port,
    image,
    people_with,
    service_settings,
    sink_risk,
    wait_serving,
    with_sections,
)
from tests.test_service import enroll, expect_error
from tools.fraud_sink import Behaviour, RunningSink, sink_stats, start_sink, stored_event_ids

APPROVE, REVIEW, DECLINE = common_pb2.APPROVE, common_pb2.REVIEW, common_pb2.DECLINE
COOLDOWN_S = 3


def fast_policy(folder: Path) -> Path:
    """The shipped policy with test-sized velocity limits and cool-down."""
    text = DEFAULT_POLICY.read_text()
    text = text.replace("customer_failures = 5 ", "customer_failures = 3 ")
    text = text.replace("cooldown_s = 900 ", f"cooldown_s = {COOLDOWN_S} ")
    path = folder / "policy.toml"
    path.write_text(text.replace('version = "default-', 'version = "test-'))
    return path


def risk_settings(folder: Path, sink_port: int) -> dict[str, object]:
    key = folder / "hmac.key"
    if not key.exists():
        write_signing_key(key)
    return sink_risk(fast_policy(folder), key, sink_port, callback_timeout_s=2.0)


@pytest.fixture(scope="module")
def people(shared_data: Path) -> list[tuple[str, list[Path]]]:
    return people_with(shared_data, minimum=3, count=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("risk")


@pytest.fixture(scope="module")
def served(folder: Path, sink: RunningSink, serve) -> Running:
    settings = service_settings(folder / "data")
    return serve(with_sections(settings, risk=risk_settings(folder, sink.port)))


@pytest.fixture(scope="module")
def admin(channel: grpc.Channel) -> risk_pb2_grpc.RiskAdminStub:
    return risk_pb2_grpc.RiskAdminStub(channel)


def verify(kiosk, customer: str, face: Path, device: str) -> common_pb2.Decision:
    request = verification_pb2.VerifyRequest(
        customer_id=customer, frames=[image(face)], device_id=device
    )
    return kiosk.Verify(request, timeout=60).decision


def wait_for(event_ids: set[str], db: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not event_ids <= stored_event_ids(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert event_ids <= stored_event_ids(db), "events missing at the sink"


def fired(decision: common_pb2.Decision) -> set[str]:
    return {r.reason_code for r in decision.rules if r.fired}


def audited_detail(admin, decision: common_pb2.Decision, code: str, **query: str) -> str:
    """A rule's detail as the audit event keeps it (the kiosk's reply leaves out some)."""
    events = admin.QueryEvents(risk_pb2.QueryEventsRequest(page_size=500, **query), timeout=10)
    (event,) = [e for e in events.events if e.event_id == decision.event_id]
    return next(r["detail"] for r in event.payload["rules"] if r["reason_code"] == code)


def test_blacklisted_device_declines_and_the_sink_holds_one_event(
    admin, enrollment, kiosk, people, folder: Path
) -> None:
    name, images = people[0]
    enroll(enrollment, name, images[:1])
    entry = admin.AddListEntry(
        risk_pb2.AddListEntryRequest(
            list=risk_pb2.DEVICE_BLACKLIST, subject="kiosk-stolen", reason="reported stolen",
            case_ref="CASE-7", operator_id="fraud-1",
        ),
        timeout=10,
    )  # fmt: skip
    assert entry.event_id and entry.case_ref == "CASE-7"
    decision = verify(kiosk, name, images[1], "kiosk-stolen")
    assert decision.outcome == DECLINE
    assert "DEVICE_BLACKLISTED" in decision.reason_codes and "MATCH" in decision.reason_codes
    assert decision.policy_version.startswith("test-") and len(decision.rules) >= 9
    rule = next(r for r in decision.rules if r.reason_code == "DEVICE_BLACKLISTED")
    assert rule.fired and rule.hard and rule.detail == ""  # a stolen kiosk learns no case
    assert "CASE-7" in audited_detail(admin, decision, rule.reason_code, device_id="kiosk-stolen")
    wait_for({decision.event_id}, folder / "sink.db")
    time.sleep(0.5)  # any redelivery would have arrived by now
    from_device = [e for e in _sink_rows(folder / "sink.db") if e[1] == "kiosk-stolen"]
    assert from_device == [(decision.event_id, "kiosk-stolen", "DECLINE")]
    listed = admin.ListEntries(
        risk_pb2.ListEntriesRequest(list=risk_pb2.DEVICE_BLACKLIST), timeout=10
    )
    assert [e.subject for e in listed.entries] == ["kiosk-stolen"]
    admin.RemoveListEntry(
        risk_pb2.RemoveListEntryRequest(
            list=risk_pb2.DEVICE_BLACKLIST, subject="kiosk-stolen", operator_id="fraud-1"
        ),
        timeout=10,
    )
    assert verify(kiosk, name, images[1], "kiosk-stolen").outcome != DECLINE
    found = admin.QueryEvents(risk_pb2.QueryEventsRequest(device_id="kiosk-stolen"), timeout=10)
    types = [e.type for e in found.events]
    assert types == ["DEVICE_BLACKLIST_ADD", "VERIFY", "DEVICE_BLACKLIST_REMOVE", "VERIFY"]
    assert found.events[1].delivery in {"PENDING", "DELIVERED"}


def _sink_rows(db: Path) -> list[tuple[str, str, str]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT event_id, device_id, outcome FROM events").fetchall()


def test_blocklisted_customer_and_watchlisted_face(admin, enrollment, kiosk, people) -> None:
    (name, images), (fraudster, faces) = people[1], people[2]
    enroll(enrollment, name, images[:1])
    admin.AddListEntry(
        risk_pb2.AddListEntryRequest(
            list=risk_pb2.CUSTOMER_BLOCKLIST, subject=name, reason="mule account",
            case_ref="CASE-9", operator_id="fraud-1",
        ),
        timeout=10,
    )  # fmt: skip
    decision = verify(kiosk, name, images[1], "kiosk-b")
    assert decision.outcome == DECLINE and "BLOCKLISTED" in decision.reason_codes

    entry = admin.EnrollWatchlistFace(
        risk_pb2.EnrollWatchlistRequest(
            label="fraudster A", images=[image(faces[0])], reason="forged ids",
            case_ref="CASE-11", operator_id="fraud-1",
        ),
        timeout=60,
    )  # fmt: skip
    assert entry.template_count == 1 and entry.entry_id
    expect_error(
        enrollment.Enroll,
        _enroll_request(f"new-{fraudster}", faces[1]),
        grpc.StatusCode.FAILED_PRECONDITION, "WATCHLIST_HIT",
    )  # fmt: skip
    found = kiosk.Identify(
        verification_pb2.IdentifyRequest(image=image(faces[1]), device_id="kiosk-w"), timeout=60
    )
    assert found.decision.outcome == DECLINE and "WATCHLIST_HIT" in found.decision.reason_codes
    listed = admin.ListWatchlist(risk_pb2.ListWatchlistRequest(), timeout=10)
    assert [e.entry_id for e in listed.entries] == [entry.entry_id]
    admin.RemoveWatchlistEntry(
        risk_pb2.RemoveWatchlistRequest(entry_id=entry.entry_id, operator_id="fraud-1"),
        timeout=10,
    )
    again = kiosk.Identify(
        verification_pb2.IdentifyRequest(image=image(faces[1]), device_id="kiosk-w"), timeout=60
    )
    assert "WATCHLIST_HIT" not in again.decision.reason_codes


def _enroll_request(customer_id: str, face: Path):
    from faceguard.v1 import enrollment_pb2
    from tests.service_helpers import consent

    return enrollment_pb2.EnrollRequest(
        customer_id=customer_id, images=[image(face)], consent=consent()
    )


def test_duplicate_identity_at_enrolment_and_verification(admin, enrollment, kiosk, people) -> None:
    (alice, alice_faces), (bob, bob_faces) = people[3], people[4]
    enroll(enrollment, alice, alice_faces[:1])
    enroll(enrollment, bob, bob_faces[:1])
    claimed_bob = verify(kiosk, bob, alice_faces[1], "kiosk-d")
    assert claimed_bob.outcome == DECLINE
    assert {"NO_MATCH", "DUPLICATE_IDENTITY"} <= set(claimed_bob.reason_codes)
    rule = next(r for r in claimed_bob.rules if r.reason_code == "DUPLICATE_IDENTITY")
    assert rule.detail == ""  # the kiosk is not told whose face it is
    assert alice in audited_detail(admin, claimed_bob, rule.reason_code, customer_id=bob)
    expect_error(
        enrollment.Enroll, _enroll_request(f"{alice}-again", alice_faces[2]),
        grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IDENTITY",
    )  # fmt: skip
    refused = admin.QueryEvents(
        risk_pb2.QueryEventsRequest(customer_id=f"{alice}-again"), timeout=10
    )
    assert [(e.type, e.outcome) for e in refused.events] == [("ENROLL", "DECLINE")]
    assert verify(kiosk, alice, alice_faces[1], "kiosk-d").outcome in (APPROVE, REVIEW)


def test_velocity_lockout_and_cool_down(enrollment, kiosk, people) -> None:
    (carol, faces), (_, other_faces) = people[5], people[6]
    enroll(enrollment, carol, faces[:1])
    for device in ("kiosk-v", "kiosk-v", "kiosk-v3"):  # 3 non-matching faces, 2 devices
        assert verify(kiosk, carol, other_faces[0], device).outcome == DECLINE
    locked = verify(kiosk, carol, faces[1], "kiosk-v2")  # even the right face, elsewhere
    assert locked.outcome == DECLINE and "VELOCITY" in fired(locked)
    assert "MATCH" in locked.reason_codes
    time.sleep(COOLDOWN_S + 0.5)
    cooled = verify(kiosk, carol, faces[1], "kiosk-v2")
    assert cooled.outcome in (APPROVE, REVIEW) and "VELOCITY" not in cooled.reason_codes


def test_sink_down_for_a_while_loses_and_duplicates_nothing(
    enrollment, kiosk, people, sink: RunningSink, folder: Path
) -> None:
    name, faces = people[7]
    enroll(enrollment, name, faces[:1])
    sink.server.stop(0).wait()  # the module's sink stays down; later tests run their own
    ids = {verify(kiosk, name, faces[2], "kiosk-o").event_id for _ in range(4)}
    time.sleep(1.0)
    assert not ids & stored_event_ids(folder / "sink.db")
    key = load_signing_key(folder / "hmac.key", "k1")
    revived = start_sink(folder / "sink.db", {"k1": key}, Behaviour(), port=sink.port)
    try:
        wait_for(ids, folder / "sink.db")
        stats = sink_stats(folder / "sink.db")
        assert stats["stored"] == stats["distinct"] and stats["out_of_order"] == 0
    finally:
        revived.stop()


def _serve(data: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(FACEGUARD), "serve", "--data-dir", str(data), "--port", str(port), "--dev-key"],
        env={**os.environ, **SMALL_FACE_ENV, "FACEGUARD_VISION__THREADS": "1", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_serving(f"127.0.0.1:{port}")
    return process


def test_kill_9_mid_delivery_completes_after_restart(tmp_path: Path, people) -> None:
    name, faces = people[0]
    sink_port, port = free_port(), free_port()
    settings = risk_settings(tmp_path, sink_port)
    env = {f"FACEGUARD_RISK__{k.upper()}": str(v) for k, v in settings.items()}
    behaviour = Behaviour(hang=True)  # deliveries are in flight when the service dies
    sink = start_sink(tmp_path / "sink.db", {"k1": load_signing_key(tmp_path / "hmac.key", "k1")},
                      behaviour, port=sink_port)  # fmt: skip
    process = _serve(tmp_path / "data", port, env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            enroll(enrollment_pb2_grpc.EnrollmentStub(chan), name, faces[:1])
            kiosk = verification_pb2_grpc.FaceVerificationStub(chan)
            ids = {verify(kiosk, name, faces[1], "kiosk-k").event_id for _ in range(3)}
        time.sleep(0.5)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert not stored_event_ids(tmp_path / "sink.db")
        behaviour.hang = False
        process = _serve(tmp_path / "data", port, env)
        wait_for(ids, tmp_path / "sink.db")
        stats = sink_stats(tmp_path / "sink.db")
        assert stats["stored"] == stats["distinct"] == len(ids) + 1  # + the enrolment
    finally:
        process.terminate()
        process.wait(timeout=60)
        sink.stop()


def _cli(*args: str) -> dict:
    import json

    done = subprocess.run(
        [str(FACEGUARD), *args, "--json"], capture_output=True, text=True, timeout=120
    )
    return json.loads(done.stdout) | {"_rc": done.returncode}


def test_risk_cli(served: Running) -> None:
    server = ("--server", f"127.0.0.1:{served.port}")
    added = _cli("risk", "devices", "add", "kiosk-cli", "--reason", "tampered",
                 "--case", "CASE-3", "--operator", "fraud-2", *server)  # fmt: skip
    assert added["_rc"] == 0 and added["case_ref"] == "CASE-3"
    listed = _cli("risk", "devices", "list", *server)
    assert "kiosk-cli" in [e["subject"] for e in listed["entries"]]
    events = _cli("risk", "events", "--device-id", "kiosk-cli", *server)
    assert [e["type"] for e in events["events"]] == ["DEVICE_BLACKLIST_ADD"]
    assert events["events"][0]["payload"]["case_ref"] == "CASE-3"
    assert (
        _cli("risk", "devices", "remove", "kiosk-cli", "--operator", "fraud-2", *server)["_rc"] == 0
    )
    missing = _cli("risk", "devices", "remove", "kiosk-cli", "--operator", "fraud-2", *server)
    assert missing["_rc"] == 4 and missing["error"]["reason"] == "NOT_LISTED"
    dead = _cli("risk", "dead-letters", "list", *server).get("dead_letters", [])
    assert all(d["attempts"] == 10 for d in dead)  # the module's sink is down by now
    replayed = _cli("risk", "dead-letters", "replay", "--operator", "fraud-2", *server)
    assert replayed["_rc"] == 0 and replayed["event_id"]
    assert replayed.get("replayed", 0) == len(dead)


def test_query_events_refuses_an_out_of_range_time(admin) -> None:
    request = risk_pb2.QueryEventsRequest(since=Timestamp(seconds=2**62))
    expect_error(admin.QueryEvents, request, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP")
