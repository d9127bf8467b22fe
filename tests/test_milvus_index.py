"""The Milvus gallery backend against a real Milvus standalone server (tests/milvus.py).

The rotation and re-scoring are also checked without a server; everything that touches Milvus
skips when no server can be started here (`.ci/run` installs one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import milvus
import numpy as np
import pytest

pytest.importorskip("pymilvus")  # the `milvus` extra, which `make setup` installs

from service.domain import Consent
from service.gallery.milvus_index import MilvusIndex, open_milvus
from service.gallery.milvus_settings import MilvusSettings
from service.gallery.rescore import Candidate, rescore
from service.gallery.rotation import Rotation
from service.gallery.vector_index import IndexUnusable
from service.store.audit_chain import NewEvent
from service.store.crypto import Keyring, generate_keyring
from service.store.customers import NewTemplate, Store

DIM = 64
MODEL = "test-embedder@1"


def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return generate_keyring()


@pytest.fixture
def store(tmp_path: Path, keyring: Keyring) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'gallery.db'}", keyring) as opened:
        opened.create_schema()
        yield opened


def enroll(store: Store, customer_id: str, vectors: np.ndarray) -> list[int]:
    given = datetime(2025, 3, 1, tzinfo=UTC)
    return store.enroll(
        customer_id,
        [NewTemplate(v, MODEL, 80.0) for v in vectors],
        Consent("identity-verification", given, "kiosk", "op-1", given + timedelta(365)),
        NewEvent("ENROLL", "OK", device_id="kiosk-1", payload={}),
    )


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> MilvusSettings:
    """A collection of its own per test, on the session's server."""
    name = "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    return MilvusSettings(collection=name[:200], index_type="HNSW")


@pytest.fixture
def index(
    milvus_server: milvus.MilvusServer, settings: MilvusSettings, keyring: Keyring
) -> Iterator[MilvusIndex]:
    opened = MilvusIndex(DIM, settings.model_copy(update={"uri": milvus_server.uri}), keyring)
    try:
        yield opened
    finally:
        opened._client.drop_collection(opened.collection)
        opened.close()


# --- without a server ---------------------------------------------------------------------------


def test_rotation_keeps_scores_and_depends_on_the_key() -> None:
    keyring = generate_keyring()
    rotation = Rotation.from_keyring(keyring, keyring.active, DIM)
    x, y = unit_vectors(200, 1), unit_vectors(200, 2)
    raw = np.einsum("ij,ij->i", x, y)
    rotated = np.einsum("ij,ij->i", rotation.apply(x), rotation.apply(y))
    assert np.abs(raw - rotated).max() < 1e-5
    assert np.abs(rotation.matrix @ rotation.matrix.T - np.eye(DIM)).max() < 1e-5
    # The vectors themselves move: no coordinate of a rotated vector is its raw one.
    assert np.abs(rotation.apply(x) - x).mean() > 0.05
    again = Rotation.from_keyring(keyring, keyring.active, DIM)
    assert np.array_equal(again.matrix, rotation.matrix) and again.check == rotation.check
    other = Rotation.from_keyring(generate_keyring(), "k1", DIM)
    assert other.check != rotation.check
    assert np.abs(other.matrix - rotation.matrix).max() > 0.1


def test_rescore_drops_absent_ids_and_scores_exactly(store: Store) -> None:
    kept = enroll(store, "alice", unit_vectors(2, 10))
    erased = enroll(store, "bob", unit_vectors(1, 11))
    store.delete_customer("bob", NewEvent("DELETE", "OK", device_id="kiosk-1", payload={}))
    probe = unit_vectors(1, 10)[0]
    # Index scores are ignored: a stale or approximate 0.99 for an erased id is dropped.
    candidates = [(erased[0], 0.99), (kept[1], 0.98), (kept[0], 0.5), (123_456, 0.97)]
    found = rescore(candidates, probe, store)
    vectors = store.templates_by_id(kept)
    assert found == [
        Candidate(kept[0], "alice", float(vectors[kept[0]].vector @ probe)),
        Candidate(kept[1], "alice", float(vectors[kept[1]].vector @ probe)),
    ]
    assert found[0].score == pytest.approx(1.0, abs=1e-5)
    assert rescore(candidates, probe, store, model="another-embedder@2") == []
    assert rescore([], probe, store) == []


# --- against the server -------------------------------------------------------------------------


