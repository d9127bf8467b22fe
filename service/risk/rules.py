"""The risk rules: small pure functions over one decision's `RiskContext`.

Each rule returns one `RuleResult`, fired or not, so the decision records every rule that was
evaluated. A rule knows what it checks; the policy (`policy.py`) knows what it weighs: the
score and whether it is hard come from the policy's table for the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.gallery.match import Match, WatchlistHit
from service.risk.results import RuleResult
from service.store.lists import ListFacts
from service.store.velocity import Limits, VelocityFacts

ENROLMENT_KINDS = ("ENROLL", "UPDATE_TEMPLATES")


@dataclass(frozen=True)
class RiskContext:
    """Everything the rules may look at for one decision; no images, no templates."""

    kind: str  # VERIFY, IDENTIFY, CHECK_LIVENESS, ENROLL, UPDATE_TEMPLATES
    now: datetime
    customer_id: str = ""
    device_id: str = ""
    match_score: float | None = None
    threshold: float = 1.0
    # The best-scoring customer other than `customer_id`, and its cosine.
    other_customer: Match | None = None
    liveness_score: float | None = None
    liveness_threshold: float = 0.0
    session_liveness_passed: bool | None = None  # None: not a streamed session
    quality_score: float | None = None
    lists: ListFacts = field(default_factory=ListFacts)
    velocity: VelocityFacts = field(default_factory=VelocityFacts)
    watchlist_hit: WatchlistHit | None = None  # the closest watchlist entry

    @property
    def margin(self) -> float | None:
        """Cosine gap between the matched customer and the next-best other customer."""
        if self.match_score is None or self.other_customer is None:
            return None
        return self.match_score - self.other_customer[1]


@dataclass(frozen=True)
class Verdict:
    """What a rule found: fired or not, its reason code, and a detail for the auditor."""

    fired: bool
    reason_code: str
    detail: str = ""


Params = Mapping[str, Any]
Rule = Callable[[RiskContext, Params], Verdict]


def blocklisted(ctx: RiskContext, p: Params) -> Verdict:
    entry = ctx.lists.blocklisted
    return Verdict(entry is not None, "BLOCKLISTED", f"case {entry.case_ref}" if entry else "")


def device_blacklisted(ctx: RiskContext, p: Params) -> Verdict:
    entry = ctx.lists.device_blacklisted
    return Verdict(
        entry is not None, "DEVICE_BLACKLISTED", f"case {entry.case_ref}" if entry else ""
    )


def watchlist(ctx: RiskContext, p: Params) -> Verdict:
    floor = float(p["min_score"]) or ctx.threshold
    hit = ctx.watchlist_hit
    fired = hit is not None and hit[1] >= floor
    return Verdict(fired, "WATCHLIST_HIT", f"entry {hit[0]} at {hit[1]:.3f}" if fired else "")


def duplicate_identity(ctx: RiskContext, p: Params) -> Verdict:
    """The face matches a customer other than the one claimed (or enrolled), above threshold."""
    other = ctx.other_customer
    fired = other is not None and other[1] >= ctx.threshold
    return Verdict(fired, "DUPLICATE_IDENTITY", f"{other[0]} at {other[1]:.3f}" if fired else "")


def velocity(ctx: RiskContext, p: Params) -> Verdict:
    """Locked out: the device, the customer at this device, or the customer everywhere (only
    on non-matching faces from several devices; see `service.store.velocity`)."""
    lim, facts, now = Limits.of(p), ctx.velocity, ctx.now
    device = facts.device.locked_for(lim.device_failures, now, lim.cooldown_s)
    here = facts.customer_here.locked_for(lim.customer_failures, now, lim.cooldown_s)
    everywhere = (
        facts.customer.locked_for(lim.customer_failures, now, lim.cooldown_s)
        if facts.customer.devices >= lim.customer_devices
        else 0.0
    )
    parts = [f"customer locked {everywhere:.0f} s more"] if everywhere else []
    if here and not everywhere:
        parts.append(f"customer locked at this device {here:.0f} s more")
    parts += [f"device locked {device:.0f} s more"] if device else []
    return Verdict(bool(parts), "VELOCITY", "; ".join(parts))


def liveness_failed(ctx: RiskContext, p: Params) -> Verdict:
    return Verdict(ctx.session_liveness_passed is False, "LIVENESS_FAILED")


def liveness_weak(ctx: RiskContext, p: Params) -> Verdict:
    live = ctx.liveness_score
    fired = live is not None and live < ctx.liveness_threshold
    return Verdict(fired, "LIVENESS_WEAK", f"{live:.3f}" if fired else "")


def low_quality(ctx: RiskContext, p: Params) -> Verdict:
    quality = ctx.quality_score
    fired = quality is not None and quality < float(p["min_quality"])
    return Verdict(fired, "LOW_QUALITY", f"{quality:.0f}/100" if fired else "")


def weak_margin(ctx: RiskContext, p: Params) -> Verdict:
    """A match barely ahead of another customer: the wrong one may have matched."""
    margin = ctx.margin
    fired = (
        ctx.kind not in ENROLMENT_KINDS
        and ctx.match_score is not None
        and ctx.match_score >= ctx.threshold
        and margin is not None
        and margin < float(p["min_margin"])
    )
    return Verdict(fired, "WEAK_MATCH_MARGIN", f"{margin:.3f}" if fired else "")


# Rule name (the policy's table name) -> (rule, the parameters it needs beyond score/hard).
RULES: dict[str, tuple[Rule, tuple[str, ...]]] = {
    "blocklisted": (blocklisted, ()),
    "device_blacklisted": (device_blacklisted, ()),
    "watchlist": (watchlist, ("min_score",)),
    "duplicate_identity": (duplicate_identity, ()),
    "velocity": (
        velocity,
        (
            "customer_failures",
            "customer_window_s",
            "customer_devices",
            "device_failures",
            "device_window_s",
            "cooldown_s",
        ),
    ),
    "liveness_failed": (liveness_failed, ()),
    "liveness_weak": (liveness_weak, ()),
    "low_quality": (low_quality, ("min_quality",)),
    "weak_margin": (weak_margin, ("min_margin",)),
}


def result(name: str, verdict: Verdict, score: float, hard: bool) -> RuleResult:
    """The recorded result: a rule that did not fire contributes nothing."""
    return RuleResult(
        rule=name, fired=verdict.fired, reason_code=verdict.reason_code,
        score=score if verdict.fired else 0.0, hard=hard and verdict.fired, detail=verdict.detail,
    )  # fmt: skip
