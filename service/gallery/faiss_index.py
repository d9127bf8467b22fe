"""The FAISS `VectorIndex`: cosine search over enrolled templates, by store template id.

Templates are L2-normalised float32 vectors, so cosine is the inner product. Up to
`IndexOptions.exact_limit` templates the index is exact (a flat scan). Beyond it ("ivfpq") an
inverted file of 4-bit product-quantised codes (faiss `IndexIVFPQFastScan`, 24 bytes a template
at d=192) scans a large share of the lists cheaply, and its best 100 or so candidates are
re-scored exactly against the stored float vectors, so every score returned is an exact cosine
(the service thresholds them). The exact vectors live in an IVF-Flat over the same centroids
with a hash-table direct map: it is only read by id, and unlike faiss's `IndexRefine` (which
addresses vectors by position) it supports `remove_ids` in O(1) per id. Both halves change under
one write lock, so no search sees a template in one and not the other. HNSW has no
`remove_ids`; see ../shared/VECTORS.md for the measurements behind these choices.

The store is the source of truth: this index is a cache of it, snapshotted with `save`,
checked on `load` and healed with `sync`; when a snapshot is unusable (including one written
before the "ivfpq" kind, whose IVF-Flat is refused) it is rebuilt. `open_faiss` does all of
that for the gallery, which sees only the `VectorIndex` protocol.

Concurrency: searches run concurrently; add/remove swap nothing and take the index exclusively;
`rebuild` builds the new index while searches go on against the old one and swaps it in; `save`
only excludes other writers, since writing a snapshot does not change the index.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from service.gallery import follow
from service.gallery.vector_index import IndexUnusable
from service.store import changes
from service.store.crypto import Keyring, KeyringError, SealedWriter, open_sealed, write_sealed
from service.store.durable import fsync_dir

if TYPE_CHECKING:
    from service.store.customers import Store

log = logging.getLogger(__name__)

# A snapshot is the faiss index (two for "ivfpq", one after the other), then the watermark (the
# event row through which it holds every change: `_WATERMARK` and 8 bytes), sealed with the template
# keyring (`service.store.crypto.SealedWriter`): it holds every template, so it is encrypted
# like them, and AES-GCM's tags refuse a truncated or altered file instead of loading wrong
# vectors. An older unsealed snapshot is refused, so the caller rebuilds it from the store.
SNAPSHOT_PURPOSE = b"faceguard vector index snapshot"
# Unit vectors only: a caller that forgot to normalise would get scores that are not cosines,
# and the operating threshold would silently mean something else.
_NORM_TOLERANCE = 1e-3
# Fewer training points per IVF list than this and faiss's k-means warns and clusters poorly.
_MIN_POINTS_PER_LIST = 39
# Candidates re-scored per result asked for, so a deep k still gets a pool several times its
# size (the codes rank close impostors roughly; the genuine match stands far above them).
_RERANK_PER_RESULT = 4
# Marks the watermark after the faiss indexes; snapshots written before it end without one.
_WATERMARK = b"FGWM"


class IndexFileError(IndexUnusable):
    """A saved index is missing, corrupt or of the wrong shape: rebuild it from the store."""


@dataclass(frozen=True)
class SnapshotFile:
    """Where a `FaissIndex` persists itself, and the keyring it seals with: read at each
    snapshot (`keyring()`), so a snapshot after a key rotation is sealed under the new key."""

    path: Path
    keyring: Callable[[], Keyring]


@dataclass(frozen=True)
class IndexOptions:
    """How `rebuild` chooses and sizes the index, and how many threads bulk work may use.

    Measured on this 2-core AVX2 machine with synthetic face-like data, d=192 (random
    identities, probes at genuine cosine 0.7; `python -m tools.bench.index`). The
    codes only choose candidates: re-scoring 400 instead of 100 found no more matches, so a
    miss is the probe's true list left unscanned, and recall@1 follows the share of lists
    scanned, which 4-bit fast-scan codes make cheap. At 1M, 4*sqrt(N) lists (4,000) with 30%
    probed gave recall@1 0.998 at p50 4.2 ms (build 80 s, 832 MB saved, 1.1 GB resident after
    a build, as lists grow by doubling); 25% gave 0.995 at 3.8 ms. 2*sqrt(N) lists build in
    half the time but recall less at equal cost (0.994 at 40%, 4.2 ms). The IVF-Flat this
    replaced needed 12*sqrt(N) lists and 14% probed for 0.993 at 18 ms (build 324 s).
    Exact up to 50k templates (a flat scan: 4.4 ms at 50k, 8-10 ms at 100k, 19 ms at 200k);
    "ivfpq" gave 0.999 at 1.2 ms at 100k. Random identities have no cluster structure, the
    hard case; real embeddings cluster, so a smaller share may do.
    """

    exact_limit: int = 50_000
    lists_per_sqrt: float = 4.0
    max_nlist: int = 16_384
    probe_fraction: float = 0.3
    # d / this many sub-quantizers of 4 bits each: 24-byte codes at d=192.
    dims_per_code: int = 4
    # Candidates re-scored exactly (at least 4 per result asked for).
    rerank_depth: int = 100
    train_points_per_list: int = _MIN_POINTS_PER_LIST + 1
    train_iterations: int = 10
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


class _ReadWriteLock:
    """Many readers or one writer.

    A waiting writer holds back new readers, so a steady stream of searches cannot starve an
    enrolment. Not re-entrant: a reader must not take the lock again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _configure_blas(dim: int) -> None:
    """Let batches of 16+ queries use BLAS.

    faiss compares this process-wide threshold with queries x dimension; its default keeps
    batches below ~650 queries at d=192 on the slow path (VECTORS.md: 6x slower), while single
    queries are fastest on that path.
    """
    faiss.cvar.distance_compute_blas_threshold = 16 * dim


