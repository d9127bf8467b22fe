"""Replicas follow the store: the change feed (`service.store.changes`) applied to an index.

Every replica applies its own writes at once (the gallery does, after their commit) and every
change, its own included, again when it reads the feed. Application is idempotent, so that is
harmless: template ids are never reused, an id is added by exactly one change and removed at
most once after it, so a batch of changes reduces to "remove every id removed, add every id
added and not removed", and an add fetches only templates the store still holds (a template
erased since is not re-added) that the index does not hold yet. The index's watermark only
advances in feed order, so a snapshot at watermark W holds every change through W (and maybe
later ones, which replaying makes no worse).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.gallery.vector_index import VectorIndex
from service.store import changes as feed
from service.store.changes import Change, ChangeListener
from service.store.customers import Store

log = logging.getLogger(__name__)

# Templates the store still holds among some ids: (ids, vectors (n, dim), owners).
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, list[str]]]


@dataclass(frozen=True)
class Applied:
    """What one application changed in the index: the template ids added (with their owners,
    in the same order) and removed."""

    added: np.ndarray
    owners: list[str]
    removed: np.ndarray


def apply(index: VectorIndex, changes: Sequence[Change], fetch: Fetch) -> Applied:
    """Apply committed changes to the index, idempotently (see the module docstring)."""
    removed = np.unique(np.fromiter((i for c in changes for i in c.removed), np.int64))
    added = np.unique(np.fromiter((i for c in changes for i in c.added), np.int64))
    added = np.setdiff1d(added, removed, assume_unique=True)
    added = added[~index.contains(added)]
    gone = removed[index.contains(removed)]
    if gone.size:
        index.remove(gone)
    ids, vectors, owners = fetch(added) if added.size else (np.empty(0, np.int64), None, [])
    if len(ids):
        index.add(ids, vectors)
    return Applied(ids, owners, gone)


def catch_up(
    index: VectorIndex, store: Store, types: tuple[str, ...], fetch: Fetch
) -> list[Applied]:
    """Apply every change of `types` after the index's watermark, batch by batch, advancing
    it. The caller holds its index's write lock. An index without a watermark starts from the
    chain's head."""
    done = []
    while True:
        after = index.watermark if index.watermark is not None else feed.head(store)
        changes, through = feed.changes_after(store, types, after)
        if changes:
            done.append(apply(index, changes, fetch))
        index.watermark = through
        if through == after:
            return done


def gallery_fetch(store: Store, model: str) -> Fetch:
    """Fetch for the customer gallery: templates of embedder `model` still in the store."""

    def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        found, vectors = store.templates_among(ids, model)
        return found, vectors, []

    return fetch


class Follower:
    """A daemon thread that runs `catch_ups` on each wake-up: a change notification (through
    `listener`, PostgreSQL) or every `poll_s` seconds (SQLite, missed notifications)."""

    def __init__(
        self,
        catch_ups: Sequence[Callable[[], object]],
        listener: ChangeListener | None,
        poll_s: float,
    ) -> None:
        self.catch_ups = list(catch_ups)
        self.listener = listener
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current wait (cut short through the listener) and close it."""
        self._stop.set()
        if self.listener is not None and self._thread.is_alive():
            self.listener.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.listener is not None:
            self.listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            if self.listener is not None:
                self.listener.wait(self.poll_s)
            else:
                self._stop.wait(self.poll_s)

    def run_once(self) -> None:
        for catch_up_one in self.catch_ups:
            try:
                catch_up_one()
            except Exception:  # a store hiccup must not end following: the next wake-up retries
                log.exception("following the store's changes failed; retrying")
