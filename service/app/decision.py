"""The `Decision`: the one answer of every decision-making call, and how it is reached.

Outcome rules at this stage (the risk policy refines them later):
- a match at or above the calibrated threshold approves, below it declines (`NO_MATCH`);
- a weak passive liveness signal never declines on its own, it sends an approval to human
  review (`LIVENESS_WEAK`): the model's measured error is too high for a gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from service.domain import APPROVE, DECLINE, REVIEW
from service.liveness.report import LivenessReport
from service.risk.results import RuleResult


@dataclass(frozen=True)
class Decision:
    event_id: str
    outcome: str
    customer_id: str = ""
    match_score: float | None = None
    threshold: float | None = None
    fmr_target: str = ""
    quality_score: float | None = None
    liveness_score: float | None = None
    reason_codes: tuple[str, ...] = ()
    model_versions: dict[str, str] = field(default_factory=dict)
    decided_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    device_id: str = ""
    risk_score: float | None = None
    policy_version: str = ""
    rules: tuple[RuleResult, ...] = ()
    liveness: LivenessReport | None = None
    calibration_version: str = ""

    def audit_payload(self) -> dict[str, object]:
        """What the audit event keeps: scores and reasons, never images or templates."""
        return {
            "outcome": self.outcome,
            "match_score": self.match_score,
            "threshold": self.threshold,
            "fmr_target": self.fmr_target,
            "calibration_version": self.calibration_version,
            "quality_score": self.quality_score,
            "liveness_score": self.liveness_score,
            "reason_codes": list(self.reason_codes),
            "model_versions": self.model_versions,
            "risk_score": self.risk_score,
            "policy_version": self.policy_version,
            "rules": [asdict(r) for r in self.rules],
            "liveness": asdict(self.liveness) if self.liveness else None,
        }


def match_outcome(
    score: float | None, threshold: float, liveness: float | None, liveness_threshold: float
) -> tuple[str, tuple[str, ...]]:
    """Outcome and reasons of a comparison against the operating threshold."""
    if score is None or score < threshold:
        return DECLINE, ("NO_MATCH",)
    if liveness is not None and liveness < liveness_threshold:
        return REVIEW, ("MATCH", "LIVENESS_WEAK")
    return APPROVE, ("MATCH",)
