"""Calibration use cases: propose thresholds from the gallery, list them, approve or reject.

A proposal samples the gallery (`sample_gallery`), scores its cross-customer pairs and asks the
estimator for each FMR target's threshold and confidence interval; it also measures the live
thresholds on the same sample (drift), stores the lot with an audit event, and updates the
gauges operations alert on. It changes no threshold. Only an admin's approval does: the
proposal's thresholds become the engine's from the next decision on, persisted with an audit
event naming the operator and the old and new thresholds. Validation and domain errors here,
messages in the servicer.

Which calibration decides at start (`live_calibration`): the model pack's built-in one, or one
approved on the gallery; each has a version that every decision records. The manifest's is
named by its embedder version and a digest of its thresholds, so editing the thresholds changes
the name too. An applied gallery calibration overrides it across restarts, but only for the
embedder version whose templates it was measured on: after a model upgrade the manifest's
thresholds decide again until a calibration of the new embedder is approved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass

from service import metrics
from service.app.engine import Engine
from service.app.requests import page_limit, require_text, row_after
from service.calibration.estimate import (
    ImpostorSample,
    ThresholdProposal,
    estimated_fmr,
    propose_thresholds,
    sample_impostor_scores,
)
from service.config import CalibrationSettings
from service.errors import FaceguardError, TooLarge, Unavailable, Unprocessable
from service.modelpack.manifest import Manifest
from service.store import calibrations
from service.store.audit_chain import NewEvent
from service.store.calibrations import (
    APPLIED,
    PROPOSED,
    REJECTED,
    CalibrationRecord,
    NewProposal,
    TargetCalibration,
)
from service.store.customers import Store
from service.store.gallery_sample import sample_gallery

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"
# One proposal computes at a time in a process: each holds a bounded sample, but an admin
# (or a script) asking again and again must not multiply that.
_PROPOSING = threading.Lock()
# Decisions apply one after another, so the engine's thresholds follow the database's order.
_DECIDING = threading.Lock()


@dataclass(frozen=True)
class Live:
    """The calibration deciding now."""

    version: str
    fmr_target: str
    threshold: float
    thresholds: dict[str, float]


class CalibrationAdmin:
    """The calibration use cases over one engine (its store, embedder and live policy)."""

    def __init__(self, engine: Engine, settings: CalibrationSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.store = engine.gallery.store

    @property
    def embedder(self) -> str:
        return self.engine.vision.model_versions["embedder"]

    def live(self) -> Live:
        policy = self.engine.policy
        return Live(
            policy.calibration_version, policy.fmr_target, policy.threshold,
            dict(policy.thresholds),
        )  # fmt: skip

    def propose(
        self, proposer: str, sample_customers: int = 0, client: str = ""
    ) -> CalibrationRecord:
        """Sample the gallery and store a proposal; FAILED_PRECONDITION
        (CALIBRATION_GALLERY_TOO_SMALL) with fewer than two customers to pair. `client` is
        the caller's certificate name, for the audit event."""
        proposer = require_text("operator_id", proposer, 128)
        limit = self.settings.sample_customers
        if sample_customers > limit:
            raise TooLarge(
                "CALIBRATION_SAMPLE_TOO_LARGE",
                f"sample_customers is at most {limit} (calibration.sample_customers)",
            )
        if not _PROPOSING.acquire(blocking=False):
            raise Unavailable("CALIBRATION_BUSY", "a calibration is being proposed; retry later")
        try:
            return self._propose(proposer, sample_customers or limit, client)
        finally:
            _PROPOSING.release()

    def _propose(self, proposer: str, customers: int, client: str) -> CalibrationRecord:
        policy = self.engine.policy  # the live thresholds the drift is measured for
        embedder = self.embedder
        sample = sample_gallery(
            self.store, embedder, customers, self.settings.templates_per_customer
        )
        if sample.people < 2:
            raise Unprocessable(
                "CALIBRATION_GALLERY_TOO_SMALL",
                f"{sample.people} customer(s) with {embedder} templates: calibration needs "
                "pairs of different customers",
            )
        scores = sample_impostor_scores(
            sample.vectors, sample.owners, max_pairs=self.settings.max_pairs,
            seed=secrets.randbelow(2**31),
        )  # fmt: skip
        targets = sorted(policy.thresholds, key=float, reverse=True)
        proposals = propose_thresholds(
            scores, [float(t) for t in targets], confidence=self.settings.confidence
        )
        results = [
            _target(target, proposal, scores, policy.thresholds[target])
            for target, proposal in zip(targets, proposals, strict=True)
        ]
        pairs = int(proposals[0].impostor_pairs) if proposals else 0
        new = NewProposal(
            proposer=proposer, embedder=embedder, people=sample.people,
            templates=len(sample.owners), impostor_pairs=pairs,
            confidence=self.settings.confidence, targets=tuple(results),
            live_version=policy.calibration_version,
        )  # fmt: skip
        event = NewEvent(
            type="CALIBRATION_PROPOSED", outcome=PROPOSED,
            payload={
                "operator": proposer, "client": client, "embedder": embedder,
                "people": sample.people, "impostor_pairs": pairs,
                "live_version": policy.calibration_version,
                "proposed": {t.target_fmr: t.threshold for t in results},
                "live_fmr_ratio": {t.target_fmr: t.live_fmr_ratio for t in results},
            },
        )  # fmt: skip
        record = calibrations.add_proposal(self.store, new, event)
        metrics.record_calibration(
            {t.target_fmr: t.live_estimated_fmr if t.resolvable else None for t in results}
        )
        log.info(
            "calibration %s proposed by %s: %d people, %d impostor pairs; live FMR/target %s",
            record.version, proposer, sample.people, pairs,
            ", ".join(f"{t.target_fmr}: {t.live_fmr_ratio:.2f}x" for t in results),
        )  # fmt: skip
        return record

    def get(self, calibration_id: int) -> CalibrationRecord:
        return calibrations.get(self.store, calibration_id)

    def page(self, size: int, token: str) -> tuple[list[CalibrationRecord], str]:
        size = page_limit(size, default=20, limit=100)
        records, cursor = calibrations.page(self.store, size, row_after(token) or None)
        return records, str(cursor) if cursor is not None else ""

    def decide(
        self, calibration_id: int, approve: bool, reason: str, operator_id: str, client: str
    ) -> CalibrationRecord:
        """Apply or reject a PROPOSED calibration; audited with the old and new thresholds."""
        reason = require_text("reason", reason, 256)
        operator_id = require_text("operator_id", operator_id, 128)
        with _DECIDING:
            record = calibrations.get(self.store, calibration_id)
            if record.status != PROPOSED:
                raise calibrations.already_decided(record)
            old = self.engine.policy
            if approve:
                self._check_applicable(record, old.fmr_target)
                if operator_id == record.proposer:  # maker-checker: a second person approves
                    raise Unprocessable(
                        "CALIBRATION_SAME_OPERATOR",
                        f"calibration {record.id} was proposed by {operator_id}: another "
                        "operator must approve it (its proposer may reject it)",
                    )
            # A target the sample could not resolve keeps the threshold live now.
            new_thresholds = {**old.thresholds, **record.proposed_thresholds()}
            event = NewEvent(
                type="CALIBRATION_APPLIED" if approve else "CALIBRATION_REJECTED",
                outcome=APPLIED if approve else REJECTED,
                payload={
                    "calibration_id": record.id, "operator": operator_id, "client": client,
                    "reason": reason, "old_version": old.calibration_version,
                    "new_version": record.version if approve else old.calibration_version,
                    "old_thresholds": dict(old.thresholds),
                    "new_thresholds": new_thresholds if approve else dict(old.thresholds),
                },
            )  # fmt: skip
            status = APPLIED if approve else REJECTED
            decided = calibrations.decide(
                self.store, record.id, status, operator_id, reason, event,
                new_thresholds if approve else None,
            )  # fmt: skip
            if approve:
                self.engine.use_calibration(record.version, new_thresholds)
                metrics.record_calibration({t.target_fmr: t.estimated_fmr for t in record.targets})
        log.warning(
            "calibration %s %s by %s (%s)", record.version, status.lower(), operator_id, reason
        )
        return decided

    def _check_applicable(self, record: CalibrationRecord, fmr_target: str) -> None:
        if record.embedder != self.embedder:
            raise Unprocessable(
                "CALIBRATION_MODEL_MISMATCH",
                f"calibration {record.id} was measured on {record.embedder} templates; the "
                f"service embeds with {self.embedder}",
            )
        operating = {t.target_fmr: t for t in record.targets}.get(fmr_target)
        if operating is None or operating.threshold is None:
            raise Unprocessable(
                "CALIBRATION_TARGET_UNRESOLVED",
                f"calibration {record.id} has no threshold for the operating FMR {fmr_target}"
                + (f" ({operating.reason})" if operating is not None else ""),
            )


