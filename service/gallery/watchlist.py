"""The fraud watchlist's in-memory index, searched 1:N on every decision.

Kept apart from the customer gallery on purpose: a watchlist hit can never be mistaken for a
customer match. Watchlists are small, so the index is an in-memory one rebuilt from the store
at start, exact (a flat scan) up to `EXACT_LIMIT` entries, where the customer gallery already
turns approximate: a missed fraudster costs more than the scan. The store
(`service.store.watchlist`) stays the source of truth; each change commits there first.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from service.gallery import follow
from service.gallery.faiss_index import FaissIndex, IndexOptions
from service.gallery.match import WatchlistHit
from service.store import changes
from service.store import watchlist as rows
from service.store.customers import NewTemplate, Store
from service.store.watchlist import WatchlistEntry

log = logging.getLogger(__name__)

# Exact search up to here (~19 ms a probe at 200k on 2 cores); approximate candidates with
# exact scores beyond.
EXACT_LIMIT = 200_000


class Watchlist:
    """Watchlist entries in the store plus their in-memory index."""

    def __init__(self, store: Store, dim: int) -> None:
        self.store = store
        self.dim = dim
        self._lock = threading.Lock()  # serialises index changes after their commits
        self.index = FaissIndex(dim, IndexOptions(exact_limit=EXACT_LIMIT))
        self._owners: dict[int, str] = {}  # template id -> entry id, mirrors the store

    def open(self) -> None:
        """Create the tables where missing and load the index from the store."""
        rows.create_tables(self.store)
        watermark = changes.head(self.store)  # first: changes meanwhile are replayed after it
        ids, vectors, owners = rows.load_templates(self.store)
        stacked = np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        with self._lock:
            self.index.rebuild(ids, stacked)
            self.index.watermark = watermark
            self._owners = dict(zip(ids.tolist(), owners, strict=True))
        log.info("watchlist index loaded with %d templates", len(owners))

    def add(
        self, label: str, templates: list[NewTemplate], reason: str, case_ref: str,
        operator_id: str,
    ) -> WatchlistEntry:  # fmt: skip
        """Enrol a new watchlist entry with its templates; audited in the same transaction."""
        with self._lock:
            entry, ids = rows.add_entry(self.store, label, templates, reason, case_ref, operator_id)
            self.index.add(np.asarray(ids, np.int64), np.stack([t.vector for t in templates]))
            self._owners.update(dict.fromkeys(ids, entry.entry_id))
        return entry

    def remove(self, entry_id: str, reason: str, operator_id: str) -> str | None:
        """Remove an entry and its templates; the audit event id, or None if unknown."""
        with self._lock:
            removed = rows.remove_entry(self.store, entry_id, reason, operator_id)
            if removed is None:
                return None
            event_id, ids = removed
            self.index.remove(np.asarray(ids, np.int64))  # in memory only: no snapshot
            for template_id in ids:
                self._owners.pop(template_id, None)
        self.store.scrub_log()  # the removed rows' WAL frames leave the disk too
        return event_id

    def catch_up(self) -> int:
        """Apply the watchlist changes other replicas committed (see `service.gallery.follow`);
        returns how many templates were added or removed."""
        with self._lock:
            applied = follow.catch_up(self.index, self.store, changes.WATCHLIST, self._fetch)
            for done in applied:
                self._owners.update(zip(done.added.tolist(), done.owners, strict=True))
                for template_id in done.removed.tolist():
                    self._owners.pop(template_id, None)
        return sum(len(done.added) + len(done.removed) for done in applied)

    def _fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        found, vectors, owners = rows.templates_among(self.store, ids)
        stacked = np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return found, stacked, owners

    def entries(self, page_size: int, after: str | None) -> tuple[list[WatchlistEntry], str | None]:
        """One page in entry id order with template counts, and the next page's cursor."""
        return rows.entries(self.store, page_size, after)

    def best_hit(self, vector: np.ndarray) -> WatchlistHit | None:
        """The closest watchlist entry and its cosine, or None when the watchlist is empty."""
        hits = self.index.search(vector, 1)
        if not hits:
            return None
        template_id, score = hits[0]
        entry_id = self._owners.get(template_id)
        return WatchlistHit(entry_id, score) if entry_id is not None else None
