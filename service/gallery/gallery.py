"""The gallery: the store (source of truth) and the vector index, kept consistent.

Every change goes to the store first, in one transaction with its audit event, and then to
the index. A crash in between leaves the store complete and the index behind; at start the
index is loaded from its snapshot and healed against the store's template ids (or rebuilt when
the snapshot is missing or unreadable), so no customer is ever half-enrolled from the
service's point of view. Snapshots are written atomically on shutdown and every
`snapshot_every` changes, sealed with the store's template keyring.

Erasure reaches the snapshot before the call returns: a change that removes templates
(Delete, a template replacement, a retention purge) deletes the snapshot file once the vectors
are out of the index, and a fresh sealed snapshot is written in the background. Snapshots are
only written under this gallery's lock, so none taken before the removal can land after it;
a restart before the fresh one is written rebuilds the index from the store.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from service.gallery.durable import fsync_dir
from service.gallery.faiss_index import IndexFileError, VectorIndex
from service.gallery.store import ConsentRecord, NewEvent, NewTemplate, Store

# Erasures within this long of each other share one fresh snapshot: a purge of many customers
# writes a few snapshots, not one per customer (the files never hold an erased template
# meanwhile: each erasure deletes the snapshot before it answers).
RESNAPSHOT_DELAY_S = 1.0

log = logging.getLogger(__name__)


class Gallery:
    def __init__(
        self, store: Store, index_path: Path, dim: int, snapshot_every: int = 1000
    ) -> None:
        self.store = store
        self.index_path = index_path
        self.dim = dim
        self.snapshot_every = snapshot_every
        self._changes = 0
        self._lock = threading.Lock()  # serialises index writes after their store commits
        self._resnapshot_pending = threading.Event()
        self.index = self._open_index()

    def _open_index(self) -> VectorIndex:
        try:
            index = VectorIndex.load(self.index_path, self.dim, self.store.keyring)
        except IndexFileError as exc:
            if self.index_path.exists():
                log.warning("index snapshot unusable (%s): rebuilding from the store", exc)
            else:  # a first start, or a snapshot deleted on purpose: nothing is wrong
                log.info("no index snapshot at %s yet: building it from the store", self.index_path)
            index = VectorIndex(self.dim)
            ids, vectors = self._all_templates()
            index.rebuild(ids, vectors)
            index.save(self.index_path, self.store.keyring)
            log.info("index rebuilt with %d templates", len(index))
            return index
        added, removed = index.sync(self.store.template_ids(), self.store.vectors_of)
        if added or removed:
            log.warning("index healed from the store: %d added, %d removed", added, removed)
        rebuild = index.needs_rebuild
        if rebuild:
            log.info("rebuilding the %s index for %d templates", index.kind, len(index))
            index.rebuild(*self._all_templates())
        if added or removed or rebuild:
            index.save(self.index_path, self.store.keyring)
        return index

    def _all_templates(self) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = [], []
        for batch_ids, batch_vectors, _ in self.store.iter_templates():
            ids.append(batch_ids)
            vectors.append(batch_vectors)
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(ids), np.concatenate(vectors)

    def _changed(self, count: int) -> None:
        self._changes += count
        if self._changes >= self.snapshot_every:
            self.index.save(self.index_path, self.store.keyring)
            self._changes = 0

    def _forget(self, template_ids: list[int]) -> None:
        """Remove templates from the index and, before the caller answers, from every file:
        the snapshot that held them is deleted and a fresh one written in the background.
        Runs under `_lock`."""
        self.index.remove(np.asarray(template_ids, np.int64))
        self.index_path.unlink(missing_ok=True)
        fsync_dir(self.index_path.parent)
        self._changes = 0
        if not self._resnapshot_pending.is_set():
            self._resnapshot_pending.set()
            threading.Thread(target=self._resnapshot, name="index-snapshot", daemon=True).start()

    def _resnapshot(self) -> None:
        time.sleep(RESNAPSHOT_DELAY_S)
        self._resnapshot_pending.clear()
        try:
            self.save()
        except Exception:  # the next change, shutdown or restart writes one instead
            log.exception("index snapshot after an erasure failed")

    def has_customer(self, customer_id: str) -> bool:
        return self.store.has_customer(customer_id)

    def enroll(
        self,
        customer_id: str,
        templates: list[NewTemplate],
        consent: ConsentRecord,
        event: NewEvent,
    ) -> list[int]:
        with self._lock:
            ids = self.store.enroll(customer_id, templates, consent, event)
            self.index.add(np.asarray(ids, np.int64), np.stack([t.vector for t in templates]))
            self._changed(len(ids))
        return ids

    def add_templates(
        self, customer_id: str, templates: list[NewTemplate], replace: bool, event: NewEvent
    ) -> list[int]:
        with self._lock:
            added, removed = self.store.add_templates(customer_id, templates, replace, event)
            if removed:
                self._forget(removed)
            self.index.add(np.asarray(added, np.int64), np.stack([t.vector for t in templates]))
            self._changed(len(added) + len(removed))
        return added

    def delete(self, customer_id: str, event: NewEvent) -> list[int]:
        with self._lock:
            removed = self.store.delete_customer(customer_id, event)
            if removed:
                self._forget(removed)
            self._changed(len(removed))
        return removed

    def best_match(self, customer_id: str, vector: np.ndarray) -> float | None:
        """Best cosine against the customer's own templates (1:1, from the store)."""
        templates = self.store.templates_of(customer_id)
        if not templates:
            return None
        return float(max(t.vector @ vector for t in templates))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Top-k customers (best template each), best first."""
        hits = self.index.search(vector, k * 4)
        owners = self.store.customer_of([i for i, _ in hits])
        best: dict[str, float] = {}
        for template_id, score in hits:
            owner = owners.get(template_id)
            if owner is not None and score > best.get(owner, -2.0):
                best[owner] = score
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    def save(self) -> None:
        with self._lock:
            self.index.save(self.index_path, self.store.keyring)
            self._changes = 0
