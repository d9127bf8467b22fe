"""Conversions between protos and domain types, kept in one place."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from faceguard.v1 import common_pb2, enrollment_pb2
from service.app.decision import Decision
from service.domain import Consent
from service.errors import InvalidInput
from service.liveness.report import LivenessReport
from service.risk.results import RuleResult
from service.store.customers import CustomerRecord

# How far a client's clock may be from the server's: times a client states (a consent given,
# a frame captured) further in the future, or a frame further in the past, are refused.
MAX_CLOCK_SKEW_S = 300.0
# Rules whose detail names someone other than the caller's subject (another customer's id, a
# watchlist entry, a fraud case reference): the audit event and the fraud engine keep it, the
# reply to a kiosk or desk does not (a kiosk would learn who a face is by claiming anyone).
AUDIT_ONLY_DETAILS = frozenset(
    {"DUPLICATE_IDENTITY", "WATCHLIST_HIT", "BLOCKLISTED", "DEVICE_BLACKLISTED"}
)


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def decision_message(decision: Decision) -> common_pb2.Decision:
    versions = decision.model_versions
    return common_pb2.Decision(
        event_id=decision.event_id,
        outcome=common_pb2.Outcome.Value(decision.outcome),
        match_score=decision.match_score,
        threshold=decision.threshold,
        fmr_target=decision.fmr_target,
        quality_score=decision.quality_score,
        liveness_score=decision.liveness_score,
        reason_codes=list(decision.reason_codes),
        model_versions=common_pb2.ModelVersions(
            detector=versions.get("detector", ""),
            embedder=versions.get("embedder", ""),
            liveness=versions.get("liveness", ""),
        ),
        customer_id=decision.customer_id,
        decided_at=timestamp(decision.decided_at),
        risk_score=decision.risk_score,
        policy_version=decision.policy_version,
        rules=[_rule_message(r) for r in decision.rules],
        liveness=liveness_message(decision.liveness),
        device_id=decision.device_id,
        calibration_version=decision.calibration_version,
    )


def _rule_message(rule: RuleResult) -> common_pb2.RuleResult:
    fields = asdict(rule)
    if rule.reason_code in AUDIT_ONLY_DETAILS:
        fields["detail"] = ""
    return common_pb2.RuleResult(**fields)


def liveness_message(report: LivenessReport | None) -> common_pb2.LivenessReport | None:
    if report is None:
        return None
    return common_pb2.LivenessReport(
        score=report.score,
        passed=report.passed,
        checks=[common_pb2.LivenessCheck(**asdict(c)) for c in report.checks],
        challenge=report.challenge,
        response=report.response,
    )


def datetime_from(stamp: Timestamp, name: str) -> datetime:
    """A Timestamp as an aware datetime; out-of-range seconds or nanos are the caller's error."""
    try:
        return stamp.ToDatetime(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("INVALID_TIMESTAMP", f"{name} is not a valid timestamp") from None


def consent_from(message: enrollment_pb2.Consent, present: bool) -> Consent | None:
    """The consent record; its time is the customer's act, so it must be given, and not later
    than now (CONSENT_REQUIRED, INVALID_CONSENT_TIME): the service never makes it up."""
    if not present:
        return None
    if not message.HasField("given_at"):
        raise InvalidInput("CONSENT_REQUIRED", "consent.given_at is required")
    given_at = datetime_from(message.given_at, "consent.given_at")
    if (given_at - datetime.now(UTC)).total_seconds() > MAX_CLOCK_SKEW_S:
        raise InvalidInput("INVALID_CONSENT_TIME", "consent.given_at is in the future")
    return Consent(
        purpose=message.purpose,
        given_at=given_at,
        channel=message.channel,
        operator_id=message.operator_id,
        expires_at=datetime_from(message.expires_at, "consent.expires_at")
        if message.HasField("expires_at")
        else None,
    )


def customer_message(record: CustomerRecord) -> enrollment_pb2.Customer:
    consent = record.consent
    return enrollment_pb2.Customer(
        customer_id=record.customer_id,
        template_count=record.template_count,
        enrolled_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        consent=enrollment_pb2.Consent(
            purpose=consent.purpose,
            given_at=timestamp(consent.given_at),
            channel=consent.channel,
            operator_id=consent.operator_id,
            expires_at=timestamp(consent.expires_at),
        )
        if consent
        else None,
        embedder=record.embedder or "",
    )
