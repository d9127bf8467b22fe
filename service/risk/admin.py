"""RiskAdmin use cases: the lists, the watchlist, lockouts and dead-letter replay (event
queries: service/app/decisions.py).

Validation and domain errors here, conversion to messages in the servicer. Watchlist faces go
through the same face pipeline and quality gate as customer enrolment.
"""

from __future__ import annotations

from service.engine import Engine, check_customer_id, require_text
from service.errors import InvalidInput, NotFound, TooLarge
from service.gallery.lists import LISTS, ListEntry
from service.gallery.store import NewTemplate
from service.gallery.watchlist import WatchlistEntry
from service.risk.outbox import OutboxItem
from service.risk.runtime import RiskRuntime
from service.risk.velocity import Lockout, NotLocked

MAX_PAGE = 500
DEFAULT_PAGE = 50


def _page(size: int) -> int:
    if size > MAX_PAGE:
        raise TooLarge("PAGE_TOO_LARGE", f"page_size is at most {MAX_PAGE}")
    return size or DEFAULT_PAGE


class RiskAdmin:
    def __init__(self, engine: Engine) -> None:
        if engine.risk is None:
            raise ValueError("the engine was built without risk checks")
        self.engine = engine
        self.risk: RiskRuntime = engine.risk

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
        page, cursor = self.risk.lists.entries(self._list(list_name), _page(page_size), token)
        return page, cursor or ""

    def enroll_watchlist(
        self, label: str, images: list[bytes], reason: str, case_ref: str, operator_id: str
    ) -> WatchlistEntry:
        if not images:
            raise InvalidInput("NO_IMAGES", "at least one image is required")
        if len(images) > self.engine.policy.max_images:
            raise TooLarge("TOO_MANY_IMAGES", f"at most {self.engine.policy.max_images} images")
        label = require_text("label", label, 128)
        analyses = self.engine.gated_faces(images)
        templates = [
            NewTemplate(vector=a.embedding.vector, model=a.embedding.model, quality=a.quality.score)
            for a in analyses
        ]
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
        page, cursor = self.risk.watchlist.entries(_page(page_size), token)
        return page, cursor or ""

    def dead_letters(self, page_size: int) -> list[OutboxItem]:
        return self.risk.outbox.dead_letters(_page(page_size))

    def replay(self, event_ids: list[str], operator_id: str) -> tuple[int, str]:
        operator_id = require_text("operator_id", operator_id, 128)
        return self.risk.outbox.replay(list(event_ids), operator_id)

    def lockouts(self, page_size: int) -> list[Lockout]:
        return self.risk.velocity.lockouts(_page(page_size))

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
