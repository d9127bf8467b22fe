"""Domain values every layer may use (a leaf: it imports only the shared errors).

The three outcomes of a decision: the risk policy orders them (`risk.policy.stricter`), the use
cases reach them, the API names them. The customer's `Consent`, validated once, where it is
made. (A match of the gallery is `service.gallery.match.Match`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.errors import InvalidInput

APPROVE, REVIEW, DECLINE = "APPROVE", "REVIEW", "DECLINE"

# The longest consent text the store keeps (its columns' sizes).
CONSENT_TEXT_LIMITS = {"purpose": 64, "channel": 64, "operator_id": 128}


@dataclass(frozen=True)
class Consent:
    """The customer's consent to biometric processing, as captured at enrolment.

    Validated once, here: purpose and channel (and the operator, when named) are printable
    text within the store's limits (CONSENT_REQUIRED when missing, INVALID_CONSENT otherwise),
    the times are timezone-aware, and it expires after it was given (INVALID_CONSENT_EXPIRY).
    `recorded_at` is the time the store recorded it (None until it has).
    """

    purpose: str
    given_at: datetime
    channel: str
    operator_id: str | None = None
    expires_at: datetime | None = None
    recorded_at: datetime | None = None

    def __post_init__(self) -> None:
        for name, limit in CONSENT_TEXT_LIMITS.items():
            value = getattr(self, name)
            if value is None and name == "operator_id":
                continue
            if not value:
                raise InvalidInput(
                    "CONSENT_REQUIRED",
                    "a consent record with purpose, time, channel and operator is required",
                )
            if len(value) > limit or not value.isprintable():
                raise InvalidInput(
                    "INVALID_CONSENT", f"consent {name} must be 1-{limit} printable characters"
                )
        for name in ("given_at", "expires_at", "recorded_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidInput("INVALID_CONSENT_TIME", f"consent {name} must be timezone-aware")
        if self.expires_at is not None and self.expires_at <= self.given_at:
            raise InvalidInput("INVALID_CONSENT_EXPIRY", "the consent expires before it was given")
