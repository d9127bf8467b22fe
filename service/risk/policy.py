"""The versioned risk policy: which rules run, what each weighs, and how the sum decides.

Loaded from TOML (the shipped `policy.toml` or a configured file) and validated whole at start,
so a typo stops the service instead of silently disabling a rule. Outcome: any fired hard rule
declines; otherwise the score sum maps to REVIEW or DECLINE at the policy's thresholds; the
stricter of that and the match outcome is the decision's outcome.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.domain import APPROVE, DECLINE, REVIEW
from service.risk.results import RuleResult
from service.risk.rules import RULES, RiskContext, result

DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
SEVERITY = {APPROVE: 0, REVIEW: 1, DECLINE: 2}


class PolicyError(ValueError):
    """A policy file that cannot be used as written."""


def stricter(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b


@dataclass(frozen=True)
class RuleSetting:
    name: str
    score: float
    hard: bool | tuple[str, ...]  # True/False, or the decision kinds it is hard for
    params: dict[str, Any]

    def is_hard(self, kind: str) -> bool:
        return self.hard if isinstance(self.hard, bool) else kind in self.hard


@dataclass(frozen=True)
class RiskAssessment:
    """The policy's answer for one decision."""

    outcome: str
    score: float
    rules: tuple[RuleResult, ...]
    policy_version: str

    @property
    def reason_codes(self) -> tuple[str, ...]:
        return tuple(r.reason_code for r in self.rules if r.fired)


@dataclass(frozen=True)
class RiskPolicy:
    version: str
    review_at: float
    decline_at: float
    rules: tuple[RuleSetting, ...]

    def setting(self, name: str) -> RuleSetting | None:
        return next((r for r in self.rules if r.name == name), None)

    def evaluate(self, ctx: RiskContext) -> RiskAssessment:
        results = []
        for setting in self.rules:
            rule, _ = RULES[setting.name]
            verdict = rule(ctx, setting.params)
            results.append(result(setting.name, verdict, setting.score, setting.is_hard(ctx.kind)))
        total = sum(r.score for r in results)
        if any(r.hard for r in results) or total >= self.decline_at:
            outcome = DECLINE
        elif total >= self.review_at:
            outcome = REVIEW
        else:
            outcome = APPROVE
        return RiskAssessment(outcome, total, tuple(results), self.version)


def load_policy(path: Path | None = None) -> RiskPolicy:
    """Read and validate a policy file (default: the shipped one)."""
    path = path or DEFAULT_POLICY
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"risk policy {path}: {exc}") from exc
    return parse_policy(data, str(path))


def parse_policy(data: dict[str, Any], source: str = "policy") -> RiskPolicy:
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise PolicyError(f"{source}: `version` (a non-empty string) is required")
    outcome = data.get("outcome", {})
    review_at, decline_at = outcome.get("review_at"), outcome.get("decline_at")
    if not all(isinstance(v, int | float) for v in (review_at, decline_at)):
        raise PolicyError(f"{source}: [outcome] review_at and decline_at are required numbers")
    if not 0 < review_at <= decline_at:
        raise PolicyError(f"{source}: need 0 < review_at <= decline_at")
    tables = data.get("rules", {})
    unknown = set(tables) - set(RULES)
    if unknown:
        raise PolicyError(f"{source}: unknown rules {sorted(unknown)}; known: {sorted(RULES)}")
    settings = []
    for name, table in tables.items():
        if table.get("enabled", True) is False:
            continue
        _, needed = RULES[name]
        missing = [k for k in needed if k not in table]
        if missing:
            raise PolicyError(f"{source}: rule {name} needs {missing}")
        hard = table.get("hard", False)
        if not isinstance(hard, bool) and not (
            isinstance(hard, list) and all(isinstance(k, str) for k in hard)
        ):
            raise PolicyError(f"{source}: rule {name}: hard is true/false or a list of kinds")
        score = table.get("score", 0)
        if not isinstance(score, int | float) or score < 0:
            raise PolicyError(f"{source}: rule {name}: score must be a number >= 0")
        params = {k: v for k, v in table.items() if k not in ("hard", "score", "enabled")}
        settings.append(RuleSetting(name, float(score), hard if isinstance(hard, bool)
                                    else tuple(hard), params))  # fmt: skip
    return RiskPolicy(version, float(review_at), float(decline_at), tuple(settings))
