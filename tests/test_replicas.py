"""Replicas on one database follow the store: two Gallery objects ("replicas" A and B) over one
SQLite file and over one PostgreSQL database, each with its own FAISS index."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from service.domain import Consent
from service.gallery.faiss_index import FaissIndex
from service.gallery.gallery import Gallery
from service.gallery.watchlist import Watchlist
from service.store import changes as feed
from service.store.changes import listener_for
from service.store.crypto import generate_keyring
from service.store.customers import NewEvent, NewTemplate, Store
from tests.service_helpers import faiss_gallery
from tools import postgres

DIM = 8
MODEL = "embedder-v1"
CONSENT = Consent("kiosk verification", datetime.now(UTC), "branch", "op-1")
POLL_S = 0.05


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def templates(vectors: np.ndarray) -> list[NewTemplate]:
    return [NewTemplate(vector=v, model=MODEL, quality=80) for v in vectors]


@pytest.fixture
def url(database_url: str) -> str:
    return database_url


@pytest.fixture
def stores(url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database, as two replicas open it (one keyring: the bank's)."""
    keyring = generate_keyring()
    with Store(url, keyring) as a, Store(url, keyring) as b:
        a.create_schema()
        b.create_schema()
        yield a, b


def replica(store: Store, data_dir: Path, follow: bool = True) -> Gallery:
    data_dir.mkdir(exist_ok=True)
    gallery = faiss_gallery(store, data_dir, DIM, MODEL)
    if follow:
        gallery.follow(listener_for(store), POLL_S)
    return gallery


def wait_until(condition: Callable[[], bool], timeout: float = 1.0) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.002)
    return time.monotonic() - start


def found(gallery: Gallery, vector: np.ndarray) -> list[str]:
    return [match.customer_id for match in gallery.search(vector, 3)]


