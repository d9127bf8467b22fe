"""Risk checks of one decision: gather the facts and run the policy; the fraud engine's consult.

The use cases call `assess` on every decision before it is recorded and fold the assessment
into it (then ask `consult`, when configured, about the decision the policy reached), so the
recorded event (and the callback it feeds) carries the final outcome, the risk score, the
policy version and every rule's result. Risk sees a decision only through the `Judged` and
`Assessed` protocols: the Decision type belongs to the use cases above it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np

from service.gallery.match import Match, WatchlistHit
from service.gallery.watchlist import Watchlist
from service.risk.policy import RiskAssessment, RiskPolicy
from service.risk.results import Assessed, Judged, RuleResult
from service.risk.rules import RiskContext
from service.store.lists import RiskLists
from service.store.velocity import Velocity

log = logging.getLogger(__name__)

# A synchronous consult of the fraud engine: the decision so far -> its verdict, recorded as a
# rule, and the outcome it recommends (the stricter outcome wins).
Consult = Callable[[str, Assessed], tuple[RuleResult, str]]


class RiskChecks:
    def __init__(
        self,
        policy: RiskPolicy,
        lists: RiskLists,
        watchlist: Watchlist,
        velocity: Velocity,
        liveness_threshold: float,
        consult: Consult | None = None,
    ) -> None:
        self.policy = policy
        self.lists = lists
        self.watchlist = watchlist
        self.velocity = velocity
        self.liveness_threshold = liveness_threshold
        self.consult = consult

    def context(
        self,
        kind: str,
        decision: Judged,
        vectors: Sequence[np.ndarray],
        neighbours: list[Match],
    ) -> RiskContext:
        """The facts for the rules: list lookups, failures, watchlist, other customers."""
        others = [Match(*n) for n in neighbours if n[0] != decision.customer_id]
        return RiskContext(
            kind=kind,
            now=datetime.now(UTC),
            customer_id=decision.customer_id,
            device_id=decision.device_id,
            match_score=decision.match_score,
            threshold=decision.threshold if decision.threshold is not None else 1.0,
            other_customer=max(others, key=lambda o: o.score) if others else None,
            liveness_score=decision.liveness_score,
            liveness_threshold=self.liveness_threshold,
            session_liveness_passed=decision.liveness.passed if decision.liveness else None,
            quality_score=decision.quality_score,
            lists=self.lists.facts(decision.customer_id, decision.device_id),
            velocity=self.velocity.facts(decision.customer_id, decision.device_id),
            watchlist_hit=self._watchlist_hit(vectors),
        )

    def _watchlist_hit(self, vectors: Sequence[np.ndarray]) -> WatchlistHit | None:
        """The closest watchlist entry to any of the decision's faces."""
        hits = [hit for v in vectors if (hit := self.watchlist.best_hit(v)) is not None]
        return max(hits, key=lambda h: h.score) if hits else None

    def assess(
        self,
        kind: str,
        decision: Judged,
        vectors: Sequence[np.ndarray] = (),
        neighbours: list[Match] | None = None,
    ) -> RiskAssessment:
        """The policy's verdict on a decision: outcome, risk score, every rule, policy version."""
        return self.policy.evaluate(self.context(kind, decision, vectors, neighbours or []))
