"""The REVIEW queue's use cases: list open reviews, claim one, resolve it with a note.

Every decision with outcome REVIEW is an open review until an analyst resolves it. A claim is
a lease of `reviews.claim_ttl_s`: while it runs only its holder may resolve the review, and
another analyst's claim is refused (REVIEW_CLAIMED); once it lapses anyone may take it over.
A resolution is an audit event (REVIEW_RESOLVED: the reviewed event, the analyst's
certificate identity, the outcome and the note) that reaches the fraud engine like a decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from service.app.decision_records import check_event_id
from service.app.requests import check_customer_id, page_limit, require_text, row_after
from service.errors import InvalidInput, NotFound, Unprocessable
from service.store.audit_chain import NewEvent
from service.store.customers import Store
from service.store.reviews import NOTE_CHARS, Review, ReviewStore

log = logging.getLogger(__name__)

RESOLVED_EVENT = "REVIEW_RESOLVED"
RESOLUTIONS = ("APPROVE", "DECLINE")


def _now() -> datetime:
    return datetime.now(UTC)


class Reviews:
    """The queue over one store; `clock` is replaceable so claim expiry can be tested."""

    def __init__(
        self, store: Store, claim_ttl_s: float, clock: Callable[[], datetime] = _now
    ) -> None:
        self.reviews = ReviewStore(store)
        self.claim_ttl = timedelta(seconds=claim_ttl_s)
        self.clock = clock

    def open(
        self, size: int, token: str, customer_id: str = "", device_id: str = ""
    ) -> tuple[list[Review], str]:
        """Unresolved reviews, oldest first, optionally of one customer or device."""
        if customer_id:
            check_customer_id(customer_id)
        if device_id:
            require_text("device_id", device_id, 128)
        size = page_limit(size)
        page = self.reviews.open_reviews(size + 1, row_after(token), customer_id, device_id)
        more = len(page) > size
        return page[:size], str(page[size - 1].row_id) if more else ""

    def get(self, event_id: str) -> Review:
        review = self.reviews.get(check_event_id(event_id))
        if review is None:
            raise NotFound("REVIEW_NOT_FOUND", f"no REVIEW decision {event_id}")
        return review

    def claim(self, event_id: str, analyst: str) -> Review:
        """Take (or renew) the lease on an open review for `analyst`."""
        review = self.get(event_id)
        _check_open(review)
        now = self.clock()
        if not self.reviews.claim(event_id, analyst, now, now + self.claim_ttl):
            review = self.get(event_id)
            _check_open(review)
            until = review.claim_expires_at.isoformat(timespec="seconds")  # type: ignore[union-attr]
            raise Unprocessable("REVIEW_CLAIMED", f"claimed by {review.claimed_by} until {until}")
        log.info("review %s claimed by %s", event_id, analyst)
        return self.get(event_id)

    def resolve(self, event_id: str, analyst: str, resolution: str, note: str) -> Review:
        """APPROVE or DECLINE a review claimed by `analyst`, with a note (1-500 printable
        characters); audited and sent to the fraud engine as a REVIEW_RESOLVED event."""
        if resolution not in RESOLUTIONS:
            raise InvalidInput("INVALID_RESOLUTION", "resolution must be APPROVE or DECLINE")
        note = require_text("note", note, NOTE_CHARS)
        review = self.get(event_id)
        _check_open(review)
        event = NewEvent(
            type=RESOLVED_EVENT, outcome=resolution, customer_id=review.customer_id or None,
            device_id=review.device_id or None,
            payload={"reviewed_event_id": event_id, "analyst": analyst,
                     "resolution": resolution, "note": note},
        )  # fmt: skip
        if not self.reviews.resolve(event_id, analyst, resolution, note, self.clock(), event):
            review = self.get(event_id)
            _check_open(review)
            raise Unprocessable(
                "REVIEW_NOT_CLAIMED", "resolve a review only while holding its claim"
            )
        log.info("review %s resolved %s by %s", event_id, resolution, analyst)
        return self.get(event_id)


def _check_open(review: Review) -> None:
    if review.resolution:
        raise Unprocessable(
            "REVIEW_RESOLVED", f"already resolved ({review.resolution} by {review.resolved_by})"
        )