def _target(
    target: str, proposal: ThresholdProposal, scores: ImpostorSample, live_threshold: float
) -> TargetCalibration:
    """One target's proposal, and the live threshold's drift, measured on the same scores."""
    live_fmr = estimated_fmr(scores, live_threshold)
    drift = {
        "live_threshold": live_threshold, "live_estimated_fmr": live_fmr,
        "live_fmr_ratio": live_fmr / float(target),
    }  # fmt: skip
    if not proposal.resolvable or proposal.threshold is None:
        return TargetCalibration(target, False, proposal.reason, None, None, None, None, **drift)
    threshold = float(proposal.threshold)
    return TargetCalibration(
        target, True, proposal.reason, threshold, _float(proposal.ci_low),
        _float(proposal.ci_high), estimated_fmr(scores, threshold), **drift,
    )  # fmt: skip


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def scheduled_proposal(engine: Engine, settings: CalibrationSettings) -> CalibrationRecord | None:
    """The service's periodic proposal (never applied); a refusal, such as a gallery too
    small to pair, is logged and the next round tries again."""
    try:
        return CalibrationAdmin(engine, settings).propose(SCHEDULER)
    except FaceguardError as exc:
        log.warning("scheduled calibration not proposed: %s (%s)", exc.reason, exc)
        return None


@dataclass(frozen=True)
class LiveCalibration:
    version: str
    thresholds: dict[str, float]


def embedder_version(manifest: Manifest) -> str:
    return str(manifest.section("embedder")["version"])


def manifest_calibration(manifest: Manifest) -> LiveCalibration:
    """The thresholds `faceguard eval calibrate` wrote into the manifest, and their version."""
    raw = manifest.section("embedder").get("thresholds", {})
    thresholds = {str(k): float(v) for k, v in raw.items()}
    digest = hashlib.sha256(json.dumps(sorted(thresholds.items())).encode()).hexdigest()[:12]
    return LiveCalibration(f"manifest:{embedder_version(manifest)}:{digest}", thresholds)


def live_calibration(store: Store, manifest: Manifest) -> LiveCalibration:
    """The applied gallery calibration of the current embedder, else the manifest's."""
    built_in = manifest_calibration(manifest)
    record = calibrations.applied(store)
    if record is None:
        return built_in
    if record.embedder != embedder_version(manifest):
        log.warning(
            "calibration %s was made for embedder %s, not %s: the manifest's thresholds decide",
            record.version, record.embedder, embedder_version(manifest),
        )  # fmt: skip
        return built_in
    return LiveCalibration(record.version, built_in.thresholds | (record.applied_thresholds or {}))
