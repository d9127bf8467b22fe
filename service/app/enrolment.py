"""The enrolment desk's use cases: enrol, update templates, delete (erase), get and list.

Faces are gated like a kiosk's; the enrolment decision refuses a face already enrolled under
another id (DUPLICATE_IDENTITY) or one the risk policy declines, and is recorded with the
templates in one store transaction (through the gallery, which keeps its index in step).
"""

from __future__ import annotations

import logging

from service.app.decision import Decision
from service.app.decisions import Decisions
from service.app.faces import gated_faces, templates_of
from service.app.requests import (
    CUSTOMER_ID,
    check_consent,
    check_count,
    check_customer_id,
    not_enrolled,
)
from service.app.vision_pool import Vision
from service.domain import APPROVE, DECLINE, Consent
from service.errors import Conflict, InvalidInput, TooLarge, Unprocessable
from service.gallery.gallery import Gallery
from service.store.customers import CustomerExists, CustomerRecord
from service.vision.types import FaceAnalysis

log = logging.getLogger(__name__)


def customer_exists(customer_id: str) -> Conflict:
    return Conflict("CUSTOMER_EXISTS", f"customer {customer_id} is already enrolled")


class Enrolment:
    """Enrolment and look-ups over one gallery; thread-safe as its parts."""

    def __init__(self, vision: Vision, gallery: Gallery, decisions: Decisions) -> None:
        self.vision = vision
        self.gallery = gallery
        self.decisions = decisions

    def check_enrolled(self, customer_id: str) -> None:
        check_customer_id(customer_id)
        if not self.gallery.has_customer(customer_id):
            raise not_enrolled(customer_id)

    def enroll(
        self, customer_id: str, images: list[bytes], consent: Consent | None
    ) -> tuple[CustomerRecord, Decision]:
        check_customer_id(customer_id)
        check_count(images, self.decisions.policy.max_images, "images")
        consent = check_consent(consent)
        if self.gallery.has_customer(customer_id):
            raise customer_exists(customer_id)
        analyses = gated_faces(self.vision, images)
        templates = templates_of(analyses)
        decision = self._enrolment_decision("ENROLL", customer_id, analyses)
        event = self.decisions.event(
            "ENROLL", decision, templates=len(templates), operator=consent.operator_id
        )
        try:
            self.gallery.enroll(customer_id, templates, consent, event)
        except CustomerExists:  # enrolled by another call since `has_customer` above
            raise customer_exists(customer_id) from None
        return self.get(customer_id), decision

    def update_templates(
        self, customer_id: str, images: list[bytes], replace: bool, operator_id: str
    ) -> tuple[CustomerRecord, Decision]:
        self.check_enrolled(customer_id)
        check_count(images, self.decisions.policy.max_images, "images")
        analyses = gated_faces(self.vision, images)
        templates = templates_of(analyses)
        decision = self._enrolment_decision("UPDATE_TEMPLATES", customer_id, analyses)
        event = self.decisions.event(
            "UPDATE_TEMPLATES", decision, templates=len(templates), replace=replace,
            operator=operator_id,
        )  # fmt: skip
        self.gallery.add_templates(customer_id, templates, replace, event)
        return self.get(customer_id), decision

    def _enrolment_decision(
        self, kind: str, customer_id: str, analyses: list[FaceAnalysis]
    ) -> Decision:
        """Approve the faces for enrolment, or record the refusal and raise.

        A face already enrolled under another id is refused (DUPLICATE_IDENTITY), and so is
        anything the risk policy declines (a blocklisted id, a watchlisted face).
        """
        decisions = self.decisions
        worst = min(analyses, key=lambda a: a.quality.score)
        vectors = [a.embedding.vector for a in analyses]
        neighbours = [hit for vector in vectors for hit in self.gallery.search(vector, 3)]
        policy = decisions.policy
        duplicate = any(c != customer_id and s >= policy.threshold for c, s in neighbours)
        decision = decisions.new(
            worst, policy, outcome=DECLINE if duplicate else APPROVE, customer_id=customer_id,
            reason_codes=("DUPLICATE_IDENTITY",) if duplicate else ("ENROLLED",),
            threshold=policy.threshold,
        )  # fmt: skip
        decision = decisions.assess(kind, decision, vectors, neighbours)
        if decision.outcome != DECLINE:
            return decision
        decisions.record(kind, decision)
        log.warning("enrolment refused: %s", ", ".join(decision.reason_codes))
        if "DUPLICATE_IDENTITY" in decision.reason_codes:
            raise Conflict(
                "DUPLICATE_IDENTITY", "this face is already enrolled under another customer id",
                event_id=decision.event_id,
            )  # fmt: skip
        fired = [r for r in decision.rules if r.fired]
        reason = max(fired, key=lambda r: (r.hard, r.score)).reason_code if fired else "DECLINED"
        raise Unprocessable(
            reason, f"enrolment declined by risk policy {decision.policy_version} ({reason})",
            event_id=decision.event_id,
        )  # fmt: skip

    def delete(self, customer_id: str, reason: str, operator_id: str) -> str:
        self.check_enrolled(customer_id)
        decision = self.decisions.new(
            None, outcome=APPROVE, customer_id=customer_id, reason_codes=("ERASED",)
        )
        self.gallery.delete(
            customer_id,
            self.decisions.event("DELETE", decision, reason=reason, operator=operator_id),
        )
        return decision.event_id

    def get(self, customer_id: str) -> CustomerRecord:
        check_customer_id(customer_id)
        record = self.gallery.store.get_customer(customer_id)
        if record is None:
            raise not_enrolled(customer_id)
        return record

    def list(self, page_size: int, page_token: str) -> tuple[list[CustomerRecord], str | None]:
        max_page_size = self.decisions.policy.max_page_size
        if page_size > max_page_size:
            raise TooLarge("PAGE_TOO_LARGE", f"page_size is at most {max_page_size}")
        if page_token and not CUSTOMER_ID.fullmatch(page_token):
            raise InvalidInput("INVALID_PAGE_TOKEN", "page_token is not one this service issued")
        return self.gallery.store.list_customers(page_size or 50, page_token or None)
