"""Templates of another embedder version over gRPC: counted at start, never matched, a precise
refusal for Verify, and UpdateTemplates(replace=true) as the way back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from service.app.assembly import open_store
from service.store.customers import NewEvent, NewTemplate
from tests.service_helpers import consent, image, people_with, service_settings, serving

RETIRED = "retired-embedder@1"


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(error).details[0].Unpack(info)
    return error.code(), info.reason


@contextmanager
def serving_at(data_dir: Path) -> Iterator[tuple[Running, grpc.Channel]]:
    with serving(service_settings(data_dir), grace=2) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel


def test_outdated_templates_are_refused_until_replaced(tmp_path: Path, shared_data: Path) -> None:
    (person, images), (other, other_images) = people_with(shared_data, minimum=3, count=2)
    with serving_at(tmp_path) as (running, channel):
        enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
        for customer, faces in ((person, images), (other, other_images)):
            enrollment.Enroll(
                enrollment_pb2.EnrollRequest(
                    customer_id=customer, images=[image(p) for p in faces[:2]], consent=consent()
                ),
                timeout=60,
            )
    # The same vectors written again directly into the store, under a retired embedder's name:
    # without the version check they would still match the person's face.
    with open_store(service_settings(tmp_path)) as store:
        current = store.templates_of(person)
        model = current[0].model
        retired = [NewTemplate(t.vector, RETIRED, t.quality) for t in current]
        store.add_templates(person, retired, True, NewEvent("UPDATE_TEMPLATES", "APPROVE"))

    with serving_at(tmp_path) as (running, channel):
        assert running.engine.gallery.outdated_at_start == 2  # counted (and logged) at start
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        verify = verification_pb2.VerifyRequest(
            customer_id=person, frames=[image(images[2])], device_id="k1"
        )
        with pytest.raises(grpc.RpcError) as refused:
            kiosk.Verify(verify, timeout=60)
        outdated = (grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATES_OUTDATED")
        assert refusal(refused.value) == outdated
        assert "re-enrol with UpdateTemplates(replace=true)" in refused.value.details()
        opening = verification_pb2.VerifyStreamRequest(
            start=verification_pb2.VerifyStreamStart(
                customer_id=person, options=verification_pb2.StreamOptions(session_id="s-1")
            )
        )
        with pytest.raises(grpc.RpcError) as streamed:  # refused before any frame
            list(kiosk.VerifyStream(iter([opening]), timeout=60))
        assert refusal(streamed.value) == outdated
        declines = [e for e in running.engine.gallery.store.events_of(person) if e.type == "VERIFY"]
        assert [e.payload["reason_codes"] for e in declines] == [["TEMPLATES_OUTDATED"]] * 2
        identify = verification_pb2.IdentifyRequest(image=image(images[2]), device_id="k1")
        assert person not in [c.customer_id for c in kiosk.Identify(identify).candidates]
        other_verify = verification_pb2.VerifyRequest(
            customer_id=other, frames=[image(other_images[2])], device_id="k2"
        )
        assert "MATCH" in kiosk.Verify(other_verify, timeout=60).decision.reason_codes

        enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
        replaced = enrollment.UpdateTemplates(
            enrollment_pb2.UpdateTemplatesRequest(
                customer_id=person, images=[image(p) for p in images[:2]], replace=True,
                operator_id="op-1",
            ),
            timeout=60,
        )  # fmt: skip
        assert replaced.customer.template_count == 2
        assert {t.model for t in running.engine.gallery.store.templates_of(person)} == {model}
        decision = kiosk.Verify(verify, timeout=60).decision
        assert decision.outcome in (common_pb2.APPROVE, common_pb2.REVIEW)
        assert "MATCH" in decision.reason_codes
        found = kiosk.Identify(identify, timeout=60).candidates
        assert [c.customer_id for c in found][:1] == [person]