def _as_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as a 1-D int64 array; faiss reserves -1 for "no result", so ids are non-negative."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ValueError("ids must be non-negative")
    return ids


def _as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Vectors as a C-contiguous (n, dim) float32 array of finite unit vectors."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {vectors.shape}")
    # The float64 sum of float32 values cannot overflow, so it is finite exactly when every
    # element is; this avoids a boolean copy of a million-row array.
    if not np.isfinite(vectors.sum(dtype=np.float64)):
        raise ValueError("vectors contain NaN or infinite values")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    if vectors.size and np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
        raise ValueError("vectors must be L2-normalised (templates are compared by cosine)")
    return vectors


def _planned_nlist(n: int, options: IndexOptions) -> int:
    """About `lists_per_sqrt`*sqrt(n) lists, capped, and enough points to train each."""
    wanted = round(options.lists_per_sqrt * math.sqrt(n))
    return max(1, min(options.max_nlist, wanted, n // _MIN_POINTS_PER_LIST))


def _subquantizers(dim: int, dims_per_code: int) -> int:
    """The most 4-bit sub-quantizers, at most dim / dims_per_code, that split dim evenly."""
    most = max(1, dim // dims_per_code)
    return next(m for m in range(most, 0, -1) if dim % m == 0)


def _list_ids(index: faiss.IndexIVF) -> np.ndarray:
    """The ids held in an IVF index's inverted lists, sorted."""
    lists = index.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(index.nlist)
        if lists.list_size(i)
    ]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


class _Flat:
    """Exact search: every template scored. An IDMap2 maps faiss rows to store ids and back."""

    kind = "flat"
    nlist = 0

    def __init__(self, index: faiss.IndexIDMap2) -> None:
        self.index = index

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray) -> _Flat:
        built = cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        built.add(ids, vectors)
        return built

    @property
    def parts(self) -> tuple[faiss.Index, ...]:
        """The faiss indexes a snapshot holds, in order."""
        return (self.index,)

    def stored_ids(self) -> np.ndarray:
        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(ids))

    def search(
        self, probes: np.ndarray, k: int, nprobe: int, depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best, best first; `nprobe` and `depth` steer only "ivfpq"."""
        return self.index.search(probes, k)


class _Reranked:
    """Candidates from 4-bit PQ fast-scan codes, re-scored exactly against stored vectors.

    `candidates` (IVF-PQ fast-scan, ~d/8 bytes a template) is scanned. `exact` (IVF-Flat over
    the same centroids, with a hash-table direct map) is only read by id: its lists just keep
    each list's regrowth on `add` small, and removing an id from it costs O(1). Removal from
    `candidates` scans its lists' ids (about 6 ms a call at 1M).
    """

    kind = "ivfpq"

    def __init__(self, candidates: faiss.IndexIVFPQFastScan, exact: faiss.IndexIVFFlat) -> None:
        # Scan list by list into a heap: for one probe a call (the service's searches) this
        # was 25% faster at 1M than the batched layout faiss picks by default, which suits
        # large batches (30% slower on 256 probes). Set before the index is shared, never
        # changed after, and not saved with it, so it is set here for loaded indexes too.
        candidates.implem = 10
        self.candidates = candidates
        self.exact = exact

    @classmethod
    def build(
        cls, dim: int, ids: np.ndarray, vectors: np.ndarray, options: IndexOptions
    ) -> _Reranked:
        """Trained on a sample of the vectors themselves (spherical k-means for cosine)."""
        nlist = _planned_nlist(len(ids), options)
        candidates = faiss.IndexIVFPQFastScan(
            faiss.IndexFlatIP(dim),
            dim,
            nlist,
            _subquantizers(dim, options.dims_per_code),
            4,
            faiss.METRIC_INNER_PRODUCT,
        )
        # Codes of the vectors, not of their residuals: random-like embeddings barely shrink
        # when their centroid is subtracted, and residual codes need a lookup table for every
        # list probed. The codes only choose candidates; the scores come from `exact`.
        candidates.by_residual = False
        candidates.cp.spherical = True
        candidates.cp.niter = options.train_iterations
        sample_size = min(len(ids), options.train_points_per_list * nlist)
        rows = np.sort(np.random.default_rng(0).choice(len(ids), sample_size, replace=False))
        candidates.train(vectors[rows])
        centroids = faiss.IndexFlatIP(dim)
        centroids.add(candidates.quantizer.reconstruct_n(0, nlist))
        exact = faiss.IndexIVFFlat(centroids, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        exact.set_direct_map_type(faiss.DirectMap.Hashtable)
        built = cls(candidates, exact)
        built.add(ids, vectors)
        return built

    @property
    def nlist(self) -> int:
        return self.candidates.nlist

    @property
    def parts(self) -> tuple[faiss.Index, ...]:
        """The faiss indexes a snapshot holds, in order (`_read_parts` relies on it)."""
        return (self.candidates, self.exact)

    def stored_ids(self) -> np.ndarray:
        return _list_ids(self.candidates)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.candidates.add_with_ids(vectors, ids)
        self.exact.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        removed = int(self.candidates.remove_ids(ids))
        # A hash-table direct map removes only by an explicit id array, not by a selector set.
        self.exact.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
        return removed

    def search(
        self, probes: np.ndarray, k: int, nprobe: int, depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(exact scores, ids) of the k best among the `depth` best by code, best first."""
        # Per-call parameters: setting nprobe on the shared index races between threads.
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        _, labels = self.candidates.search(probes, depth, params=params)
        found = labels >= 0  # fewer than `depth` when the scanned lists hold fewer
        vectors = self.exact.reconstruct_batch(labels[found])
        scores = np.full(labels.shape, -np.inf, np.float32)
        scores[found] = np.einsum("ij,ij->i", vectors, probes[np.nonzero(found)[0]])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, best, axis=1)
        best_ids = np.take_along_axis(labels, best, axis=1)
        best_ids[~np.take_along_axis(found, best, axis=1)] = -1
        return best_scores, best_ids


