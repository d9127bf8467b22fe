"""The seam between the gallery and a vector search backend (FAISS first; Milvus next).

The store is the source of truth; an index is a cache of one embedder version's templates,
keyed by their int64 store template ids, that answers 1:N searches. `Gallery` changes it only
after the store committed the change, and reopens it at start through the backend's "open or
rebuild" function, which heals it against the store (`service.gallery.faiss_index.open_faiss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from service.store.customers import Store

# Unit vectors only: a caller that forgot to normalise would get scores that are not cosines,
# and the operating threshold would silently mean something else.
NORM_TOLERANCE = 1e-3


class IndexUnusable(Exception):
    """The persisted state is missing, corrupt, of another shape or unreadable with the keys at
    hand: the caller rebuilds the index from the store."""


@runtime_checkable
class VectorIndex(Protocol):
    """Cosine search over one embedder version's templates, by store template id.

    Contract every backend keeps:
    - Vectors are L2-normalised float32 rows of `dim` values; anything else (NaN, another
      dimension, a vector that is not a unit vector) is refused with ValueError, since a score
      that is not a cosine would silently change what the operating threshold means.
    - Every score the gallery thresholds is the exact cosine (inner product) of the probe with
      the stored template. A backend whose scores are exact says `approximate = False` (FAISS:
      its compressed kind re-scores its candidates against the exact vectors it holds); one
      that only proposes candidates (Milvus: rotated vectors, index approximations, Bounded
      consistency) says `approximate = True`, and the gallery re-scores every candidate
      against the decrypted template in the store (`service.gallery.rescore`).
    - A search may name an id removed moments before (an eventually consistent backend); the
      caller maps ids to customers through the store, which drops ids it no longer holds.
    - `watermark`: the store change through which this index holds every change, the events
      table's row id in commit order (`service.store.changes`), from which a replica follows
      the change feed (`service.gallery.follow`); persisted with each snapshot, so a restart
      replays only the changes after it. None when the persisted state records none (a FAISS
      snapshot written before watermarks): the "open or rebuild" function then heals by
      comparing the index's ids with the store's. The gallery sets it under its lock.
    - Thread safety: searches run concurrently with each other and with a change; changes
      (add, remove, snapshot) are serialised by the caller (the gallery's lock) and never show
      a search half of one.
    """

    watermark: int | None

    @classmethod
    def restore(cls, location: Any, dim: int) -> Self:
        """The index persisted at `location` (backend-specific: FAISS a sealed snapshot file,
        Milvus a collection), or IndexUnusable: the backend's "open or rebuild" function then
        builds it from the store."""
        ...

    approximate: bool  # True: scores and ids are proposals the gallery re-checks in the store

    @property
    def dim(self) -> int:
        """The dimension of every vector."""
        ...

    def __len__(self) -> int:
        """How many templates the index holds."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index new templates (1-D non-negative int64 ids, (n, dim) unit vectors); an id
        already present or repeated is refused (ValueError), never replaced."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Drop templates by id (unknown ids are ignored) and return how many went.

        Erasure: when this returns, no state the index persisted holds them any more (FAISS
        deletes its snapshot file, written again at the next `snapshot`).
        """
        ...

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k best (template id, exact cosine) for one probe, best first; fewer when the
        index holds fewer. Runs in the calling thread: the service searches one probe per
        request from many threads."""
        ...

    def search_batch(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """`search` for many probes at once (bulk jobs), one result list per probe."""
        ...

    def ids(self) -> np.ndarray | None:
        """The indexed template ids, sorted; None where the backend cannot list them cheaply
        (then healing replays the store's changes after `watermark` instead)."""
        ...

    def snapshot(self) -> None:
        """Persist the current contents now (FAISS: the sealed snapshot file, written
        atomically); a backend that persists every change makes it durable."""
        ...

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id is indexed, in the order given: following the store's change feed
        adds only the ids an index lacks, since `add` refuses repeated ids."""
        ...


def checked_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as a 1-D int64 array; faiss reserves -1 for "no result", so ids are non-negative."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ValueError("ids must be non-negative")
    return ids


def checked_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Vectors as a C-contiguous (n, dim) float32 array of finite unit vectors."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {vectors.shape}")
    # The float64 sum of float32 values cannot overflow, so it is finite exactly when every
    # element is; this avoids a boolean copy of a million-row array.
    if not np.isfinite(vectors.sum(dtype=np.float64)):
        raise ValueError("vectors contain NaN or infinite values")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    if vectors.size and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise ValueError("vectors must be L2-normalised (templates are compared by cosine)")
    return vectors


def store_templates(store: Store, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) of the store's `model` templates, for a rebuild."""
    ids, vectors = [], []
    for batch_ids, batch_vectors, _ in store.iter_templates(model=model):
        ids.append(batch_ids)
        vectors.append(batch_vectors)
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    return np.concatenate(ids), np.concatenate(vectors)
