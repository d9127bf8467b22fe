"""The Prometheus endpoint serves every series `service/metrics.py` documents."""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service import metrics
from service.api.server import Running, start
from tests.service_helpers import (
    consent,
    free_port,
    image,
    people_with,
    service_settings,
    with_sections,
)

DOCUMENTED = re.findall(r"^\| (faceguard_\w+) \|", metrics.__doc__ or "", re.MULTILINE)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, serve) -> Running:
    settings = service_settings(tmp_path_factory.mktemp("data"))
    return serve(with_sections(settings, observability={"metrics_port": 0}))


def scrape(running: Running) -> dict[str, list]:
    """Family name -> samples (a histogram's family holds its _bucket/_sum/_count)."""
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_the_documentation_lists_the_series() -> None:
    assert len(DOCUMENTED) >= 10 and "faceguard_rpc_duration_seconds" in DOCUMENTED


def test_every_documented_series_is_served(served: Running, shared_data: Path) -> None:
    ((person, images),) = people_with(shared_data, minimum=2, count=1)
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        enrollment = enrollment_pb2_grpc.EnrollmentStub(channel)
        enrollment.Enroll(
            enrollment_pb2.EnrollRequest(
                customer_id=person, images=[image(images[0])], consent=consent()
            ),
            timeout=60,
        )
        verification_pb2_grpc.FaceVerificationStub(channel).Verify(
            verification_pb2.VerifyRequest(customer_id=person, frames=[image(images[1])]),
            timeout=60,
        )
        with pytest.raises(grpc.RpcError):
            enrollment.Get(enrollment_pb2.GetRequest(customer_id="nobody"), timeout=10)
    families = scrape(served)
    # The parser names counters without their _total suffix.
    missing = [s for s in DOCUMENTED if s.removesuffix("_total") not in families]
    assert not missing, f"documented but not served: {missing}"

    def value(sample: str, **labels: str) -> float:
        """The summed value of the samples named `sample` with these labels."""
        return sum(
            s.value for samples in families.values() for s in samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )  # fmt: skip

    assert value("faceguard_ready") == 1
    assert value("faceguard_gallery_templates") >= 1
    assert value("faceguard_decisions_total", outcome="APPROVE") >= 1
    get_errors = value(
        "faceguard_rpc_errors_total", method="/faceguard.v1.Enrollment/Get",
        reason="CUSTOMER_NOT_FOUND",
    )  # fmt: skip
    assert get_errors >= 1
    verified_ok = value(
        "faceguard_rpc_duration_seconds_count",
        method="/faceguard.v1.FaceVerification/Verify", code="OK",
    )  # fmt: skip
    assert verified_ok >= 1
    stages = {
        s.labels["stage"] for s in families["faceguard_stage_duration_seconds"]
        if s.name.endswith("_count") and s.value > 0
    }  # fmt: skip
    assert {"decode", "detect", "quality", "align", "embed"} <= stages
    assert any(s.labels["task"] == "embedder" for s in families["faceguard_model_info"])


def test_labels_never_name_customers(served: Running) -> None:
    allowed = {"method", "code", "reason", "stage", "outcome", "task", "version", "le", "target"}
    for name, samples in scrape(served).items():
        for sample in samples if name.startswith("faceguard_") else ():
            assert set(sample.labels) <= allowed, sample


def test_not_serving_and_not_ready_until_the_engine_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.api import server as server_module

    release, building = threading.Event(), threading.Event()
    real_build = server_module.build_engine

    def slow_build(settings):
        building.set()
        release.wait(60)
        return real_build(settings)

    monkeypatch.setattr(server_module, "build_engine", slow_build)
    port = free_port()
    settings = service_settings(tmp_path, port=port)
    settings = with_sections(settings, observability={"metrics_port": 0})
    started: list[Running] = []
    thread = threading.Thread(target=lambda: started.append(start(settings)))
    thread.start()
    try:
        assert building.wait(60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                enrollment_pb2_grpc.EnrollmentStub(channel).List(
                    enrollment_pb2.ListRequest(), timeout=10
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            thread.join(120)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert scrape(started[0])["faceguard_ready"][0].value == 1
    finally:
        release.set()
        thread.join(120)
        for running in started:
            running.stop(grace=1)
