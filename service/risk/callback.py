"""The fraud-engine client: signed at-least-once event delivery and the optional Assess consult.

The only place in `service/risk/` that speaks gRPC. Each delivery sends the serialized
`IdentityEvent` bytes with a hex HMAC-SHA256 over exactly those bytes, the key id, and the event
id as the idempotency key (in the message and as `idempotency-key` metadata), so the bank can
check integrity and origin and drop redeliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from faceguard.v1 import common_pb2, fraud_engine_pb2, fraud_engine_pb2_grpc
from service.domain import APPROVE, DECLINE
from service.risk.results import Assessed, RuleResult
from service.store.outbox import OutboxItem

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_MAX_MS = 5000

_RULE_FIELDS = ("rule", "fired", "reason_code", "score", "hard", "detail")


class CallbackKeyError(ValueError):
    """The HMAC key file is missing or unusable."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    secret: bytes

    def sign(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def verify(self, data: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(data), signature)


def load_signing_key(path: Path, key_id: str) -> SigningKey:
    """A hex-encoded key of at least 32 bytes, one line in a file readable by faceguard only."""
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise CallbackKeyError(f"callback HMAC key {path}: {exc}") from exc
    if len(secret) < 32:
        raise CallbackKeyError(f"callback HMAC key {path}: at least 32 bytes are required")
    return SigningKey(key_id, secret)


def write_signing_key(path: Path) -> None:
    """A new random key file (development setups and tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)


def identity_event(document: dict[str, Any]) -> fraud_engine_pb2.IdentityEvent:
    """The wire event from an outbox document (or a decision not yet recorded)."""
    payload = document.get("payload", {})
    occurred = Timestamp()
    occurred.FromDatetime(datetime.fromisoformat(document["occurred_at"]))
    details = struct_pb2.Struct()
    details.update(payload)
    optional = {
        name: payload[name]
        for name in ("risk_score", "match_score", "threshold", "quality_score", "liveness_score")
        if payload.get(name) is not None
    }
    return fraud_engine_pb2.IdentityEvent(
        event_id=document["event_id"],
        sequence=document.get("sequence", 0),
        type=document["type"],
        occurred_at=occurred,
        customer_id=document.get("customer_id", ""),
        device_id=document.get("device_id", ""),
        outcome=common_pb2.Outcome.Value(document["outcome"])
        if document["outcome"] in common_pb2.Outcome.keys()
        else common_pb2.OUTCOME_UNSPECIFIED,
        reason_codes=payload.get("reason_codes", []),
        policy_version=payload.get("policy_version", ""),
        rules=[
            common_pb2.RuleResult(**{k: r[k] for k in _RULE_FIELDS if k in r})
            for r in payload.get("rules", [])
        ],
        details=details,
        **optional,
    )


def channel_for(target: str, ca: Path | None, cert: Path | None, key: Path | None) -> grpc.Channel:
    """TLS when a CA is configured (mutual TLS with a client certificate), else plaintext.

    After an outage gRPC fails calls at once until its next reconnect attempt, and its
    reconnect backoff grows to 120 s by default; every such call spends one of an event's
    attempts. Capping it at 5 s lets the dispatcher's own backoff decide when to give up.
    """
    options = [("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS)]
    if ca is None:
        return grpc.insecure_channel(target, options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, credentials, options)


class FraudEngineClient:
    """One channel to the bank's fraud engine, shared by the dispatcher's threads."""

    def __init__(self, channel: grpc.Channel, key: SigningKey, timeout_s: float) -> None:
        self.channel = channel
        self.stub = fraud_engine_pb2_grpc.FraudEngineStub(channel)
        self.key = key
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def deliver(self, item: OutboxItem) -> None:
        """Send one event; raises grpc.RpcError when the engine did not acknowledge it."""
        data = identity_event(item.document).SerializeToString(deterministic=True)
        request = fraud_engine_pb2.OnIdentityEventRequest(
            event=data, signature=self.key.sign(data), key_id=self.key.key_id,
            idempotency_key=item.event_id, attempt=item.attempts + 1,
        )  # fmt: skip
        self.stub.OnIdentityEvent(
            request, timeout=self.timeout_s, metadata=(("idempotency-key", item.event_id),)
        )


class Assessor:
    """`Consult` for the risk checks: ask the engine, under a deadline, fail open or closed."""

    def __init__(self, client: FraudEngineClient, timeout_s: float, fail_closed: bool) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.fail_closed = fail_closed

    def __call__(self, kind: str, decision: Assessed) -> tuple[RuleResult, str]:
        document = {
            "event_id": decision.event_id, "type": kind,
            "occurred_at": decision.decided_at.isoformat(), "customer_id": decision.customer_id,
            "device_id": decision.device_id, "outcome": decision.outcome,
            "payload": decision.audit_payload(),
        }  # fmt: skip
        try:
            reply = self.client.stub.Assess(
                fraud_engine_pb2.AssessRequest(event=identity_event(document)),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            log.warning("fraud engine assess failed (%s): failing %s", code,
                        "closed" if self.fail_closed else "open")  # fmt: skip
            mode = "fail-closed" if self.fail_closed else "fail-open"
            rule = RuleResult(
                rule="fraud_engine", fired=self.fail_closed, reason_code="FRAUD_ENGINE_UNAVAILABLE",
                hard=self.fail_closed, detail=f"{code}; {mode}",
            )  # fmt: skip
            return rule, DECLINE if self.fail_closed else APPROVE
        outcome = common_pb2.Outcome.Name(reply.outcome)
        if outcome == "OUTCOME_UNSPECIFIED":
            outcome = APPROVE
        fired = outcome != APPROVE
        rule = RuleResult(
            rule="fraud_engine", fired=fired,
            reason_code=reply.reason_codes[0] if reply.reason_codes else "FRAUD_ENGINE",
            score=reply.risk_score if fired else 0.0, hard=outcome == DECLINE,
            detail=f"recommends {outcome}",
        )  # fmt: skip
        return rule, outcome
