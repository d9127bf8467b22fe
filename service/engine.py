"""The service's use cases: verify, identify, check liveness, enrol, update, delete, look up.

Everything between the transport and the storage happens here: validate the request, run the
face pipeline, pick the face, apply the quality gate, match against the gallery, reach a
`Decision` and record it as an audit event. The API layer only converts messages and maps
`FaceguardError`s to statuses; nothing here knows about gRPC.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from service.app.vision_pool import Vision, VisionUnavailable, VisionWorkerError
from service.decision import APPROVE, DECLINE, Decision, LivenessReport, match_outcome
from service.errors import (
    Conflict,
    Forbidden,
    Internal,
    InvalidInput,
    NotFound,
    TooLarge,
    Unavailable,
    Unprocessable,
)
from service.gallery.gallery import REENROL, Gallery
from service.store.customers import ConsentRecord, CustomerRecord, NewEvent, NewTemplate
from service.vision.decode import DecodeReason
from service.vision.subject import ImageRejected
from service.vision.types import FaceAnalysis

if TYPE_CHECKING:
    import numpy as np

    from service.risk.runtime import RiskRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")

# Quality settings about face size: a refusal for them suggests the ID/web photo profile.
SIZE_SETTINGS = frozenset({"min_face_px", "min_inter_eye_px"})

CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")  # used with fullmatch only


# Refusals before a decision that are audited as declined attempts (see `Engine.attempt`);
# an unavailable service or a lapsed session is not the caller's attempt.
REFUSALS = (InvalidInput, TooLarge, NotFound, Forbidden, Unprocessable, Internal)


@dataclass(frozen=True)
class Policy:
    """Request limits and matching policy.

    `threshold` is `thresholds[fmr_target]` of the live calibration, named by
    `calibration_version`; each decision reads the policy once, so a calibration applied
    while it runs never mixes one version's threshold with another's name.
    """

    threshold: float
    fmr_target: str
    liveness_threshold: float
    max_frames: int = 10
    max_images: int = 10
    max_top_k: int = 100
    max_page_size: int = 500
    allow_multiple_faces: bool = False
    calibration_version: str = ""
    thresholds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Consent:
    purpose: str
    given_at: datetime
    channel: str
    operator_id: str
    expires_at: datetime | None = None


def check_customer_id(customer_id: str) -> str:
    if not CUSTOMER_ID.fullmatch(customer_id or ""):  # `$` would allow a trailing newline
        raise InvalidInput(
            "INVALID_CUSTOMER_ID",
            "customer_id must be 1-64 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit",
        )
    return customer_id


def not_enrolled(customer_id: str) -> NotFound:
    return NotFound("CUSTOMER_NOT_FOUND", f"customer {customer_id} is not enrolled")


def check_count(items: list[bytes], limit: int, what: str) -> None:
    if not items:
        raise InvalidInput(f"NO_{what.upper()}", f"at least one {what[:-1]} is required")
    if len(items) > limit:
        raise TooLarge(f"TOO_MANY_{what.upper()}", f"at most {limit} {what} per request")


def require_text(name: str, value: str, limit: int) -> str:
    """An operator's free text (a reason, a case, an id): 1-`limit` printable characters, so
    nothing unbounded or control characters reach the audit chain (INVALID_<NAME>)."""
    if not value or len(value) > limit or not value.isprintable():
        raise InvalidInput(
            f"INVALID_{name.upper()}", f"{name} must be 1-{limit} printable characters"
        )
    return value


def check_consent(consent: Consent | None) -> Consent:
    if consent is None or not consent.purpose or not consent.channel or not consent.operator_id:
        raise InvalidInput(
            "CONSENT_REQUIRED",
            "a consent record with purpose, time, channel and operator is required",
        )
    if consent.expires_at is not None and consent.expires_at <= consent.given_at:
        raise InvalidInput("INVALID_CONSENT_EXPIRY", "the consent expires before it was given")
    return consent


@contextmanager
def face_errors() -> Iterator[None]:
    """Map the face work's failures to the service's errors, keeping the image's index."""
    try:
        yield
    except ImageRejected as exc:
        where = {} if exc.index is None else {"image": str(exc.index)}
        if exc.reason == DecodeReason.TOO_LARGE:
            raise TooLarge(exc.reason, exc.message, **where) from exc
        if exc.reason in set(DecodeReason):
            raise InvalidInput(exc.reason, exc.message, **where) from exc
        raise Unprocessable(exc.reason, exc.message, **where) from exc
    except VisionUnavailable as exc:
        raise Unavailable("VISION_UNAVAILABLE", f"face analysis unavailable: {exc}") from exc
    except VisionWorkerError as exc:
        raise Internal("VISION_WORKER_FAILED", f"face analysis failed: {exc}") from exc


