"""Service settings from the environment (`FACEGUARD_*`) and an optional TOML file.

Precedence, highest first: explicit arguments, environment, the TOML file, the defaults here.
Nested tables map to the vision stages' own frozen dataclasses, validated by pydantic
(`[detector] min_face = 80` or `FACEGUARD_DETECTOR__MIN_FACE=80`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from service.modelpack.manifest import Manifest
from service.vision.decode import DecodeLimits
from service.vision.detect import DetectorConfig
from service.vision.pipeline import PipelineConfig
from service.vision.quality import QualityPolicy


class SettingsError(ValueError):
    """Settings that cannot be used: a missing file or a value with no calibration behind it."""


class VisionSettings(BaseModel):
    threads: int = Field(2, ge=1, le=64, description="onnxruntime intra-op threads per model")
    liveness: bool = True
    fmr_target: str = Field("1e-4", description="false match rate the operating threshold is for")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACEGUARD_", env_nested_delimiter="__", extra="forbid"
    )

    vision: VisionSettings = VisionSettings()
    detector: DetectorConfig = DetectorConfig()
    decode: DecodeLimits = DecodeLimits()
    quality: QualityPolicy = QualityPolicy()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            threads=self.vision.threads,
            detector=self.detector,
            decode=self.decode,
            quality=self.quality,
            liveness=self.vision.liveness,
        )


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Settings from explicit overrides, the environment and `config_file` (TOML)."""
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**(Settings.model_config | {"toml_file": config_file}))

    return FileSettings(**overrides)


def operating_threshold(manifest: Manifest, fmr_target: str) -> float:
    """The embedder's calibrated cosine threshold for a false match rate target."""
    thresholds = manifest.section("embedder").get("thresholds", {})
    if fmr_target not in thresholds:
        known = ", ".join(sorted(thresholds)) or "none (run `faceguard eval calibrate`)"
        raise SettingsError(f"no calibrated threshold for FMR {fmr_target}; calibrated: {known}")
    return float(thresholds[fmr_target])
