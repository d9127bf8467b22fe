"""The outbox dispatcher: delivers every recorded decision to the fraud engine, at least once.

A background thread in the server process. Each round it takes the oldest pending event of each
customer (so a customer's events leave in order, while different customers' go in parallel),
sends them on a small thread pool, and settles the whole batch in one transaction: delivered, or
retried later with exponential backoff and jitter, or dead-lettered after `dead_after` attempts.
All state is in the store, so a kill -9 at any moment only means that events in flight are sent
again after the restart, and the receiver drops them by event id.

Every replica runs one; each round claims its rows first (`Outbox.claim`, a lease of `lease_s`
seconds), so each event is delivered by one dispatcher across the fleet, and the rows of a
dispatcher killed mid-delivery are claimed by another once its lease ends.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.store.outbox import Backoff, Outbox, OutboxItem

log = logging.getLogger(__name__)

Send = Callable[[OutboxItem], None]
# The shortest lease; `lease_for` lengthens it for long delivery deadlines.
LEASE_S = 30.0
# Rows a round claims per worker thread (each worker sends its share one after another).
_CLAIMS_PER_WORKER = 4


def lease_for(delivery_timeout_s: float) -> float:
    """A lease that outlasts a whole round (each worker sends `_CLAIMS_PER_WORKER` rows, each
    up to the delivery deadline) twice over, so a live dispatcher's rows are never taken
    from it: an expired lease would only mean a second delivery, which the receiver drops."""
    return max(LEASE_S, 2 * _CLAIMS_PER_WORKER * delivery_timeout_s)


def dispatcher_id() -> str:
    """A name for this dispatcher's claims: host, process and a random part (unique per start)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    def __init__(
        self,
        outbox: Outbox,
        send: Send,
        backoff: Backoff,
        workers: int = 4,
        poll_interval_s: float = 0.2,
        lease_s: float = LEASE_S,
        owner: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.lease_s = lease_s
        self.owner = owner or dispatcher_id()
        self.send = send
        self.backoff = backoff
        self.workers = workers
        self.poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="callback")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in flight (its results are settled) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception:  # the store being briefly unavailable must not end delivery
                log.exception("outbox round failed; retrying")
                sent = 0
            if not sent:
                self._stop.wait(self.poll_interval_s)

    def run_once(self) -> int:
        """One round: deliver what is due; returns how many were attempted."""
        items = self.outbox.claim(self.owner, self.workers * _CLAIMS_PER_WORKER, self.lease_s)
        if not items:
            return 0
        results = list(self._pool.map(self._attempt, items))
        delivered = [item for item, error in zip(items, results, strict=True) if error is None]
        failed = [
            (item, error) for item, error in zip(items, results, strict=True) if error is not None
        ]
        dead = self.outbox.settle(delivered, failed, self.backoff, self.owner)
        for event_id in dead:
            log.error("callback for event %s dead-lettered after %d attempts", event_id,
                      self.backoff.dead_after)  # fmt: skip
        if failed:
            log.info(
                "callbacks: %d delivered, %d to retry", len(delivered), len(failed) - len(dead)
            )
        return len(items)

    def _attempt(self, item: OutboxItem) -> str | None:
        """None when delivered, else the error to record."""
        try:
            self.send(item)
        except Exception as exc:
            code = getattr(exc, "code", None)
            name = code().name if callable(code) else type(exc).__name__
            return f"{name}: {exc.details() if hasattr(exc, 'details') else exc}"
        return None