def test_add_remove_search_count(index: MilvusIndex) -> None:
    vectors = unit_vectors(50, 3)
    ids = np.arange(100, 150, dtype=np.int64)
    index.add(ids, vectors)
    assert len(index) == 50
    assert np.array_equal(index.ids(), ids)
    hits = index.search(vectors[7], 3)
    assert hits[0][0] == 107 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="already indexed"):
        index.add(ids[:1], vectors[:1])
    with pytest.raises(ValueError, match="L2-normalised"):
        index.add(np.array([999]), vectors[:1] * 2)
    assert index.remove(np.array([107, 108, 5_000])) == 2
    assert index.remove(np.array([107])) == 0
    assert len(index) == 48
    assert 107 not in index.ids()
    batch = index.search_batch(vectors[[1, 2]], 1)
    assert [row[0][0] for row in batch] == [101, 102]


def test_milvus_holds_only_rotated_vectors(index: MilvusIndex) -> None:
    vectors = unit_vectors(20, 4)
    index.add(np.arange(20), vectors)
    rows = index._client.query(
        index.collection, filter="id >= 0", output_fields=["vector"], consistency_level="Strong"
    )
    stored = np.array([row["vector"] for row in sorted(rows, key=lambda r: r["id"])], np.float32)
    assert np.abs(stored - vectors).max() > 0.1
    assert np.abs(stored - index._rotation.apply(vectors)).max() < 1e-6
    # Scores through Milvus are the raw cosines.
    probe = unit_vectors(1, 5)[0]
    raw = vectors @ probe
    for template_id, score in index.search(probe, 20):
        assert abs(score - raw[template_id]) < 1e-5


def test_recall_against_exact_search(index: MilvusIndex) -> None:
    n, queries = 3000, 100
    vectors = unit_vectors(n, 6)
    index.rebuild(np.arange(n), vectors, index_timeout_s=300)
    # Probes near their own template, as a returning customer's face is (cosine ~0.7).
    rng = np.random.default_rng(7)
    targets = rng.choice(n, queries, replace=False)
    probes = vectors[targets] + 0.7 * unit_vectors(queries, 8)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    exact = np.argmax(probes @ vectors.T, axis=1)
    found = [row[0][0] for row in index.search_batch(probes, 1)]
    recall = float(np.mean(np.asarray(found) == exact))
    assert recall >= 0.98, recall


def test_deleted_template_never_returned_after_rescoring(index: MilvusIndex, store: Store) -> None:
    # Bounded consistency, as the service runs it: a search right after a delete can still
    # see the deleted row; the re-scoring path must not.
    assert index.settings.consistency_level == "Bounded"
    others = enroll(store, "carol", unit_vectors(30, 12))
    index.add(np.asarray(others), unit_vectors(30, 12))
    vectors = unit_vectors(1, 13)
    erased = enroll(store, "dave", vectors)
    index.add(np.asarray(erased), vectors)
    # Bounded also hides a fresh insert for a moment (a miss, never a wrong match).
    assert wait_for(lambda: rescore(index.search(vectors[0], 5), vectors[0], store)[0].customer_id
                    == "dave")  # fmt: skip
    for _ in range(5):
        store.delete_customer("dave", NewEvent("DELETE", "OK", device_id="k", payload={}))
        index.remove(np.asarray(erased))
        stale = []
        for _ in range(5):
            hits = index.search(vectors[0], 5)
            stale += [template_id for template_id, _ in hits if template_id in erased]
            assert all(c.customer_id != "dave" for c in rescore(hits, vectors[0], store))
        if stale:  # Milvus did hand back the deleted id: the path above was exercised
            return
        erased = enroll(store, "dave", vectors)
        index.add(np.asarray(erased), vectors)
        assert wait_for(lambda ids=erased: index.search(vectors[0], 1)[0][0] in ids)
    pytest.fail("Milvus never returned a deleted id at Bounded consistency: test did not bite")


def test_a_different_key_is_refused(
    milvus_server: milvus.MilvusServer, index: MilvusIndex, keyring: Keyring
) -> None:
    index.add(np.arange(3), unit_vectors(3, 14))
    settings = index.settings
    with pytest.raises(IndexUnusable, match="different key"):
        MilvusIndex(DIM, settings, generate_keyring())
    with pytest.raises(IndexUnusable, match="no key"):
        MilvusIndex(DIM, settings, generate_keyring("other"))
    with pytest.raises(IndexUnusable, match="expected 32"):
        MilvusIndex(32, settings, keyring)
    reopened = MilvusIndex(DIM, settings, keyring)
    assert len(reopened) == 3
    reopened.close()


