"""The gallery over the VectorIndex seam: the backend the settings name, the FAISS "open or
rebuild" path, and templates matched only within the current embedder version."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydantic
import pytest

from service.config import Settings
from service.gallery.backend import open_index
from service.gallery.faiss_index import FaissIndex, SnapshotFile
from service.gallery.match import Match, WatchlistHit
from service.gallery.vector_index import IndexUnusable, VectorIndex
from service.gallery.watchlist import Watchlist
from service.store.crypto import generate_keyring
from service.store.customers import ConsentRecord, NewEvent, NewTemplate, Store
from tests.service_helpers import faiss_gallery

DIM = 8
CURRENT, OLD = "embedder-v2", "embedder-v1"
CONSENT = ConsentRecord("kiosk verification", datetime.now(UTC), "branch", "op-1")


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def templates(vectors: np.ndarray, model: str) -> list[NewTemplate]:
    return [NewTemplate(vector=v, model=model, quality=80) for v in vectors]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(f"sqlite:///{tmp_path / 'faceguard.db'}", generate_keyring()) as opened:
        opened.create_schema()
        yield opened


def test_the_settings_choose_the_backend_its_file_and_options(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEGUARD_GALLERY__FAISS__INDEX_FILE", str(tmp_path / "x" / "g.idx"))
    monkeypatch.setenv("FACEGUARD_GALLERY__FAISS__EXACT_LIMIT", "5")
    settings = Settings().gallery
    (tmp_path / "x").mkdir()
    store.enroll("c-1", templates(unit_rows(2, 1), CURRENT), CONSENT, NewEvent("ENROLL", "OK"))
    index = open_index(settings, store, CURRENT, DIM, tmp_path)
    assert isinstance(index, FaissIndex) and isinstance(index, VectorIndex)
    assert index.options.exact_limit == 5 and index.options.probe_fraction == 0.3
    assert (tmp_path / "x" / "g.idx").is_file() and not (tmp_path / "index.faiss").exists()
    assert len(index) == 2 and index.watermark == 1  # the enrolment, the chain's only event
    monkeypatch.setenv("FACEGUARD_GALLERY__BACKEND", "annoy")
    with pytest.raises(pydantic.ValidationError, match="backend"):
        Settings()


def test_restore_opens_the_snapshot_or_reports_it_unusable(tmp_path: Path) -> None:
    keys = generate_keyring()
    file = SnapshotFile(tmp_path / "index.faiss", lambda: keys)
    with pytest.raises(IndexUnusable):  # none yet
        FaissIndex.restore(file, DIM)
    index = FaissIndex(DIM, file=file)
    index.add(np.arange(3), unit_rows(3, 2))
    index.snapshot()
    restored = FaissIndex.restore(file, DIM)
    np.testing.assert_array_equal(restored.ids(), [0, 1, 2])
    assert restored.file == file  # its later snapshots replace the same file
    with pytest.raises(IndexUnusable, match="no key"):
        FaissIndex.restore(SnapshotFile(file.path, lambda: generate_keyring("other")), DIM)
    with pytest.raises(IndexUnusable, match="expected 16"):
        FaissIndex.restore(file, 16)
    with pytest.raises(ValueError, match="in memory only"):
        FaissIndex(DIM).snapshot()


def test_removal_deletes_the_snapshot_that_held_the_vectors(tmp_path: Path) -> None:
    keys = generate_keyring()
    file = SnapshotFile(tmp_path / "index.faiss", lambda: keys)
    index = FaissIndex(DIM, file=file)
    index.add(np.arange(3), unit_rows(3, 3))
    index.snapshot()
    assert index.remove(np.asarray([7])) == 0 and file.path.exists()  # nothing held: kept
    assert index.remove(np.asarray([1])) == 1 and not file.path.exists()
    index.snapshot()
    np.testing.assert_array_equal(FaissIndex.restore(file, DIM).ids(), [0, 2])


def test_the_index_holds_only_the_current_versions_templates(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_ids = store.enroll(
        "old", templates(unit_rows(2, 4), OLD), CONSENT, NewEvent("ENROLL", "OK")
    )
    with caplog.at_level(logging.WARNING, logger="service.gallery"):
        gallery = faiss_gallery(store, tmp_path, DIM, CURRENT)
    assert "2 templates were made by another embedder version than embedder-v2" in caplog.text
    assert "UpdateTemplates(replace=true)" in caplog.text and gallery.outdated_at_start == 2
    new = unit_rows(2, 5)
    new_ids = gallery.enroll("new", templates(new, CURRENT), CONSENT, NewEvent("ENROLL", "OK"))
    np.testing.assert_array_equal(gallery.index.ids(), new_ids)
    old_vector = store.templates_of("old")[0].vector
    assert [c for c, _ in gallery.search(old_vector, 5)] == ["new"]
    assert gallery.best_match("old", old_vector) is None  # its own template: another version
    assert gallery.best_match("new", new[0]) == pytest.approx(1.0)
    gallery.save()
    # A snapshot that holds another version's template (written before an upgrade) is healed.
    stale = FaissIndex.restore(SnapshotFile(tmp_path / "index.faiss", lambda: store.keyring), DIM)
    stale.add(np.asarray(old_ids[:1]), store.vectors_of(np.asarray(old_ids[:1])))
    stale.snapshot()
    np.testing.assert_array_equal(faiss_gallery(store, tmp_path, DIM, CURRENT).index.ids(), new_ids)
    assert len(faiss_gallery(store, tmp_path, DIM, OLD).index) == 2  # the old version's view


def test_templates_of_another_version_are_refused_before_the_store(
    store: Store, tmp_path: Path
) -> None:
    gallery = faiss_gallery(store, tmp_path, DIM, CURRENT)
    with pytest.raises(ValueError, match="embedder-v1"):
        gallery.enroll("c-1", templates(unit_rows(1, 6), OLD), CONSENT, NewEvent("ENROLL", "OK"))
    assert not store.has_customer("c-1") and len(gallery.index) == 0


def test_searches_name_what_they_found(store: Store, tmp_path: Path) -> None:
    gallery = faiss_gallery(store, tmp_path, DIM, CURRENT)
    faces = unit_rows(2, 7)
    for name, face in zip(("c-1", "c-2"), faces, strict=True):
        gallery.enroll(name, templates(face[None], CURRENT), CONSENT, NewEvent("ENROLL", "OK"))
    best = gallery.search(faces[1], 2)
    assert [type(m) for m in best] == [Match, Match]
    assert best[0].customer_id == "c-2" and best[0].score == pytest.approx(1.0)
    customer_id, score = best[0]  # still unpacks like the pairs it replaced
    assert (customer_id, score) == (best[0].customer_id, best[0].score)
    watchlist = Watchlist(store, DIM)
    watchlist.open()
    assert watchlist.best_hit(faces[0]) is None
    entry = watchlist.add("fraudster", templates(faces[:1], CURRENT), "case", "K-1", "op-1")
    hit = watchlist.best_hit(faces[0])
    assert isinstance(hit, WatchlistHit) and not isinstance(hit, Match)
    assert hit.entry_id == entry.entry_id and hit.score == pytest.approx(1.0)
