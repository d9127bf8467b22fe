"""Building the service's parts from settings: keyring, store, gallery, engine. No grpc here."""

from __future__ import annotations

import logging
from pathlib import Path

from service.app.vision_pool import (
    InProcessVision,
    Vision,
    VisionProcesses,
    default_process_count,
)
from service.calibration.live import live_calibration
from service.config import Settings, SettingsError, operating_threshold
from service.engine import Engine, Policy
from service.gallery.backend import open_index
from service.gallery.gallery import Gallery
from service.modelpack.manifest import load_manifest
from service.risk.runtime import build_risk
from service.store.audit_chain import ChainKey, ChainKeyError
from service.store.changes import listener_for
from service.store.checkpoints import Checkpointer
from service.store.crypto import Keyring, KeyringError, generate_keyring, load_keyring
from service.store.customers import Store
from service.store.durable import make_private
from service.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

KEYRING_FILE = "template-keys.json"


def keyring_for(settings: Settings) -> Keyring:
    """The template keyring; without one the service does not start, unless dev mode makes one."""
    storage = settings.storage
    dev_file = storage.data_dir / KEYRING_FILE
    path = storage.key_file or (dev_file if dev_file.is_file() else None)
    try:
        return load_keyring(path)
    except KeyringError as exc:
        if not storage.dev_generate_key or storage.key_file is not None:
            raise SettingsError(
                f"no template encryption key ({exc}); give storage.key_file or "
                "FACEGUARD_TEMPLATE_KEYS, or --dev-key for development"
            ) from exc
    keyring = generate_keyring()
    keyring.dump(dev_file)
    log.warning(
        "DEVELOPMENT KEY: generated a template encryption key in %s; "
        "production needs a managed key (storage.key_file or FACEGUARD_TEMPLATE_KEYS)",
        dev_file,
    )
    return keyring


def key_file_path(settings: Settings) -> Path | None:
    """The key file the service reads its keyring from, None when it comes from the
    environment (the same choice as `keyring_for`)."""
    storage = settings.storage
    path = storage.key_file or storage.data_dir / KEYRING_FILE
    return path if path.is_file() else None


def audit_key_for(settings: Settings, create: bool = True) -> ChainKey | None:
    """The audit chain's key: the configured file, or the default one beside the template key
    file, made there when missing (`create`) so every chain is keyed; None when absent."""
    storage = settings.storage
    path = storage.audit_key_path()
    if not path.is_file():
        if storage.audit_key_file is not None:
            raise SettingsError(f"storage.audit_key_file {path} does not exist")
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        ChainKey.generate().dump(path)
        log.warning("generated the audit chain key %s; keep a copy off this machine", path)
    try:
        return ChainKey.from_file(path)
    except ChainKeyError as exc:
        raise SettingsError(str(exc)) from exc


def open_store(settings: Settings) -> Store:
    make_private(settings.storage.data_dir)
    store = Store(settings.storage.url(), keyring_for(settings), audit_key_for(settings))
    try:
        store.create_schema(migrate=settings.storage.auto_migrate)
    except ChainKeyError as exc:
        store.close()
        raise SettingsError(str(exc)) from exc
    except SettingsError:  # a schema this code does not serve
        store.close()
        raise
    return store


def build_engine(settings: Settings) -> Engine:
    """Models loaded, store opened, index consistent with the store: ready to serve."""
    manifest = load_manifest()
    operating_threshold(manifest, settings.vision.fmr_target)  # the target is calibrated
    store = open_store(settings)  # first: without a key the service refuses to start at once
    calibration = live_calibration(store, manifest)  # an approved one overrides the manifest
    policy = Policy(
        threshold=calibration.thresholds[settings.vision.fmr_target],
        fmr_target=settings.vision.fmr_target,
        liveness_threshold=float(manifest.section("liveness").get("threshold", 0.0)),
        allow_multiple_faces=settings.vision.allow_multiple_faces,
        calibration_version=calibration.version,
        thresholds=calibration.thresholds,
    )
    vision = _vision(settings, policy)
    try:
        members = manifest.section("embedder")["members"]
        dim = int(sum(manifest.models[name].extra["dim"] for name in members))
        model = vision.model_versions["embedder"]
        index = open_index(settings.gallery, store, model, dim, settings.storage.data_dir)
        gallery = Gallery(store, index, model, settings.storage.snapshot_every)
        risk = build_risk(
            settings.risk, store, settings.storage.data_dir, dim, policy.liveness_threshold,
            dev=settings.storage.dev_generate_key,
        )  # fmt: skip
        gallery.follow(listener_for(store), settings.gallery.follow_poll_s,
                       [risk.watchlist.catch_up])  # fmt: skip
        risk.checkpointer = Checkpointer(
            store, settings.storage.checkpoint_dir(), settings.storage.audit_checkpoint_every_s
        )
    except BaseException:
        vision.close()
        raise
    return Engine(vision, gallery, policy, risk=risk)


def _vision(settings: Settings, policy: Policy) -> Vision:
    """The face work: in worker processes, or (`vision.processes = 0`) in this one."""
    config = settings.service_pipeline_config()
    count = settings.vision.processes
    if count == 0:
        return InProcessVision(FacePipeline(config), policy.allow_multiple_faces)
    return VisionProcesses(
        config,
        count or default_process_count(),
        allow_multiple=policy.allow_multiple_faces,
        timeout_s=settings.vision.worker_timeout_s,
    )
