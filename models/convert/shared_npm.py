"""The pinned npm packages a converter's reference check runs on (face-api's or human's TFJS).

Installed into a per-user prefix once, from the converter's own package.json of exact pins:
no lockfile is written and install scripts are skipped, since the packages are plain JS and
WASM files.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from shared_onnx import ConversionError

LOG = logging.getLogger(__name__)


def installed_version(prefix: Path, name: str) -> str | None:
    """Version of an npm package under prefix/node_modules, None when absent."""
    manifest = prefix / "node_modules" / name / "package.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8"))["version"]


def ensure_node_deps(prefix: Path, package_json: Path) -> None:
    """Install `package_json`'s pinned dependencies into the npm `prefix` unless already there."""
    pins: dict[str, str] = json.loads(package_json.read_text(encoding="utf-8"))["dependencies"]
    stale = [name for name, version in pins.items() if installed_version(prefix, name) != version]
    if not stale:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ConversionError(f"npm not found; run `npm install` with {package_json} in {prefix}")
    prefix.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_json, prefix / "package.json")
    LOG.info("installing %s into %s", ", ".join(f"{n}@{pins[n]}" for n in stale), prefix)
    command = [
        npm, "install", "--prefix", str(prefix),
        "--no-package-lock", "--ignore-scripts", "--no-audit", "--no-fund",
    ]  # fmt: skip
    subprocess.run(command, stdout=sys.stderr, check=True)
