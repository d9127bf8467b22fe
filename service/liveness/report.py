"""The liveness of a streamed session: each check's result and the combined verdict."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LivenessCheck:
    """One liveness check of a session (passive, motion, blink, challenge, replay cues)."""

    name: str
    passed: bool
    score: float | None = None
    weight: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class LivenessReport:
    """The combined liveness of a streamed session, with each check's result kept."""

    score: float
    passed: bool
    checks: tuple[LivenessCheck, ...] = ()
    challenge: str = ""
    response: str = ""
