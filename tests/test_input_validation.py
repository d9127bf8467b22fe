"""Smaller holes one certificate could use, each closed and tested over real mutual TLS.

Private files; customer ids validated exactly before any work; unknown enum numbers; consent
times the client must state and cannot date ahead; stream frames dated far from now.
"""

from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from tests.service_helpers import consent, mtls_settings
from tests.test_security import reason_of

NOT_AN_IMAGE = common_pb2.Image(data=b"not an image: validation must refuse the call first")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory as an earlier version left it: 0755, with a 0644 file."""
    directory = tmp_path_factory.mktemp("data")
    directory.chmod(0o755)
    leftover = directory / "old-notes.txt"
    leftover.write_text("from an earlier version")
    leftover.chmod(0o644)
    return directory


@pytest.fixture(scope="module")
def served(data_dir: Path, pki: Path, serve) -> Running:
    return serve(mtls_settings(data_dir, pki, device_burst=100, client_burst=100))


@pytest.fixture(scope="module")
def desk(tls_client) -> enrollment_pb2_grpc.EnrollmentStub:
    return enrollment_pb2_grpc.EnrollmentStub(tls_client("enrollment-desk"))


@pytest.fixture(scope="module")
def kiosk(tls_client) -> verification_pb2_grpc.FaceVerificationStub:
    return verification_pb2_grpc.FaceVerificationStub(tls_client("kiosk-K-001"))


@pytest.fixture(scope="module")
def admin(tls_client) -> risk_pb2_grpc.RiskAdminStub:
    return risk_pb2_grpc.RiskAdminStub(tls_client("admin"))


def refused(call, request, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    """The ErrorInfo reason of a call that must fail with `code`."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    assert err.value.code() == code, err.value.details()
    return reason_of(err.value)


def test_the_data_directory_and_every_file_in_it_are_private(
    served: Running, data_dir: Path, admin
) -> None:
    admin.AddListEntry(  # a database write: the WAL and shared-memory files exist now
        risk_pb2.AddListEntryRequest(
            list=risk_pb2.DEVICE_BLACKLIST,
            subject="K-666",
            reason="test",
            case_ref="case-1",
            operator_id="op-1",
        ),
        timeout=60,
    )
    served.engine.gallery.save()
    names = {p.name for p in data_dir.iterdir()}
    assert {"faceguard.db", "faceguard.db-wal", "template-keys.json", "index.faiss"} <= names
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in data_dir.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.parametrize("customer_id", ["alice\n", "alice\r\n", "\nalice", "ali ce", "alice\0"])
def test_a_customer_id_is_validated_exactly_before_any_work(desk, kiosk, customer_id: str) -> None:
    enroll = enrollment_pb2.EnrollRequest(
        customer_id=customer_id, images=[NOT_AN_IMAGE], consent=consent()
    )
    assert refused(desk.Enroll, enroll) == "INVALID_CUSTOMER_ID"
    verify = verification_pb2.VerifyRequest(customer_id=customer_id, frames=[NOT_AN_IMAGE])
    assert refused(kiosk.Verify, verify) == "INVALID_CUSTOMER_ID"
    get = enrollment_pb2.GetRequest(customer_id=customer_id)
    assert refused(desk.Get, get) == "INVALID_CUSTOMER_ID"


def test_an_unknown_list_number_is_invalid_not_internal(admin) -> None:
    for call, request in (
        (admin.AddListEntry, risk_pb2.AddListEntryRequest(list=99, subject="K-1", reason="r")),
        (admin.RemoveListEntry, risk_pb2.RemoveListEntryRequest(list=-5, subject="K-1")),
        (admin.ListEntries, risk_pb2.ListEntriesRequest(list=1234)),
    ):
        assert refused(call, request) == "INVALID_LIST"


def test_consent_must_say_when_it_was_given_and_not_in_the_future(desk) -> None:
    undated = consent()
    undated.ClearField("given_at")
    ahead = consent()
    ahead.given_at.FromSeconds(int(time.time()) + 86_400)
    for record, reason in ((undated, "CONSENT_REQUIRED"), (ahead, "INVALID_CONSENT_TIME")):
        request = enrollment_pb2.EnrollRequest(
            customer_id="c-consent", images=[NOT_AN_IMAGE], consent=record
        )
        assert refused(desk.Enroll, request) == reason


def test_consent_text_is_checked_once_where_the_consent_is_made(desk) -> None:
    """Text the store could not keep is refused before any face work (it was an INTERNAL
    ValueError of the store after the templates were made), and an empty field is missing."""
    too_long, unprintable, empty = consent(), consent(), consent()
    too_long.purpose = "p" * 65
    unprintable.channel = "branch\x00"
    empty.operator_id = ""
    for record, reason in (
        (too_long, "INVALID_CONSENT"),
        (unprintable, "INVALID_CONSENT"),
        (empty, "CONSENT_REQUIRED"),
    ):
        request = enrollment_pb2.EnrollRequest(
            customer_id="c-consent", images=[NOT_AN_IMAGE], consent=record
        )
        assert refused(desk.Enroll, request) == reason


def stream_frame(captured: Timestamp, session_id: str) -> verification_pb2.IdentifyStreamRequest:
    frame = verification_pb2.StreamFrame(
        image=NOT_AN_IMAGE, captured_at=captured, session_id=session_id
    )
    return verification_pb2.IdentifyStreamRequest(frame=frame)


@pytest.mark.parametrize(
    ("seconds", "reason"),
    [
        (253_402_300_800, "INVALID_TIMESTAMP"),  # 10000-01-01: beyond what a Timestamp holds
        (int(time.time()) + 86_400, "CLOCK_SKEW"),
        (int(time.time()) - 86_400, "CLOCK_SKEW"),
    ],
)
def test_a_stream_frame_dated_far_from_now_is_refused(kiosk, seconds: int, reason: str) -> None:
    session_id = str(uuid.uuid4())
    options = verification_pb2.StreamOptions(session_id=session_id)
    start_message = verification_pb2.IdentifyStreamRequest(
        start=verification_pb2.IdentifyStreamStart(options=options)
    )
    captured = Timestamp(seconds=seconds)
    with pytest.raises(grpc.RpcError) as err:
        list(
            kiosk.IdentifyStream(
                iter([start_message, stream_frame(captured, session_id)]), timeout=60
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == reason
