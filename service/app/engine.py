"""The service's use cases, composed: the kiosk's, the enrolment desk's, and their one decision
path, over one vision pool, one gallery and the risk runtime.

The API layer only converts messages, calls these and maps `FaceguardError`s to statuses;
nothing here knows about gRPC. See `service.app.kiosk`, `service.app.enrolment` and
`service.app.decisions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from service.app.decisions import Decisions, Policy
from service.app.enrolment import Enrolment
from service.app.kiosk import Kiosk
from service.app.risk_admin import RiskAdmin
from service.app.vision_pool import Vision
from service.gallery.gallery import Gallery

if TYPE_CHECKING:
    from service.risk.runtime import RiskRuntime


class Engine:
    """The running service's use cases; thread-safe as they are."""

    def __init__(
        self, vision: Vision, gallery: Gallery, policy: Policy, risk: RiskRuntime | None = None
    ) -> None:
        """`vision` does the face work of requests and stream frames (see
        `service.app.vision_pool`)."""
        self.vision = vision
        self.gallery = gallery
        self.risk = risk
        self.decisions = Decisions(vision, gallery.store, policy, risk)
        self.kiosk = Kiosk(vision, gallery, self.decisions)
        self.enrolment = Enrolment(vision, gallery, self.decisions)
        self.risk_admin = None if risk is None else RiskAdmin(risk, vision, policy.max_images)

    @property
    def policy(self) -> Policy:
        """The live policy (it changes when a calibration is applied)."""
        return self.decisions.policy

    def use_calibration(self, version: str, thresholds: Mapping[str, float]) -> None:
        """Decide with these thresholds (per FMR target) from the next decision on."""
        self.decisions.use_calibration(version, thresholds)

    def start(self) -> None:
        """Start what runs in the background: fraud-engine delivery (of decisions recorded
        before a restart too) and the audit chain's checkpoints."""
        if self.risk is not None:
            self.risk.start()

    def stop(self) -> None:
        """Stop the background work `start` began (before `close`)."""
        if self.risk is not None:
            self.risk.stop()

    def save(self) -> None:
        """Persist the vector index snapshot, so the next start need not rebuild it."""
        self.gallery.save()

    def close(self) -> None:
        """Release what the engine runs besides this process (the vision workers) and stop
        following the store."""
        self.gallery.stop_following()
        self.vision.close()
