"""Two served replicas on one PostgreSQL, over real gRPC channels: an enrolment through A is
identified through B, and after A's Delete answered B never returns the erased customer."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import start
from service.app.assembly import KEYRING_FILE
from service.config import AUDIT_KEY_FILE
from tests.service_helpers import consent, image, people_with, service_settings
from tools import postgres


@pytest.fixture(scope="module")
def people(shared_data: Path) -> list[tuple[str, list[Path]]]:
    return people_with(shared_data, minimum=3, count=2)


def test_replicas_follow_each_others_enrolments_and_erasures(
    tmp_path: Path, people: list[tuple[str, list[Path]]], postgres_url: str
) -> None:
    postgres.reset_database(postgres_url)
    first = service_settings(tmp_path / "a")
    first.storage.database_url = postgres_url
    a = start(first)
    second = service_settings(tmp_path / "b")  # the bank's keys, its own index snapshot
    second.storage.database_url = postgres_url
    second.storage.key_file = tmp_path / "a" / KEYRING_FILE
    second.storage.audit_key_file = tmp_path / "a" / AUDIT_KEY_FILE
    b = start(second)
    (frank, images) = people[0]
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{a.port}") as to_a,
            grpc.insecure_channel(f"127.0.0.1:{b.port}") as to_b,
        ):
            enrolment = enrollment_pb2_grpc.EnrollmentStub(to_a)
            kiosk_b = verification_pb2_grpc.FaceVerificationStub(to_b)
            probe = verification_pb2.IdentifyRequest(image=image(images[1]))
            enrolment.Enroll(
                enrollment_pb2.EnrollRequest(
                    customer_id=frank, images=[image(images[0])], consent=consent()
                ),
                timeout=60,
            )
            deadline = time.monotonic() + 30  # the first Identify warms B's vision worker
            while not [c for c in kiosk_b.Identify(probe, timeout=60).candidates
                       if c.customer_id == frank]:  # fmt: skip
                assert time.monotonic() < deadline, "B never found the enrolment through A"
                time.sleep(0.05)
            enrolment.Delete(
                enrollment_pb2.DeleteRequest(customer_id=frank, reason="test", operator_id="op"),
                timeout=60,
            )
            found = kiosk_b.Identify(probe, timeout=60).candidates  # at once: no follow wait
            assert frank not in [candidate.customer_id for candidate in found]
    finally:
        a.stop(grace=2)
        b.stop(grace=2)
