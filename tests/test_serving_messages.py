"""What an operator reads when starting and checking the service: no library noise, no false
alarms on a first start, log lines that stay whole, and a clear word for a wrong directory."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path

import pytest

from service.logs import text_handler
from service.store.crypto import generate_keyring
from service.store.customers import Store
from tests.service_helpers import FACEGUARD, faiss_gallery


def test_a_first_start_builds_the_index_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'faceguard.db'}", generate_keyring())
    store.create_schema()
    with caplog.at_level(logging.INFO, logger="service.gallery"):
        faiss_gallery(store, tmp_path, 8, "m")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "no index snapshot" in caplog.text and (tmp_path / "index.faiss").is_file()
    (tmp_path / "index.faiss").write_bytes(b"garbage")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.gallery"):
        faiss_gallery(store, tmp_path, 8, "m")
    assert "index snapshot unusable" in caplog.text  # a damaged one still warns


def test_text_logs_to_a_file_are_one_line_per_record() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("faceguard.test.wrap")
    logger.addHandler(text_handler(stream))
    logger.propagate = False
    logger.warning("a long message " * 20)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 300 and "WARNING faceguard.test.wrap" in lines[0]


def test_audit_verify_in_the_wrong_directory_says_so_and_creates_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(FACEGUARD), "audit", "verify", "--data-dir", "no-such-dir"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    line = next(x for x in done.stderr.splitlines() if "no faceguard database" in x)
    assert "no-such-dir/faceguard.db" in line and line.endswith("in --config)")  # not wrapped
    assert "--dev-key" not in done.stderr and "AVX512" not in done.stderr
    assert not list(tmp_path.iterdir())  # no ./data, no empty database


def test_faiss_loader_messages_are_hidden(tmp_path: Path) -> None:
    """A command that loads faiss (audit verify on a real, empty store) prints no loader
    messages about its AVX512 builds."""
    store = Store(f"sqlite:///{tmp_path / 'faceguard.db'}", generate_keyring())
    store.create_schema()
    generate_keyring().dump(tmp_path / "template-keys.json")
    done = subprocess.run(
        [str(FACEGUARD), "-v", "audit", "verify", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "AVX512" not in done.stderr and "Could not load library" not in done.stderr
