"""The risk parts of one running service, built from settings: checks, lists, outbox, delivery.

The store writes each decision's outbox and velocity rows in the transaction of its audit
event (`Store.record_event`); the velocity rule's windows set how long attempt rows stay. The
gRPC client (and so grpc) is only loaded when a fraud engine is configured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import RiskSettings, SettingsError
from service.gallery.watchlist import Watchlist
from service.risk.checks import RiskChecks
from service.risk.dispatcher import Dispatcher, lease_for
from service.risk.policy import PolicyError, load_policy
from service.store.checkpoints import Checkpointer
from service.store.customers import Store
from service.store.lists import RiskLists
from service.store.outbox import Backoff, Outbox
from service.store.velocity import Limits, Velocity

if TYPE_CHECKING:
    from service.risk.callback import FraudEngineClient

log = logging.getLogger(__name__)

HMAC_KEY_FILE = "callback-hmac.key"


@dataclass
class RiskRuntime:
    checks: RiskChecks
    lists: RiskLists
    watchlist: Watchlist
    outbox: Outbox
    velocity: Velocity
    dispatcher: Dispatcher | None = None
    client: FraudEngineClient | None = None
    # Signed chain-head checkpoints: like the callbacks, what leaves the database.
    checkpointer: Checkpointer | None = None

    def start(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
            log.info("fraud-engine callbacks: dispatcher started")
        else:
            log.warning("no risk.callback_target: decision events wait in the outbox")

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.client is not None:
            self.client.close()
        if self.checkpointer is not None:
            self.checkpointer.stop()


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
