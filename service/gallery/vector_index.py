"""The seam between the gallery and a vector search backend (FAISS first; Milvus next).

The store is the source of truth; an index is a cache of one embedder version's templates,
keyed by their int64 store template ids, that answers 1:N searches. `Gallery` changes it only
after the store committed the change, and reopens it at start through the backend's "open or
rebuild" function, which heals it against the store (`service.gallery.faiss_index.open_faiss`).
"""

from __future__ import annotations

from typing import Any, Protocol, Self, runtime_checkable

import numpy as np


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
    - Every score returned is the exact cosine (inner product) of the probe with the stored
      template: an approximate backend chooses candidates and re-scores them exactly, because
      the service thresholds the scores.
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
