"""Start-up refusals: plaintext beyond loopback, and no template key outside dev mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.server import _credentials
from service.app.assembly import KEYRING_FILE, keyring_for
from service.config import Settings, SettingsError


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_may_run_plaintext(host: str) -> None:
    assert _credentials(Settings(server={"host": host})) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "faceguard.bank.internal"])
def test_other_addresses_need_tls_or_an_explicit_insecure_flag(host: str) -> None:
    with pytest.raises(SettingsError, match="needs TLS"):
        _credentials(Settings(server={"host": host}))
    assert _credentials(Settings(server={"host": host, "insecure": True})) is None


def test_no_key_no_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEGUARD_TEMPLATE_KEYS", raising=False)
    with pytest.raises(SettingsError, match="no template encryption key"):
        keyring_for(Settings(storage={"data_dir": tmp_path}))
    assert not (tmp_path / KEYRING_FILE).exists()


def test_dev_mode_generates_a_key_once_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("FACEGUARD_TEMPLATE_KEYS", raising=False)
    settings = Settings(storage={"data_dir": tmp_path, "dev_generate_key": True})
    first = keyring_for(settings)
    assert "DEVELOPMENT KEY" in caplog.text
    assert (tmp_path / KEYRING_FILE).stat().st_mode & 0o077 == 0
    assert keyring_for(settings).to_json() == first.to_json()  # reused, not regenerated


def test_an_explicit_key_file_that_is_missing_is_an_error_even_in_dev_mode(tmp_path: Path) -> None:
    settings = Settings(
        storage={"data_dir": tmp_path, "dev_generate_key": True, "key_file": tmp_path / "none.json"}
    )
    with pytest.raises(SettingsError):
        keyring_for(settings)
