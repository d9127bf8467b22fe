"""The gallery's vector index: search by id, removal, snapshots, healing, threads, recall."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from service.gallery import faiss_index as index_module
from service.gallery.faiss_index import FaissIndex, IndexFileError, IndexOptions
from service.store.crypto import SealedWriter, generate_keyring
from tools.bench.index import main as bench_main

DIM = 192
SIZE = 3000
# A small exact limit puts SIZE templates on the "ivfpq" path, as a million would be in service.
OPTIONS = IndexOptions(exact_limit=1000, threads=2)
KEYS = generate_keyring()


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def face_probes(templates: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Probes at exactly `cosine` to their template, like a second capture of the same face."""
    noise = unit_rows(rng, len(templates))
    noise -= np.sum(noise * templates, axis=1, keepdims=True) * templates
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosine * templates + np.sqrt(1.0 - cosine**2) * noise


@pytest.fixture(scope="module")
def gallery() -> tuple[np.ndarray, np.ndarray]:
    """Sparse, shuffled ids (as a store's are after deletions) and their unit templates."""
    rng = np.random.default_rng(7)
    ids = rng.permutation(np.arange(SIZE, dtype=np.int64) * 7 + 100)
    return ids, unit_rows(rng, SIZE)


@pytest.fixture(params=["flat", "ivfpq"])
def index(request: pytest.FixtureRequest, gallery: tuple[np.ndarray, np.ndarray]) -> FaissIndex:
    ids, vectors = gallery
    limit = SIZE if request.param == "flat" else OPTIONS.exact_limit
    built = FaissIndex(DIM, IndexOptions(exact_limit=limit, threads=2))
    built.rebuild(ids, vectors)
    assert built.kind == request.param
    return built


def test_search_finds_each_template_with_cosine_one(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = gallery
    for row in range(0, SIZE, 97):
        best_id, score = index.search(vectors[row], 5)[0]
        assert best_id == ids[row]
        assert score == pytest.approx(1.0, abs=1e-5)


def test_results_are_best_first_and_k_is_capped(index: FaissIndex) -> None:
    probe = unit_rows(np.random.default_rng(1), 1)[0]
    scores = [score for _, score in index.search(probe, 20)]
    assert len(scores) == 20
    assert scores == sorted(scores, reverse=True)
    small = FaissIndex(DIM)
    small.add(np.array([5, 9]), unit_rows(np.random.default_rng(2), 2))
    assert [i for i, _ in small.search(probe, 10)] in ([5, 9], [9, 5])
    assert FaissIndex(DIM).search(probe, 3) == []


def test_search_batch_matches_single_searches(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray]
) -> None:
    probes = face_probes(gallery[1][:32], 0.7, np.random.default_rng(3))
    batch = index.search_batch(probes, 10)
    for probe, hits in zip(probes, batch, strict=True):
        single = index.search(probe, 10)
        assert [i for i, _ in hits] == [i for i, _ in single]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in single], atol=1e-5)


def test_scores_are_exact_cosines(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray]
) -> None:
    """Scores are thresholded, so "ivfpq" must re-score its code-ranked candidates exactly.

    With every list scanned the genuine match (cosine 0.7, far above any impostor) is always
    among the candidates; impostors' order below it may differ, as their codes are coarse.
    """
    ids, vectors = gallery
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    probes = face_probes(vectors[:40], 0.7, np.random.default_rng(14))
    for row, probe in enumerate(probes):
        hits = index.search(probe, 10, nprobe=index.nlist or None)
        assert hits[0] == (ids[row], pytest.approx(0.7, abs=1e-5))
        for hit_id, score in hits:
            assert score == pytest.approx(float(by_id[hit_id] @ probe), abs=1e-5)


