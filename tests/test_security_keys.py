"""Templates at rest: never in plaintext in the database files; key rotation while serving."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from sqlalchemy import select

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.app.assembly import KEYRING_FILE
from service.config import AUDIT_KEY_FILE
from service.domain import Consent
from service.gallery.watchlist import Watchlist
from service.store.audit_chain import ChainKey
from service.store.crypto import Keyring, generate_keyring
from service.store.customers import NewEvent, NewTemplate, Store
from service.store.key_reload import KeyringReloader
from service.store.tables import template_table
from service.store.watchlist import rotate_watchlist_keys, watchlist_template_table
from tests.service_helpers import FACEGUARD, consent, image, people_with, service_settings, serving

DIM = 192


def database_bytes(data_dir: Path) -> bytes:
    """The database and its WAL and journal files, as they are on disk."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("faceguard.db*")))


def assert_no_plaintext(data_dir: Path, vectors: list[np.ndarray]) -> None:
    blob = database_bytes(data_dir)
    assert blob, "no database files"
    for vector in vectors:
        raw = np.asarray(vector, "<f4").tobytes()
        for start in range(0, len(raw) - 16, 16):  # any 4 consecutive floats of any template
            assert raw[start : start + 16] not in blob, "template bytes found in plaintext"


def open_store(data_dir: Path, keyring: Keyring) -> Store:
    """The data dir's store; keyed with its audit key when a service made one there."""
    chain = data_dir / AUDIT_KEY_FILE
    key = ChainKey.from_file(chain) if chain.is_file() else None
    store = Store(f"sqlite:///{data_dir / 'faceguard.db'}", keyring, key)
    store.create_schema()
    return store


def some_templates(count: int) -> list[NewTemplate]:
    rng = np.random.default_rng(3)
    return [
        NewTemplate(vector=rng.normal(size=DIM).astype(np.float32), model="m", quality=70)
        for _ in range(count)
    ]


def test_the_database_never_holds_a_template_in_plaintext(tmp_path: Path) -> None:
    keyring = generate_keyring()
    templates = some_templates(6)
    record = Consent("kiosk verification", datetime.now(UTC), "branch", "op-1")
    with open_store(tmp_path, keyring) as store:
        for i in range(3):
            store.enroll(f"c-{i}", templates[2 * i : 2 * i + 2], record, NewEvent("ENROLL", "OK"))
        assert_no_plaintext(tmp_path, [t.vector for t in templates])  # WAL before checkpoint
        store.rotate_keys(keyring.add_key())
    assert_no_plaintext(tmp_path, [t.vector for t in templates])  # and after rotation


def test_a_store_follows_its_key_file_through_a_rotation(tmp_path: Path) -> None:
    key_file = tmp_path / KEYRING_FILE
    old = generate_keyring()
    old.dump(key_file)
    record = Consent("kiosk verification", datetime.now(UTC), "branch", "op-1")
    templates = some_templates(2)
    with open_store(tmp_path, old) as serving, open_store(tmp_path, old) as rotating:
        serving.enroll("c-1", templates, record, NewEvent("ENROLL", "OK"))
        reloader = KeyringReloader(serving, key_file)
        serving.on_unknown_key(reloader.reload)
        new = old.add_key()
        new.dump(key_file)
        assert rotating.rotate_keys(new) == 2
        # The serving store meets rows under a key it has never seen, reloads, and reads.
        vectors = [t.vector for t in serving.templates_of("c-1")]
        assert np.allclose(vectors, [t.vector for t in templates])
        assert serving.keyring.active == new.active


@pytest.fixture
def people(shared_data: Path) -> list[tuple[str, list[Path]]]:
    return people_with(shared_data, minimum=2, count=4)


def test_rotation_while_serving_keeps_every_customer_verifiable(
    people: list[tuple[str, list[Path]]], tmp_path: Path
) -> None:
    with serving(service_settings(tmp_path)) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)

            def enroll(person: str, path: Path) -> None:
                enrollment.Enroll(
                    enrollment_pb2.EnrollRequest(
                        customer_id=person, images=[image(path)], consent=consent()
                    ),
                    timeout=60,
                )

            for person, images in people[:3]:
                enroll(person, images[0])
            rotated = subprocess.run(
                [str(FACEGUARD), "keys", "rotate", "--data-dir", str(tmp_path), "--wait", "0"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert rotated.returncode == 0, rotated.stderr
            result = json.loads(rotated.stdout)
            assert result["active_key"] == "k2" and result["reencrypted"] == 3
            for person, images in people[:3]:
                reply = kiosk.Verify(
                    verification_pb2.VerifyRequest(customer_id=person, frames=[image(images[1])]),
                    timeout=60,
                )
                assert "MATCH" in reply.decision.reason_codes, person
            enroll(people[3][0], people[3][1][0])  # written under the new key
    keyring = Keyring.from_file(tmp_path / KEYRING_FILE)
    with open_store(tmp_path, keyring) as store:
        assert store.verify_chain().ok
        with store.connect() as conn:
            key_ids = set(conn.execute(select(template_table.c.key_id).distinct()).scalars())
        assert key_ids == {"k2"}
        vectors = [t.vector for p, _ in people for t in store.templates_of(p)]
    assert len(vectors) == 4
    assert_no_plaintext(tmp_path, vectors)


def test_rotation_reencrypts_watchlist_templates(tmp_path: Path) -> None:
    keyring = generate_keyring()
    templates = [
        NewTemplate(vector=t.vector / np.linalg.norm(t.vector), model="m", quality=70)
        for t in some_templates(2)
    ]
    with open_store(tmp_path, keyring) as store:
        watchlist = Watchlist(store, DIM)
        watchlist.open()
        entry = watchlist.add("fraudster", templates, "case", "C-1", "fraud-1")
        rotated = keyring.add_key()
        assert store.rotate_keys(rotated) == 0  # no customer templates
        assert rotate_watchlist_keys(store) == 2
        with store.connect() as conn:
            table = watchlist_template_table
            key_ids = set(conn.execute(select(table.c.key_id).distinct()).scalars())
        assert key_ids == {rotated.active}
        assert store.verify_chain().ok
    with open_store(tmp_path, rotated) as store:
        reopened = Watchlist(store, DIM)
        reopened.open()
        hit = reopened.best_hit(templates[0].vector)
        assert hit is not None and hit[0] == entry.entry_id
