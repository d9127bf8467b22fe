"""Reading the model manifest (`models/manifest.toml`) and checking built models against it.

The manifest is the single description of what the service runs: where each model comes from,
how its input is prepared, and the thresholds calibrated for it. The build step writes into it;
the service only reads it.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The checkout's models/ folder; an installed service (e.g. the container) points elsewhere.
MODELS_DIR = Path(
    os.environ.get("FACEGUARD_MODELS_DIR", Path(__file__).resolve().parents[2] / "models")
)
MANIFEST_PATH = MODELS_DIR / "manifest.toml"


class ModelIntegrityError(RuntimeError):
    """A model file is missing or is not the file the manifest recorded."""


@dataclass(frozen=True)
class Source:
    """A registry package that models are built from."""

    name: str
    client: str
    package: str
    version: str
    sha256: str
    licence: str
    converter: str

    @property
    def spec(self) -> str:
        """The package reference as its client spells it (`name@version` or `name==version`)."""
        separator = "==" if self.client == "pip" else "@"
        return f"{self.package}{separator}{self.version}"


@dataclass(frozen=True)
class Model:
    """One ONNX model: its task, provenance and input specification."""

    name: str
    task: str
    source: str
    file: str
    file_sha256: str
    onnx_sha256: str
    input: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def path(self, models_dir: Path = MODELS_DIR) -> Path:
        return models_dir / f"{self.name}.onnx"


@dataclass(frozen=True)
class Manifest:
    sources: dict[str, Source]
    models: dict[str, Model]
    sections: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        """A top-level table such as `embedder` or `liveness`, empty when absent."""
        return dict(self.sections.get(name, {}))


MODEL_KEYS = {"task", "source", "file", "file_sha256", "onnx_sha256", "input"}


def load_manifest(path: Path = MANIFEST_PATH) -> Manifest:
    """Parse the manifest; unknown keys of a model are kept in `Model.extra`."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    sources = {
        name: Source(name=name, **{k: v for k, v in table.items()})
        for name, table in data.get("sources", {}).items()
    }
    models = {
        name: Model(
            name=name,
            **{k: table.get(k, "") for k in MODEL_KEYS if k != "input"},
            input=dict(table.get("input", {})),
            extra={k: v for k, v in table.items() if k not in MODEL_KEYS},
        )
        for name, table in data.get("models", {}).items()
    }
    sections = {k: v for k, v in data.items() if k not in {"sources", "models", "schema"}}
    return Manifest(sources=sources, models=models, sections=sections)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_model_path(model: Model, models_dir: Path = MODELS_DIR) -> Path:
    """The model's ONNX file, after checking it is the one the build recorded.

    A tampered or stale model would silently change every match score, so a mismatch stops
    the service instead.
    """
    path = model.path(models_dir)
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing: run `faceguard models build`")
    actual = sha256_file(path)
    if actual != model.onnx_sha256:
        raise ModelIntegrityError(
            f"{path} has sha256 {actual}, the manifest records {model.onnx_sha256}: "
            "rebuild with `faceguard models build`"
        )
    return path
