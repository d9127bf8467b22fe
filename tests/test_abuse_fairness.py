"""What one kiosk certificate can take from everyone else, over real mutual TLS (issue 12).

Each test plays the attacker with one certificate while another client is served: streams
that hold threads, health Watch calls, a mix of both, a kiosk's concurrent face calls, a
certificate that shares its common name, a claim of another device, a second server on a
served port.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running, start
from service.cli.certs import ClientSpec, DevCA
from service.config import SettingsError
from service.errors import Expired
from service.liveness.session import Observation, Session
from service.liveness.session_policy import LivenessPolicy, SessionLimits
from service.store.customers import event_table
from tests.service_helpers import (
    FACEGUARD,
    free_port,
    mtls_settings,
    server_process,
    serving,
    tls_channel,
)
from tests.test_limits import details

CLIENTS = (
    ClientSpec("kiosk-K-001", ("kiosk",), "K-001"),
    ClientSpec("kiosk-K-002", ("kiosk",), "K-002"),
    ClientSpec("enrollment-desk", ("enrollment",)),
)
# Two certificates with one common name: files twin-a.* and twin-b.*
TWINS = ("twin-a", "twin-b")
ATTACKER, VICTIM = "kiosk-K-001", "kiosk-K-002"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    ca = DevCA()
    issued = {"server": ca.server(("localhost", "127.0.0.1"))}
    issued |= {spec.name: ca.client(spec) for spec in CLIENTS}
    issued |= {name: ca.client(ClientSpec("ops-twin", ("enrollment",))) for name in TWINS}
    (out / "ca.pem").write_bytes(ca.cert_pem)
    for name, cert in issued.items():
        (out / f"{name}.pem").write_bytes(cert.cert_pem)
        (out / f"{name}.key").write_bytes(cert.key_pem)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Path, serve) -> Running:
    # Default shares and stream limits; rates high enough not to be what refuses a call.
    settings = mtls_settings(
        tmp_path_factory.mktemp("data"), pki, device_burst=200, client_burst=200
    )
    return serve(settings)


def faceless_frame() -> common_pb2.Image:
    ok, encoded = cv2.imencode(".jpg", np.full((480, 640, 3), 90, np.uint8))
    assert ok
    return common_pb2.Image(data=encoded.tobytes())


def faceless_session(
    every_s: float, frames: int, hold: threading.Event | None = None
) -> Iterator[Any]:
    """An identify session that sends a faceless frame every `every_s` seconds."""
    options = verification_pb2.StreamOptions(session_id=str(uuid.uuid4()))
    start = verification_pb2.IdentifyStreamStart(top_k=1, options=options)
    yield verification_pb2.IdentifyStreamRequest(start=start)
    if hold is not None:  # then nothing until released (the call stays open)
        hold.wait(30)
    frame = verification_pb2.StreamFrame(image=faceless_frame())
    for _ in range(frames):
        time.sleep(every_s)
        yield verification_pb2.IdentifyStreamRequest(frame=frame)


def outcome(error: grpc.RpcError | None) -> tuple[str, str]:
    if error is None:
        return "OK", ""
    return error.code().name, details(error)[0]


class Streams:
    """Streams opened from threads; each one's (code, reason, seconds it lasted)."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str, float]] = []
        self.threads: list[threading.Thread] = []

    def open(self, call: object) -> None:
        def run() -> None:
            start, error = time.monotonic(), None
            try:
                for _ in call():  # type: ignore[operator]
                    pass
            except grpc.RpcError as err:
                error = err
            self.ended.append((*outcome(error), time.monotonic() - start))

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


def victim_is_served(port: int, pki: Path) -> None:
    """Another kiosk's Verify and Health.Check are answered promptly (the Verify names nobody
    enrolled: its NOT_FOUND comes from the engine, past every limit)."""
    with tls_channel(port, pki, VICTIM) as channel:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            verification_pb2_grpc.FaceVerificationStub(channel).Verify(
                verification_pb2.VerifyRequest(customer_id="nobody", frames=[faceless_frame()]),
                timeout=5,
            )
        assert outcome(err.value) == ("NOT_FOUND", "CUSTOMER_NOT_FOUND")
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - start < 5


def test_one_kiosks_faceless_streams_neither_hold_every_thread_nor_last(
    served: Running, pki: Path
) -> None:
    streams = Streams()
    with tls_channel(served.port, pki, ATTACKER) as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        for _ in range(8):
            streams.open(lambda: kiosk.IdentifyStream(faceless_session(0.5, 60), timeout=40))
        time.sleep(1.5)  # the streams reach the server and hold what they can
        victim_is_served(served.port, pki)
        streams.join()
    refused = [e for e in streams.ended if e[:2] == ("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")]
    ended = [e for e in streams.ended if e[:2] == ("DEADLINE_EXCEEDED", "NO_FACE_TIMEOUT")]
    assert len(refused) == 6 and len(ended) == 2, streams.ended
    # No face for stream.no_face_timeout_s (4 s): over long before max_duration_s (20 s).
    assert all(seconds < 10 for *_, seconds in ended), streams.ended


