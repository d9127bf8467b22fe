"""The vector index snapshot is sealed with the template keyring, and erasure reaches every file.

No file at rest holds a template in plaintext, and once Delete returns no file in the data
directory holds the erased customer's template bytes: the gRPC test scans them all.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import select

from faceguard.v1 import enrollment_pb2, enrollment_pb2_grpc, risk_pb2, risk_pb2_grpc
from service.api.server import Running
from service.cli.keys import rotate
from service.config import Settings
from service.domain import Consent
from service.gallery.faiss_index import FaissIndex, IndexFileError
from service.gallery.gallery import Gallery
from service.store import crypto
from service.store.crypto import (
    SEALED_MAGIC,
    SealedFileError,
    SealedWriter,
    generate_keyring,
    open_sealed,
    open_vector,
    sealed_key_id,
)
from service.store.customers import NewEvent, NewTemplate, Store
from service.store.tables import template_table
from service.store.watchlist import watchlist_aad, watchlist_template_table
from tests.service_helpers import (
    consent,
    faiss_gallery,
    image,
    mtls_settings,
    people_with,
    tls_channel,
)

DIM = 192
CONSENT = Consent("kiosk verification", datetime.now(UTC), "branch", "op-1")


def unit_rows(count: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def windows(vector: np.ndarray) -> Iterator[bytes]:
    """Every run of 4 consecutive floats of a template, as stored little-endian float32."""
    raw = np.asarray(vector, "<f4").tobytes()
    for at in range(0, len(raw) - 16 + 1, 16):
        yield raw[at : at + 16]


def files_holding(directory: Path, vectors: list[np.ndarray]) -> list[str]:
    """Names of the files under `directory` that hold any 4 floats of any of `vectors`."""
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(w in data for v in vectors for w in windows(v)):
            found.append(path.name)
    return found


def files_holding_bytes(directory: Path, blobs: list[bytes]) -> list[str]:
    """Names of the files under `directory` that hold any 32-byte run of any of `blobs`."""
    runs = [b[i : i + 32] for b in blobs for i in range(0, len(b) - 32 + 1, 32)]
    return [
        p.name
        for p in sorted(directory.rglob("*"))
        if p.is_file() and any(r in p.read_bytes() for r in runs)
    ]


def test_a_snapshot_holds_no_template_in_plaintext_and_opens_only_with_its_key(
    tmp_path: Path,
) -> None:
    keys = generate_keyring()
    vectors = unit_rows(50)
    index = FaissIndex(DIM)
    index.add(np.arange(50), vectors)
    path = tmp_path / "index.faiss"
    index.save(path, keys)
    assert path.read_bytes().startswith(SEALED_MAGIC)
    assert files_holding(tmp_path, list(vectors)) == []
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(FaissIndex.load(path, DIM, keys)) == 50
    with pytest.raises(IndexFileError, match="no key"):
        FaissIndex.load(path, DIM, generate_keyring("other"))


def test_a_plaintext_snapshot_is_refused_and_rebuilt_sealed_from_the_store(tmp_path: Path) -> None:
    keys = generate_keyring()
    store = Store(f"sqlite:///{tmp_path / 'faceguard.db'}", keys)
    store.create_schema()
    vectors = unit_rows(3, seed=1)
    templates = [NewTemplate(vector=v, model="m", quality=80) for v in vectors]
    ids = store.enroll("c-1", templates, CONSENT, NewEvent("ENROLL", "OK"))
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))  # what earlier versions wrote
    old.add_with_ids(vectors, np.asarray(ids, np.int64))
    faiss.write_index(old, str(tmp_path / "index.faiss"))
    with pytest.raises(IndexFileError, match="not a sealed file"):
        FaissIndex.load(tmp_path / "index.faiss", DIM, keys)
    gallery = faiss_gallery(store, tmp_path, DIM, "m")
    assert len(gallery.index) == 3
    assert (tmp_path / "index.faiss").read_bytes().startswith(SEALED_MAGIC)
    assert files_holding(tmp_path, list(vectors)) == []


def sealed_bytes(payload: bytes, purpose: bytes = b"test") -> bytes:
    buffer = io.BytesIO()
    writer = SealedWriter(buffer, KEYS, purpose)
    writer.write(payload)
    writer.close()
    return buffer.getvalue()


KEYS = generate_keyring()


def opened(data: bytes, purpose: bytes = b"test") -> bytes:
    return b"".join(open_sealed(io.BytesIO(data), KEYS, purpose))


def test_sealed_chunks_cannot_be_cut_dropped_reordered_or_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(crypto, "_SEAL_CHUNK", 64)
    payload = bytes(range(256)) * 2
    data = sealed_bytes(payload)
    assert opened(data) == payload
    header = len(SEALED_MAGIC) + 1 + len(KEYS.active)
    chunk = 5 + 12 + 64 + 16
    first, second = data[header : header + chunk], data[header + chunk : header + 2 * chunk]
    damaged = {
        "cut": data[:-1],
        "last chunk dropped": data[: header + 7 * chunk],
        "reordered": data[:header] + second + first + data[header + 2 * chunk :],
        "bytes after": data + b"x",
    }
    for name, bad in damaged.items():
        with pytest.raises(SealedFileError):
            opened(bad)
        assert name
    with pytest.raises(SealedFileError):
        opened(data, purpose=b"another file")


def test_key_rotation_reseals_the_snapshot(tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path, "dev_generate_key": True})
    keys = generate_keyring()
    keys.dump(tmp_path / "template-keys.json")
    store = Store(settings.storage.url(), keys)
    store.create_schema()
    vectors = unit_rows(2, seed=4)
    templates = [NewTemplate(vector=v, model="m", quality=80) for v in vectors]
    store.enroll("c-1", templates, CONSENT, NewEvent("ENROLL", "OK"))
    faiss_gallery(store, tmp_path, DIM, "m")
    result = rotate(settings, wait_s=0)
    assert result["snapshot_resealed"] is True
    with (tmp_path / "index.faiss").open("rb") as file:
        assert sealed_key_id(file) == result["active_key"] == "k2"
    new_keys = crypto.Keyring.from_file(tmp_path / "template-keys.json")
    assert len(FaissIndex.load(tmp_path / "index.faiss", DIM, new_keys)) == 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Path, serve) -> Running:
    return serve(mtls_settings(tmp_path_factory.mktemp("data"), pki))


def test_after_delete_no_file_holds_the_erased_template(
    served: Running, pki: Path, shared_data: Path
) -> None:
    (erased, erased_images), (kept, kept_images) = people_with(shared_data, minimum=2, count=2)
    gallery = served.engine.gallery
    data_dir = gallery.index.file.path.parent
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
        for person, images in ((erased, erased_images), (kept, kept_images)):
            enrollment.Enroll(
                enrollment_pb2.EnrollRequest(
                    customer_id=person, images=[image(p) for p in images], consent=consent()
                ),
                timeout=60,
            )
        gallery.save()  # a snapshot that holds both customers
        erased_vectors = [t.vector for t in gallery.store.templates_of(erased)]
        kept_vectors = [t.vector for t in gallery.store.templates_of(kept)]
        assert len(erased_vectors) == len(kept_vectors) == 2
        assert files_holding(data_dir, erased_vectors + kept_vectors) == []
        with gallery.store.connect() as conn:
            sealed_rows = list(
                conn.execute(
                    select(template_table.c.ciphertext).where(
                        template_table.c.customer_id == erased
                    )
                ).scalars()
            )
        enrollment.Delete(
            enrollment_pb2.DeleteRequest(customer_id=erased, operator_id="op-1"), timeout=60
        )
        assert files_holding(data_dir, erased_vectors) == []
        assert files_holding_bytes(data_dir, sealed_rows) == []  # secure_delete, WAL truncated
        # The snapshot that held the erased templates (sealed) is gone before Delete answers;
        # the one there now, if the background has written it yet, holds only the kept ones.
    deadline = time.monotonic() + 30
    while not (data_dir / "index.faiss").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the fresh snapshot, written in the background
    index = FaissIndex.load(data_dir / "index.faiss", DIM, gallery.store.keyring)
    assert len(index) == len(gallery.index) == 2
    np.testing.assert_array_equal(index.ids(), gallery.index.ids())
    assert files_holding(data_dir, erased_vectors + kept_vectors) == []


def test_delete_removes_the_snapshot_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Gallery, "_resnapshot", lambda self: None)  # no fresh one yet
    store = Store(f"sqlite:///{tmp_path / 'faceguard.db'}", generate_keyring())
    store.create_schema()
    gallery = faiss_gallery(store, tmp_path, DIM, "m")
    for name, seed in (("c-1", 5), ("c-2", 6)):
        templates = [NewTemplate(vector=v, model="m", quality=80) for v in unit_rows(2, seed)]
        gallery.enroll(name, templates, CONSENT, NewEvent("ENROLL", "OK"))
    gallery.save()
    gallery.delete("c-1", NewEvent("DELETE", "OK"))
    assert not (tmp_path / "index.faiss").exists()
    assert len(faiss_gallery(store, tmp_path, DIM, "m").index) == 2  # rebuilt: c-2 only


def test_after_a_watchlist_removal_no_file_holds_its_template(
    served: Running, pki: Path, shared_data: Path
) -> None:
    ((person, images),) = people_with(shared_data, minimum=1, count=1)
    store = served.engine.gallery.store
    data_dir = served.engine.gallery.index.file.path.parent
    with tls_channel(served.port, pki, "admin") as channel:
        admin = risk_pb2_grpc.RiskAdminStub(channel)
        entry = admin.EnrollWatchlistFace(
            risk_pb2.EnrollWatchlistRequest(
                label=f"fraudster {person}", images=[image(images[0])], reason="case",
                case_ref="case-9", operator_id="op-1",
            ),
            timeout=60,
        )  # fmt: skip
        with store.connect() as conn:
            rows = conn.execute(
                select(watchlist_template_table).where(
                    watchlist_template_table.c.entry_id == entry.entry_id
                )
            ).all()
        assert rows
        vectors = [
            open_vector(store.keyring, r.key_id, r.ciphertext, watchlist_aad(r.entry_id, r.id))
            for r in rows
        ]
        assert files_holding(data_dir, vectors) == []
        admin.RemoveWatchlistEntry(
            risk_pb2.RemoveWatchlistRequest(
                entry_id=entry.entry_id, reason="closed", operator_id="op-1"
            ),
            timeout=60,
        )
    assert files_holding(data_dir, vectors) == []
    assert files_holding_bytes(data_dir, [r.ciphertext for r in rows]) == []