def _from_parts(parts: list[faiss.Index]) -> _Flat | _Reranked:
    """The index a snapshot's faiss indexes make up; IndexFileError for any other shape.

    An IVF-Flat alone (the approximate kind before "ivfpq") is refused, so the caller
    rebuilds it from the store.
    """
    match parts:
        case [faiss.IndexIDMap2() as flat] if isinstance(
            faiss.downcast_index(flat.index), faiss.IndexFlatIP
        ):
            return _Flat(flat)
        case [faiss.IndexIVFPQFastScan() as candidates, faiss.IndexIVFFlat() as exact] if (
            candidates.metric_type == exact.metric_type == faiss.METRIC_INNER_PRODUCT
            and candidates.d == exact.d
            and exact.direct_map.type == faiss.DirectMap.Hashtable
        ):
            if not np.array_equal(_list_ids(candidates), _list_ids(exact)):
                raise IndexFileError("the candidate codes and exact vectors hold different ids")
            return _Reranked(candidates, exact)
    names = ", ".join(type(part).__name__ for part in parts)
    raise IndexFileError(f"unsupported index type ({names})")


def _write_parts(parts: tuple[faiss.Index, ...], watermark: int | None, file: SealedWriter) -> None:
    """Write the faiss indexes one after another to `file`, then the watermark if known."""
    writer = faiss.PyCallbackIOWriter(file.write)
    for part in parts:
        faiss.write_index(part, writer)
    if watermark is not None:
        file.write(_WATERMARK + watermark.to_bytes(8, "little", signed=True))


