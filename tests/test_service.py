"""The gRPC service end to end over a real channel: enrol, verify, identify, delete, restart,
bad input, and the enrolment CLI against it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from service.gallery.faiss_index import FaissIndex
from service.store.crypto import load_keyring
from service.store.customers import Store
from tests.service_helpers import (
    FACEGUARD,
    SMALL_FACE_ENV,
    consent,
    faiss_gallery,
    free_port,
    image,
    people_with,
    server_process,
    service_settings,
    serving,
    with_sections,
)
from tools import postgres

APPROVE, DECLINE = common_pb2.APPROVE, common_pb2.DECLINE


@pytest.fixture(scope="module")
def people(shared_data: Path) -> list[tuple[str, list[Path]]]:
    return people_with(shared_data, minimum=3, count=8)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, serve) -> Running:
    return serve(service_settings(tmp_path_factory.mktemp("data")))


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def expect_error(call, request, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    assert err.value.code() == code, err.value.details()
    assert reason_of(err.value) == reason


def enroll(stub, customer_id: str, images: list[Path]) -> enrollment_pb2.EnrollResponse:
    return stub.Enroll(
        enrollment_pb2.EnrollRequest(
            customer_id=customer_id, images=[image(p) for p in images], consent=consent()
        ),
        timeout=60,
    )


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="faceguard.v1.FaceVerification"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_enroll_verify_identify_delete(enrollment, kiosk, people) -> None:
    (alice, alice_images), (bob, bob_images) = people[0], people[1]
    reply = enroll(enrollment, alice, alice_images[:2])
    assert reply.customer.template_count == 2
    assert reply.decision.outcome == APPROVE and reply.decision.event_id
    enroll(enrollment, bob, bob_images[:1])

    match = kiosk.Verify(
        verification_pb2.VerifyRequest(
            customer_id=alice, frames=[image(alice_images[2])], device_id="k1"
        ),
        timeout=60,
    )
    decision = match.decision
    assert decision.outcome in (APPROVE, common_pb2.REVIEW)
    assert "MATCH" in decision.reason_codes
    assert decision.match_score >= decision.threshold
    assert decision.fmr_target == "1e-4" and decision.model_versions.embedder
    assert decision.HasField("quality_score") and decision.HasField("liveness_score")

    other = kiosk.Verify(
        verification_pb2.VerifyRequest(customer_id=bob, frames=[image(alice_images[2])]), timeout=60
    )
    assert other.decision.outcome == DECLINE and "NO_MATCH" in other.decision.reason_codes
    assert other.decision.match_score < other.decision.threshold

    found = kiosk.Identify(
        verification_pb2.IdentifyRequest(image=image(alice_images[2]), top_k=3), timeout=60
    )
    assert found.candidates[0].customer_id == alice
    assert all(c.customer_id != bob for c in found.candidates)

    deleted = enrollment.Delete(
        enrollment_pb2.DeleteRequest(customer_id=alice, reason="test", operator_id="op"), timeout=60
    )
    assert deleted.event_id
    expect_error(
        kiosk.Verify,
        verification_pb2.VerifyRequest(customer_id=alice, frames=[image(alice_images[2])]),
        grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND",
    )  # fmt: skip
    after = kiosk.Identify(
        verification_pb2.IdentifyRequest(image=image(alice_images[2])), timeout=60
    )
    assert all(c.customer_id != alice for c in after.candidates)


def test_a_stream_is_analysed_in_the_vision_workers(
    served: Running, enrollment, kiosk, people
) -> None:
    """A streamed session's frames go to the vision workers (the serving process holds no
    models); ended before its challenge, the session still matches the face."""
    assert not hasattr(served.engine.vision, "pipeline") and served.engine.vision.pids()
    name, images = people[7]
    enroll(enrollment, name, images[:1])
    options = verification_pb2.StreamOptions(session_id="s-workers", device_id="K-stream")
    frame = verification_pb2.VerifyStreamRequest(
        frame=verification_pb2.StreamFrame(image=image(images[1]), session_id="s-workers")
    )
    messages = [
        verification_pb2.VerifyStreamRequest(
            start=verification_pb2.VerifyStreamStart(customer_id=name, options=options)
        ),
        *[frame] * 4,
    ]
    replies = list(kiosk.VerifyStream(iter(messages), timeout=60))
    decision = replies[-1].result.decision
    assert "MATCH" in decision.reason_codes
    assert decision.outcome == DECLINE and "LIVENESS_FAILED" in decision.reason_codes


def test_no_vision_worker_free_in_time_is_unavailable(served: Running, kiosk, people) -> None:
    """Every worker busy past `vision.worker_timeout_s`: UNAVAILABLE with its reason, and
    the worker serves the next call once free."""
    vision = served.engine.vision
    request = verification_pb2.IdentifyRequest(image=image(people[0][1][1]))
    held, _ = vision._take()  # white-box: the one worker, as a long call would hold it
    timeout, vision.timeout_s = vision.timeout_s, 0.05
    try:
        expect_error(kiosk.Identify, request, grpc.StatusCode.UNAVAILABLE, "VISION_UNAVAILABLE")
    finally:
        vision.timeout_s = timeout
        vision._give_back(held)
    assert kiosk.Identify(request, timeout=60).decision.event_id


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, serve) -> Running:
    """A server doing its face work in its own process (`vision.processes = 0`), whose models
    a test can watch."""
    settings = service_settings(tmp_path_factory.mktemp("in-process"))
    return serve(with_sections(settings, vision={"processes": 0}))


def test_templates_are_embedded_with_the_mirror_image_and_probes_without(
    in_process: Running, people
) -> None:
    """Enrolment runs the embedder on each face and its mirror image; a verify (on its best
    frame only) or an identify runs it once (the manifest's `flip` and `probe_flip`)."""
    member = in_process.engine.vision.pipeline.embedder.members[0]
    runs = []
    original = member.run
    member.run = lambda view: runs.append(len(view)) or original(view)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{in_process.port}") as channel:
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
            name, images = people[6]
            enroll(enrollment_pb2_grpc.EnrollmentStub(channel), name, images[:1])
            assert len(runs) == 2
            runs.clear()
            frames = [image(images[1]), image(images[2])]  # only the better frame is embedded
            request = verification_pb2.VerifyRequest(customer_id=name, frames=frames)
            assert "MATCH" in kiosk.Verify(request, timeout=60).decision.reason_codes
            kiosk.Identify(verification_pb2.IdentifyRequest(image=image(images[1])), timeout=60)
            assert len(runs) == 2  # one run each
    finally:
        del member.run


def test_a_crashed_vision_worker_fails_only_its_call(served: Running, enrollment, kiosk, people):
    """A worker killed (as a crash on a crafted image would) costs one INTERNAL answer with
    its reason, audited as a declined attempt; a fresh worker serves the next call."""
    name, images = people[6]  # people[6] is enrolled only on the in-process server
    enroll(enrollment, name, images[:1])
    for pid in served.engine.vision.pids():
        os.kill(pid, signal.SIGKILL)
    request = verification_pb2.VerifyRequest(
        customer_id=name, frames=[image(images[1])], device_id="K-crash"
    )
    expect_error(kiosk.Verify, request, grpc.StatusCode.INTERNAL, "VISION_WORKER_FAILED")
    assert "MATCH" in kiosk.Verify(request, timeout=60).decision.reason_codes
    verifies = [e for e in served.engine.gallery.store.events_of(name) if e.type == "VERIFY"]
    assert verifies[0].outcome == "DECLINE"
    assert "VISION_WORKER_FAILED" in verifies[0].payload["reason_codes"]


def test_duplicate_identity_and_existing_customer_are_refused(enrollment, people) -> None:
    carol, images = people[2]
    enroll(enrollment, carol, images[:1])
    expect_error(
        enrollment.Enroll,
        enrollment_pb2.EnrollRequest(
            customer_id=carol, images=[image(images[1])], consent=consent()
        ),
        grpc.StatusCode.ALREADY_EXISTS, "CUSTOMER_EXISTS",
    )  # fmt: skip
    expect_error(
        enrollment.Enroll,
        enrollment_pb2.EnrollRequest(
            customer_id="carol-again", images=[image(images[1])], consent=consent()
        ),
        grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_IDENTITY",
    )  # fmt: skip
    with pytest.raises(grpc.RpcError):
        enrollment.Get(enrollment_pb2.GetRequest(customer_id="carol-again"), timeout=10)


def test_update_get_and_list(enrollment, people) -> None:
    dave, images = people[3]
    enroll(enrollment, dave, images[:1])
    updated = enrollment.UpdateTemplates(
        enrollment_pb2.UpdateTemplatesRequest(customer_id=dave, images=[image(images[1])]),
        timeout=60,
    )
    assert updated.customer.template_count == 2
    replaced = enrollment.UpdateTemplates(
        enrollment_pb2.UpdateTemplatesRequest(
            customer_id=dave, images=[image(images[2])], replace=True
        ),
        timeout=60,
    )
    assert replaced.customer.template_count == 1
    record = enrollment.Get(enrollment_pb2.GetRequest(customer_id=dave), timeout=10)
    assert record.consent.purpose == "kiosk verification" and record.embedder
    seen, token = [], ""
    while True:
        page = enrollment.List(
            enrollment_pb2.ListRequest(page_size=1, page_token=token), timeout=10
        )
        seen += [c.customer_id for c in page.customers]
        token = page.next_page_token
        if not token:
            break
    assert dave in seen and len(seen) == len(set(seen))


def _jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_bad_input_gets_its_documented_status(enrollment, kiosk, people, shared_data) -> None:
    name, images = people[4]
    enroll(enrollment, name, images[:1])
    bad_id = verification_pb2.VerifyRequest(customer_id="bad id!", frames=[image(images[1])])
    expect_error(kiosk.Verify, bad_id, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CUSTOMER_ID")
    no_frames = verification_pb2.VerifyRequest(customer_id=name)
    expect_error(kiosk.Verify, no_frames, grpc.StatusCode.INVALID_ARGUMENT, "NO_FRAMES")
    garbage = verification_pb2.VerifyRequest(
        customer_id=name, frames=[common_pb2.Image(data=b"GIF89a....")]
    )
    expect_error(
        kiosk.Verify, garbage, grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_UNSUPPORTED_FORMAT"
    )
    truncated = verification_pb2.VerifyRequest(
        customer_id=name, frames=[common_pb2.Image(data=images[1].read_bytes()[:2000])]
    )
    expect_error(kiosk.Verify, truncated, grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_CORRUPT")
    blank = verification_pb2.VerifyRequest(
        customer_id=name,
        frames=[common_pb2.Image(data=_jpeg(np.full((480, 640, 3), 90, np.uint8)))],
    )
    expect_error(kiosk.Verify, blank, grpc.StatusCode.FAILED_PRECONDITION, "NO_FACE")
    group = shared_data / "detect" / "faceapi_bbt3.jpg"
    several = verification_pb2.VerifyRequest(customer_id=name, frames=[image(group)])
    expect_error(kiosk.Verify, several, grpc.StatusCode.FAILED_PRECONDITION, "MULTIPLE_FACES")
    tiny = cv2.resize(cv2.imread(str(images[1])), (60, 60))
    small = verification_pb2.VerifyRequest(
        customer_id=name, frames=[common_pb2.Image(data=cv2.imencode(".jpg", tiny)[1].tobytes())]
    )
    with pytest.raises(grpc.RpcError) as err:
        kiosk.Verify(small, timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) in {"NO_FACE", "LOW_QUALITY_SIZE"}
    unknown = verification_pb2.VerifyRequest(customer_id="nobody", frames=[image(images[1])])
    expect_error(kiosk.Verify, unknown, grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    huge = np.random.default_rng(1).integers(0, 255, (3000, 3000, 3), np.uint8)
    too_big = verification_pb2.VerifyRequest(
        customer_id=name, frames=[common_pb2.Image(data=cv2.imencode(".png", huge)[1].tobytes())]
    )
    with pytest.raises(grpc.RpcError) as err:
        kiosk.Verify(too_big, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    no_consent = enrollment_pb2.EnrollRequest(customer_id="x1", images=[image(images[2])])
    expect_error(
        enrollment.Enroll, no_consent, grpc.StatusCode.INVALID_ARGUMENT, "CONSENT_REQUIRED"
    )
    big_page = enrollment_pb2.ListRequest(page_size=100_000)
    expect_error(enrollment.List, big_page, grpc.StatusCode.RESOURCE_EXHAUSTED, "PAGE_TOO_LARGE")
    expect_error(
        enrollment.Delete, enrollment_pb2.DeleteRequest(customer_id="nobody"),
        grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND",
    )  # fmt: skip


def test_restart_keeps_the_gallery(tmp_path: Path, people) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    (erin, images) = people[5]
    with server_process(tmp_path, port):
        with grpc.insecure_channel(address) as chan:
            enroll(enrollment_pb2_grpc.EnrollmentStub(chan), erin, images[:1])
    with server_process(tmp_path, port):
        with grpc.insecure_channel(address) as chan:
            kiosk = verification_pb2_grpc.FaceVerificationStub(chan)
            reply = kiosk.Verify(
                verification_pb2.VerifyRequest(customer_id=erin, frames=[image(images[1])]),
                timeout=60,
            )
            assert "MATCH" in reply.decision.reason_codes
            found = kiosk.Identify(
                verification_pb2.IdentifyRequest(image=image(images[2])), timeout=60
            )
            assert found.candidates[0].customer_id == erin


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGUARD), *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **SMALL_FACE_ENV},
    )  # fmt: skip


def test_kill_during_bulk_import_leaves_store_and_index_in_agreement(
    tmp_path: Path, shared_data: Path
) -> None:
    source = tmp_path / "import"
    for name, images in people_with(shared_data, minimum=2, count=24):
        (source / name).mkdir(parents=True)
        for path in images[:2]:
            (source / name / path.name).write_bytes(path.read_bytes())
    data, port = tmp_path / "data", free_port()
    server, state = f"127.0.0.1:{port}", tmp_path / "import.state"
    with server_process(data, port) as process:
        importer = subprocess.Popen(
            [str(FACEGUARD), "enroll", "import", str(source), "--server", server,
             "--operator", "op", "--workers", "2", "--state", str(state), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not state.exists() or len(state.read_text().splitlines()) < 5
        ):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        importer.wait(timeout=120)
    _assert_store_and_index_agree(data)
    with server_process(data, port):
        resumed = _cli(
            "enroll", "import", str(source), "--server", server, "--operator", "op",
            "--state", str(state), "--json",
        )  # fmt: skip
        summary = json.loads(resumed.stdout)
        assert summary["failed"] == 0 and summary["skipped_done_before"] >= 5
        listed = json.loads(
            _cli("enroll", "list", "--server", server, "--page-size", "100", "--json").stdout
        )
        assert len(listed["customers"]) == 24
        assert all(c["template_count"] == 2 for c in listed["customers"])
    _assert_store_and_index_agree(data)


def _assert_store_and_index_agree(data: Path) -> None:
    """Every stored customer has all their templates, and the index holds exactly them.

    The snapshot may lag the store after a kill; the service heals it at start, so this
    checks the healed state the service would use.
    """
    store = Store(f"sqlite:///{data / 'faceguard.db'}", load_keyring(data / "template-keys.json"))
    records, _ = store.list_customers(1000, None)
    assert all(r.template_count == 2 for r in records)
    gallery = faiss_gallery(store, data, 192, records[0].embedder)
    stored = np.sort(store.template_ids())
    assert np.array_equal(np.sort(gallery.index.ids()), stored)
    assert isinstance(gallery.index, FaissIndex)


def test_cli_enrols_verifies_and_identifies(served: Running, people) -> None:
    name, images = people[5]
    server = f"127.0.0.1:{served.port}"
    cid = f"cli-{name}"
    added = _cli("enroll", "add", "--customer-id", cid, str(images[0]), "--operator", "op",
                 "--server", server, "--json")  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["customer"]["template_count"] == 1
    again = _cli("enroll", "add", "--customer-id", cid, str(images[0]), "--operator", "op",
                 "--server", server, "--json")  # fmt: skip
    assert again.returncode == 4  # refused by the service (enrollment.exit_status)
    assert json.loads(again.stdout)["error"] == {
        "status": "ALREADY_EXISTS", "reason": "CUSTOMER_EXISTS",
        "message": f"customer {cid} is already enrolled",
    }  # fmt: skip
    verified = _cli("verify", "--customer-id", cid, str(images[1]), "--server", server, "--json")
    assert "MATCH" in json.loads(verified.stdout)["decision"]["reason_codes"]
    identified = _cli("identify", str(images[2]), "--server", server, "--json")
    assert json.loads(identified.stdout)["candidates"][0]["customer_id"] == cid
    got = _cli("enroll", "get", "--customer-id", cid, "--server", server, "--json")
    assert json.loads(got.stdout)["customer_id"] == cid
    gone = _cli("enroll", "delete", "--customer-id", cid, "--operator", "op", "--server", server,
                "--json")  # fmt: skip
    assert gone.returncode == 0 and json.loads(gone.stdout)["event_id"]
    missing = _cli("enroll", "get", "--customer-id", cid, "--server", server, "--json")
    assert json.loads(missing.stdout)["error"]["reason"] == "CUSTOMER_NOT_FOUND"


def test_audit_verify_names_the_first_tampered_row(served: Running, kiosk, tmp_path: Path) -> None:
    blank = common_pb2.Image(data=_jpeg(np.full((480, 640, 3), 90, np.uint8)))
    for _ in range(4):  # each refused attempt is audited too
        with pytest.raises(grpc.RpcError):
            kiosk.CheckLiveness(verification_pb2.CheckLivenessRequest(frames=[blank]), timeout=30)
    ok = _cli("audit", "verify", "--data-dir", str(_data_dir(served)), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["rows_checked"] > 3
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("faceguard.db", "faceguard.db-wal", "template-keys.json", "audit-chain.key"):
        if (_data_dir(served) / name).exists():
            (copy / name).write_bytes((_data_dir(served) / name).read_bytes())
    with sqlite3.connect(copy / "faceguard.db") as db:
        db.execute("UPDATE events SET outcome = 'TAMPERED' WHERE id = 3")
    broken = _cli("audit", "verify", "--data-dir", str(copy), "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["first_broken_row"] == 3
    readable = _cli("audit", "verify", "--data-dir", str(copy))
    assert readable.stdout.startswith("audit chain BROKEN at row 3: ")


def _data_dir(served: Running) -> Path:
    return Path(str(served.engine.gallery.index.file.path.parent))


def test_sigterm_lets_in_flight_calls_finish(tmp_path: Path, people) -> None:
    name, images = people[0]
    port = free_port()
    address = f"127.0.0.1:{port}"
    with server_process(tmp_path, port) as process, grpc.insecure_channel(address) as chan:
        enroll(enrollment_pb2_grpc.EnrollmentStub(chan), f"drain-{name}", images[:1])
        kiosk = verification_pb2_grpc.FaceVerificationStub(chan)
        request = verification_pb2.VerifyRequest(
            customer_id=f"drain-{name}", frames=[image(images[1])] * 10
        )
        future = kiosk.Verify.future(request, timeout=60)
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert "MATCH" in future.result().decision.reason_codes
        assert process.wait(timeout=60) == 0


def test_serves_from_postgresql(tmp_path: Path, people, postgres_url: str) -> None:
    """The same service on PostgreSQL: enrol and verify, then restart without the index
    snapshot, so the index is rebuilt from the database alone."""
    postgres.reset_database(postgres_url)
    settings = service_settings(tmp_path)
    settings.storage.database_url = postgres_url
    (frank, images) = people[4]
    with serving(settings, grace=2) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as chan:
            enroll(enrollment_pb2_grpc.EnrollmentStub(chan), frank, images[:1])
    (tmp_path / "index.faiss").unlink()
    with serving(settings, grace=2) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as chan:
            kiosk = verification_pb2_grpc.FaceVerificationStub(chan)
            request = verification_pb2.VerifyRequest(customer_id=frank, frames=[image(images[1])])
            assert kiosk.Verify(request, timeout=60).decision.outcome == APPROVE
            found = kiosk.Identify(
                verification_pb2.IdentifyRequest(image=image(images[2])), timeout=60
            )
            assert found.candidates[0].customer_id == frank
    assert not list(tmp_path.glob("*.db")), "the SQLite default was used instead of PostgreSQL"
