"""Who may call what, over real mutual TLS: certificates, roles, device binding, request ids.

The table test takes the services from the running server's reflection and their methods
from the descriptors, so a new method or service is covered (and a service nobody has
decided on fails) without editing this file.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.auth import Identity, bind_device, identity_from_pem
from service.api.server import Running
from service.cli.certs import ClientSpec, DevCA
from tests.service_helpers import (
    FACEGUARD,
    consent,
    image,
    mtls_settings,
    people_with,
    serving,
    tls_channel,
)

ROLES = {
    "kiosk": "kiosk-K-001",
    "enrollment": "enrollment-desk",
    "admin": "admin",
    "investigator": "investigator",
    "analyst": "analyst",
}
PUBLIC = frozenset(ROLES)
# Decided here, independently of service/api/auth.py: who may call each service.
EXPECTED = {
    "faceguard.v1.FaceVerification": frozenset({"kiosk"}),
    "faceguard.v1.Enrollment": frozenset({"enrollment"}),
    "faceguard.v1.RiskAdmin": frozenset({"admin"}),
    "faceguard.v1.Calibration": frozenset({"admin"}),
    "grpc.health.v1.Health": PUBLIC,
    "grpc.reflection.v1alpha.ServerReflection": PUBLIC,
    "grpc.reflection.v1.ServerReflection": PUBLIC,
}
# Methods open beyond their service's roles: a search below the operating threshold is the
# investigator's (and admin's) audited right.
EXPECTED_METHODS = {
    "faceguard.v1.FaceVerification/Identify": frozenset({"kiosk", "investigator", "admin"}),
} | {  # a fraud analyst reads the fraud records and works the REVIEW queue, changes nothing
    f"faceguard.v1.RiskAdmin/{method}": frozenset({"admin", "analyst"})
    for method in (
        "ListEntries", "ListWatchlist", "QueryEvents", "ListDeadLetters", "ListLockouts",
        "ListReviews", "ClaimReview", "ResolveReview", "GetDecision",
    )
}  # fmt: skip
AUTH_REASONS = {"ROLE_NOT_ALLOWED", "CLIENT_CERT_REQUIRED", "METHOD_NOT_ALLOWED", "DEVICE_MISMATCH"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Path, serve) -> Running:
    return serve(mtls_settings(tmp_path_factory.mktemp("data"), pki, device_burst=100))


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def registered_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    return sorted(s.name for s in reply.list_services_response.service)


def invoke(channel: grpc.Channel, method: MethodDescriptor) -> grpc.RpcError | None:
    """Call `method` with an empty request (one message for streams); the error, if any."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = message_factory.GetMessageClass(method.input_type)()
    response_type = message_factory.GetMessageClass(method.output_type)
    kwargs = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_type.FromString,
    }
    streaming = (method.client_streaming, method.server_streaming)
    try:
        if streaming == (False, False):
            channel.unary_unary(path, **kwargs)(request, timeout=10)
        elif streaming == (True, False):
            channel.stream_unary(path, **kwargs)(iter([request]), timeout=10)
        else:
            factory = channel.unary_stream if streaming == (False, True) else channel.stream_stream
            responses = factory(path, **kwargs)(
                request if streaming == (False, True) else iter([request]), timeout=10
            )
            next(iter(responses), None)  # the first answer (or error) decides; Watch never ends
            responses.cancel()
    except grpc.RpcError as error:
        return error
    return None


def all_methods(channel: grpc.Channel) -> list[tuple[ServiceDescriptor, MethodDescriptor]]:
    pool = descriptor_pool.Default()
    methods = []
    for name in registered_services(channel):
        assert name in EXPECTED, f"service {name} has no decided role policy in this test"
        service = pool.FindServiceByName(name)
        methods += [(service, m) for m in service.methods]
    return methods