class _ChunkReader:
    """Reads across the plaintext chunks of a sealed file, for faiss's callback reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._current = io.BytesIO()

    def read(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            piece = self._current.read(size - len(out))
            if not piece:
                following = next(self._chunks, None)
                if following is None:
                    break
                self._current = io.BytesIO(following)
                continue
            out += piece
        return bytes(out)


def _read_parts(file: _ChunkReader) -> tuple[list[faiss.Index], int | None]:
    """Read the faiss indexes and the watermark `_write_parts` wrote, which must end with the
    file (None: a snapshot written before watermarks)."""
    reader = faiss.PyCallbackIOReader(file.read)
    parts = [faiss.read_index(reader)]
    if isinstance(parts[0], faiss.IndexIVFPQFastScan):  # "ivfpq": its exact vectors follow
        parts.append(faiss.read_index(reader))
    rest = file.read(1 << 20)
    if not rest:
        return parts, None
    if len(rest) != len(_WATERMARK) + 8 or not rest.startswith(_WATERMARK):
        raise IndexFileError(f"{len(rest)} unexpected bytes after the index")
    return parts, int.from_bytes(rest[len(_WATERMARK) :], "little", signed=True)


def _read_verified(path: Path, keyring: Keyring) -> tuple[_Flat | _Reranked, int | None]:
    """Read and authenticate a sealed snapshot and its watermark; never memory-mapped.

    A memory-mapped IVF index aborts the process when added to (VECTORS.md), and this index
    is written to after loading.
    """
    try:
        with path.open("rb") as file:
            parts, watermark = _read_parts(
                _ChunkReader(open_sealed(file, keyring, SNAPSHOT_PURPOSE))
            )
    except OSError as exc:
        raise IndexFileError(f"cannot read {path}: {exc}") from exc
    except KeyringError as exc:  # unsealed (an old plaintext snapshot), truncated, altered
        raise IndexFileError(f"{path}: {exc}") from exc
    except RuntimeError as exc:  # faiss reports malformed files as RuntimeError
        raise IndexFileError(f"{path} is not a readable faiss index: {exc}") from exc
    try:
        return _from_parts(parts), watermark
    except IndexFileError as exc:
        raise IndexFileError(f"{path}: {exc}") from exc


class FaissIndex:
    """Cosine search over templates keyed by their int64 store ids; safe across threads.

    The FAISS `VectorIndex`: in this process, persisted to a sealed snapshot `file` (None: in
    memory only, as the watchlist's index).
    """

    def __init__(
        self, dim: int, options: IndexOptions | None = None, file: SnapshotFile | None = None
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.options = options or IndexOptions()
        self.file = file
        _configure_blas(dim)
        self._index: _Flat | _Reranked = _Flat(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        self._ids = self._frozen(np.empty(0, np.int64))
        self._rw = _ReadWriteLock()
        self._mutate = threading.Lock()  # serialises writers; searches only need `_rw`
        # The event row through which this index holds every store change (see `watermark`).
        self.watermark: int | None = None

    @staticmethod
    def _frozen(ids: np.ndarray) -> np.ndarray:
        """Sorted ids, read-only so `ids()` can hand them out without a copy."""
        ids.flags.writeable = False
        return ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def kind(self) -> str:
        """The index type: "flat" (exact) or "ivfpq" (approximate candidates, exact scores)."""
        return self._index.kind

    @property
    def nlist(self) -> int:
        """Inverted lists of an "ivfpq" index (0 for a flat index)."""
        return self._index.nlist

    @property
    def nprobe(self) -> int:
        """Lists an "ivfpq" search scans by default (0 for a flat index)."""
        nlist = self.nlist
        return min(nlist, max(1, round(self.options.probe_fraction * nlist))) if nlist else 0

    def rerank_depth(self, k: int) -> int:
        """Candidates an "ivfpq" search re-scores exactly for k results (0 for a flat index).

        At least `_RERANK_PER_RESULT` per result, so a deep k still has a pool to choose from.
        """
        return max(self.options.rerank_depth, _RERANK_PER_RESULT * k) if self.nlist else 0

    @property
    def needs_rebuild(self) -> bool:
        """Whether incremental changes have outgrown the kind or list count `rebuild` chose.

        add/remove keep the current kind, so a flat index can pass the exact limit (searches
        slow down linearly) and IVF lists can grow long; the caller rebuilds when this says so.
        """
        size, index = len(self), self._index
        if isinstance(index, _Flat):
            return size > self.options.exact_limit
        planned = _planned_nlist(size, self.options)
        return size < self.options.exact_limit // 2 or index.nlist < planned // 2

    def ids(self) -> np.ndarray:
        """The indexed template ids, sorted (read-only)."""
        return self._ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id is indexed (booleans in the order given)."""
        return self._contains(_as_ids(ids))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index new templates; ids already present (or repeated) are refused, not replaced."""
        with self._mutate:
            self._add_locked(ids, vectors)

    def remove(self, ids: np.ndarray) -> int:
        """Drop templates by id; unknown ids are ignored. Returns how many were removed.

        Erasure: the snapshot file, which may hold them, is deleted before this returns (and
        written again by the next `snapshot`); a restart meanwhile rebuilds from the store.
        """
        with self._mutate:
            return self._remove_locked(_as_ids(ids))

    def _checked(
        self, ids: np.ndarray, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated ids and vectors, plus the ids sorted (for the id bookkeeping)."""
        ids = _as_ids(ids)
        vectors = _as_vectors(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        sorted_ids = np.sort(ids)
        if np.any(sorted_ids[1:] == sorted_ids[:-1]):
            raise ValueError("ids repeat within the batch")
        return ids, vectors, sorted_ids

    def _add_locked(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors, new = self._checked(ids, vectors)
        present = self._contains(new)
        if present.any():
            raise ValueError(f"ids already indexed: {new[present][:10].tolist()}")
        if not len(ids):
            return
        faiss.omp_set_num_threads(self.options.threads)
        with self._rw.write():
            self._index.add(ids, vectors)
            self._ids = self._frozen(np.insert(self._ids, np.searchsorted(self._ids, new), new))

    def _remove_locked(self, ids: np.ndarray) -> int:
        wanted = np.unique(ids)
        gone = wanted[self._contains(wanted)]
        if not gone.size:
            return 0
        faiss.omp_set_num_threads(self.options.threads)
        with self._rw.write():
            removed = self._index.remove(gone)
            self._ids = self._frozen(np.delete(self._ids, np.searchsorted(self._ids, gone)))
        if self.file is not None:  # under `_mutate`: no snapshot of before can land after this
            self.file.path.unlink(missing_ok=True)
            fsync_dir(self.file.path.parent)
        return removed

    def _contains(self, wanted: np.ndarray) -> np.ndarray:
        """Membership of each id in the index, by binary search of the sorted id array."""
        ids = self._ids  # one reference: a writer swaps the array, never changes it
        at = np.searchsorted(ids, wanted)
        found = np.zeros(len(wanted), bool)
        inside = at < len(ids)
        found[inside] = ids[at[inside]] == wanted[inside]
        return found

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the contents, choosing flat or "ivfpq" for the new size.

        The new index is built while searches continue on the old one, then swapped in; both
        are in memory until the swap.
        """
        ids, vectors, sorted_ids = self._checked(ids, vectors)
        with self._mutate:
            start = time.perf_counter()
            faiss.omp_set_num_threads(self.options.threads)
            index: _Flat | _Reranked
            if len(ids) > self.options.exact_limit:
                index = _Reranked.build(self.dim, ids, vectors, self.options)
            else:
                index = _Flat.build(self.dim, ids, vectors)
            with self._rw.write():
                self._index, self._ids = index, self._frozen(sorted_ids)
            log.info(
                "index rebuilt: %s, %d templates, %.1f s",
                self.kind,
                len(ids),
                time.perf_counter() - start,
            )

    def search(
        self, vector: np.ndarray, k: int, nprobe: int | None = None
    ) -> list[tuple[int, float]]:
        """The k best (id, cosine) for one probe, best first; k is capped at the size.

        Runs in the calling thread (one OpenMP thread): the service searches one probe per
        request from many threads, and OpenMP teams per call would oversubscribe the cores.
        The OpenMP thread count is per calling thread, so this leaves other threads' bulk
        work at `options.threads`.
        `nprobe` overrides the default number of lists an "ivfpq" index scans, for this call
        only.
        """
        probe = np.asarray(vector)
        if probe.ndim != 1:
            raise ValueError(f"a probe must be 1-D, got shape {probe.shape}")
        faiss.omp_set_num_threads(1)
        return self._search(probe[None, :], k, nprobe)[0]

    def search_batch(
        self, vectors: np.ndarray, k: int, nprobe: int | None = None
    ) -> list[list[tuple[int, float]]]:
        """`search` for many probes at once, using `options.threads` threads (for bulk jobs)."""
        faiss.omp_set_num_threads(self.options.threads)
        return self._search(vectors, k, nprobe)

    def _search(
        self, vectors: np.ndarray, k: int, nprobe: int | None
    ) -> list[list[tuple[int, float]]]:
        if k <= 0:
            raise ValueError("k must be positive")
        probes = _as_vectors(vectors, self.dim)
        with self._rw.read():
            k = min(k, len(self))
            if not k:
                return [[] for _ in range(len(probes))]
            scores, labels = self._index.search(
                probes, k, nprobe or self.nprobe, min(len(self), self.rerank_depth(k))
            )
        # "ivfpq" can find fewer than k when the scanned lists hold fewer; padded with -1.
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(labels, scores, strict=True)
        ]

    def save(self, path: Path, keyring: Keyring) -> None:
        """Snapshot atomically, sealed under the keyring's active key (`write_sealed`: a crash
        leaves either the old snapshot or the new one, never a partial file). Searches continue
        meanwhile; other writers wait."""
        path = Path(path)
        with self._mutate:
            parts, watermark = self._index.parts, self.watermark
            write_sealed(
                path, keyring, SNAPSHOT_PURPOSE, lambda out: _write_parts(parts, watermark, out)
            )
            log.info("index saved: %s, %d templates, %s", self.kind, len(self), path)

    @classmethod
    def load(
        cls, path: Path, dim: int, keyring: Keyring, options: IndexOptions | None = None
    ) -> FaissIndex:
        """Open a snapshot written by `save`; IndexFileError when it is missing or unusable."""
        path = Path(path)
        index, watermark = _read_verified(path, keyring)
        if index.parts[0].d != dim:
            raise IndexFileError(f"{path} holds {index.parts[0].d}-d vectors, expected {dim}")
        ids = index.stored_ids()
        if len(ids) != index.parts[0].ntotal or np.any(ids[1:] == ids[:-1]):
            raise IndexFileError(f"{path} has inconsistent ids")
        loaded = cls(dim, options)
        loaded._index, loaded._ids = index, cls._frozen(ids)
        loaded.watermark = watermark
        log.info("index loaded: %s, %d templates, %s", loaded.kind, len(loaded), path)
        return loaded

    @classmethod
    def restore(
        cls, file: SnapshotFile, dim: int, options: IndexOptions | None = None
    ) -> FaissIndex:
        """The index persisted in `file`, which later snapshots replace; IndexFileError (an
        `IndexUnusable`) when it is missing or unusable."""
        restored = cls.load(file.path, dim, file.keyring(), options)
        restored.file = file
        return restored

    def snapshot(self) -> None:
        """Write the sealed snapshot file now (see `save`)."""
        if self.file is None:
            raise ValueError("this index is in memory only: it has no snapshot file")
        self.save(self.file.path, self.file.keyring())

    def sync(
        self,
        store_ids: np.ndarray,
        fetch: Callable[[np.ndarray], np.ndarray],
        chunk: int = 10_000,
    ) -> tuple[int, int]:
        """Heal the index against the store, the source of truth. Returns (added, removed).

        Removes ids the store no longer has and adds the templates the index lacks, fetching
        their vectors `chunk` ids at a time (`fetch(ids)` returns them in the order asked).
        This repairs a crash between a store commit and the matching index change.
        """
        wanted = np.unique(_as_ids(store_ids))
        with self._mutate:
            stale = np.setdiff1d(self._ids, wanted, assume_unique=True)
            missing = np.setdiff1d(wanted, self._ids, assume_unique=True)
            removed = self._remove_locked(stale)
            for start in range(0, len(missing), chunk):
                part = missing[start : start + chunk]
                self._add_locked(part, fetch(part))
        if removed or len(missing):
            log.info("index synced with the store: %d added, %d removed", len(missing), removed)
        return len(missing), removed


def open_faiss(
    store: Store, model: str, file: SnapshotFile, dim: int, options: IndexOptions | None = None
) -> FaissIndex:
    """The index of the store's `model` templates, ready to serve: the snapshot restored and
    brought up to date by replaying the store's changes after its watermark (a snapshot
    without one, written before watermarks, is healed against the store's template ids), or
    rebuilt from the store (and saved) when it is missing or unusable or has outgrown its kind.
    Templates of other embedder versions are left out (and a snapshot's are removed): they are
    never compared with this model's."""
    try:
        index = FaissIndex.restore(file, dim, options)
    except IndexFileError as exc:
        if file.path.exists():
            log.warning("index snapshot unusable (%s): rebuilding from the store", exc)
        else:  # a first start, or a snapshot deleted on purpose: nothing is wrong
            log.info("no index snapshot at %s yet: building it from the store", file.path)
        index = FaissIndex(dim, options, file)
        _rebuild(index, store, model, dim)
        index.snapshot()
        log.info("index rebuilt with %d templates", len(index))
        return index
    heal = index.watermark is None
    added = removed = 0
    if not heal:
        start = index.watermark
        applied = follow.catch_up(index, store, changes.GALLERY, follow.gallery_fetch(store, model))
        added = sum(len(done.added) for done in applied)
        removed = sum(len(done.removed) for done in applied)
        log.info("index replayed events %d-%d: %d added, %d removed", start, index.watermark,
                 added, removed)  # fmt: skip
        # One count (no ids, no vectors) catches a snapshot that disagrees with the store
        # anyway: another embedder version's, or one restored from an older backup.
        heal = len(index) != store.template_count(model)
        if heal:
            log.warning("replayed index holds %d templates, the store %d: healing by id",
                        len(index), store.template_count(model))  # fmt: skip
    if heal:
        index.watermark = changes.head(store)  # read first: changes meanwhile are replayed
        added, removed = index.sync(store.template_ids(model=model), store.vectors_of)
        if added or removed:
            log.warning("index healed from the store: %d added, %d removed", added, removed)
    rebuild = index.needs_rebuild
    if rebuild:
        log.info("rebuilding the %s index for %d templates", index.kind, len(index))
        _rebuild(index, store, model, dim)
    if heal or added or removed or rebuild:  # a healed snapshot gets its first watermark
        index.snapshot()
    return index


def _rebuild(index: FaissIndex, store: Store, model: str, dim: int) -> None:
    """Rebuild from every template in the store, at the watermark read before them (changes
    committed while they are read are replayed by the follower: idempotent)."""
    watermark = changes.head(store)
    index.rebuild(*_templates_of(store, model, dim))
    index.watermark = watermark


def _templates_of(store: Store, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) of the store's `model` templates, for a rebuild."""
    ids, vectors = [], []
    for batch_ids, batch_vectors, _ in store.iter_templates(model=model):
        ids.append(batch_ids)
        vectors.append(batch_vectors)
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)