def test_restart_keeps_the_collection(tmp_path: Path, keyring: Keyring) -> None:
    try:
        server = milvus.start(tmp_path / "milvus")
    except milvus.ServerUnavailable as exc:
        pytest.skip(f"no Milvus server: {exc}")
    vectors = unit_vectors(200, 15)
    settings = MilvusSettings(uri=server.uri, collection="restart")
    try:
        index = MilvusIndex(DIM, settings, keyring)
        index.add(np.arange(200), vectors)
        index.remove(np.arange(10))
        index.snapshot()
        index.close()
    finally:
        server.stop()
    server = milvus.start(tmp_path / "milvus")
    try:
        index = MilvusIndex(DIM, settings.model_copy(update={"uri": server.uri}), keyring)
        assert np.array_equal(index.ids(), np.arange(10, 200))
        assert index.search(vectors[50], 1)[0][0] == 50
        index.close()
    finally:
        server.stop()


def test_open_heals_against_the_store_and_rebuilds_what_the_keyring_cannot_use(
    milvus_server: milvus.MilvusServer, settings: MilvusSettings, store: Store, keyring: Keyring
) -> None:
    settings = settings.model_copy(update={"uri": milvus_server.uri})
    ids = np.sort(enroll(store, "erin", unit_vectors(6, 16)))
    # A collection rotated under a key this keyring lacks, holding a template the store lacks.
    foreign = MilvusIndex(DIM, settings, generate_keyring("lost"))
    foreign.add(np.array([999_999]), unit_vectors(1, 17))
    foreign.close()
    index = open_milvus(DIM, settings, keyring, store, MODEL)
    try:
        assert index._rotation.key_id == keyring.active  # dropped and rebuilt from the store
        assert np.array_equal(index.ids(), ids)
        assert index.search(unit_vectors(6, 16)[2], 1)[0][0] == ids[2]
        index.add(np.array([999_999]), unit_vectors(1, 17))  # a stale id the store lacks
        index.remove(ids[:2])  # and two templates it still has, missing
        index.close()
        index = open_milvus(DIM, settings, keyring, store, MODEL)  # healed both ways
        assert np.array_equal(index.ids(), ids)
    finally:
        index._client.drop_collection(index.collection)
        index.close()


def test_the_service_serves_1n_from_milvus_and_an_erased_customer_is_never_found(
    milvus_server: milvus.MilvusServer, shared_data: Path, tmp_path: Path
) -> None:
    """`gallery.backend = "milvus"` end to end over gRPC: Identify finds an enrolled customer
    through the Milvus collection (the candidates re-scored in the store), and right after
    Delete answers the customer is never a candidate, though Milvus at Bounded consistency
    may still hand the deleted template back for a moment."""
    import grpc

    from faceguard.v1 import (
        enrollment_pb2,
        enrollment_pb2_grpc,
        verification_pb2,
        verification_pb2_grpc,
    )
    from tests.service_helpers import (
        consent,
        image,
        people_with,
        service_settings,
        serving,
        with_sections,
    )

    people = people_with(shared_data, minimum=2, count=2)
    settings = service_settings(tmp_path / "data")
    milvus_settings = MilvusSettings(collection="t_served", uri=milvus_server.uri)
    with serving(
        with_sections(settings, gallery={"backend": "milvus", "milvus": milvus_settings})
    ) as running:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        for customer_id, images in people:
            enrollment.Enroll(enrollment_pb2.EnrollRequest(
                customer_id=customer_id, images=[image(images[0])], consent=consent(),
            ), timeout=120)  # fmt: skip
        (alice, alice_images), (bob, _) = people
        probe = verification_pb2.IdentifyRequest(image=image(alice_images[1]), top_k=5)
        assert wait_for(
            lambda: (
                [c.customer_id for c in kiosk.Identify(probe, timeout=60).candidates][:1] == [alice]
            )
        ), "the enrolled customer was not found through Milvus"
        found = kiosk.Identify(probe, timeout=60).candidates[0]
        assert found.score >= running.engine.policy.threshold
        enrollment.Delete(
            enrollment_pb2.DeleteRequest(customer_id=alice, reason="test", operator_id="op"),
            timeout=60,
        )
        for _ in range(10):  # at once and for a while: never the erased customer
            names = {c.customer_id for c in kiosk.Identify(probe, timeout=60).candidates}
            assert alice not in names
        assert bob not in names  # a stranger's face is no match for bob either
        channel.close()
