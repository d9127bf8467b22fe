"""Prometheus metrics: the series below, served on `observability.metrics_port` at /metrics.

| series | type | labels, or what it measures |
|---|---|---|
| faceguard_rpc_duration_seconds | histogram | method, code |
| faceguard_rpc_errors_total | counter | method, code, reason (the ErrorInfo reason) |
| faceguard_stage_duration_seconds | histogram | stage: decode, detect, quality, align, ... |
| faceguard_decisions_total | counter | outcome |
| faceguard_decision_reasons_total | counter | outcome, reason |
| faceguard_gallery_templates | gauge | templates in the vector index |
| faceguard_outbox_depth | gauge | pending fraud-engine callbacks (with the risk outbox) |
| faceguard_outbox_oldest_age_seconds | gauge | age of the oldest pending one, 0 when none |
| faceguard_model_info | gauge (1) | task, version |
| faceguard_ready | gauge | 1 once models are loaded and the index is consistent |
| faceguard_calibration_estimated_fmr | gauge | target: FMR at the live threshold, on the gallery |
| faceguard_calibration_fmr_ratio | gauge | target: that FMR over the target (1: on target) |

Labels never name a customer, a device or a client: only methods, codes, stages, outcomes
and reason codes, a bounded set. No grpc here; the API's telemetry interceptor feeds the
RPC and decision series.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RPC_DURATION = Histogram(
    "faceguard_rpc_duration_seconds", "RPC latency by method and status code",
    ["method", "code"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
RPC_ERRORS = Counter(
    "faceguard_rpc_errors_total", "Failed RPCs by method, status code and ErrorInfo reason",
    ["method", "code", "reason"],
)  # fmt: skip
STAGE_DURATION = Histogram(
    "faceguard_stage_duration_seconds", "Face pipeline stage latency", ["stage"],
    buckets=_LATENCY_BUCKETS,
)  # fmt: skip
DECISIONS = Counter("faceguard_decisions_total", "Decisions by outcome", ["outcome"])
DECISION_REASONS = Counter(
    "faceguard_decision_reasons_total", "Reason codes of decisions, by outcome",
    ["outcome", "reason"],
)  # fmt: skip
MODEL_INFO = Gauge("faceguard_model_info", "Model versions in use (value 1)", ["task", "version"])
CALIBRATION_FMR = Gauge(
    "faceguard_calibration_estimated_fmr",
    "False match rate at the live threshold, estimated on the enrolled gallery", ["target"],
)  # fmt: skip
CALIBRATION_FMR_RATIO = Gauge(
    "faceguard_calibration_fmr_ratio",
    "Estimated false match rate at the live threshold over its target", ["target"],
)  # fmt: skip
PIPELINE_STAGES = ("decode", "detect", "quality", "align", "liveness", "embed")


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_age_seconds: float


class ServiceCollector(Collector):
    """Gauges read when scraped: readiness, gallery size and, if there is one, the outbox."""

    def __init__(
        self,
        ready: Callable[[], bool],
        gallery_templates: Callable[[], int],
        outbox: Callable[[], OutboxStats] | None = None,
    ) -> None:
        self.ready = ready
        self.gallery_templates = gallery_templates
        self.outbox = outbox

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = self.ready()
        yield GaugeMetricFamily("faceguard_ready", "1 when serving", value=float(ready))
        if not ready:
            return
        yield GaugeMetricFamily(
            "faceguard_gallery_templates", "Templates in the vector index",
            value=float(self.gallery_templates()),
        )  # fmt: skip
        if self.outbox is not None:
            stats = self.outbox()
            yield GaugeMetricFamily(
                "faceguard_outbox_depth", "Events waiting for the fraud engine",
                value=float(stats.depth),
            )  # fmt: skip
            yield GaugeMetricFamily(
                "faceguard_outbox_oldest_age_seconds", "Age of the oldest undelivered event",
                value=stats.oldest_age_seconds,
            )  # fmt: skip


def record_models(versions: dict[str, str]) -> None:
    for task, version in versions.items():
        MODEL_INFO.labels(task=task, version=version).set(1)


def record_calibration(estimates: dict[str, float | None]) -> None:
    """The gallery's estimated false match rate at each live threshold, by target. None (a
    sample too small to resolve the target) removes that target's series: no figure to
    alert on is better than a meaningless one."""
    for target, fmr in estimates.items():
        if fmr is None:
            for gauge in (CALIBRATION_FMR, CALIBRATION_FMR_RATIO):
                with contextlib.suppress(KeyError):
                    gauge.remove(target)
            continue
        CALIBRATION_FMR.labels(target=target).set(fmr)
        CALIBRATION_FMR_RATIO.labels(target=target).set(fmr / float(target))


def record_decision(outcome: str, reasons: list[str]) -> None:
    DECISIONS.labels(outcome=outcome).inc()
    for reason in reasons:
        DECISION_REASONS.labels(outcome=outcome, reason=reason).inc()


Observer = Callable[[str, float], None]  # (stage, seconds)


def observe_stage(stage: str, seconds: float) -> None:
    """Record one pipeline stage's duration."""
    STAGE_DURATION.labels(stage=stage).observe(seconds)


def _timed(stage: str, function: Callable[..., Any], observe: Observer) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            observe(stage, time.perf_counter() - start)

    return timed


def instrument_pipeline(pipeline: Any, observe: Observer = observe_stage) -> None:
    """Time each stage of a `FacePipeline` in place, reporting to `observe` (by default the
    stage histogram; a vision worker collects them to send back with its answer).

    The vision layer stays free of metrics: the stage methods are wrapped on this one
    instance, which its own `analyse_faces` then calls through.
    """
    for stage in PIPELINE_STAGES:
        setattr(pipeline, stage, _timed(stage, getattr(pipeline, stage), observe))


class _Together(Collector):
    """The process-wide series and one service's gauges, as one registry serves them."""

    def __init__(self, *sources: Collector | CollectorRegistry) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        for source in self.sources:
            yield from source.collect()


class MetricsEndpoint:
    """The /metrics HTTP server: the process-wide series plus this service's collector.

    The collector goes into a registry of the endpoint's own, so two services in one process
    (as in tests) never register the same gauge names twice.
    """

    def __init__(self, host: str, port: int, collector: Collector) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Together(REGISTRY, collector))
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self.server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
