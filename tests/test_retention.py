"""Retention: inactive customers and expired consents are purged, audited, chain intact;
expired consent stops verification at once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.app.assembly import KEYRING_FILE
from service.app.retention import CONSENT_EXPIRED, EVENT_TYPE, INACTIVE, due_for_purge, purge
from service.config import AUDIT_KEY_FILE
from service.domain import Consent
from service.store.audit_chain import ChainKey
from service.store.crypto import generate_keyring
from service.store.customers import NewEvent, NewTemplate, Store
from service.store.outbox import DELIVERED, Backoff, Outbox
from tests import service_helpers
from tests.service_helpers import (
    FACEGUARD,
    faiss_gallery,
    image,
    people_with,
    service_settings,
    serving,
    with_sections,
)

DIM = 8
RNG = np.random.default_rng(7)


def template() -> NewTemplate:
    vector = RNG.normal(size=DIM).astype(np.float32)
    return NewTemplate(vector=vector / np.linalg.norm(vector), model="test-embedder", quality=80)


def consent(expires_at: datetime | None = None) -> Consent:
    given = datetime.now(UTC) - timedelta(days=2)
    return Consent("kiosk verification", given, "branch", "op-1", expires_at)


def enroll(store: Store, customer_id: str, consent_record: Consent | None = None) -> None:
    event = NewEvent("ENROLL", "APPROVE")
    store.enroll(customer_id, [template()], consent_record or consent(), event)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    keyring = generate_keyring()
    keyring.dump(tmp_path / KEYRING_FILE)
    with Store(f"sqlite:///{tmp_path / 'faceguard.db'}", keyring) as opened:
        opened.create_schema()
        yield opened


def test_inactive_and_expired_customers_are_purged_and_audited(
    store: Store, tmp_path: Path
) -> None:
    gallery = faiss_gallery(store, tmp_path, DIM, "test-embedder")
    for customer in ("idle", "active", "refused-only"):
        gallery.enroll(customer, [template()], consent(), NewEvent("ENROLL", "APPROVE"))
    gallery.enroll(
        "withdrawn", [template()], consent(datetime.now(UTC) - timedelta(hours=1)),
        NewEvent("ENROLL", "APPROVE"),
    )  # fmt: skip
    time.sleep(1.2)
    store.record_event(NewEvent("VERIFY", "APPROVE", customer_id="active", device_id="K-1"))
    # A declined attempt under someone's id is not their activity.
    store.record_event(NewEvent("VERIFY", "DECLINE", customer_id="refused-only", device_id="K-1"))
    inactive_days = 1.0 / 86400  # one second

    due = {d.customer_id: d.reason for d in due_for_purge(store, datetime.now(UTC), inactive_days)}
    assert due == {"idle": INACTIVE, "refused-only": INACTIVE, "withdrawn": CONSENT_EXPIRED}

    report = purge(store, gallery.delete, inactive_days)
    assert sorted(report.purged) == ["idle", "refused-only", "withdrawn"]
    for customer in report.purged:
        assert store.get_customer(customer) is None and store.templates_of(customer) == []
        events = store.events_of(customer)
        assert events[-1].type == EVENT_TYPE and events[-1].payload["reason"] == due[customer]
    assert store.get_customer("active") is not None
    assert len(gallery.index) == 1  # the index lost the purged templates too
    assert store.verify_chain().ok
    assert purge(store, gallery.delete, inactive_days).purged == []  # nothing left to do


def test_dry_run_erases_nothing(store: Store) -> None:
    enroll(store, "idle")
    time.sleep(1.1)
    report = purge(store, store.delete_customer, 1.0 / 86400, dry_run=True)
    assert report.purged == ["idle"] and store.get_customer("idle") is not None


def test_without_a_period_only_expired_consents_are_purged(store: Store) -> None:
    enroll(store, "idle")
    enroll(store, "withdrawn", consent(datetime.now(UTC) - timedelta(minutes=1)))
    assert [d.customer_id for d in due_for_purge(store, datetime.now(UTC), None)] == ["withdrawn"]


def test_retention_command(store: Store, tmp_path: Path) -> None:
    outbox = Outbox(store)
    enroll(store, "idle")
    outbox.settle(outbox.due(10), [], Backoff())  # the enrolment's callback is delivered
    time.sleep(1.1)
    one_second = str(1.0 / 86400)
    result = subprocess.run(
        [str(FACEGUARD), "retention", "run", "--data-dir", str(tmp_path),
         "--inactive-days", one_second],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "FACEGUARD_PRIVACY__OUTBOX_KEEP_DAYS": one_second},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "dry_run": False, "purged": 1, "reasons": {"INACTIVE": 1}, "callbacks_pruned": 1,
    }  # fmt: skip
    url, key = (
        f"sqlite:///{tmp_path / 'faceguard.db'}",
        ChainKey.from_file(tmp_path / AUDIT_KEY_FILE),
    )
    keyed = Store(url, store.keyring, key)
    with keyed:  # the command keyed the chain with the data dir's audit key
        assert store.get_customer("idle") is None and keyed.verify_chain().ok
    assert outbox.counts()[DELIVERED] == 0


def test_expired_consent_stops_verification(shared_data: Path, tmp_path: Path) -> None:
    ((person, images),) = people_with(shared_data, minimum=2, count=1)
    with serving(service_settings(tmp_path)) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            expires = Timestamp()
            expires.FromDatetime(datetime.now(UTC) + timedelta(seconds=2))
            given = Timestamp()
            given.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
            enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
                enrollment_pb2.EnrollRequest(
                    customer_id=person, images=[image(images[0])],
                    consent=enrollment_pb2.Consent(
                        purpose="kiosk verification", given_at=given, channel="branch",
                        operator_id="op-1", expires_at=expires,
                    ),
                ),
                timeout=60,
            )  # fmt: skip
            time.sleep(2.5)
            with pytest.raises(grpc.RpcError) as err:
                verification_pb2_grpc.FaceVerificationStub(channel).Verify(
                    verification_pb2.VerifyRequest(customer_id=person, frames=[image(images[1])]),
                    timeout=60,
                )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "consent" in (err.value.details() or "")


def test_the_service_purges_on_its_schedule(shared_data: Path, tmp_path: Path) -> None:
    ((person, images),) = people_with(shared_data, minimum=1, count=1)
    settings = service_settings(tmp_path)
    privacy = {"inactive_days": 1.0 / 86400, "purge_every_hours": 0.5 / 3600}  # 1 s, 0.5 s
    with serving(with_sections(settings, privacy=privacy)) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
            enrollment.Enroll(
                enrollment_pb2.EnrollRequest(
                    customer_id=person, images=[image(images[0])],
                    consent=service_helpers.consent(),
                ),
                timeout=60,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while running.engine.gallery.store.get_customer(person) is not None:
                assert time.monotonic() < deadline, "not purged"
                time.sleep(0.2)
            with pytest.raises(grpc.RpcError) as err:
                enrollment.Get(enrollment_pb2.GetRequest(customer_id=person), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(running.engine.gallery.index) == 0
        assert running.engine.gallery.store.verify_chain().ok
