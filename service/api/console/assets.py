"""Building the console's front-end assets: registry packages pinned in assets.toml.

Each package is fetched and sha256-checked the way the models are (`service.modelpack.fetch`,
cached per user), and only the files the manifest names are copied out of it into
static/vendor/ (ignored by git). Run by `make setup`: `python -m service.api.console.assets`.
"""

from __future__ import annotations

import logging
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from service.modelpack.build import default_cache_dir
from service.modelpack.fetch import FetchError, fetch_source
from service.modelpack.manifest import Source

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ASSETS_MANIFEST = HERE / "assets.toml"
VENDOR_DIR = HERE / "static" / "vendor"


@dataclass(frozen=True)
class Asset:
    """A pinned package and the files the console takes from it (member -> vendor name)."""

    source: Source
    files: dict[str, str]


def read_assets(path: Path = ASSETS_MANIFEST) -> list[Asset]:
    """The manifest's assets."""
    document = tomllib.loads(path.read_text())
    assets = []
    for name, table in document.get("assets", {}).items():
        source = Source(
            name=name, client=table["client"], package=table["package"],
            version=table["version"], sha256=table["sha256"], licence=table["licence"],
            converter="",
        )  # fmt: skip
        assets.append(Asset(source, dict(table["files"])))
    return assets


def missing(vendor_dir: Path = VENDOR_DIR, path: Path = ASSETS_MANIFEST) -> list[str]:
    """The vendor files the manifest names that are not built yet."""
    return [
        target
        for asset in read_assets(path)
        for target in asset.files.values()
        if not (vendor_dir / target).is_file()
    ]


def build(cache_dir: Path, vendor_dir: Path = VENDOR_DIR, path: Path = ASSETS_MANIFEST) -> None:
    """Fetch every asset (verified) and copy out its files; a member missing from its
    package is an error, not a silently absent stylesheet."""
    vendor_dir.mkdir(parents=True, exist_ok=True)
    for asset in read_assets(path):
        archive = fetch_source(asset.source, cache_dir)
        with tarfile.open(archive, "r:gz") as tar:
            for member, target in asset.files.items():
                handle = tar.extractfile(member)
                if handle is None:
                    raise FetchError(f"{asset.source.spec} has no file {member}")
                (vendor_dir / target).write_bytes(handle.read())
        log.info("console asset %s: %d files", asset.source.spec, len(asset.files))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(default_cache_dir())
    except FetchError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
