"""Images that make a vision worker pay for pixels that are not there, over real mutual TLS.

One kiosk certificate is enough to send them. A header declaring more pixels than its bytes can
hold is refused before any decode (`IMAGE_CORRUPT`), as is a truncated file; formats decoded
whole (PNG, WebP, BMP, PNM) are limited to `decode.max_full_pixels` (`IMAGE_TOO_LARGE`); and a
large JPEG is still served, decoded at reduced size. What each image costs a worker is measured
by `faceguard bench images`, not here.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from tests.service_helpers import (
    FACEGUARD,
    consent,
    image,
    mtls_settings,
    people_with,
    tls_channel,
)
from tests.test_security import reason_of


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Path, serve) -> Running:
    return serve(mtls_settings(tmp_path_factory.mktemp("data"), pki, device_burst=100))


@pytest.fixture(scope="module")
def kiosk(tls_client) -> verification_pb2_grpc.FaceVerificationStub:
    return verification_pb2_grpc.FaceVerificationStub(tls_client("kiosk-K-001"))


def encode(rgb: np.ndarray, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, kind, **options)
    return buffer.getvalue()


def kiosk_frame() -> np.ndarray:
    """A smooth 640x480 picture, JPEG-sized like a kiosk frame."""
    small = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    return cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)


def declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header rewritten to declare `width` x `height` pixels."""
    data = bytearray(jpeg)
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    return err.value


def lying_jpeg() -> bytes:
    """The issue's attack: a kiosk frame's few KB declaring 6000x6000 (36 MP of grey)."""
    return declaring(encode(kiosk_frame(), "JPEG", quality=90), 6000, 6000)


def test_a_jpeg_declaring_more_pixels_than_its_bytes_hold_is_refused(kiosk) -> None:
    frames = [common_pb2.Image(data=lying_jpeg())] * 10
    for call, request in (
        (kiosk.CheckLiveness, verification_pb2.CheckLivenessRequest(frames=frames)),
        (kiosk.Identify, verification_pb2.IdentifyRequest(image=frames[0])),
    ):
        error = refusal(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error) == "IMAGE_CORRUPT"
        assert "6000x6000" in error.details()


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP"])
def test_a_truncated_image_is_refused(kiosk, kind: str) -> None:
    data = encode(kiosk_frame(), kind, quality=90)
    request = verification_pb2.IdentifyRequest(image=common_pb2.Image(data=data[: len(data) // 2]))
    error = refusal(kiosk.Identify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "IMAGE_CORRUPT"


def test_a_jpeg_coded_in_a_way_no_camera_uses_is_refused(kiosk) -> None:
    """Arithmetic coding codes a flat block in almost no bits, so no byte count bounds its cost."""
    data = bytearray(encode(kiosk_frame(), "JPEG", quality=90))
    at = data.find(b"\xff\xc0")
    data[at + 1] = 0xC9  # the same frame header, declared arithmetic-coded
    error = refusal(
        kiosk.Identify, verification_pb2.IdentifyRequest(image=common_pb2.Image(data=bytes(data)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "IMAGE_UNSUPPORTED_FORMAT"


@pytest.mark.parametrize("kind", ["PNG", "WEBP"])
def test_an_image_decoded_whole_is_limited_to_fewer_pixels(kiosk, kind: str) -> None:
    """1500x1500 is under the 40 MP limit of a JPEG, but a PNG or WebP has no reduced decode."""
    data = encode(cv2.resize(kiosk_frame(), (1500, 1500)), kind, quality=80)
    error = refusal(
        kiosk.Identify, verification_pb2.IdentifyRequest(image=common_pb2.Image(data=data))
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error) == "IMAGE_TOO_LARGE"
    assert "2000000" in error.details()


def test_a_large_jpeg_is_verified_at_reduced_size(
    served: Running, pki: Path, kiosk, shared_data: Path
) -> None:
    """A phone photo far above the detector's working size still verifies its owner."""
    ((person, images),) = people_with(shared_data, minimum=2, count=1)
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
            enrollment_pb2.EnrollRequest(
                customer_id=person, images=[image(images[0])], consent=consent()
            ),
            timeout=60,
        )
    photo = np.asarray(PILImage.open(images[1]).convert("RGB"))
    large = encode(cv2.resize(photo, (4000, 4000), interpolation=cv2.INTER_CUBIC), "JPEG")
    reply = kiosk.Verify(
        verification_pb2.VerifyRequest(customer_id=person, frames=[common_pb2.Image(data=large)]),
        timeout=60,
    )
    assert reply.decision.outcome != common_pb2.Outcome.DECLINE
    assert "NO_MATCH" not in reply.decision.reason_codes


def test_bench_images_prints_each_kind_against_the_kiosk_frame() -> None:
    """`faceguard bench images`: the lying header costs next to nothing, no admitted image
    more than a small multiple of a kiosk frame (generous bounds: a shared machine is noisy)."""
    done = subprocess.run(
        [str(FACEGUARD), "bench", "images", "--repeat", "1", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {row["image"]: row for row in json.loads(done.stdout)}
    assert rows["kiosk 640x480 JPEG"]["x_kiosk"] == 1.0
    assert rows["JPEG kiosk frame declaring 6000x6000"]["x_kiosk"] < 0.5
    assert max(row["x_kiosk"] for row in rows.values()) < 20
