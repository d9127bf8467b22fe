"""The kiosk's use cases: verify (1:1), identify (1:N) and check liveness.

Single-shot calls and streamed sessions end in the same `verify_face` / `identify_face`, which
reach the decision through `Decisions` (risk, audit event, what the device is told); a session
passes the liveness report it built over its frames.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from service.app.decision import Decision, match_outcome
from service.app.decisions import Decisions
from service.app.faces import best_face, single_face
from service.app.requests import check_count, check_customer_id, not_enrolled, quality_gate
from service.app.vision_pool import Vision
from service.domain import APPROVE, DECLINE
from service.errors import Forbidden, InvalidInput, TooLarge, Unprocessable
from service.gallery.gallery import REENROL, Gallery
from service.gallery.match import Match
from service.liveness.report import LivenessReport
from service.vision.types import FaceAnalysis


class Kiosk:
    """Verify, identify and liveness over one gallery; thread-safe as its parts."""

    def __init__(self, vision: Vision, gallery: Gallery, decisions: Decisions) -> None:
        self.vision = vision
        self.gallery = gallery
        self.decisions = decisions

    def verify(self, customer_id: str, frames: list[bytes], device_id: str) -> Decision:
        with self.decisions.refusals_audited("VERIFY", device_id, customer_id):
            self.check_verifiable(customer_id)
            check_count(frames, self.decisions.policy.max_frames, "frames")
            analysis = best_face(self.vision, frames)
            quality_gate(analysis, "best frame")
        return self.verify_face(customer_id, analysis, device_id)

    def check_verifiable(self, customer_id: str) -> None:
        """Enrolled, with a consent that has not expired: expired consent stops processing at
        once (the retention purge erases the templates at its next run); and with templates
        of the current embedder version, the only ones a face is compared with."""
        check_customer_id(customer_id)
        enrolled, expires = self.gallery.store.consent_expiry(customer_id)
        if not enrolled:
            raise not_enrolled(customer_id)
        if expires is not None and expires <= datetime.now(UTC):
            raise Unprocessable(
                "CONSENT_EXPIRED", "the customer's consent has expired; enrol again with consent"
            )
        if self.gallery.templates_outdated(customer_id):
            raise Unprocessable(
                "TEMPLATES_OUTDATED",
                "the customer's templates were made by another embedder version than "
                f"{self.gallery.model}; {REENROL}",
            )

    def verify_face(
        self,
        customer_id: str,
        analysis: FaceAnalysis,
        device_id: str,
        liveness: LivenessReport | None = None,
    ) -> Decision:
        """Match a gated face against the claimed customer and record the decision.

        Single-shot `verify` and the streamed session share it; a session passes the
        liveness report it built over its frames.
        """
        decisions = self.decisions
        policy = decisions.policy
        score = self.gallery.best_match(customer_id, analysis.embedding.vector)
        live = analysis.liveness.score if analysis.liveness else None
        outcome, reasons = match_outcome(score, policy.threshold, live, policy.liveness_threshold)
        if liveness is not None and not liveness.passed:
            outcome, reasons = DECLINE, (*reasons, "LIVENESS_FAILED")
        decision = decisions.new(
            analysis, policy, outcome=outcome, customer_id=customer_id, match_score=score,
            threshold=policy.threshold, reason_codes=reasons, device_id=device_id,
            liveness=liveness,
        )  # fmt: skip
        if decisions.risk is not None:  # other customers this face matches, for the risk rules
            neighbours = self.gallery.search(analysis.embedding.vector, 3)
            decision = decisions.assess("VERIFY", decision, [analysis.embedding.vector], neighbours)
        decisions.record("VERIFY", decision)
        return decisions.told_to_device(decision)

    def identify(
        self, image: bytes, top_k: int, min_score: float, device_id: str,
        searcher: str | None = None,
    ) -> tuple[list[Match], Decision]:  # fmt: skip
        """1:N search. `searcher` names a caller with the right to a floor below the operating
        threshold (investigator or admin); a kiosk (None) sees only candidates at or above it."""
        with self.decisions.refusals_audited("IDENTIFY", device_id, ""):
            check_count([image] if image else [], 1, "images")
            self.check_search(top_k, min_score, searcher)
            analysis = single_face(self.vision, image, 0, template=False)
            quality_gate(analysis, "image")
        return self.identify_face(analysis, top_k, min_score, device_id, searcher=searcher)

    def check_search(self, top_k: int, min_score: float, searcher: str | None = None) -> None:
        policy = self.decisions.policy
        if top_k > policy.max_top_k:
            raise TooLarge("TOP_K_TOO_LARGE", f"top_k is at most {policy.max_top_k}")
        if not -1.0 <= min_score <= 1.0:
            raise InvalidInput("INVALID_MIN_SCORE", "min_score is a cosine in [-1, 1]")
        if min_score and min_score < policy.threshold and searcher is None:
            raise Forbidden(
                "SCORE_FLOOR_NOT_ALLOWED",
                f"min_score below the operating threshold {policy.threshold:.3f} needs "
                "the investigator role",
            )

    def identify_face(
        self,
        analysis: FaceAnalysis,
        top_k: int,
        min_score: float,
        device_id: str,
        liveness: LivenessReport | None = None,
        searcher: str | None = None,
    ) -> tuple[list[Match], Decision]:
        """Search the gallery for a gated face and record the decision (shared with streams).
        A floor below the threshold is only for a `searcher`, who is named in the event."""
        decisions = self.decisions
        policy = decisions.policy
        floor = min_score or policy.threshold
        if searcher is None:
            floor = max(floor, policy.threshold)
        candidates = [
            (cid, score)
            for cid, score in self.gallery.search(analysis.embedding.vector, top_k or 5)
            if score >= floor
        ]
        top = candidates[0] if candidates else None
        live = analysis.liveness.score if analysis.liveness else None
        outcome, reasons = match_outcome(
            top[1] if top else None, policy.threshold, live, policy.liveness_threshold
        )
        if liveness is not None and not liveness.passed:
            outcome, reasons = DECLINE, (*reasons, "LIVENESS_FAILED")
        matched = top[0] if top and top[1] >= policy.threshold else ""
        decision = decisions.new(
            analysis, policy, outcome=outcome, customer_id=matched,
            match_score=top[1] if top else None, threshold=policy.threshold,
            reason_codes=reasons, device_id=device_id, liveness=liveness,
        )  # fmt: skip
        # The rules judge the face against the customer it matched, even when the match is
        # declined (a failed liveness session): with the id cleared first, that customer was
        # "another customer" to DUPLICATE_IDENTITY and WEAK_MATCH_MARGIN. A declined match
        # then names no customer, as before.
        decision = decisions.assess("IDENTIFY", decision, [analysis.embedding.vector], candidates)
        if outcome == DECLINE:
            decision = dataclasses.replace(decision, customer_id="")
        asked = {"searcher": searcher, "min_score": floor} if searcher is not None else {}
        decisions.record("IDENTIFY", decision, candidates=len(candidates), **asked)
        if searcher is None and decision.outcome == DECLINE:
            # Declined (failed liveness, a locked-out or blacklisted device, a watchlist face):
            # the event names the match, but a kiosk learns no one, or a spoof or a lockout
            # would not stop it probing faces.
            return [], dataclasses.replace(decisions.told_to_device(decision), customer_id="")
        return candidates, decision

    def check_liveness(self, frames: list[bytes], device_id: str) -> Decision:
        decisions = self.decisions
        check_count(frames, decisions.policy.max_frames, "frames")
        with decisions.refusals_audited("CHECK_LIVENESS", device_id, ""):
            analysis = best_face(self.vision, frames)
        live = analysis.liveness.score if analysis.liveness else None
        weak = live is None or live < decisions.policy.liveness_threshold
        decision = decisions.new(
            analysis, outcome="REVIEW" if weak else APPROVE,
            reason_codes=("LIVENESS_WEAK",) if weak else ("LIVENESS_PASSIVE_OK",),
            device_id=device_id,
        )  # fmt: skip
        decision = decisions.assess("CHECK_LIVENESS", decision, [analysis.embedding.vector])
        decisions.record("CHECK_LIVENESS", decision)
        return decision