def test_removed_templates_are_no_longer_found(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ids, vectors = gallery
    gone = ids[:50]
    assert index.remove(np.concatenate([gone, [999_999_999]])) == 50
    assert index.remove(gone) == 0
    assert len(index) == SIZE - 50
    np.testing.assert_array_equal(index.ids(), np.sort(ids[50:]))
    for row in range(50):
        assert ids[row] not in {i for i, _ in index.search(vectors[row], 10)}
    # Asked for everything with every list scanned, exactly the remaining ids come back, and
    # the templates left in lists that were compacted are still found with cosine 1.
    everything = index.search(vectors[0], SIZE, nprobe=index.nlist or None)
    assert sorted(i for i, _ in everything) == sorted(ids[50:].tolist())
    for row in range(50, SIZE, 37):
        best_id, score = index.search(vectors[row], 1)[0]
        assert (best_id, score) == (ids[row], pytest.approx(1.0, abs=1e-5))
    # Both halves of "ivfpq" dropped them: loading checks that they hold the same ids.
    index.save(tmp_path / "gallery.faiss", KEYS)
    loaded = FaissIndex.load(tmp_path / "gallery.faiss", DIM, KEYS, OPTIONS)
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[50:]))


def test_ids_are_the_sorted_indexed_ids(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, _ = gallery
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    assert index.ids().dtype == np.int64
    assert len(index) == SIZE
    extra = unit_rows(np.random.default_rng(4), 2)
    index.add(np.array([1, 50_000]), extra)
    np.testing.assert_array_equal(index.ids(), np.sort(np.concatenate([ids, [1, 50_000]])))
    assert index.search(extra[1], 1)[0][0] == 50_000


def test_save_and_load_give_identical_results(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    probes = face_probes(gallery[1][:40], 0.7, np.random.default_rng(5))
    path = tmp_path / "gallery.faiss"
    index.save(path, KEYS)
    loaded = FaissIndex.load(path, DIM, KEYS, OPTIONS)
    assert loaded.kind == index.kind
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    assert loaded.search_batch(probes, 10) == index.search_batch(probes, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.faiss"]


def test_loaded_index_accepts_additions_and_removals(
    index: FaissIndex, gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ids, vectors = gallery
    path = tmp_path / "gallery.faiss"
    index.save(path, KEYS)
    loaded = FaissIndex.load(path, DIM, KEYS, OPTIONS)
    vector = unit_rows(np.random.default_rng(6), 1)
    loaded.add(np.array([77]), vector)
    assert loaded.search(vector[0], 1)[0][0] == 77
    # Removal by id after loading needs the exact store's id map to have survived the file.
    assert loaded.remove(ids[:5]) == 5
    for row in range(5):
        assert ids[row] not in {i for i, _ in loaded.search(vectors[row], 10)}


def _write_snapshot(path: Path, parts: tuple[faiss.Index, ...], extra: bytes = b"") -> None:
    """A validly sealed snapshot of the given faiss indexes and any extra bytes."""
    with path.open("wb") as file:
        sealed = SealedWriter(file, KEYS, index_module.SNAPSHOT_PURPOSE)
        index_module._write_parts(parts, None, sealed)
        sealed.write(extra)
        sealed.close()


def test_old_ivf_flat_snapshot_is_refused_for_a_rebuild(
    gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Snapshots of the IVF-Flat kind written before "ivfpq" are refused: the caller rebuilds."""
    ids, vectors = gallery
    old = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, 16, faiss.METRIC_INNER_PRODUCT)
    old.train(vectors)
    old.add_with_ids(vectors, ids)
    path = tmp_path / "gallery.faiss"
    _write_snapshot(path, (old,))
    with pytest.raises(IndexFileError, match="unsupported index type"):
        FaissIndex.load(path, DIM, KEYS)


def test_snapshot_with_halves_that_disagree_is_refused(
    gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ids, vectors = gallery
    index = FaissIndex(DIM, OPTIONS)
    index.rebuild(ids, vectors)
    candidates, exact = index._index.parts
    one = ids[:1].copy()
    exact.remove_ids(faiss.IDSelectorArray(1, faiss.swig_ptr(one)))
    path = tmp_path / "gallery.faiss"
    _write_snapshot(path, (candidates, exact))
    with pytest.raises(IndexFileError, match="different ids"):
        FaissIndex.load(path, DIM, KEYS)


def test_snapshot_with_bytes_after_the_index_is_refused(tmp_path: Path) -> None:
    index = FaissIndex(DIM)
    index.add(np.arange(10), unit_rows(np.random.default_rng(15), 10))
    path = tmp_path / "gallery.faiss"
    _write_snapshot(path, index._index.parts, extra=b"left over")
    with pytest.raises(IndexFileError, match="unexpected bytes"):
        FaissIndex.load(path, DIM, KEYS)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _footer_only_removed(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an index" * 100)


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _footer_only_removed, _garbage])
def test_damaged_snapshot_raises_index_file_error(damage, tmp_path: Path) -> None:
    index = FaissIndex(DIM)
    index.add(np.arange(10), unit_rows(np.random.default_rng(8), 10))
    path = tmp_path / "gallery.faiss"
    index.save(path, KEYS)
    damage(path)
    with pytest.raises(IndexFileError):
        FaissIndex.load(path, DIM, KEYS)


def test_missing_or_mismatched_snapshot_raises_index_file_error(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError):
        FaissIndex.load(tmp_path / "absent.faiss", DIM, KEYS)
    path = tmp_path / "gallery.faiss"
    FaissIndex(DIM).save(path, KEYS)
    with pytest.raises(IndexFileError, match="128"):
        FaissIndex.load(path, 128, KEYS)


def test_failed_save_leaves_the_previous_snapshot(
    gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, vectors = gallery
    index = FaissIndex(DIM, OPTIONS)
    index.add(ids[:100], vectors[:100])
    path = tmp_path / "gallery.faiss"
    index.save(path, KEYS)
    index.add(ids[100:200], vectors[100:200])

    write_index = faiss.write_index

    def half_written(index: faiss.Index, writer: faiss.IOWriter) -> None:
        write_index(index, writer)
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", half_written)
    with pytest.raises(OSError, match="disk full"):
        index.save(path, KEYS)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.faiss"]
    np.testing.assert_array_equal(FaissIndex.load(path, DIM, KEYS).ids(), np.sort(ids[:100]))


def test_sync_adds_missing_and_removes_stale_ids(gallery: tuple[np.ndarray, np.ndarray]) -> None:
    ids, vectors = gallery
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    index = FaissIndex(DIM, OPTIONS)
    index.rebuild(ids[:2000], vectors[:2000])  # IVF, as after a snapshot
    store_ids = ids[100:2500]  # the store deleted 100 and enrolled 500 since
    fetched: list[int] = []

    def fetch(wanted: np.ndarray) -> np.ndarray:
        fetched.extend(wanted.tolist())
        return np.stack([by_id[i] for i in wanted.tolist()])

    assert index.sync(store_ids, fetch, chunk=128) == (500, 100)
    assert sorted(fetched) == sorted(ids[2000:2500].tolist())
    np.testing.assert_array_equal(index.ids(), np.sort(store_ids))
    assert index.search(vectors[2400], 1)[0][0] == ids[2400]
    assert index.sync(store_ids, fetch) == (0, 0)


def test_concurrent_searches_while_adding_and_removing(
    gallery: tuple[np.ndarray, np.ndarray],
) -> None:
    ids, vectors = gallery
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    # One OpenMP thread for the rebuild: on 2 cores, k-means threads spinning against the
    # four searchers made the swap-in rebuild take 7 s instead of 1 s.
    index = FaissIndex(DIM, IndexOptions(exact_limit=OPTIONS.exact_limit, threads=1))
    index.rebuild(ids[:1500], vectors[:1500])
    assert index.kind == "ivfpq"
    probes = face_probes(vectors[:64], 0.7, np.random.default_rng(9))
    stop = threading.Event()
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            while not stop.is_set():
                for probe in probes:
                    for hit_id, score in index.search(probe, 10):
                        # The exact cosine of that very id: the two halves never disagree.
                        assert abs(score - float(by_id[hit_id] @ probe)) < 1e-5
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for start in range(1500, SIZE, 100):
        index.add(ids[start : start + 100], vectors[start : start + 100])
        index.remove(ids[start - 1500 : start - 1450])
    index.rebuild(ids[1000:], vectors[1000:])  # swapped in under the searchers
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index) == SIZE - 1000


def test_ivfpq_recall_at_1_on_face_like_data() -> None:
    """The "ivfpq" kind with default settings on 20k random identities probed at genuine cosine 0.7.

    0.7 is a typical same-person score; random identities have no clusters, IVF's hard case.
    """
    rng = np.random.default_rng(10)
    vectors = unit_rows(rng, 20_000)
    ids = np.arange(len(vectors), dtype=np.int64)
    probes = face_probes(vectors[rng.choice(len(vectors), 500, replace=False)], 0.7, rng)
    approximate = FaissIndex(DIM, IndexOptions(exact_limit=SIZE))
    approximate.rebuild(ids, vectors)
    assert approximate.kind == "ivfpq"
    truth = np.argmax(probes @ vectors.T, axis=1)
    found = [approximate.search(probe, 10)[0][0] for probe in probes]
    assert np.mean(truth == np.array(found)) >= 0.99


def test_rerank_depth_grows_with_k() -> None:
    index = FaissIndex(DIM, IndexOptions(exact_limit=100, rerank_depth=50))
    assert index.rerank_depth(5) == 0  # flat: nothing to re-score
    index.rebuild(np.arange(SIZE), unit_rows(np.random.default_rng(16), SIZE))
    assert (index.rerank_depth(5), index.rerank_depth(40)) == (50, 160)


def test_kind_is_kept_by_adds_and_flagged_for_rebuild(
    gallery: tuple[np.ndarray, np.ndarray],
) -> None:
    ids, vectors = gallery
    index = FaissIndex(DIM, OPTIONS)
    index.add(ids[:1000], vectors[:1000])
    assert (index.kind, index.needs_rebuild) == ("flat", False)
    index.add(ids[1000:1200], vectors[1000:1200])
    assert (index.kind, index.needs_rebuild) == ("flat", True)
    index.rebuild(ids[:1200], vectors[:1200])
    assert (index.kind, index.needs_rebuild) == ("ivfpq", False)
    index.remove(ids[:800])
    assert (index.kind, index.needs_rebuild) == ("ivfpq", True)


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        ([1], np.ones((1, DIM - 1)) / np.sqrt(DIM - 1), "shape"),
        ([1], np.full((1, DIM), np.nan), "NaN"),
        ([1, 1], np.ones((2, DIM)) / np.sqrt(DIM), "repeat"),
        ([5], np.ones((1, DIM)) / np.sqrt(DIM), "already indexed"),
        ([1], np.ones((1, DIM)), "normalised"),
        ([-3], np.ones((1, DIM)) / np.sqrt(DIM), "non-negative"),
        ([1, 2], np.ones((1, DIM)) / np.sqrt(DIM), "ids for"),
        ([1.5], np.ones((1, DIM)) / np.sqrt(DIM), "integer"),
    ],
)
def test_bad_additions_raise_value_error(ids: list, vectors: np.ndarray, message: str) -> None:
    index = FaissIndex(DIM)
    index.add(np.array([5]), unit_rows(np.random.default_rng(11), 1))
    with pytest.raises(ValueError, match=message):
        index.add(np.array(ids), vectors)
    np.testing.assert_array_equal(index.ids(), [5])


def test_bad_probes_raise_value_error() -> None:
    index = FaissIndex(DIM)
    index.add(np.array([5]), unit_rows(np.random.default_rng(12), 1))
    probe = unit_rows(np.random.default_rng(13), 1)[0]
    for bad, k in ((probe[:-1], 1), (np.full(DIM, np.nan), 1), (probe[None, :], 1), (probe, 0)):
        with pytest.raises(ValueError):
            index.search(bad, k)


def test_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--json", "--sizes", "2000", "3000", "--queries", "20", "--exact-limit", "2500"]
    assert bench_main(args) == 0
    flat, approximate = json.loads(capsys.readouterr().out)["results"]
    assert (flat["size"], flat["kind"], flat["recall_at_1"]) == (2000, "flat", 1.0)
    assert (flat["nlist"], flat["nprobe"], flat["rerank_depth"]) == (0, 0, 0)
    assert (approximate["size"], approximate["kind"]) == (3000, "ivfpq")
    assert approximate["nlist"] > 0 and approximate["nprobe"] > 0
    assert approximate["rerank_depth"] == IndexOptions().rerank_depth
    assert approximate["recall_at_1"] >= 0.9
    for row in (flat, approximate):
        assert row["bytes_per_vector"] > DIM * 4  # the exact vectors are kept
        assert 0 < row["p50_ms"] <= row["p95_ms"]
        assert row["resident_growth_mb"] >= 0