def test_health_watch_calls_cannot_exhaust_the_server(served: Running, pki: Path) -> None:
    with tls_channel(served.port, pki, ATTACKER) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(64)]
        try:
            time.sleep(1.5)
            victim_is_served(served.port, pki)
            open_watches = [w for w in watches if not w.done()]
            assert len(open_watches) == 2  # the client's share of long-lived calls
            refused = {outcome(w.exception()) for w in watches if w.done()}
            assert refused == {("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")}
        finally:
            for watch in watches:
                watch.cancel()


def test_without_a_client_ca_watch_calls_count_by_peer_host(tmp_path: Path, pki: Path) -> None:
    with serving(mtls_settings(tmp_path, pki, client_ca=False)) as running:
        with tls_channel(running.port, pki, None) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(64)]
            try:
                time.sleep(1.5)
                assert len([w for w in watches if not w.done()]) == 2
                with tls_channel(running.port, pki, None) as other:
                    reply = health_pb2_grpc.HealthStub(other).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            finally:
                for watch in watches:
                    watch.cancel()


def test_streams_and_watch_calls_share_one_budget_per_client(served: Running, pki: Path) -> None:
    streams = Streams()
    with tls_channel(served.port, pki, ATTACKER) as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        release = threading.Event()
        for _ in range(2):  # a start and then nothing: held until the session's idle limit
            streams.open(lambda: kiosk.IdentifyStream(faceless_session(0, 0, release), timeout=20))
        time.sleep(1.0)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        try:
            with pytest.raises(grpc.RpcError) as err:
                next(iter(watch))
            assert outcome(err.value) == ("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")
        finally:
            watch.cancel()
            release.set()
        streams.join()


