"""Which calibration decides: the model pack's built-in one, or one approved on the gallery.

Each has a version that every decision records. The manifest's is named by its embedder
version and a digest of its thresholds, so editing the thresholds changes the name too. An
applied gallery calibration overrides it across restarts, but only for the embedder version
whose templates it was measured on: after a model upgrade the manifest's thresholds decide
again until a calibration of the new embedder is approved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from service.modelpack.manifest import Manifest
from service.store import calibrations
from service.store.customers import Store

log = logging.getLogger(__name__)


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
