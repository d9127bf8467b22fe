"""Building the service's parts from settings: keyring, store, gallery, risk runtime, engine.

Registering the outbox as a store event hook happens in `build_risk`, before the engine serves
a single call, so no decision is ever recorded without its outbox row. No grpc here: the
fraud-engine client (and so grpc) is only loaded when a fraud engine is configured.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.app.calibration import live_calibration
from service.app.decisions import Policy
from service.app.engine import Engine
from service.app.index_backend import open_index
from service.app.vision_pool import (
    InProcessVision,
    Vision,
    VisionProcesses,
    default_process_count,
)
from service.config import RiskSettings, Settings, SettingsError, operating_threshold
from service.gallery.gallery import Gallery
from service.gallery.watchlist import Watchlist
from service.modelpack.manifest import load_manifest
from service.risk.checks import RiskChecks
from service.risk.dispatcher import Dispatcher, lease_for
from service.risk.policy import PolicyError, load_policy
from service.risk.runtime import RiskRuntime
from service.store.audit_chain import ChainKey, ChainKeyError
from service.store.changes import listener_for
from service.store.checkpoints import Checkpointer
from service.store.crypto import Keyring, KeyringError, generate_keyring, load_keyring
from service.store.customers import Store
from service.store.durable import make_private
from service.store.lists import RiskLists
from service.store.outbox import Backoff, Outbox
from service.store.velocity import Limits, Velocity
from service.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

KEYRING_FILE = "template-keys.json"
HMAC_KEY_FILE = "callback-hmac.key"


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


def hmac_key_path(settings: RiskSettings, data_dir: Path, dev: bool) -> Path:
    """The configured key file; in development a generated one in the data dir."""
    if settings.hmac_key_file is not None:
        return settings.hmac_key_file
    dev_file = data_dir / HMAC_KEY_FILE
    if not dev_file.is_file():
        if not dev:
            raise SettingsError(
                "risk.callback_target needs risk.hmac_key_file (or --dev-key for development)"
            )
        from service.risk.callback import write_signing_key

        write_signing_key(dev_file)
        log.warning("DEVELOPMENT KEY: generated a callback HMAC key in %s", dev_file)
    return dev_file


def build_risk(
    settings: RiskSettings, store: Store, data_dir: Path, dim: int, liveness_threshold: float,
    dev: bool = False,
) -> RiskRuntime:  # fmt: skip
    try:
        policy = load_policy(settings.policy_file)
    except PolicyError as exc:
        raise SettingsError(str(exc)) from exc
    lists, watchlist, outbox = RiskLists(store), Watchlist(store, dim), Outbox(store)
    rule = policy.setting("velocity")
    velocity = Velocity(store, Limits.of(rule.params) if rule else None)
    watchlist.open()
    store.attempts_kept = velocity.keep
    client = None
    if settings.callback_target:
        from service.risk.callback import (
            CallbackKeyError,
            FraudEngineClient,
            channel_for,
            load_signing_key,
        )

        try:
            key = load_signing_key(hmac_key_path(settings, data_dir, dev), settings.hmac_key_id)
        except CallbackKeyError as exc:
            raise SettingsError(str(exc)) from exc
        channel = channel_for(settings.callback_target, settings.callback_tls_ca,
                              settings.callback_tls_cert, settings.callback_tls_key)  # fmt: skip
        client = FraudEngineClient(channel, key, settings.callback_timeout_s)
    consult = None
    if settings.assess != "off":
        if client is None:
            raise SettingsError("risk.assess needs risk.callback_target")
        from service.risk.callback import Assessor

        consult = Assessor(client, settings.assess_timeout_s, settings.assess == "fail_closed")
    checks = RiskChecks(policy, lists, watchlist, velocity, liveness_threshold, consult)
    dispatcher = None
    if client is not None:
        backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s,
                          settings.dead_letter_after)  # fmt: skip
        dispatcher = Dispatcher(outbox, client.deliver, backoff, settings.workers,
                                settings.poll_interval_s,
                                lease_s=lease_for(settings.callback_timeout_s))  # fmt: skip
    log.info("risk policy %s with %d rules", policy.version, len(policy.rules))
    return RiskRuntime(checks, lists, watchlist, outbox, velocity, dispatcher, client)
