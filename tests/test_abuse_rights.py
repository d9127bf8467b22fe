"""What one kiosk certificate must not be able to do (issue 12, items 4-6), over mutual TLS.

- Enumerating the gallery: a kiosk's Identify never sees candidates below the operating
  threshold; a lower floor is the investigator's (or admin's) right, audited with who asked.
  Verify calls refused before a decision are audited and count toward the device's velocity.
- Locking a customer out: attempts without a face do not count against the customer they
  name; one device locks a customer out only at that device; non-matching faces from several
  devices lock them out everywhere; an admin lists lockouts and lifts one (RPC and CLI),
  audited, and the velocity rule respects the lift.
- Rewriting the audit chain: through `faceguard audit verify`, an intact chain (plain rows from
  before the upgrade, keyed after) passes; deleted newest rows, an edited and re-chained row,
  a tail re-chained with plain hashes and a forged checkpoint are each reported.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from sqlalchemy import delete, select

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.server import Running
from service.app.assembly import keyring_for, open_store
from service.cli.certs import DEV_CLIENTS, ClientSpec, write_dev_pki
from service.config import SettingsError
from service.store import audit_chain
from service.store.audit_chain import ChainKey, NewEvent
from service.store.customers import Store
from service.store.tables import event_table
from tests.service_helpers import (
    FACEGUARD,
    image,
    mtls_settings,
    people_with,
    service_settings,
    tls_channel,
)
from tests.test_security import reason_of
from tests.test_service import enroll

APPROVE, REVIEW, DECLINE = common_pb2.APPROVE, common_pb2.REVIEW, common_pb2.DECLINE
# One kiosk per scenario, so one scenario's failures never lock another's device.
KIOSKS = [f"K-10{i}" for i in range(9)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    kiosks = tuple(ClientSpec(f"kiosk-{k}", ("kiosk",), k) for k in KIOSKS)
    write_dev_pki(out, ("localhost", "127.0.0.1"), DEV_CLIENTS + kiosks)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Path, serve) -> Running:
    return serve(mtls_settings(tmp_path_factory.mktemp("data"), pki, device_burst=100))


@pytest.fixture(scope="module")
def people(shared_data: Path, served: Running, pki: Path) -> list[tuple[str, list[Path]]]:
    """Six enrolled customers (each with two more faces of theirs left to verify with)."""
    people = people_with(shared_data, minimum=3, count=7)
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        stub = enrollment_pb2_grpc.EnrollmentStub(channel)
        for name, faces in people[:6]:
            enroll(stub, name, faces[:1])
    return people


def kiosk(served: Running, pki: Path, device: str) -> verification_pb2_grpc.FaceVerificationStub:
    channel = tls_channel(served.port, pki, f"kiosk-{device}")
    return verification_pb2_grpc.FaceVerificationStub(channel)


def verify(stub, customer: str, data: bytes) -> common_pb2.Decision:
    request = verification_pb2.VerifyRequest(
        customer_id=customer, frames=[common_pb2.Image(data=data)]
    )
    return stub.Verify(request, timeout=60).decision


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    return err.value


def faceless() -> bytes:
    return cv2.imencode(".jpg", np.full((480, 640, 3), 90, np.uint8))[1].tobytes()


def fired(decision: common_pb2.Decision) -> set[str]:
    return {r.reason_code for r in decision.rules if r.fired}


def served_ok(decision: common_pb2.Decision) -> bool:
    return decision.outcome in (APPROVE, REVIEW) and "VELOCITY" not in fired(decision)


def identify(stub, face: Path, min_score: float, top_k: int = 100, device: str = ""):
    request = verification_pb2.IdentifyRequest(
        image=image(face), top_k=top_k, min_score=min_score, device_id=device
    )
    return stub.Identify(request, timeout=60)


# ---- enumerating the gallery ---------------------------------------------------------------


def test_a_kiosk_cannot_list_the_gallery_with_a_low_floor(served: Running, pki: Path, people):
    stranger = people[6][1][0]  # not enrolled: nobody matches this face
    stub = kiosk(served, pki, KIOSKS[0])
    error = refused(
        stub.Identify,
        verification_pb2.IdentifyRequest(image=image(stranger), top_k=100, min_score=-1),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "SCORE_FLOOR_NOT_ALLOWED"
    event = served.engine.gallery.store
    with tls_channel(served.port, pki, "admin") as channel:
        events = risk_pb2_grpc.RiskAdminStub(channel).QueryEvents(
            risk_pb2.QueryEventsRequest(device_id=KIOSKS[0]), timeout=10
        )
    assert [(e.type, e.outcome) for e in events.events] == [("IDENTIFY", "DECLINE")]
    assert list(events.events[0].payload["reason_codes"]) == ["SCORE_FLOOR_NOT_ALLOWED"]
    # The default floor is the operating threshold: a stranger's face finds nobody.
    reply = identify(stub, stranger, min_score=0)
    threshold = reply.decision.threshold
    assert all(c.score >= threshold for c in reply.candidates)
    assert len(reply.candidates) < 6 and event.verify_chain().ok


def test_an_investigator_may_search_below_the_threshold_and_is_audited(
    served: Running, pki: Path, people
) -> None:
    stranger = people[6][1][0]
    with tls_channel(served.port, pki, "investigator") as channel:
        stub = verification_pb2_grpc.FaceVerificationStub(channel)
        reply = identify(stub, stranger, min_score=-1)
        assert {c.customer_id for c in reply.candidates} >= {name for name, _ in people[:6]}
        mismatch = refused(
            stub.Identify,
            verification_pb2.IdentifyRequest(image=image(stranger), min_score=-1, device_id="K-1"),
        )
        assert reason_of(mismatch) == "DEVICE_MISMATCH"
        denied = refused(stub.Verify, verification_pb2.VerifyRequest(customer_id=people[0][0]))
        assert reason_of(denied) == "ROLE_NOT_ALLOWED"
    with tls_channel(served.port, pki, "admin") as channel:
        events = risk_pb2_grpc.RiskAdminStub(channel).QueryEvents(
            risk_pb2.QueryEventsRequest(page_size=500), timeout=10
        )
    (asked,) = [e for e in events.events if e.event_id == reply.decision.event_id]
    assert asked.type == "IDENTIFY" and asked.payload["searcher"] == "investigator"
    assert asked.payload["min_score"] == -1 and asked.device_id == ""


def test_refused_verifies_are_audited_and_lock_the_device(
    served: Running, pki: Path, people
) -> None:
    (name, faces), device = people[0], KIOSKS[1]
    stub = kiosk(served, pki, device)
    truncated = faces[1].read_bytes()[:2000]
    for i in range(5):  # unknown ids: NOT_FOUND, and bad images for an enrolled one
        error = refused(stub.Verify, verification_pb2.VerifyRequest(customer_id=f"nobody-{i}"))
        assert reason_of(error) == "CUSTOMER_NOT_FOUND"
        error = refused(
            stub.Verify,
            verification_pb2.VerifyRequest(
                customer_id=name, frames=[common_pb2.Image(data=truncated)]
            ),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    with tls_channel(served.port, pki, "admin") as channel:
        events = risk_pb2_grpc.RiskAdminStub(channel).QueryEvents(
            risk_pb2.QueryEventsRequest(device_id=device), timeout=10
        )
    assert len(events.events) == 10
    assert {e.customer_id for e in events.events} == {name} | {f"nobody-{i}" for i in range(5)}
    assert all(e.outcome == "DECLINE" for e in events.events)
    locked = verify(stub, name, faces[1].read_bytes())  # the right face, from this device
    assert locked.outcome == DECLINE and "device locked" in str(locked.rules)
    assert served_ok(verify(kiosk(served, pki, KIOSKS[2]), name, faces[1].read_bytes()))


def test_a_locked_out_kiosk_identifies_no_one(served: Running, pki: Path, people) -> None:
    """A device lockout must stop a probing kiosk learning who a face is: its Identify is
    declined for velocity and names no candidate, though the face matches a customer."""
    (name, faces), stub = people[0], kiosk(served, pki, KIOSKS[8])
    for i in range(10):  # ten probed ids: the device is locked
        error = refused(stub.Verify, verification_pb2.VerifyRequest(customer_id=f"probe-{i}"))
        assert reason_of(error) == "CUSTOMER_NOT_FOUND"
    reply = identify(stub, faces[1], min_score=0)
    assert reply.decision.outcome == DECLINE and fired(reply.decision) == {"VELOCITY"}
    assert not reply.candidates and reply.decision.customer_id == ""
    assert not reply.decision.HasField("match_score")
    found = identify(kiosk(served, pki, KIOSKS[2]), faces[1], min_score=0)
    assert [c.customer_id for c in found.candidates][:1] == [name]
    # Nor through Verify: a locked device is told the lockout alone (no score, no other rule
    # such as the DUPLICATE_IDENTITY of claiming someone else); the audit event keeps it all.
    claimed = verify(stub, people[1][0], faces[1].read_bytes())
    assert claimed.outcome == DECLINE and list(claimed.reason_codes) == ["VELOCITY"]
    assert fired(claimed) == {"VELOCITY"} and not claimed.HasField("match_score")
    assert name not in str(claimed)
    (event,) = [
        e for e in served.engine.gallery.store.events_of(people[1][0])
        if e.event_id == claimed.event_id
    ]  # fmt: skip
    assert any(name in r["detail"] for r in event.payload["rules"])


# ---- locking a customer out ----------------------------------------------------------------


def test_faceless_attempts_do_not_lock_the_customer_out(served: Running, pki: Path, people):
    (name, faces), attacker = people[1], kiosk(served, pki, KIOSKS[3])
    for _ in range(8):
        error = refused(
            attacker.Verify,
            verification_pb2.VerifyRequest(
                customer_id=name, frames=[common_pb2.Image(data=faceless())]
            ),
        )
        assert reason_of(error) == "NO_FACE"
    assert served_ok(verify(kiosk(served, pki, KIOSKS[2]), name, faces[1].read_bytes()))


def test_one_device_locks_a_customer_out_only_at_that_device(
    served: Running, pki: Path, people
) -> None:
    (name, faces), (_, other) = people[2], people[3]
    attacker = kiosk(served, pki, KIOSKS[4])
    for _ in range(5):  # someone else's face, five times: NO_MATCH
        assert verify(attacker, name, other[1].read_bytes()).outcome == DECLINE
    here = verify(attacker, name, faces[1].read_bytes())
    assert here.outcome == DECLINE and "VELOCITY" in fired(here)
    assert served_ok(verify(kiosk(served, pki, KIOSKS[2]), name, faces[1].read_bytes()))


def admin_cli(served: Running, pki: Path, *args: str) -> dict:
    done = subprocess.run(
        [str(FACEGUARD), "risk", *args, "--json", "--server", f"localhost:{served.port}",
         "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "admin.pem"),
         "--tls-key", str(pki / "admin.key")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_several_devices_lock_a_customer_everywhere_until_an_admin_lifts_it(
    served: Running, pki: Path, people
) -> None:
    (name, faces), (_, other) = people[4], people[5]
    for device, count in ((KIOSKS[5], 3), (KIOSKS[6], 2)):
        stub = kiosk(served, pki, device)
        for _ in range(count):
            assert verify(stub, name, other[1].read_bytes()).outcome == DECLINE
    elsewhere = kiosk(served, pki, KIOSKS[7])
    locked = verify(elsewhere, name, faces[1].read_bytes())
    assert locked.outcome == DECLINE and "VELOCITY" in fired(locked)

    listed = admin_cli(served, pki, "lockouts", "list")
    (wide,) = [
        x for x in listed["lockouts"] if x.get("customer_id") == name and x["scope"] == "CUSTOMER"
    ]
    assert wide["failures"] == 5 and wide["devices"] == 2
    with tls_channel(served.port, pki, "admin") as channel:
        admin = risk_pb2_grpc.RiskAdminStub(channel)
        error = refused(admin.LiftLockout, risk_pb2.LiftLockoutRequest(customer_id=name))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = refused(
            admin.LiftLockout, risk_pb2.LiftLockoutRequest(customer_id=people[0][0], reason="x")
        )
        assert reason_of(error) == "NOT_LOCKED"
    with tls_channel(served.port, pki, f"kiosk-{KIOSKS[7]}") as channel:
        error = refused(
            risk_pb2_grpc.RiskAdminStub(channel).LiftLockout,
            risk_pb2.LiftLockoutRequest(customer_id=name, reason="let me in"),
        )
        assert reason_of(error) == "ROLE_NOT_ALLOWED"

    lifted = admin_cli(served, pki, "unlock", "--customer-id", name, "--reason", "case FR-7")
    assert [x["scope"] for x in lifted["lifted"]] == ["CUSTOMER"]
    assert served_ok(verify(elsewhere, name, faces[1].read_bytes()))
    (event,) = [e for e in served.engine.gallery.store.events_of(name) if e.type == "LOCKOUT_LIFT"]
    assert event.event_id == lifted["event_id"]
    assert event.payload["operator"] == "admin" and event.payload["reason"] == "case FR-7"
    listed = admin_cli(served, pki, "lockouts", "list")
    assert not [x for x in listed.get("lockouts", []) if x.get("customer_id") == name]


# ---- a chain anyone can rewrite ------------------------------------------------------------


def audit_cli(*args: str) -> tuple[int, dict]:
    done = subprocess.run(
        [str(FACEGUARD), "audit", *args], capture_output=True, text=True, timeout=120
    )
    return done.returncode, json.loads(done.stdout)


def decide(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.record_event(
            NewEvent("VERIFY", "APPROVE", device_id="K-1", customer_id=f"c-{i}",
                     payload={"reason_codes": ["MATCH"], "match_score": 0.9})
        )  # fmt: skip


@pytest.fixture()
def chain(tmp_path: Path) -> Path:
    """A data dir whose chain is plain for 3 rows (written before the upgrade), then keyed
    (marker + 6 rows), with a checkpoint of the head taken by the command."""
    data = tmp_path / "data"
    settings = service_settings(data)
    data.mkdir()
    with Store(settings.storage.url(), keyring_for(settings)) as old:  # before the upgrade
        old.create_schema()
        decide(old, 3)
    with open_store(settings) as store:
        decide(store, 6, start=3)
    code, written = audit_cli("checkpoint", "--data-dir", str(data))
    assert code == 0 and written["checkpoint"]["row"] == 10
    assert (data / "audit-chain.key").stat().st_mode & 0o077 == 0
    return data


def sql(data: Path, *statements: str) -> None:
    with sqlite3.connect(data / "faceguard.db") as db:
        for statement in statements:
            db.execute(statement)


def test_an_intact_upgraded_chain_verifies(chain: Path) -> None:
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 0 and report["ok"], report
    assert report["rows_checked"] == 10 and report["keyed_from_row"] == 4
    assert report["checkpoint"]["row"] == 10


def test_deleting_the_newest_rows_is_detected(chain: Path) -> None:
    sql(chain, "DELETE FROM events WHERE id > 8")
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 1 and "truncated" in report["reason"], report


def test_a_checkpoint_of_a_data_dir_without_a_database_creates_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(FACEGUARD), "audit", "checkpoint", "--data-dir", str(tmp_path / "typo")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "no faceguard database" in done.stderr
    assert not (tmp_path / "typo").exists()


def test_an_edited_keyed_marker_is_reported_not_a_crash(chain: Path) -> None:
    sql(chain, "UPDATE events SET payload = 'not json' WHERE type = 'AUDIT_CHAIN_KEYED'")
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 1 and not report["ok"] and report["first_broken_row"] == 4, report


def test_editing_a_row_and_rechaining_is_detected(chain: Path) -> None:
    """The attacker edits row 6 and recomputes every later hash; without the audit key the
    keyed rows cannot be recomputed, so they rewrite the tail as a plain chain."""
    with Store(service_settings(chain).storage.url(), keyring_for(service_settings(chain))) as s:
        with s.transaction() as conn:
            rows = conn.execute(select(event_table).where(event_table.c.id >= 6)).all()
            conn.execute(delete(event_table).where(event_table.c.id >= 6))
        for row in rows:  # re-appended as the chain code would, outbox rows left alone
            edited = "DECLINE" if row.id == 6 else row.outcome
            with s.transaction() as conn:
                audit_chain.append(conn, event_table, NewEvent(
                    row.type, edited, device_id=row.device_id, customer_id=row.customer_id,
                    event_id=row.event_id, payload=json.loads(row.payload),
                ))  # fmt: skip
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 1 and report["first_broken_row"] >= 6
    assert "audit key" in report["reason"], report


def test_rechaining_everything_back_to_plain_hashes_is_detected(chain: Path) -> None:
    """Rows from the keyed marker on deleted and re-appended as a plain chain: the chain
    walks intact, only the shipped checkpoint contradicts it."""
    settings = service_settings(chain)
    with Store(settings.storage.url(), keyring_for(settings)) as s:
        with s.transaction() as conn:
            conn.execute(delete(event_table).where(event_table.c.id >= 4))
        decide(s, 7, start=3)
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 1 and report["rows_checked"] == 10 and report["keyed_from_row"] is None
    assert "re-chained" in report["reason"], report


def test_rechaining_to_plain_and_deleting_the_audit_key_is_detected(chain: Path) -> None:
    """An attacker who re-chains the keyed rows as plain ones and deletes the audit key file
    beside the database: verify must not skip the checkpoints for want of the key."""
    settings = service_settings(chain)
    with Store(settings.storage.url(), keyring_for(settings)) as s:
        with s.transaction() as conn:
            conn.execute(delete(event_table).where(event_table.c.id >= 4))
        decide(s, 7, start=3)
    (chain / "audit-chain.key").unlink()
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 1 and "audit key" in report["reason"], report
    assert not (chain / "audit-chain.key").exists()  # verify only reads


def test_a_forged_checkpoint_is_detected(chain: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.jsonl"
    lines = (chain / "audit-checkpoints" / "checkpoints.jsonl").read_text().splitlines()
    forged = json.loads(lines[-1]) | {"row": 7}
    shipped.write_text("\n".join([*lines, json.dumps(forged)]) + "\n")
    code, report = audit_cli(
        "verify", "--json", "--data-dir", str(chain), "--checkpoints", str(shipped)
    )
    assert code == 1 and report["forged_checkpoint_lines"] == [2], report


def test_the_service_writes_checkpoints_while_serving(served: Running) -> None:
    data = Path(str(served.engine.gallery.index.file.path.parent))
    lines = (data / "audit-checkpoints" / "checkpoints.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[0])["keyed_from"] is not None


def test_a_different_audit_key_is_refused_at_start_and_by_verify(chain: Path) -> None:
    (chain / "audit-chain.key").unlink()
    ChainKey.generate().dump(chain / "audit-chain.key")
    with pytest.raises(SettingsError, match="keyed with key"):
        open_store(service_settings(chain))
    code, report = audit_cli("verify", "--json", "--data-dir", str(chain))
    assert code == 1 and report["first_broken_row"] == 4 and "keyed with key" in report["reason"]


def test_verify_of_a_data_dir_without_a_database_fails_and_creates_nothing(tmp_path: Path):
    code, report = audit_cli("verify", "--json", "--data-dir", str(tmp_path / "none"))
    assert code == 1 and not report["ok"] and not (tmp_path / "none").exists()


def test_a_refused_stream_opening_is_audited_for_the_device(served: Running, pki: Path) -> None:
    options = verification_pb2.StreamOptions(session_id="probe-1")
    start_message = verification_pb2.VerifyStreamRequest(
        start=verification_pb2.VerifyStreamStart(customer_id="nobody-streamed", options=options)
    )
    stub = kiosk(served, pki, KIOSKS[0])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.VerifyStream(iter([start_message]), timeout=60))
    assert reason_of(err.value) == "CUSTOMER_NOT_FOUND"
    (event,) = served.engine.gallery.store.events_of("nobody-streamed")
    assert (event.type, event.outcome, event.device_id) == ("VERIFY", "DECLINE", KIOSKS[0])
