"""The gallery: the store (source of truth) and a vector index, kept consistent.

Every change goes to the store first, in one transaction with its audit event, and then to
the index. A crash in between leaves the store complete and the index behind; the index
backend's "open or rebuild" function (`service.app.index_backend.open_index`) heals it against
the store at start, so no customer is ever half-enrolled from the service's point of view. The
index is snapshotted on shutdown and every `snapshot_every` changes.

Templates carry the version of the embedder that made them, and only templates of the current
version (`model`) are ever compared with a probe: the index holds only those, and 1:1 matching
skips the others. Templates of other versions are counted at start and reported; their
customers re-enrol with UpdateTemplates(replace=true).

Erasure reaches the persisted index before the call returns: a change that removes templates
(Delete, a template replacement, a retention purge) removes them from the index, which drops
every persisted state that held them (`VectorIndex.remove`), and a fresh snapshot is taken in
the background. Index changes and snapshots only happen under this gallery's lock.

Replicas: several services on one database each hold an index. Each applies its own changes at
once and follows the store's change feed for everyone's (`catch_up`, run by a `Follower` on
every change notification and poll: `service.gallery.follow`), so a change through one replica
reaches the others' 1:N searches within the follow lag. Erasure does not wait for that lag:
`search` confirms every candidate against the store (see there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from service.domain import Consent
from service.gallery import follow
from service.gallery.match import Match
from service.gallery.rescore import rescore
from service.gallery.vector_index import VectorIndex
from service.store import changes
from service.store.changes import ChangeListener
from service.store.customers import NewEvent, NewTemplate, Store

# Erasures within this long of each other share one fresh snapshot: a purge of many customers
# writes a few snapshots, not one per customer (the files never hold an erased template
# meanwhile: each erasure deletes the snapshot before it answers).
RESNAPSHOT_DELAY_S = 1.0

# How customers whose templates another embedder version made get current ones.
REENROL = "re-enrol with UpdateTemplates(replace=true)"

log = logging.getLogger(__name__)


class Gallery:
    """Enrolment, erasure and matching over the store and an index of `model`'s templates."""

    def __init__(
        self, store: Store, index: VectorIndex, model: str, snapshot_every: int = 1000
    ) -> None:
        """`index` is opened and consistent with the store's `model` templates; `model` is the
        current embedder's version."""
        self.store = store
        self.index = index
        self.model = model
        self.snapshot_every = snapshot_every
        self._changes = 0
        self._lock = threading.Lock()  # serialises index writes after their store commits
        self._resnapshot_pending = threading.Event()
        self._follower: follow.Follower | None = None
        self._fetch = follow.gallery_fetch(store, model)
        self.outdated_at_start = len(store.template_ids()) - len(store.template_ids(model=model))
        if self.outdated_at_start:
            log.warning(
                "%d templates were made by another embedder version than %s and are never "
                "matched: their customers must %s",
                self.outdated_at_start, model, REENROL,
            )  # fmt: skip

    def _indexed(self, ids: list[int], templates: list[NewTemplate]) -> None:
        self.index.add(np.asarray(ids, np.int64), np.stack([t.vector for t in templates]))

    def _check_model(self, templates: list[NewTemplate]) -> None:
        """Refuse, before the store sees them, templates this gallery would never match."""
        other = {t.model for t in templates} - {self.model}
        if other:
            raise ValueError(f"templates of {sorted(other)}; this gallery matches {self.model}")

    def _changed(self, count: int) -> None:
        self._changes += count
        if self._changes >= self.snapshot_every:
            self.index.snapshot()
            self._changes = 0

    def _forget(self, template_ids: list[int]) -> None:
        """Remove templates from the index and, before the caller answers, from every file:
        `remove` drops the snapshot that held them and a fresh one is written in the
        background. Runs under `_lock`."""
        self.index.remove(np.asarray(template_ids, np.int64))
        self._removed()

    def _removed(self) -> None:
        """Templates left the index (and its snapshot file): write a fresh snapshot soon."""
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

    def catch_up(self) -> int:
        """Apply every change other replicas (or a retention run, or this one) committed after
        the index's watermark; returns how many templates were added or removed."""
        with self._lock:
            applied = follow.catch_up(self.index, self.store, changes.GALLERY, self._fetch)
            added = sum(len(done.added) for done in applied)
            removed = sum(len(done.removed) for done in applied)
            if removed:
                self._removed()
            if added or removed:
                self._changed(added)
                log.debug("followed the store: %d templates added, %d removed", added, removed)
        return added + removed

    def follow(
        self,
        listener: ChangeListener | None,
        poll_s: float,
        also: Sequence[Callable[[], object]] = (),
    ) -> None:
        """Start following the store in a background thread: `catch_up` (and the `also`
        catch-ups, the watchlist's) on each change notification and every `poll_s` seconds."""
        self._follower = follow.Follower([self.catch_up, *also], listener, poll_s)
        self._follower.start()

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def has_customer(self, customer_id: str) -> bool:
        return self.store.has_customer(customer_id)

    def enroll(
        self,
        customer_id: str,
        templates: list[NewTemplate],
        consent: Consent,
        event: NewEvent,
    ) -> list[int]:
        self._check_model(templates)
        with self._lock:
            ids = self.store.enroll(customer_id, templates, consent, event)
            self._indexed(ids, templates)
            self._changed(len(ids))
        return ids

    def add_templates(
        self, customer_id: str, templates: list[NewTemplate], replace: bool, event: NewEvent
    ) -> list[int]:
        self._check_model(templates)
        with self._lock:
            added, removed = self.store.add_templates(customer_id, templates, replace, event)
            if removed:
                self._forget(removed)
            self._indexed(added, templates)
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
        """Best cosine against the customer's own templates of the current embedder version
        (1:1, from the store); None when they have none."""
        templates = [t for t in self.store.templates_of(customer_id) if t.model == self.model]
        if not templates:
            return None
        return float(max(t.vector @ vector for t in templates))

    def templates_outdated(self, customer_id: str) -> bool:
        """Whether the customer has templates but none of the current embedder version: a
        1:1 match is impossible until they re-enrol (`REENROL`)."""
        models = self.store.template_models(customer_id)  # no template decrypted
        return bool(models) and self.model not in models

    def search(self, vector: np.ndarray, k: int) -> list[Match]:
        """Top-k customers (best template each), best first, every one confirmed in the store.

        The index only proposes candidate template ids; each is mapped to its owner by reading
        the store's templates table now (`Store.customer_of`; for an approximate backend,
        `rescore` reads the templates themselves and scores them exactly), and a candidate
        without an owner there is dropped with its score. An erasure deletes the customer's
        template rows in the transaction that commits the Delete, and Delete answers only after
        that commit; so any search that starts after Delete answered, on any replica, reads a
        store in which those ids have no owner, and the erased customer cannot be returned even
        while that replica's index (or Milvus) still holds the vectors (for up to the follow
        lag). Template ids are
        never reused, so a stale id can never map to another customer either.
        """
        hits = self.index.search(vector, k * 4)
        if self.index.approximate:  # proposals: confirmed and scored exactly in the store
            found = [
                (c.customer_id, c.score) for c in rescore(hits, vector, self.store, self.model)
            ]
        else:
            owners = self.store.customer_of([i for i, _ in hits])
            found = [(owners[i], score) for i, score in hits if i in owners]
        best: dict[str, float] = {}
        for owner, score in found:
            if score > best.get(owner, -2.0):
                best[owner] = score
        return [Match(*item) for item in sorted(best.items(), key=lambda item: -item[1])[:k]]

    def save(self) -> None:
        """Snapshot the index now (shutdown, tests)."""
        with self._lock:
            self.index.snapshot()
            self._changes = 0
