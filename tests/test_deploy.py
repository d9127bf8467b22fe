"""The deployment files: `docker-compose config` (Debian's docker-compose package; no engine is
needed to validate) accepts docker-compose.yml, it has every part of the fleet, and Prometheus
scrapes every replica's metrics port. Skips where the docker-compose binary is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRETS = {"FACEGUARD_DB_PASSWORD": "x", "MILVUS_MINIO_USER": "u", "MILVUS_MINIO_PASSWORD": "p"}
FLEET = {"postgres", "migrate", "milvus", "replica-1", "replica-2", "replica-3", "fraud-sink",
         "prometheus"}  # fmt: skip


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("no docker-compose binary (Debian package docker-compose) on this machine")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yml"), *args], env=clean | env,
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def test_docker_compose_config_accepts_the_fleet() -> None:
    result = _compose("config", "--services", env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= FLEET


def test_the_database_password_is_never_a_default() -> None:
    result = _compose("config", "-q", env={})
    assert result.returncode != 0
    assert "FACEGUARD_DB_PASSWORD" in result.stderr


def test_every_replica_shares_the_database_keys_and_callback_target() -> None:
    result = _compose("config", env=SECRETS)
    assert result.returncode == 0, result.stderr
    for setting in ("FACEGUARD_STORAGE__DATABASE_URL: postgresql+psycopg://faceguard:x@postgres",
                    "FACEGUARD_STORAGE__KEY_FILE: /run/secrets/template_keys",
                    "FACEGUARD_STORAGE__AUDIT_KEY_FILE: /run/secrets/audit_key",
                    "FACEGUARD_RISK__HMAC_KEY_FILE: /run/secrets/callback_hmac",
                    "FACEGUARD_RISK__CALLBACK_TARGET: fraud-sink:50061"):  # fmt: skip
        assert result.stdout.count(setting) >= 4, setting  # migrate and three replicas


def test_prometheus_scrapes_every_replica_metrics_port() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    port = re.search(r"FACEGUARD_OBSERVABILITY__METRICS_PORT: \"(\d+)\"", compose)
    assert port is not None
    targets = (REPO / "deploy" / "prometheus.yml").read_text()
    for replica in ("replica-1", "replica-2", "replica-3"):
        assert f"{replica}:{port.group(1)}" in targets
