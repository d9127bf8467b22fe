"""The risk parts of one running service: checks, lists, outbox, delivery, and their start/stop.

`service.app.assembly.build_risk` builds it from settings (risk imports no settings). The store
writes each decision's outbox and velocity rows in the transaction of its audit event
(`Store.record_event`); the velocity rule's windows set how long attempt rows stay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.gallery.watchlist import Watchlist
from service.risk.checks import RiskChecks
from service.risk.dispatcher import Dispatcher
from service.store.checkpoints import Checkpointer
from service.store.lists import RiskLists
from service.store.outbox import Outbox
from service.store.velocity import Velocity

if TYPE_CHECKING:
    from service.risk.callback import FraudEngineClient

log = logging.getLogger(__name__)


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
