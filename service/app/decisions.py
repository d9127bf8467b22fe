"""The one decision path every use case (single-shot or streamed) goes through.

A decision is built under one policy read, run through the risk policy, recorded as an audit
event, and cut down to what the device may be told. Refusals before a decision (a bad image,
an unknown customer, NO_FACE, low quality) are audited as declined attempts where they are
caught: `refusals_audited` wraps the checks and face work of a request or a stream's step.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from service.app.decision import Decision
from service.app.requests import CUSTOMER_ID
from service.app.vision_pool import Vision
from service.domain import DECLINE
from service.errors import Forbidden, Internal, InvalidInput, NotFound, TooLarge, Unprocessable
from service.gallery.match import Match
from service.risk.policy import stricter
from service.store.customers import NewEvent
from service.vision.types import FaceAnalysis

if TYPE_CHECKING:
    import numpy as np

    from service.risk.runtime import RiskRuntime
    from service.store.customers import Store

log = logging.getLogger(__name__)

# Refusals before a decision that are audited as declined attempts (see `refusals_audited`);
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


class Decisions:
    """Builds, assesses and records decisions under the live policy; thread-safe as the store."""

    def __init__(
        self, vision: Vision, store: Store, policy: Policy, risk: RiskRuntime | None = None
    ) -> None:
        self.vision = vision  # for the model versions every decision names
        self.store = store
        self.policy = policy
        self.risk = risk

    def use_calibration(self, version: str, thresholds: Mapping[str, float]) -> None:
        """Decide with these thresholds (per FMR target) from the next decision on."""
        self.policy = replace(
            self.policy, threshold=float(thresholds[self.policy.fmr_target]),
            calibration_version=version, thresholds=dict(thresholds),
        )  # fmt: skip
        log.info("calibration %s live: threshold %.6f", version, self.policy.threshold)

    def new(
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

    def assess(
        self, kind: str, decision: Decision, vectors: Sequence[np.ndarray] = (),
        neighbours: list[Match] | None = None,
    ) -> Decision:  # fmt: skip
        """The decision through the risk policy (lists, watchlist, velocity, margins), then
        through the fraud engine's consult when one is configured: the stricter outcome, the
        rules' reasons added to the decision's own, the risk score and every rule's result."""
        if self.risk is None:
            return decision
        checks = self.risk.checks
        assessment = checks.assess(kind, decision, vectors, neighbours)
        decided = replace(
            decision, outcome=stricter(decision.outcome, assessment.outcome),
            risk_score=assessment.score, policy_version=assessment.policy_version,
            rules=assessment.rules,
        )  # fmt: skip
        if checks.consult is not None:  # the fraud engine judges what the policy reached
            verdict, recommended = checks.consult(kind, decided)
            decided = replace(
                decided, outcome=stricter(decided.outcome, recommended),
                risk_score=assessment.score + verdict.score, rules=(*decided.rules, verdict),
            )  # fmt: skip
        reasons = [*decision.reason_codes]
        reasons += [
            r.reason_code for r in decided.rules if r.fired and r.reason_code not in reasons
        ]
        return replace(decided, reason_codes=tuple(reasons))

    @staticmethod
    def event(kind: str, decision: Decision, **extra: object) -> NewEvent:
        """The audit event of a decision (`extra`: what else the payload keeps)."""
        return NewEvent(
            event_id=decision.event_id,
            type=kind,
            customer_id=decision.customer_id or None,
            device_id=decision.device_id or None,
            outcome=decision.outcome,
            payload=decision.audit_payload() | extra,
        )

    def record(self, kind: str, decision: Decision, **extra: object) -> None:
        """Record the decision as its audit event (and, through the store, its outbox row)."""
        self.store.record_event(self.event(kind, decision, **extra))

    def told_to_device(self, decision: Decision) -> Decision:
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

    def refuse(self, kind: str, device_id: str, customer_id: str, reason: str, **extra: str) -> str:
        """Audit a declined attempt through the risk policy (so it counts for velocity);
        returns its event id. Refused requests and abandoned or timed-out sessions end here, and
        calls refused for their caller (`extra`: who, in the audit payload). No face was
        compared, so it never counts against the customer it names."""
        decision = self.new(
            None, outcome=DECLINE, reason_codes=(reason,), device_id=device_id,
            customer_id=customer_id if CUSTOMER_ID.fullmatch(customer_id or "") else "",
        )  # fmt: skip
        decision = self.assess(kind, decision)
        self.record(kind, decision, **extra)
        return decision.event_id

    @contextmanager
    def refusals_audited(self, kind: str, device_id: str, customer_id: str) -> Iterator[None]:
        """Around the checks and face step of a request (or of a streamed session's frame): a
        refusal (bad or missing image, unknown customer, NO_FACE, FACE_CHANGED, low quality, a
        right the caller lacks) or a crashed vision worker is audited as a declined attempt
        before it propagates, with its event id, so it counts for the device's velocity like
        any other."""
        try:
            yield
        except REFUSALS as exc:
            exc.metadata["event_id"] = self.refuse(kind, device_id, customer_id, exc.reason)
            raise
