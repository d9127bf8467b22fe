"""Abuse limits: token buckets, concurrency, request sizes; over a real mTLS server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.limits import ConcurrencyLimiter, RateLimiter, carries_bulk
from service.api.server import Running
from service.cli.certs import DEV_CLIENTS, ClientSpec, write_dev_pki
from tests.service_helpers import mtls_settings, service_settings, serving, tls_channel


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.wait_for("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_for("a") == pytest.approx(0.5)  # one token every half second
    assert limiter.wait_for("b") == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.wait_for("a") == 0.0
    clock.now += 100
    assert [limiter.wait_for("a") for _ in range(4)][-1] > 0  # refills to the burst, no more


def test_rate_zero_turns_the_limit_off() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=Clock())
    assert all(limiter.wait_for("a") == 0.0 for _ in range(100))


def test_concurrency_limiter_counts_per_key() -> None:
    limiter = ConcurrencyLimiter(2)
    assert limiter.enter("a") and limiter.enter("a") and not limiter.enter("a")
    assert limiter.enter("b")
    limiter.leave("a")
    assert limiter.enter("a")


def test_requests_that_can_carry_images_get_the_large_limit() -> None:
    assert carries_bulk(verification_pb2.VerifyRequest.DESCRIPTOR)
    assert carries_bulk(verification_pb2.VerifyStreamRequest.DESCRIPTOR)
    assert carries_bulk(enrollment_pb2.EnrollRequest.DESCRIPTOR)
    assert not carries_bulk(enrollment_pb2.GetRequest.DESCRIPTOR)
    assert not carries_bulk(enrollment_pb2.DeleteRequest.DESCRIPTOR)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    extra = (ClientSpec("kiosk-K-010", ("kiosk",), "K-010"), ClientSpec("ops", ("enrollment",)))
    write_dev_pki(out, ("localhost", "127.0.0.1"), DEV_CLIENTS + extra)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Path, serve) -> Running:
    settings = mtls_settings(
        tmp_path_factory.mktemp("data"), pki, device_rate=0.01, device_burst=3,
        client_rate=0.01, client_burst=50, client_concurrency=2,
    )  # fmt: skip
    return serve(settings)


def details(error: grpc.RpcError) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds or None)."""
    reason, delay = "", None
    for detail in rpc_status.from_call(error).details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return reason, delay


def test_the_device_rate_limit_triggers_with_a_retry_hint(served: Running, pki: Path) -> None:
    with tls_channel(served.port, pki, "kiosk-K-010") as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        codes = []
        for _ in range(4):
            try:
                kiosk.Verify(verification_pb2.VerifyRequest(customer_id="c-1"), timeout=10)
            except grpc.RpcError as error:
                codes.append(error.code())
                last = error
    assert codes[:3] == [grpc.StatusCode.NOT_FOUND] * 3  # the burst goes through to the engine
    assert codes[3] == grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, delay = details(last)
    assert reason == "RATE_LIMITED"
    assert delay is not None and 1 <= delay <= 100  # a token every 100 s at 0.01/s


def test_one_client_cannot_hold_more_than_its_share(served: Running, pki: Path) -> None:
    release = threading.Event()

    def held_requests() -> Iterator[verification_pb2.VerifyStreamRequest]:
        release.wait(30)  # sends nothing until released: the call stays in flight
        yield from ()

    with (
        tls_channel(served.port, pki, "kiosk-K-001") as kiosk_channel,
        tls_channel(served.port, pki, "ops") as ops_channel,
    ):
        kiosk = verification_pb2_grpc.FaceVerificationStub(kiosk_channel)
        streams = [kiosk.VerifyStream(held_requests(), timeout=30) for _ in range(2)]
        try:
            release.wait(1.0)  # both streams reach the server and hold their slots
            with pytest.raises(grpc.RpcError) as err:
                kiosk.Verify(verification_pb2.VerifyRequest(customer_id="c-1"), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details(err.value)[0] == "TOO_MANY_CONCURRENT_CALLS"
            with pytest.raises(grpc.RpcError) as other:  # another client is not affected
                enrollment_pb2_grpc.EnrollmentStub(ops_channel).Get(
                    enrollment_pb2.GetRequest(customer_id="c-1"), timeout=10
                )
            assert other.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            release.set()
            for stream in streams:
                stream.cancel()


def test_a_request_over_its_methods_size_limit_is_refused(tmp_path: Path) -> None:
    with serving(service_settings(tmp_path)) as running:  # development mode: size limits apply
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = enrollment_pb2_grpc.EnrollmentStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Delete(
                    enrollment_pb2.DeleteRequest(customer_id="c-1", reason="x" * 100_000),
                    timeout=10,
                )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(err.value)[0] == "REQUEST_TOO_LARGE"
