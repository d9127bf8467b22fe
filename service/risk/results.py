"""What the risk policy says of one decision: each rule's verdict, kept for the auditor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuleResult:
    """One risk rule's verdict: evaluated rules are all kept, fired or not, for the auditor."""

    rule: str
    fired: bool
    reason_code: str = ""
    score: float = 0.0
    hard: bool = False
    detail: str = ""