class Engine:
    """Use cases over the face work (`vision`) and one gallery; thread-safe as they are."""

    def __init__(
        self, vision: Vision, gallery: Gallery, policy: Policy, risk: RiskRuntime | None = None
    ) -> None:
        """`vision` does the face work of requests and stream frames (see
        `service.app.vision_pool`)."""
        self.vision = vision
        self.gallery = gallery
        self.policy = policy
        self.risk = risk

    def close(self) -> None:
        """Release what the engine runs besides this process (the vision workers) and stop
        following the store."""
        self.gallery.stop_following()
        self.vision.close()

    def use_calibration(self, version: str, thresholds: Mapping[str, float]) -> None:
        """Decide with these thresholds (per FMR target) from the next decision on."""
        self.policy = replace(
            self.policy, threshold=float(thresholds[self.policy.fmr_target]),
            calibration_version=version, thresholds=dict(thresholds),
        )  # fmt: skip
        log.info("calibration %s live: threshold %.6f", version, self.policy.threshold)

    # ---- faces -------------------------------------------------------------------------

    def _single_face(self, data: bytes, index: int, template: bool) -> FaceAnalysis:
        """The analysis of an image's one face (see `subject.single_face`)."""
        with face_errors():
            return self.vision.single_face(data, index, template)

    def _best_face(self, frames: list[bytes]) -> FaceAnalysis:
        """The best face over the frames, as a probe (see `subject.best_probe`)."""
        with face_errors():
            return self.vision.best_probe(frames)

    @staticmethod
    def quality_gate(analysis: FaceAnalysis, where: str, image: int | None = None) -> None:
        """Refuse a face below the quality policy, saying what was measured against what is
        required and which setting moves it; the ErrorInfo metadata carries the same values
        (e.g. face_px 62, min_face_px 80) and the refused image's index, for clients."""
        quality = analysis.quality
        if not quality.reasons:
            return
        reasons = ", ".join(quality.reasons)
        found = quality.shortfalls
        details = "; ".join(s.text for s in found) or f"quality {quality.score:.0f}/100"
        metadata = {"reasons": reasons}
        if image is not None:
            metadata["image"] = str(image)
        for shortfall in found:
            metadata[shortfall.measure] = f"{shortfall.value:.3g}"
            metadata[shortfall.setting] = f"{shortfall.limit:g}"
        hint = ""
        if any(s.setting in SIZE_SETTINGS for s in found):
            hint = (
                '; for ID or web photos the service needs quality.profile = "id_photo" '
                "(FACEGUARD_QUALITY__PROFILE=id_photo)"
            )
        raise Unprocessable(
            str(quality.reasons[0]), f"{where}: {details} ({reasons}){hint}", **metadata
        )

    def _decision(
        self, analysis: FaceAnalysis | None, policy: Policy | None = None, **fields: object
    ) -> Decision:
        """A decision under `policy` (the one the caller compared scores with; default: now)."""
        policy = policy or self.policy
        return Decision(
            event_id=str(uuid.uuid4()),
            fmr_target=policy.fmr_target,
            calibration_version=policy.calibration_version,
            quality_score=analysis.quality.score if analysis else None,
            liveness_score=analysis.liveness.score if analysis and analysis.liveness else None,
            model_versions=self.vision.model_versions,
            **fields,
        )

    @staticmethod
    def _event(kind: str, decision: Decision, **extra: object) -> NewEvent:
        return NewEvent(
            event_id=decision.event_id,
            type=kind,
            customer_id=decision.customer_id or None,
            device_id=decision.device_id or None,
            outcome=decision.outcome,
            payload=decision.audit_payload() | extra,
        )

    def _risk(
        self, kind: str, decision: Decision, vectors: Sequence[np.ndarray] = (),
        neighbours: list[tuple[str, float]] | None = None,
    ) -> Decision:  # fmt: skip
        """The decision through the risk policy (lists, watchlist, velocity, margins)."""
        if self.risk is None:
            return decision
        return self.risk.checks.apply(kind, decision, vectors, neighbours)

    def attempt(self, kind: str, device_id: str, customer_id: str, run: Callable[[], T]) -> T:
        """Run the checks and face step of a request (or of a streamed session's frame); a
        refusal (bad or missing image, unknown customer, NO_FACE, FACE_CHANGED, low quality, a
        right the caller lacks) or a crashed vision worker is audited as a declined attempt
        before it propagates, so it counts for the device's velocity like any other."""
        try:
            return run()
        except REFUSALS as exc:
            exc.metadata["event_id"] = self.refuse(kind, device_id, customer_id, exc.reason)
            raise

    def refuse(self, kind: str, device_id: str, customer_id: str, reason: str, **extra: str) -> str:
        """Audit a declined attempt through the risk policy (so it counts for velocity);
        returns its event id. Refused requests and abandoned or timed-out sessions end here, and
        calls refused for their caller (`extra`: who, in the audit payload). No face was
        compared, so it never counts against the customer it names."""
        decision = self._decision(
            None, outcome=DECLINE, reason_codes=(reason,), device_id=device_id,
            customer_id=customer_id if CUSTOMER_ID.fullmatch(customer_id or "") else "",
        )  # fmt: skip
        decision = self._risk(kind, decision)
        self.gallery.store.record_event(self._event(kind, decision, **extra))
        return decision.event_id

    # ---- kiosk -------------------------------------------------------------------------

    def verify(self, customer_id: str, frames: list[bytes], device_id: str) -> Decision:
        def best() -> FaceAnalysis:
            self.check_verifiable(customer_id)
            check_count(frames, self.policy.max_frames, "frames")
            analysis = self._best_face(frames)
            self.quality_gate(analysis, "best frame")
            return analysis

        analysis = self.attempt("VERIFY", device_id, customer_id, best)
        return self.verify_face(customer_id, analysis, device_id)

    def check_enrolled(self, customer_id: str) -> None:
        check_customer_id(customer_id)
        if not self.gallery.has_customer(customer_id):
            raise not_enrolled(customer_id)

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
        policy = self.policy
        score = self.gallery.best_match(customer_id, analysis.embedding.vector)
        live = analysis.liveness.score if analysis.liveness else None
        outcome, reasons = match_outcome(score, policy.threshold, live, policy.liveness_threshold)
        if liveness is not None and not liveness.passed:
            outcome, reasons = DECLINE, (*reasons, "LIVENESS_FAILED")
        decision = self._decision(
            analysis, policy, outcome=outcome, customer_id=customer_id, match_score=score,
            threshold=policy.threshold, reason_codes=reasons, device_id=device_id,
            liveness=liveness,
        )  # fmt: skip
        if self.risk is not None:  # other customers this face matches, for the risk rules
            neighbours = self.gallery.search(analysis.embedding.vector, 3)
            decision = self._risk("VERIFY", decision, [analysis.embedding.vector], neighbours)
        self.gallery.store.record_event(self._event("VERIFY", decision))
        return self._told_to_device(decision)

    def _told_to_device(self, decision: Decision) -> Decision:
        """What a kiosk is told of a recorded decision: a locked-out device learns only the
        VELOCITY decline (no score, no match, no other rule), so it cannot go on testing faces
        against customers while locked; the audit event keeps the whole decision."""
        rules = tuple(r for r in decision.rules if r.reason_code == "VELOCITY" and r.fired)
        if (
            not rules
            or self.risk is None
            or not self.risk.velocity.device_locked(decision.device_id)
        ):
            return decision
        return dataclasses.replace(
            decision, customer_id="", match_score=None, reason_codes=("VELOCITY",), rules=rules
        )

    def identify(
        self, image: bytes, top_k: int, min_score: float, device_id: str,
        searcher: str | None = None,
    ) -> tuple[list[tuple[str, float]], Decision]:  # fmt: skip
        """1:N search. `searcher` names a caller with the right to a floor below the operating
        threshold (investigator or admin); a kiosk (None) sees only candidates at or above it."""

        def face() -> FaceAnalysis:
            check_count([image] if image else [], 1, "images")
            self.check_search(top_k, min_score, searcher)
            analysis = self._single_face(image, 0, template=False)
            self.quality_gate(analysis, "image")
            return analysis

        analysis = self.attempt("IDENTIFY", device_id, "", face)
        return self.identify_face(analysis, top_k, min_score, device_id, searcher=searcher)

    def check_search(self, top_k: int, min_score: float, searcher: str | None = None) -> None:
        if top_k > self.policy.max_top_k:
            raise TooLarge("TOP_K_TOO_LARGE", f"top_k is at most {self.policy.max_top_k}")
        if not -1.0 <= min_score <= 1.0:
            raise InvalidInput("INVALID_MIN_SCORE", "min_score is a cosine in [-1, 1]")
        if min_score and min_score < self.policy.threshold and searcher is None:
            raise Forbidden(
                "SCORE_FLOOR_NOT_ALLOWED",
                f"min_score below the operating threshold {self.policy.threshold:.3f} needs "
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
    ) -> tuple[list[tuple[str, float]], Decision]:
        """Search the gallery for a gated face and record the decision (shared with streams).
        A floor below the threshold is only for a `searcher`, who is named in the event."""
        policy = self.policy
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
        decision = self._decision(
            analysis, policy, outcome=outcome, customer_id=matched,
            match_score=top[1] if top else None, threshold=policy.threshold,
            reason_codes=reasons, device_id=device_id, liveness=liveness,
        )  # fmt: skip
        # The rules judge the face against the customer it matched, even when the match is
        # declined (a failed liveness session): with the id cleared first, that customer was
        # "another customer" to DUPLICATE_IDENTITY and WEAK_MATCH_MARGIN. A declined match
        # then names no customer, as before.
        decision = self._risk("IDENTIFY", decision, [analysis.embedding.vector], candidates)
        if outcome == DECLINE:
            decision = dataclasses.replace(decision, customer_id="")
        asked = {"searcher": searcher, "min_score": floor} if searcher is not None else {}
        self.gallery.store.record_event(
            self._event("IDENTIFY", decision, candidates=len(candidates), **asked)
        )
        if searcher is None and decision.outcome == DECLINE:
            # Declined (failed liveness, a locked-out or blacklisted device, a watchlist face):
            # the event names the match, but a kiosk learns no one, or a spoof or a lockout
            # would not stop it probing faces.
            return [], dataclasses.replace(self._told_to_device(decision), customer_id="")
        return candidates, decision

    def check_liveness(self, frames: list[bytes], device_id: str) -> Decision:
        check_count(frames, self.policy.max_frames, "frames")
        analysis = self.attempt("CHECK_LIVENESS", device_id, "", lambda: self._best_face(frames))
        live = analysis.liveness.score if analysis.liveness else None
        weak = live is None or live < self.policy.liveness_threshold
        decision = self._decision(
            analysis, outcome="REVIEW" if weak else APPROVE,
            reason_codes=("LIVENESS_WEAK",) if weak else ("LIVENESS_PASSIVE_OK",),
            device_id=device_id,
        )  # fmt: skip
        decision = self._risk("CHECK_LIVENESS", decision, [analysis.embedding.vector])
        self.gallery.store.record_event(self._event("CHECK_LIVENESS", decision))
        return decision

    # ---- enrolment ---------------------------------------------------------------------

    def gated_faces(self, images: list[bytes]) -> list[FaceAnalysis]:
        """Enrolment images analysed: one face each, passing the quality gate."""
        analyses = []
        for i, data in enumerate(images):
            analysis = self._single_face(data, i, template=True)
            self.quality_gate(analysis, f"image {i}", image=i)
            analyses.append(analysis)
        return analyses

    def _templates(
        self, customer_id: str, images: list[bytes]
    ) -> tuple[list[NewTemplate], list[FaceAnalysis]]:
        """Analyse enrolment images: one face each, passing the quality gate."""
        analyses = self.gated_faces(images)
        templates = [
            NewTemplate(vector=a.embedding.vector, model=a.embedding.model, quality=a.quality.score)
            for a in analyses
        ]
        return templates, analyses

    def enroll(
        self, customer_id: str, images: list[bytes], consent: Consent | None
    ) -> tuple[CustomerRecord, Decision]:
        check_customer_id(customer_id)
        check_count(images, self.policy.max_images, "images")
        consent = check_consent(consent)
        if self.gallery.has_customer(customer_id):
            raise Conflict("CUSTOMER_EXISTS", f"customer {customer_id} is already enrolled")
        templates, analyses = self._templates(customer_id, images)
        decision = self._enrolment_decision("ENROLL", customer_id, analyses)
        record = ConsentRecord(
            purpose=consent.purpose, given_at=consent.given_at, channel=consent.channel,
            operator_id=consent.operator_id, expires_at=consent.expires_at,
        )  # fmt: skip
        self.gallery.enroll(
            customer_id, templates, record,
            self._event("ENROLL", decision, templates=len(templates), operator=consent.operator_id),
        )  # fmt: skip
        return self.get(customer_id), decision

    def update_templates(
        self, customer_id: str, images: list[bytes], replace: bool, operator_id: str
    ) -> tuple[CustomerRecord, Decision]:
        self.check_enrolled(customer_id)
        check_count(images, self.policy.max_images, "images")
        templates, analyses = self._templates(customer_id, images)
        decision = self._enrolment_decision("UPDATE_TEMPLATES", customer_id, analyses)
        event = self._event(
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
        worst = min(analyses, key=lambda a: a.quality.score)
        vectors = [a.embedding.vector for a in analyses]
        neighbours = [hit for vector in vectors for hit in self.gallery.search(vector, 3)]
        policy = self.policy
        duplicate = any(c != customer_id and s >= policy.threshold for c, s in neighbours)
        decision = self._decision(
            worst, policy, outcome=DECLINE if duplicate else APPROVE, customer_id=customer_id,
            reason_codes=("DUPLICATE_IDENTITY",) if duplicate else ("ENROLLED",),
            threshold=policy.threshold,
        )  # fmt: skip
        decision = self._risk(kind, decision, vectors, neighbours)
        if decision.outcome != DECLINE:
            return decision
        self.gallery.store.record_event(self._event(kind, decision))
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
        decision = self._decision(
            None, outcome=APPROVE, customer_id=customer_id, reason_codes=("ERASED",)
        )
        self.gallery.delete(
            customer_id, self._event("DELETE", decision, reason=reason, operator=operator_id)
        )
        return decision.event_id

    def get(self, customer_id: str) -> CustomerRecord:
        check_customer_id(customer_id)
        record = self.gallery.store.get_customer(customer_id)
        if record is None:
            raise not_enrolled(customer_id)
        return record

    def list(self, page_size: int, page_token: str) -> tuple[list[CustomerRecord], str | None]:
        if page_size > self.policy.max_page_size:
            raise TooLarge("PAGE_TOO_LARGE", f"page_size is at most {self.policy.max_page_size}")
        if page_token and not CUSTOMER_ID.fullmatch(page_token):
            raise InvalidInput("INVALID_PAGE_TOKEN", "page_token is not one this service issued")
        return self.gallery.store.list_customers(page_size or 50, page_token or None)
