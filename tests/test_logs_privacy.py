"""Every log record of a full service run is one JSON line, carries its call's request id, and
holds no image, no embedding, and no score next to a named person."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.logs import use_json_logs
from tests.service_helpers import consent, image, people_with, service_settings, serving

NUMBER_RUN = re.compile(r"(-?\d+\.\d+[,\s]+){8,}")  # eight decimals in a row: a vector
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{120,}={0,2}")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The service's own log set-up (`faceguard serve`), at DEBUG, into a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    use_json_logs(logging.DEBUG, stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def run_the_service(data_dir: Path, people: list[tuple[str, list[Path]]]) -> list[float]:
    """Enrol, verify (match and mismatch), identify, fail in several ways, erase; returns
    every score the service answered with."""
    (alice, alice_images), (bob, bob_images), (carol, carol_images) = people
    scores: list[float] = []
    with serving(service_settings(data_dir)) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
            meta = [("x-request-id", "privacy-run")]
            for person, images in ((alice, alice_images), (bob, bob_images)):
                reply = enrollment.Enroll(
                    enrollment_pb2.EnrollRequest(
                        customer_id=person, images=[image(images[0])], consent=consent()
                    ),
                    timeout=60, metadata=meta,
                )  # fmt: skip
                scores.append(reply.decision.quality_score)
            for person, frame in ((alice, alice_images[1]), (bob, alice_images[1])):
                decision = kiosk.Verify(
                    verification_pb2.VerifyRequest(
                        customer_id=person, frames=[image(frame)], device_id="K-1"
                    ),
                    timeout=60, metadata=meta,
                ).decision  # fmt: skip
                scores += [decision.match_score, decision.quality_score, decision.liveness_score]
            found = kiosk.Identify(
                verification_pb2.IdentifyRequest(image=image(alice_images[1]), device_id="K-1"),
                timeout=60, metadata=meta,
            )  # fmt: skip
            scores += [c.score for c in found.candidates]
            failures = [
                (kiosk.Verify, verification_pb2.VerifyRequest(
                    customer_id=carol, frames=[image(carol_images[0])])),
                (kiosk.Verify, verification_pb2.VerifyRequest(
                    customer_id=alice, frames=[common_pb2.Image(data=b"\xff\xd8\xff garbage")])),
                (enrollment.Enroll, enrollment_pb2.EnrollRequest(
                    customer_id=carol, images=[image(alice_images[2])], consent=consent())),
                (enrollment.Enroll, enrollment_pb2.EnrollRequest(
                    customer_id="bad id!", images=[image(carol_images[0])])),
            ]  # fmt: skip
            for call, request in failures:
                with pytest.raises(grpc.RpcError):
                    call(request, timeout=60, metadata=meta)
            enrollment.Delete(
                enrollment_pb2.DeleteRequest(customer_id=bob, reason="request", operator_id="op"),
                timeout=60, metadata=meta,
            )  # fmt: skip
    return [s for s in scores if s]


def test_a_full_run_logs_nothing_biometric(
    shared_data: Path, tmp_path: Path, captured: io.StringIO
) -> None:
    people = people_with(shared_data, minimum=3, count=3)
    scores = run_the_service(tmp_path, people)
    lines = captured.getvalue().splitlines()
    assert len(lines) > 20
    records = [json.loads(line) for line in lines]  # every record is one JSON object
    access = [r for r in records if r["logger"] == "faceguard.access"]
    assert len(access) >= 9 and all(r["request_id"] == "privacy-run" for r in access)

    names = [person for person, _ in people]
    images = [path.read_bytes() for _, paths in people for path in paths]
    score_texts = {f"{s:.{digits}f}" for s in scores for digits in (2, 3, 4)} | {
        repr(s) for s in scores
    }
    for line in lines:
        assert not NUMBER_RUN.search(line), f"vector-like numbers logged: {line[:200]}"
        assert not BASE64_RUN.search(line), f"encoded data logged: {line[:200]}"
        for data in images:
            assert base64.b64encode(data[:48]).decode() not in line
            assert data[:48].hex() not in line and repr(data[:24])[2:-1] not in line
        if any(name in line for name in names):
            tied = [text for text in score_texts if text in line]
            assert not tied, f"a score next to a customer id: {line[:200]}"
    assert not any(repr(s) in line for s in scores for line in lines)