def test_every_method_is_denied_to_every_role_that_should_not_have_it(
    served: Running, pki: Path
) -> None:
    checked = 0
    for role, client in ROLES.items():
        with tls_channel(served.port, pki, client) as channel:
            for service, method in all_methods(channel):
                error = invoke(channel, method)
                name = f"{service.full_name}/{method.name}"
                allowed = role in EXPECTED_METHODS.get(name, EXPECTED[service.full_name])
                where = f"{role} -> {service.full_name}/{method.name}"
                if allowed:
                    assert error is None or reason_of(error) not in AUTH_REASONS, where
                    assert error is None or error.code() != grpc.StatusCode.UNAUTHENTICATED, where
                else:
                    assert error is not None, f"{where} was let through"
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, where
                    assert reason_of(error) == "ROLE_NOT_ALLOWED", where
                checked += 1
    assert checked >= 5 * 20  # every role against every method of at least five services


def test_a_client_without_a_certificate_cannot_even_connect(served: Running, pki: Path) -> None:
    with tls_channel(served.port, pki, None) as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(enrollment_pb2.GetRequest(customer_id="c-1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake refused it


def test_a_certificate_from_another_ca_is_refused(
    served: Running, pki: Path, tmp_path: Path
) -> None:
    rogue = DevCA("rogue CA").client(ClientSpec("enrollment-desk", ("enrollment",)))
    (tmp_path / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    (tmp_path / "rogue.pem").write_bytes(rogue.cert_pem)
    (tmp_path / "rogue.key").write_bytes(rogue.key_pem)
    with tls_channel(served.port, tmp_path, "rogue") as channel:
        with pytest.raises(grpc.RpcError) as err:
            enrollment_pb2_grpc.EnrollmentStub(channel).Get(
                enrollment_pb2.GetRequest(customer_id="c-1"), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_without_mutual_tls_every_role_bound_call_is_unauthenticated(
    tmp_path: Path, pki: Path
) -> None:
    with serving(mtls_settings(tmp_path, pki, client_ca=False)) as running:
        with tls_channel(running.port, pki, None) as channel:
            for service, method in all_methods(channel):
                error = invoke(channel, method)
                if EXPECTED[service.full_name] is PUBLIC:
                    assert error is None or reason_of(error) not in AUTH_REASONS
                else:
                    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert reason_of(error) == "CLIENT_CERT_REQUIRED"


def test_a_kiosk_cannot_claim_another_device(served: Running, pki: Path) -> None:
    with tls_channel(served.port, pki, "kiosk-K-001") as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        for device, expected in (("K-002", "DEVICE_MISMATCH"), ("K-001", "CUSTOMER_NOT_FOUND")):
            with pytest.raises(grpc.RpcError) as err:
                kiosk.Verify(
                    verification_pb2.VerifyRequest(customer_id="c-1", device_id=device), timeout=10
                )
            assert reason_of(err.value) == expected


def stream_start(customer_id: str, device_id: str = "") -> verification_pb2.VerifyStreamRequest:
    options = verification_pb2.StreamOptions(session_id=str(uuid.uuid4()), device_id=device_id)
    return verification_pb2.VerifyStreamRequest(
        start=verification_pb2.VerifyStreamStart(customer_id=customer_id, options=options)
    )


def stream_error(port: int, pki: Path, messages: list) -> grpc.RpcError:
    with tls_channel(port, pki, "kiosk-K-001") as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(kiosk.VerifyStream(iter(messages), timeout=60))
    return err.value


def test_a_stream_cannot_start_as_another_device(served: Running, pki: Path) -> None:
    error = stream_error(served.port, pki, [stream_start("c-1", "K-002")])
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "DEVICE_MISMATCH"


def test_a_streamed_frame_cannot_claim_another_device(
    served: Running, pki: Path, shared_data: Path
) -> None:
    ((person, images),) = people_with(shared_data, minimum=2, count=1)
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
            enrollment_pb2.EnrollRequest(
                customer_id=person, images=[image(images[0])], consent=consent()
            ),
            timeout=60,
        )
    frame = verification_pb2.StreamFrame(image=image(images[1]), device_id="K-002")
    error = stream_error(
        served.port, pki, [stream_start(person), verification_pb2.VerifyStreamRequest(frame=frame)]
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "DEVICE_MISMATCH"


def test_request_id_is_returned_and_made_when_absent(served: Running, pki: Path) -> None:
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        _, call = stub.List.with_call(
            enrollment_pb2.ListRequest(), timeout=10, metadata=[("x-request-id", "req-42")]
        )
        assert ("x-request-id", "req-42") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(enrollment_pb2.GetRequest(customer_id="nobody"), timeout=10)
    made = dict(err.value.trailing_metadata())["x-request-id"]
    assert str(uuid.UUID(made)) == made
    assert reason_of(err.value) == "CUSTOMER_NOT_FOUND"  # rich details survive beside the id


def test_identity_comes_from_the_certificate_sans() -> None:
    ca = DevCA()
    kiosk = identity_from_pem(ca.client(ClientSpec("kiosk-7", ("kiosk",), "K-7")).cert_pem)
    assert (kiosk.client, kiosk.roles, kiosk.device_id) == ("kiosk-7", {"kiosk"}, "K-7")
    both = identity_from_pem(ca.client(ClientSpec("ops", ("admin", "enrollment"))).cert_pem)
    assert both.roles == {"admin", "enrollment"} and both.device_id is None
    with pytest.raises(ValueError, match="device id"):
        ca.client(ClientSpec("kiosk-x", ("kiosk",)))


def test_client_commands_work_over_mutual_tls(served: Running, pki: Path) -> None:
    def get(client: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FACEGUARD), "enroll", "get", "--customer-id", "nobody", "--json",
             "--server", f"localhost:{served.port}", "--tls-ca", str(pki / "ca.pem"),
             "--tls-cert", str(pki / f"{client}.pem"), "--tls-key", str(pki / f"{client}.key")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    allowed, denied = get("enrollment-desk"), get("kiosk-K-001")
    assert '"reason": "CUSTOMER_NOT_FOUND"' in allowed.stdout, allowed.stdout + allowed.stderr
    assert '"reason": "ROLE_NOT_ALLOWED"' in denied.stdout, denied.stdout + denied.stderr


def test_an_empty_device_id_is_filled_from_the_certificate() -> None:
    kiosk = Identity("kiosk-K-001", frozenset({"kiosk"}), "K-001")
    request = verification_pb2.VerifyRequest(customer_id="c-1")
    stream = verification_pb2.VerifyStreamRequest(
        start=verification_pb2.VerifyStreamStart(customer_id="c-1")  # no options at all
    )
    frame = verification_pb2.VerifyStreamRequest(frame=verification_pb2.StreamFrame())
    for message in (request, stream, frame):
        assert bind_device(kiosk, message) is None
    assert request.device_id == stream.start.options.device_id == "K-001"
    assert frame.WhichOneof("message") == "frame" and frame.frame.device_id == "K-001"


def test_the_recorded_decision_names_the_certificate_device(
    served: Running, pki: Path, shared_data: Path
) -> None:
    ((person, images),) = people_with(shared_data, minimum=2, count=1)
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        try:
            stub.Enroll(
                enrollment_pb2.EnrollRequest(
                    customer_id=person, images=[image(images[0])], consent=consent()
                ),
                timeout=60,
            )
        except grpc.RpcError as error:  # enrolled by an earlier test of this module
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    with tls_channel(served.port, pki, "kiosk-K-002") as channel:
        reply = verification_pb2_grpc.FaceVerificationStub(channel).Verify(
            verification_pb2.VerifyRequest(customer_id=person, frames=[image(images[1])]),
            timeout=60,
        )
    assert reply.decision.device_id == "K-002"
    event = served.engine.gallery.store.events_of(person)[-1]
    assert event.event_id == reply.decision.event_id and event.device_id == "K-002"