def test_an_enrolment_through_a_is_found_through_b_and_an_erasure_never(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    a = replica(stores[0], tmp_path / "a", follow=False)
    b = replica(stores[1], tmp_path / "b")
    try:
        vectors = unit_rows(2, 1)
        a.enroll("c-1", templates(vectors), CONSENT, NewEvent("ENROLL", "OK"))
        wait_until(lambda: "c-1" in found(b, vectors[0]), timeout=1.0)
        assert "c-1" in found(a, vectors[0])  # its own write, at once
        b.stop_following()  # B now lags as far as it can: its index still holds the vectors
        a.delete("c-1", NewEvent("DELETE", "OK"))
        assert len(b.index) == 2
        assert "c-1" not in found(b, vectors[0])  # confirmed against the store: never returned
        assert b.catch_up() == 2 and len(b.index) == 0
    finally:
        b.stop_following()


def test_a_retention_style_store_deletion_is_followed(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    """`faceguard retention run` deletes through a Store of its own, behind the service."""
    b = replica(stores[1], tmp_path / "b")
    try:
        vectors = unit_rows(1, 2)
        stores[0].enroll("c-1", templates(vectors), CONSENT, NewEvent("ENROLL", "OK"))
        wait_until(lambda: len(b.index) == 1)
        stores[0].delete_customer("c-1", NewEvent("DELETE", "OK"))
        wait_until(lambda: len(b.index) == 0)
    finally:
        b.stop_following()


def test_following_is_idempotent_with_the_replicas_own_writes(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    a = replica(stores[0], tmp_path / "a", follow=False)
    vectors = unit_rows(3, 3)
    ids = a.enroll("c-1", templates(vectors[:2]), CONSENT, NewEvent("ENROLL", "OK"))
    added = a.add_templates("c-1", templates(vectors[2:]), True, NewEvent("UPDATE", "OK"))
    assert a.catch_up() == 0  # its own changes: already applied, not applied twice
    np.testing.assert_array_equal(a.index.ids(), added)
    assert not set(ids) & set(a.index.ids().tolist())


def test_the_watchlist_follows_another_replicas_changes(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    a, b = Watchlist(stores[0], DIM), Watchlist(stores[1], DIM)
    a.open()
    b.open()
    vector = unit_rows(1, 4)
    entry = a.add("fraudster", templates(vector), "case", "ref-1", "op-1")
    assert b.best_hit(vector[0]) is None
    assert b.catch_up() == 1
    assert b.best_hit(vector[0]).entry_id == entry.entry_id
    a.remove(entry.entry_id, "cleared", "op-1")
    assert b.catch_up() == 1 and b.best_hit(vector[0]) is None


def test_a_restart_replays_only_the_changes_after_the_snapshot(
    stores: tuple[Store, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = replica(stores[0], tmp_path / "a", follow=False)
    vectors = unit_rows(4, 5)
    a.enroll("c-1", templates(vectors[:1]), CONSENT, NewEvent("ENROLL", "OK"))
    a.enroll("c-2", templates(vectors[1:2]), CONSENT, NewEvent("ENROLL", "OK"))
    a.save()
    mark = a.index.watermark
    # Changes while this replica is down, through the other one.
    stores[1].enroll("c-3", templates(vectors[2:3]), CONSENT, NewEvent("ENROLL", "OK"))
    stores[1].delete_customer("c-1", NewEvent("DELETE", "OK"))
    replayed: list[tuple[int, int]] = []
    read = feed.changes_after

    def spy(store, types, after, limit=1000):
        replayed.append((after, limit))
        return read(store, types, after, limit)

    monkeypatch.setattr(feed, "changes_after", spy)
    monkeypatch.setattr(FaissIndex, "sync", lambda *_a, **_k: pytest.fail("full heal"))
    restarted = replica(stores[0], tmp_path / "a", follow=False)
    assert replayed[0][0] == mark  # from the watermark, not from the start
    assert found(restarted, vectors[2])[0] == "c-3"
    assert sorted(found(restarted, vectors[0])) == ["c-2", "c-3"]  # c-1 erased meanwhile
    assert len(restarted.index) == 2
    assert restarted.index.watermark > mark


def test_a_killed_listen_connection_reconnects_and_catches_up(
    postgres_url: str, tmp_path: Path
) -> None:
    postgres.reset_database(postgres_url)
    keyring = generate_keyring()
    with Store(postgres_url, keyring) as a_store, Store(postgres_url, keyring) as b_store:
        a_store.create_schema()
        listener = listener_for(b_store)
        assert listener is not None
        b = replica(b_store, tmp_path / "b", follow=False)
        b.follow(listener, poll_s=30)  # no polling to speak of: only notifications wake it
        try:
            vectors = unit_rows(2, 6)
            a_store.enroll("c-1", templates(vectors[:1]), CONSENT, NewEvent("ENROLL", "OK"))
            wait_until(lambda: len(b.index) == 1)
            pid = listener.backend_pid
            with a_store.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                conn.commit()
            a_store.enroll("c-2", templates(vectors[1:]), CONSENT, NewEvent("ENROLL", "OK"))
            wait_until(lambda: len(b.index) == 2, timeout=5.0)
            assert listener.backend_pid not in (None, pid)
        finally:
            b.stop_following()


def test_a_notification_is_sent_on_commit_never_on_rollback(postgres_url: str) -> None:
    postgres.reset_database(postgres_url)
    with Store(postgres_url, generate_keyring()) as store:
        store.create_schema()
        listener = listener_for(store)
        assert listener.wait(0.1)  # the first call connects (and reports a possible miss)
        assert not listener.wait(0.1)
        with pytest.raises(RuntimeError), store.transaction() as conn:
            feed.notify(conn)
            raise RuntimeError("rolled back")
        assert not listener.wait(0.3)
        store.enroll("c-1", templates(unit_rows(1, 7)), CONSENT, NewEvent("ENROLL", "OK"))
        assert listener.wait(1.0)
        listener.close()
