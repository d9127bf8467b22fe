"""What runs beside the servicers: the interceptor chain, metrics endpoint, key file reload,
the retention schedule and the calibration job, started and stopped with the server."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import grpc
from sqlalchemy import func, select

from service import metrics
from service.api.auth import AuthInterceptor
from service.api.limits import LimitInterceptor
from service.api.refusals import device_refusal_auditor
from service.api.telemetry import TelemetryInterceptor
from service.app.calibration import scheduled_proposal
from service.app.engine import Engine
from service.config import Settings
from service.gallery.store import Store
from service.keys import KeyringReloader, key_file_path
from service.retention import PurgeSchedule, purge
from service.risk.outbox import PENDING, outbox_table

log = logging.getLogger(__name__)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def interceptors(
    settings: Settings, development: bool, engine: Callable[[], Engine] | None = None
) -> list[grpc.ServerInterceptor]:
    """Outermost first: telemetry sees every call (refused ones too), then who, then how much;
    with `engine`, refused device claims are audited."""
    if development:
        log.warning(
            "DEVELOPMENT: plaintext on %s, no client identities: every caller has every role "
            "and rate limits are off; production needs server TLS and security.client_ca",
            settings.server.host,
        )
    limits = LimitInterceptor(settings.security, settings.server.max_message_bytes, settings.server)
    refused = device_refusal_auditor(engine, limits.devices) if engine is not None else None
    return [TelemetryInterceptor(), AuthInterceptor(development, refused=refused), limits]


def outbox_stats(store: Store) -> metrics.OutboxStats:
    """Pending callbacks and the age of the oldest, read from the risk outbox's table."""
    query = select(func.count(), func.min(outbox_table.c.created_at)).where(
        outbox_table.c.status == PENDING
    )
    with store.connect() as conn:
        depth, oldest = conn.execute(query).one()
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
    return metrics.OutboxStats(int(depth), max(0.0, age))


class Operations:
    """Metrics from the start (readiness shows 0 while models load); the rest once the
    engine exists."""

    def __init__(self, settings: Settings, ready: Callable[[], bool]) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._running: list[_Stoppable] = []
        self.endpoint: metrics.MetricsEndpoint | None = None
        self.collector = metrics.ServiceCollector(
            ready=ready,
            gallery_templates=lambda: len(self._engine.gallery.index) if self._engine else 0,
        )
        observability = settings.observability
        if observability.metrics_port is not None:
            self.endpoint = metrics.MetricsEndpoint(
                observability.metrics_host, observability.metrics_port, self.collector
            )

    @property
    def metrics_port(self) -> int | None:
        return self.endpoint.port if self.endpoint else None

    def engine_built(self, engine: Engine) -> None:
        self._engine = engine
        engine.vision.instrument(metrics.observe_stage)
        metrics.record_models(engine.vision.model_versions)
        if engine.risk is not None:
            self.collector.outbox = functools.partial(outbox_stats, engine.risk.outbox.store)
        key_file = key_file_path(self.settings)
        if key_file is not None:
            reloader = KeyringReloader(engine.gallery.store, key_file)
            reloader.start()
            self._running.append(reloader)
        privacy = self.settings.privacy
        if privacy.purge_every_hours is not None:
            schedule = PurgeSchedule(
                lambda: purge(
                    engine.gallery.store,
                    engine.gallery.delete,
                    privacy.inactive_days,
                    datetime.now(UTC),
                    outbox_keep_days=privacy.outbox_keep_days,
                ),
                privacy.purge_every_hours * 3600.0,
            )
            schedule.start()
            self._running.append(schedule)
        calibration = self.settings.calibration
        if calibration.every_hours > 0:  # proposes only: an admin approves
            job = PurgeSchedule(
                lambda: scheduled_proposal(engine, calibration),
                calibration.every_hours * 3600.0,
                name="calibration",
            )
            job.start()
            self._running.append(job)

    def stop(self) -> None:
        for part in reversed(self._running):
            part.stop()
        if self.endpoint is not None:
            self.endpoint.close()
