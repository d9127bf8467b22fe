"""RiskAdmin use cases: the lists, the watchlist, lockouts and dead-letter replay (event
queries: service/app/decisions.py).

Validation and domain errors here, conversion to messages in the servicer. Watchlist faces go
through the same face pipeline and quality gate as customer enrolment.
"""

from __future__ import annotations

from service.app.faces import gated_faces, templates_of
from service.app.requests import check_count, check_customer_id, page_limit, require_text
from service.app.vision_pool import Vision
from service.errors import InvalidInput, NotFound
from service.risk.runtime import RiskRuntime
from service.store.lists import LISTS, ListEntry
from service.store.outbox import OutboxItem
from service.store.velocity import Lockout, NotLocked
from service.store.watchlist import WatchlistEntry


class RiskAdmin:
    """The risk administration use cases over the risk runtime; watchlist faces go through
    `vision` (at most `max_images` a request)."""

    def __init__(self, risk: RiskRuntime, vision: Vision, max_images: int) -> None:
        self.risk = risk
        self.vision = vision
        self.max_images = max_images

    @staticmethod
    def _list(name: str) -> str:
        if name not in LISTS:
            raise InvalidInput("INVALID_LIST", f"list must be one of {', '.join(LISTS)}")
        return name

    def add_entry(
        self, list_name: str, subject: str, reason: str, case_ref: str, operator_id: str
    ) -> ListEntry:
        return self.risk.lists.add(
            self._list(list_name), require_text("subject", subject, 128),
            require_text("reason", reason, 256), require_text("case_ref", case_ref, 128),
            require_text("operator_id", operator_id, 128),
        )  # fmt: skip

    def remove_entry(self, list_name: str, subject: str, reason: str, operator_id: str) -> str:
        event_id = self.risk.lists.remove(
            self._list(list_name), require_text("subject", subject, 128), reason or "removed",
            require_text("operator_id", operator_id, 128),
        )  # fmt: skip
        if event_id is None:
            raise NotFound("NOT_LISTED", f"{subject} is not on the {list_name}")
        return event_id

    def entries(self, list_name: str, page_size: int, token: str) -> tuple[list[ListEntry], str]:
        page, cursor = self.risk.lists.entries(self._list(list_name), page_limit(page_size), token)
        return page, cursor or ""

    def enroll_watchlist(
        self, label: str, images: list[bytes], reason: str, case_ref: str, operator_id: str
    ) -> WatchlistEntry:
        check_count(images, self.max_images, "images")
        label = require_text("label", label, 128)
        templates = templates_of(gated_faces(self.vision, images))
        return self.risk.watchlist.add(
            label, templates, require_text("reason", reason, 256),
            require_text("case_ref", case_ref, 128), require_text("operator_id", operator_id, 128),
        )  # fmt: skip

    def remove_watchlist(self, entry_id: str, reason: str, operator_id: str) -> str:
        event_id = self.risk.watchlist.remove(
            require_text("entry_id", entry_id, 36), reason or "removed",
            require_text("operator_id", operator_id, 128),
        )  # fmt: skip
        if event_id is None:
            raise NotFound("WATCHLIST_ENTRY_NOT_FOUND", f"no watchlist entry {entry_id}")
        return event_id

    def watchlist(self, page_size: int, token: str) -> tuple[list[WatchlistEntry], str]:
        page, cursor = self.risk.watchlist.entries(page_limit(page_size), token)
        return page, cursor or ""

    def dead_letters(self, page_size: int) -> list[OutboxItem]:
        return self.risk.outbox.dead_letters(page_limit(page_size))

    def replay(self, event_ids: list[str], operator_id: str) -> tuple[int, str]:
        operator_id = require_text("operator_id", operator_id, 128)
        return self.risk.outbox.replay(list(event_ids), operator_id)

    def lockouts(self, page_size: int) -> list[Lockout]:
        return self.risk.velocity.lockouts(page_limit(page_size))

    def lift_lockout(
        self, customer_id: str, device_id: str, reason: str, operator: str
    ) -> tuple[str, list[Lockout]]:
        """Lift a customer's or a device's lockout; `operator` is the caller's certificate
        identity, recorded with the reason in the LOCKOUT_LIFT event."""
        if not customer_id and not device_id:
            raise InvalidInput("SUBJECT_REQUIRED", "customer_id or device_id is required")
        if customer_id:
            check_customer_id(customer_id)
        if device_id:
            require_text("device_id", device_id, 128)
        try:
            return self.risk.velocity.lift(
                customer_id, device_id, require_text("reason", reason, 256),
                require_text("operator", operator, 128),
            )  # fmt: skip
        except NotLocked:
            raise NotFound("NOT_LOCKED", "no lockout in force for that subject") from None
