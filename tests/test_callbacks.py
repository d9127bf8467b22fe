"""The synchronous FraudEngine.Assess consult: the engine's recommendation, and fail-open or
fail-closed when it is down or slower than the deadline."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.app.decision import Decision
from service.domain import APPROVE, DECLINE, REVIEW
from service.risk.callback import (
    Assessor,
    FraudEngineClient,
    SigningKey,
    channel_for,
    identity_event,
)
from tests.service_helpers import free_port
from tools.fraud_sink import Behaviour, RunningSink, start_sink

KEY = SigningKey("k1", bytes(32))
DECISION = Decision(
    event_id="6f1c1a52-4a43-4f1a-9b5e-0d7c1e1b2a3c", outcome=APPROVE, customer_id="alice",
    match_score=0.8, threshold=0.5, reason_codes=("MATCH",), device_id="kiosk-1",
    risk_score=0.0, policy_version="t",
)  # fmt: skip


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[RunningSink]:
    running = start_sink(tmp_path / "sink.db", {"k1": KEY}, Behaviour())
    yield running
    running.stop()


def assessor(port: int, fail_closed: bool, timeout_s: float = 0.3) -> Assessor:
    client = FraudEngineClient(channel_for(f"127.0.0.1:{port}", None, None, None), KEY, 2.0)
    return Assessor(client, timeout_s, fail_closed)


@pytest.mark.parametrize("recommended", [APPROVE, REVIEW, DECLINE])
def test_the_engine_recommendation_is_a_recorded_rule(sink: RunningSink, recommended) -> None:
    sink.servicer.behaviour.assess_outcome = recommended
    rule, outcome = assessor(sink.port, fail_closed=True)("VERIFY", DECISION)
    assert outcome == recommended
    assert rule.rule == "fraud_engine" and rule.fired == (recommended != APPROVE)
    assert rule.hard == (recommended == DECLINE)


@pytest.mark.parametrize(("fail_closed", "expected"), [(False, APPROVE), (True, DECLINE)])
def test_a_slow_engine_fails_open_or_closed_within_the_deadline(
    sink: RunningSink, fail_closed: bool, expected: str
) -> None:
    sink.servicer.behaviour.hang = True
    started = time.monotonic()
    rule, outcome = assessor(sink.port, fail_closed)("VERIFY", DECISION)
    assert time.monotonic() - started < 2.0
    assert outcome == expected and rule.reason_code == "FRAUD_ENGINE_UNAVAILABLE"
    assert rule.fired == fail_closed and "DEADLINE_EXCEEDED" in rule.detail
    sink.servicer.behaviour.hang = False


def test_a_down_engine_fails_closed() -> None:
    rule, outcome = assessor(free_port(), fail_closed=True)("VERIFY", DECISION)
    assert outcome == DECLINE and rule.hard and "UNAVAILABLE" in rule.detail


def test_the_wire_event_carries_the_decision() -> None:
    document = {
        "event_id": DECISION.event_id, "type": "VERIFY", "sequence": 7,
        "occurred_at": DECISION.decided_at.isoformat(), "customer_id": "alice",
        "device_id": "kiosk-1", "outcome": "REVIEW", "payload": DECISION.audit_payload(),
    }  # fmt: skip
    event = identity_event(document)
    assert event.sequence == 7 and event.outcome == 2 and event.match_score == pytest.approx(0.8)
    assert list(event.reason_codes) == ["MATCH"] and event.policy_version == "t"
    assert event.details["threshold"] == 0.5 and not event.HasField("quality_score")
    data = event.SerializeToString(deterministic=True)
    assert KEY.verify(data, KEY.sign(data)) and not KEY.verify(data + b"x", KEY.sign(data))


def test_fraud_sink_command_verifies_stores_and_obeys_signals(tmp_path: Path) -> None:
    from service.risk.callback import load_signing_key, write_signing_key
    from service.store.outbox import OutboxItem
    from tests.service_helpers import FACEGUARD
    from tools.fraud_sink import sink_stats

    key_file, port = tmp_path / "hmac.key", free_port()
    write_signing_key(key_file)
    process = subprocess.Popen(
        [str(FACEGUARD), "fraud-sink", "--port", str(port), "--db", str(tmp_path / "s.db"),
         "--hmac-key-file", str(key_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        key = load_signing_key(key_file, "k1")
        client = FraudEngineClient(channel_for(f"127.0.0.1:{port}", None, None, None), key, 5.0)
        document = {
            "event_id": DECISION.event_id, "type": "VERIFY", "sequence": 1,
            "occurred_at": DECISION.decided_at.isoformat(), "outcome": "APPROVE",
            "payload": DECISION.audit_payload(),
        }  # fmt: skip
        item = OutboxItem(1, DECISION.event_id, document, 0)
        grpc.channel_ready_future(client.channel).result(timeout=30)
        client.deliver(item)
        client.deliver(item)
        stats = sink_stats(tmp_path / "s.db")
        assert stats["stored"] == 1 and stats["duplicates"] == 1
        process.send_signal(signal.SIGUSR2)  # fail every call from now on
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as err:
            client.deliver(item)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_callback_settings_are_checked_at_start(tmp_path: Path) -> None:
    from service.app.assembly import HMAC_KEY_FILE, build_risk
    from service.config import RiskSettings, SettingsError
    from service.store.crypto import generate_keyring
    from service.store.customers import Store

    with Store(f"sqlite:///{tmp_path / 'g.db'}", generate_keyring()) as store:
        store.create_schema()
        target = f"127.0.0.1:{free_port()}"
        with pytest.raises(SettingsError, match="callback_target"):
            build_risk(RiskSettings(assess="fail_open"), store, tmp_path, 192, 0.3)
        with pytest.raises(SettingsError, match="hmac_key_file"):
            build_risk(RiskSettings(callback_target=target), store, tmp_path, 192, 0.3)
        (tmp_path / "bad.toml").write_text('version = "x"\n')
        with pytest.raises(SettingsError, match="review_at"):
            build_risk(RiskSettings(policy_file=tmp_path / "bad.toml"), store, tmp_path, 192, 0.3)
        runtime = build_risk(
            RiskSettings(callback_target=target, assess="fail_closed"), store, tmp_path, 192,
            0.3, dev=True,
        )  # fmt: skip
        assert (tmp_path / HMAC_KEY_FILE).is_file() and runtime.dispatcher is not None
        assert runtime.checks.consult is not None
        runtime.stop()
