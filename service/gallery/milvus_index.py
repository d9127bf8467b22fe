"""The gallery's vector index on a Milvus server, for galleries beyond one machine.

Same contract as the FAISS index (`service.gallery.faiss_index`): cosine search over L2-normalised
float32 templates keyed by their int64 store ids; add, remove, search, search_batch, len, ids,
rebuild, sync. Several service replicas can share one collection.

Two things differ, and the gallery must handle both:
- Milvus only proposes candidates. Its scores may be approximate (HNSW, IVF) and, at the default
  Bounded consistency, a search can still return a template deleted a moment ago (measured on
  Milvus 2.3.5: in 3 of the first 5 searches after a delete). Every candidate must go through
  `service.gallery.rescore.rescore` (store lookup + exact cosine) before any threshold;
  `approximate` says so.
- Milvus keeps vectors in plaintext, so it never receives a raw template: vectors and probes are
  rotated by a secret orthogonal matrix derived from a template keyring key
  (`service.gallery.rotation`, which says what that protects and what it does not). The key id
  and a fingerprint of the rotation are recorded in the collection's description; opening the
  collection with a keyring that lacks that key, or holds a different key under its id, raises
  IndexUnusable, and the caller rebuilds.

Persistence is Milvus's: `snapshot` flushes growing segments (the write-ahead log already holds
every insert and delete). `rebuild` drops and re-creates the collection, so searches fail while it
runs; it is meant for a first start or a changed key, not for routine use (Milvus compacts and
re-indexes segments itself, so `needs_rebuild` is always false).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from service.gallery.milvus_settings import MilvusSettings
from service.gallery.rotation import Rotation
from service.gallery.vector_index import (
    IndexUnusable,
    checked_ids,
    checked_vectors,
    store_templates,
)
from service.store.crypto import Keyring, KeyringError

log = logging.getLogger(__name__)

_ID, _VECTOR = "id", "vector"
# Milvus refuses a topk or query window beyond this.
MAX_TOPK = 16_384
# Rows per insert call: 5,000 x 512-d floats is ~10 MB, under Milvus's 64 MB message limit.
_INSERT_ROWS = 5_000
# Ids per `id in [...]` filter expression.
_FILTER_IDS = 10_000
_DESCRIPTION = "faceguard templates, rotated; rotation_key={key_id}; check={check}"


def default_params(index_type: str, dim: int) -> tuple[dict[str, object], dict[str, object]]:
    """(build, search) parameters for an index type when settings give none.

    HNSW: efConstruction 200 (VECTORS.md: the default construction recalled poorly at 1M)
    and ef 512: at 100k random 192-d templates with face-like probes, ef 128 gave recall@1
    0.916 and ef 512 0.996 (p50 2.8 -> 4.8 ms; tools.bench.index_milvus). IVF lists are
    probed 1 in 32.
    """
    match index_type:
        case "HNSW":
            return {"M": 16, "efConstruction": 200}, {"ef": 512}
        case "IVF_FLAT" | "IVF_SQ8":
            return {"nlist": 1024}, {"nprobe": 32}
        case "IVF_PQ":
            most = max(1, dim // 4)
            m = next(m for m in range(most, 0, -1) if dim % m == 0)
            return {"nlist": 1024, "m": m, "nbits": 8}, {"nprobe": 32}
    return {}, {}


class MilvusIndex:
    """Cosine search over rotated templates in one Milvus collection; safe across threads."""

    # Candidates must be re-scored against the store before any threshold.
    approximate = True
    # Milvus compacts and re-indexes its segments itself.
    needs_rebuild = False

    def __init__(
        self,
        dim: int,
        settings: MilvusSettings,
        keyring: Keyring,
        client: MilvusClient | None = None,
    ) -> None:
        """Connect and open the collection, making it (rotated under the configured key, or
        the keyring's active one) when it does not exist."""
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.settings = settings
        self._keyring = keyring
        build, search = default_params(settings.index_type, dim)
        self.build_params = {**build, **settings.index_params}
        self.search_params = {"metric_type": "IP", "params": {**search, **settings.search_params}}
        token = settings.token.get_secret_value() if settings.token else ""
        self._client = client or MilvusClient(
            uri=settings.uri, token=token, timeout=settings.timeout_s
        )
        self._write = threading.Lock()  # presence checks and their insert/delete go together
        if self._client.has_collection(self.collection):
            self._rotation = self._recorded_rotation()
            # A restarted server does not load its collections again by itself (measured on
            # 2.3.5: "collection not loaded"); loading a loaded one returns at once.
            self._client.load_collection(self.collection)
        else:
            self._rotation = self._create()

    @property
    def collection(self) -> str:
        return self.settings.collection

    @property
    def kind(self) -> str:
        """The Milvus index type, e.g. "HNSW"."""
        return self.settings.index_type

    def close(self) -> None:
        self._client.close()

    def _rotation_for(self, key_id: str) -> Rotation:
        try:
            return Rotation.from_keyring(self._keyring, key_id, self.dim)
        except KeyringError as exc:
            raise IndexUnusable(f"collection {self.collection}: {exc}") from exc

    def _recorded_rotation(self) -> Rotation:
        """The rotation the collection was made with; IndexUnusable when this keyring or
        dimension cannot reproduce it."""
        info = self._client.describe_collection(self.collection)
        fields = dict(
            part.split("=", 1) for part in info.get("description", "").split("; ") if "=" in part
        )
        if "rotation_key" not in fields:
            raise IndexUnusable(f"collection {self.collection} records no rotation key")
        dims = [f["params"].get("dim") for f in info["fields"] if f["name"] == _VECTOR]
        if not dims or int(dims[0]) != self.dim:
            raise IndexUnusable(
                f"collection {self.collection} holds {dims[0] if dims else '?'}-d vectors, "
                f"expected {self.dim}"
            )
        rotation = self._rotation_for(fields["rotation_key"])
        if fields.get("check") != rotation.check:
            raise IndexUnusable(
                f"collection {self.collection} was rotated under a different key "
                f"{rotation.key_id!r} than this keyring's"
            )
        return rotation

    def _create(self) -> Rotation:
        """A new collection with its index, loaded and ready for inserts."""
        rotation = self._rotation_for(self.settings.rotation_key_id or self._keyring.active)
        schema = MilvusClient.create_schema(
            auto_id=False,
            description=_DESCRIPTION.format(key_id=rotation.key_id, check=rotation.check),
        )
        schema.add_field(_ID, DataType.INT64, is_primary=True)
        schema.add_field(_VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
        index = self._client.prepare_index_params()
        index.add_index(
            _VECTOR,
            index_type=self.settings.index_type,
            metric_type="IP",
            params=self.build_params,
        )
        # Building the index on an empty collection keeps create_index short: a long one can
        # be dropped by gRPC keepalive and its retry fails with "index already exists".
        self._client.create_collection(
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level=self.settings.consistency_level,
        )
        log.info(
            "Milvus collection %s made: %s, rotation key %s",
            self.collection,
            self.settings.index_type,
            rotation.key_id,
        )
        return rotation

    def __len__(self) -> int:
        """Templates in the collection (Strong: every acknowledged insert and delete)."""
        rows = self._client.query(
            self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"])

    def ids(self) -> np.ndarray:
        """The indexed template ids, sorted (Strong; reads the whole collection's ids).

        Read in windows of id values, not with pymilvus's query iterator: against a 2.3
        server the iterator cannot get a consistent timestamp and listed ids deleted moments
        before. A window holds at most `MAX_TOPK` ids (they are unique), Milvus's result limit.
        """
        parts, start = [], 0
        while True:
            rows = self._query(f"{_ID} >= {start} and {_ID} < {start + MAX_TOPK}", [_ID])
            if rows:
                parts.append(np.fromiter((row[_ID] for row in rows), np.int64, len(rows)))
            elif not self._query(f"{_ID} >= {start}", ["count(*)"])[0]["count(*)"]:
                break
            start += MAX_TOPK
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def _query(self, expression: str, fields: list[str]) -> list[dict]:
        return self._client.query(
            self.collection, filter=expression, output_fields=fields, consistency_level="Strong"
        )

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` the collection holds (Strong)."""
        found = []
        for start in range(0, len(ids), _FILTER_IDS):
            chunk = ids[start : start + _FILTER_IDS].tolist()
            rows = self._client.query(
                self.collection,
                filter=f"{_ID} in {chunk}",
                output_fields=[_ID],
                consistency_level="Strong",
            )
            found.extend(row[_ID] for row in rows)
        return np.unique(np.asarray(found, np.int64))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index new templates; ids already present (or repeated) are refused, not replaced
        (Milvus itself would keep both rows under one primary key)."""
        ids = checked_ids(ids)
        vectors = checked_vectors(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids repeat within the batch")
        if not len(ids):
            return
        with self._write:
            present = self._present(ids)
            if present.size:
                raise ValueError(f"ids already indexed: {present[:10].tolist()}")
            self._insert(ids, vectors)

    def _insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        rotated = self._rotation.apply(vectors)
        for start in range(0, len(ids), _INSERT_ROWS):
            end = start + _INSERT_ROWS
            rows = [
                {_ID: int(i), _VECTOR: v}
                for i, v in zip(ids[start:end].tolist(), rotated[start:end], strict=True)
            ]
            self._client.insert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> int:
        """Drop templates by id; unknown ids are ignored. Returns how many were removed.

        A search at Bounded consistency may still return them for a moment: re-score.
        """
        wanted = np.unique(checked_ids(ids))
        if not wanted.size:
            return 0
        with self._write:
            gone = self._present(wanted)
            for start in range(0, len(gone), _FILTER_IDS):
                self._client.delete(self.collection, ids=gone[start : start + _FILTER_IDS].tolist())
        return len(gone)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to k candidates (id, score as Milvus computed it), best first."""
        probe = np.asarray(vector)
        if probe.ndim != 1:
            raise ValueError(f"a probe must be 1-D, got shape {probe.shape}")
        return self.search_batch(probe[None, :], k)[0]

    def search_batch(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """`search` for many probes in one call."""
        if k <= 0:
            raise ValueError("k must be positive")
        probes = self._rotation.apply(checked_vectors(vectors, self.dim))
        if not len(probes):
            return []
        results = self._client.search(
            self.collection,
            data=list(probes),
            anns_field=_VECTOR,
            limit=min(k, MAX_TOPK),
            search_params=self.search_params,
            consistency_level=self.settings.consistency_level,
        )
        return [[(int(hit["id"]), float(hit["distance"])) for hit in hits] for hits in results]

    def rebuild(
        self, ids: np.ndarray, vectors: np.ndarray, index_timeout_s: float = 3600.0
    ) -> None:
        """Replace the collection (under the configured or the active key) with these
        templates, and return once they are indexed and loaded. Searches fail while it runs."""
        ids = checked_ids(ids)
        vectors = checked_vectors(vectors, self.dim)
        if len(ids) != len(vectors) or len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique, one per vector")
        start = time.perf_counter()
        with self._write:
            self._client.drop_collection(self.collection)
            self._rotation = self._create()
            self._insert(ids, vectors)
            self._client.flush(self.collection)
            if not self.wait_indexed(index_timeout_s):
                log.warning(
                    "Milvus had not indexed %s after %.0f s", self.collection, index_timeout_s
                )
            # Segments loaded before their index was built keep being searched through
            # Milvus's interim index (IVF, nprobe 16, whatever the index type and search
            # parameters: recall@1 0.83 instead of 1.0 at 100k on 2.3.5) until loaded again.
            self._client.release_collection(self.collection)
            self._client.load_collection(self.collection)
        log.info(
            "Milvus collection %s rebuilt: %d templates, %.1f s",
            self.collection,
            len(ids),
            time.perf_counter() - start,
        )

    def snapshot(self) -> None:
        """Make the contents durable in sealed segments, which Milvus then indexes (its log
        already holds every acknowledged insert and delete)."""
        self._client.flush(self.collection)

    @property
    def watermark(self) -> None:
        """No store change is recorded with the collection yet: healing compares ids."""
        return None

    def wait_indexed(self, timeout_s: float = 600.0) -> bool:
        """Until the index covers every sealed row (after a bulk load); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = self._client.describe_index(self.collection, _VECTOR)
            except MilvusException:
                info = {}
            if info and not info.get("pending_index_rows", 0) and info.get("state") != "InProgress":
                return True
            time.sleep(1.0)
        return False

    def sync(
        self,
        store_ids: np.ndarray,
        fetch: Callable[[np.ndarray], np.ndarray],
        chunk: int = 10_000,
    ) -> tuple[int, int]:
        """Heal the collection against the store, the source of truth. Returns (added,
        removed); see the FAISS index's `sync`."""
        wanted = np.unique(checked_ids(store_ids))
        held = self.ids()
        stale = np.setdiff1d(held, wanted, assume_unique=True)
        missing = np.setdiff1d(wanted, held, assume_unique=True)
        removed = self.remove(stale)
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            self.add(part, fetch(part))
        if removed or len(missing):
            log.info("Milvus synced with the store: %d added, %d removed", len(missing), removed)
        return len(missing), removed


class TemplateSource(Protocol):
    """What `open_milvus` reads from the store to build or heal the collection."""

    def template_ids(self, model: str | None = None) -> np.ndarray: ...

    def vectors_of(self, ids: np.ndarray) -> np.ndarray: ...

    def iter_templates(
        self, batch: int = 10_000, model: str | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]: ...


def open_milvus(
    dim: int, settings: MilvusSettings, keyring: Keyring, store: TemplateSource, model: str
) -> MilvusIndex:
    """The gallery's Milvus index at start, consistent with the store (the source of truth).

    Opens the collection (made when missing) and heals it against the store's template ids;
    a collection this keyring cannot use (its rotation key is gone or differs) or of another
    dimension is dropped and rebuilt from the store.
    """
    try:
        index = MilvusIndex(dim, settings, keyring)
    except IndexUnusable as exc:
        log.warning("Milvus collection unusable (%s): rebuilding it from the store", exc)
        client = MilvusClient(
            uri=settings.uri,
            token=settings.token.get_secret_value() if settings.token else "",
            timeout=settings.timeout_s,
        )
        client.drop_collection(settings.collection)
        index = MilvusIndex(dim, settings, keyring, client)
        ids, vectors = store_templates(store, model, dim)
        if len(ids):
            index.rebuild(ids, vectors)
        return index
    added, removed = index.sync(store.template_ids(model=model), store.vectors_of)
    if added or removed:
        log.warning("Milvus healed from the store: %d added, %d removed", added, removed)
    return index
