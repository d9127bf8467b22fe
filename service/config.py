"""Service settings from the environment (`FACEGUARD_*`) and an optional TOML file.

Precedence, highest first: explicit arguments, environment, the TOML file, the defaults here.
Nested tables map to the vision stages' own frozen dataclasses, validated by pydantic
(`[detector] min_face = 80` or `FACEGUARD_DETECTOR__MIN_FACE=80`).
"""

from __future__ import annotations

from dataclasses import replace
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
    allow_multiple_faces: bool = Field(
        False, description="verify the most central face instead of refusing MULTIPLE_FACES"
    )


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="listen address; beyond loopback TLS is required")
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    workers: int = Field(8, ge=1, le=256, description="threads serving calls")
    max_concurrent_rpcs: int = Field(64, ge=1, description="calls beyond this are refused")
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="per request")
    grace_seconds: float = Field(30.0, ge=0, description="time in-flight calls get at SIGTERM")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = Field(False, description="allow plaintext on a non-loopback address")


class StorageSettings(BaseModel):
    data_dir: Path = Field(Path("data"), description="SQLite database, index snapshot, keys")
    database_url: str | None = Field(None, description="default: SQLite in data_dir")
    key_file: Path | None = Field(None, description="template keyring (or FACEGUARD_TEMPLATE_KEYS)")
    dev_generate_key: bool = Field(
        False, description="development only: create a keyring in data_dir if there is none"
    )
    snapshot_every: int = Field(1000, ge=1, description="index snapshot after this many changes")

    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'faceguard.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACEGUARD_", env_nested_delimiter="__", extra="forbid"
    )

    vision: VisionSettings = VisionSettings()
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
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

    def service_pipeline_config(self) -> PipelineConfig:
        """The pipeline as the service runs it: no search for faces far below the quality gate.

        A face under the gate's minimum size can only be refused, so detection starts at 3/4
        of it (a near miss still gets LOW_QUALITY_SIZE, "step closer", instead of NO_FACE).
        This halves detection time on kiosk frames; evaluation keeps the configured minimum.
        """
        config = self.pipeline_config()
        floor = round(0.75 * self.quality.min_face_px)
        detector = replace(config.detector, min_face=max(config.detector.min_face, floor))
        return replace(config, detector=detector)

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