def test_a_kiosk_gets_one_face_call_at_a_time(
    served: Running, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vision = served.engine.vision
    entered, release = threading.Event(), threading.Event()
    original = vision.best_probe

    def held(frames: list[bytes]):  # the first call's face work waits until released
        if not entered.is_set():
            entered.set()
            release.wait(20)
        return original(frames)

    monkeypatch.setattr(vision, "best_probe", held)
    request = verification_pb2.CheckLivenessRequest(frames=[faceless_frame()])
    with tls_channel(served.port, pki, ATTACKER) as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        first = kiosk.CheckLiveness.future(request, timeout=30)
        try:
            assert entered.wait(10)
            with pytest.raises(grpc.RpcError) as err:
                kiosk.CheckLiveness(request, timeout=10)
            assert outcome(err.value) == ("RESOURCE_EXHAUSTED", "TOO_MANY_CONCURRENT_CALLS")
            victim_is_served(served.port, pki)  # another kiosk is not affected
        finally:
            release.set()
        assert outcome(first.exception()) == ("FAILED_PRECONDITION", "NO_FACE")


def test_certificates_with_one_common_name_have_their_own_limits(tmp_path: Path, pki: Path) -> None:
    with serving(mtls_settings(tmp_path, pki, client_rate=0.01, client_burst=2)) as running:
        codes = {}
        for name in ("twin-a", "twin-a", "twin-a", "twin-b"):
            with tls_channel(running.port, pki, name) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    enrollment_pb2_grpc.EnrollmentStub(channel).Get(
                        enrollment_pb2.GetRequest(customer_id="nobody"), timeout=10
                    )
                codes.setdefault(name, []).append(details(err.value)[0])
    assert codes["twin-a"] == ["CUSTOMER_NOT_FOUND"] * 2 + ["RATE_LIMITED"]
    assert codes["twin-b"] == ["CUSTOMER_NOT_FOUND"]  # its own bucket, not twin-a's


def test_a_claim_of_another_device_is_audited(served: Running, pki: Path) -> None:
    with tls_channel(served.port, pki, ATTACKER) as channel:
        with pytest.raises(grpc.RpcError) as err:
            verification_pb2_grpc.FaceVerificationStub(channel).Verify(
                verification_pb2.VerifyRequest(customer_id="c-77", device_id="K-002"), timeout=10
            )
    assert outcome(err.value) == ("PERMISSION_DENIED", "DEVICE_MISMATCH")
    refused = device_mismatch_events(served)
    assert len(refused) == 1
    event, payload = refused[0], json.loads(refused[0].payload)
    assert (event.type, event.outcome, event.device_id) == ("VERIFY", "DECLINE", "K-001")
    assert event.customer_id is None  # the claim does not count against the customer named
    assert payload["client"] == ATTACKER and payload["claimed_device"] == "K-002"
    assert len(payload["certificate"]) == 64  # the certificate's SHA-256


def test_a_kiosk_calling_an_admin_method_is_audited(served: Running, pki: Path) -> None:
    """A kiosk certificate probing RiskAdmin or Calibration leaves an audit row naming it."""
    with tls_channel(served.port, pki, ATTACKER) as channel:
        with pytest.raises(grpc.RpcError) as err:
            risk_pb2_grpc.RiskAdminStub(channel).LiftLockout(
                risk_pb2.LiftLockoutRequest(customer_id="c-78", reason="let me in"), timeout=10
            )
    assert outcome(err.value) == ("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")
    (event,) = refusal_events(served, "ROLE_NOT_ALLOWED")
    payload = json.loads(event.payload)
    assert (event.type, event.outcome, event.device_id) == ("CALL", "DECLINE", "K-001")
    assert payload["client"] == ATTACKER and len(payload["certificate"]) == 64
    assert payload["method"] == "/faceguard.v1.RiskAdmin/LiftLockout"


def refusal_events(running: Running, reason: str) -> list[Any]:
    with running.engine.gallery.store.connect() as conn:
        rows = conn.execute(select(event_table).order_by(event_table.c.id)).all()
    return [r for r in rows if reason in json.loads(r.payload).get("reason_codes", [])]


def device_mismatch_events(running: Running) -> list[Any]:
    return refusal_events(running, "DEVICE_MISMATCH")


def test_a_flood_of_device_claims_writes_no_more_audit_rows_than_the_device_rate(
    tmp_path: Path, pki: Path
) -> None:
    with serving(mtls_settings(tmp_path, pki, device_rate=0.01, device_burst=3)) as running:
        with tls_channel(running.port, pki, ATTACKER) as channel:
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
            for _ in range(10):
                with pytest.raises(grpc.RpcError) as err:
                    kiosk.Verify(verification_pb2.VerifyRequest(device_id="K-002"), timeout=10)
                assert outcome(err.value) == ("PERMISSION_DENIED", "DEVICE_MISMATCH")
        assert len(device_mismatch_events(running)) == 3  # the device's burst, then logs only


def test_a_second_server_on_a_served_port_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    with server_process(tmp_path / "first", port):
        second = subprocess.Popen(
            [str(FACEGUARD), "serve", "--data-dir", str(tmp_path / "second"), "--port",
             str(port), "--dev-key"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _, stderr = second.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            pytest.fail("a second server started on a port already served")
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in stderr


def test_a_session_ends_once_no_face_came_for_the_no_face_timeout() -> None:
    limits = SessionLimits(no_face_timeout_s=4.0, idle_timeout_s=5.0, max_duration_s=20.0)
    policy = LivenessPolicy(passive_threshold=0.5)
    session = Session(limits, policy, 0.0)
    for t in (1.0, 2.0, 3.0, 3.9):  # faceless frames, each in time for the idle limit
        assert session.observe(Observation(t, t)) is None
    assert session.next_timer_s() == pytest.approx(4.0)
    with pytest.raises(Expired) as ended:
        session.observe(Observation(4.0, 4.0))
    assert ended.value.reason == "NO_FACE_TIMEOUT"

    waiting = Session(limits, policy, 0.0)  # a faceless frame, then none: the timer ends it
    waiting.observe(Observation(1.0, 1.0))
    with pytest.raises(Expired) as timed_out:
        waiting.expire(waiting.next_timer_s())
    assert timed_out.value.reason == "NO_FACE_TIMEOUT"

    silent = Session(limits, policy, 0.0)  # no frame at all stays an idle session
    assert silent.next_timer_s() == pytest.approx(5.0)
    with pytest.raises(Expired) as idle:
        silent.expire(5.0)
    assert idle.value.reason == "SESSION_IDLE"


def test_settings_that_let_one_client_hold_the_reserved_threads_are_refused(
    tmp_path: Path, pki: Path
) -> None:
    with pytest.raises(SettingsError, match="reserved_workers"):
        start(mtls_settings(tmp_path, pki, client_concurrency=9))  # 8 threads kept for unary


def test_bench_abuse_prints_the_victims_latency_in_every_phase() -> None:
    run = subprocess.run(
        [str(FACEGUARD), "bench", "abuse", "--json", "--calls", "3", "--streams", "2",
         "--watches", "4", "--attackers", "2", "--phase-s", "20"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    for phase in ("baseline", "streams_and_watches", "lying_images"):
        assert report[phase]["verify_calls"] == 3
        assert 0 < report[phase]["verify_median_ms"] <= report[phase]["verify_p95_ms"]
        assert report[phase]["failed"] == {}  # the shares keep the victim served
    refused = report["streams_and_watches"]["attacker_calls"]
    assert any(outcome.endswith(":TOO_MANY_STREAMS") for outcome in refused), refused
    assert report["attack"]["lying_jpeg_bytes"] < 200_000
