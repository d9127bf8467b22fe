"""What runs beside the servicers: the interceptor chain, the metrics endpoint, and the jobs of
`service.app.operations` (key file reload, retention, calibration), started and stopped with
the server."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from service import metrics
from service.api.auth import AuthInterceptor
from service.api.limits import LimitInterceptor
from service.api.refusals import device_refusal_auditor
from service.api.telemetry import TelemetryInterceptor
from service.app import operations
from service.app.engine import Engine
from service.config import Settings

log = logging.getLogger(__name__)


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


class Operations:
    """Metrics from the start (readiness shows 0 while models load); the rest once the
    engine exists."""

    def __init__(self, settings: Settings, ready: Callable[[], bool]) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._running: list[operations.Stoppable] = []
        self.endpoint: metrics.MetricsEndpoint | None = None
        self.collector = metrics.ServiceCollector(
            ready=ready,
            gallery_templates=lambda: (
                operations.template_count(self._engine) if self._engine else 0
            ),
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
        if (reader := operations.outbox_reader(engine)) is not None:
            self.collector.outbox = reader
        self._running.extend(operations.start_jobs(engine, self.settings))

    def stop(self) -> None:
        for part in reversed(self._running):
            part.stop()
        if self.endpoint is not None:
            self.endpoint.close()
