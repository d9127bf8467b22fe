"""What the risk checks read of a decision, and what they say of it: each rule's verdict.

The Decision belongs to the use cases above risk; these protocols name the part of it that
risk reads, so risk never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class RuleResult:
    """One risk rule's verdict: evaluated rules are all kept, fired or not, for the auditor."""

    rule: str
    fired: bool
    reason_code: str = ""
    score: float = 0.0
    hard: bool = False
    detail: str = ""


class SessionLiveness(Protocol):
    """A streamed session's liveness verdict (None for a single-shot call)."""

    @property
    def passed(self) -> bool: ...


class Judged(Protocol):
    """What the rules look at of a decision: who it names and its scores."""

    @property
    def customer_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def match_score(self) -> float | None: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def liveness_score(self) -> float | None: ...
    @property
    def quality_score(self) -> float | None: ...
    @property
    def liveness(self) -> SessionLiveness | None: ...


class Assessed(Judged, Protocol):
    """A decision the policy has judged, as the fraud engine's consult sees it."""

    @property
    def event_id(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def decided_at(self) -> datetime: ...

    def audit_payload(self) -> dict[str, object]: ...
