"""Service settings from the environment (`FACEGUARD_*`) and an optional TOML file.

Precedence, highest first: explicit arguments, environment, the TOML file, the defaults here.
Nested tables map to the vision stages' own frozen dataclasses, validated by pydantic
(`[detector] min_face = 80` or `FACEGUARD_DETECTOR__MIN_FACE=80`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from service.liveness.session_policy import Challenge, LivenessPolicy, SessionLimits
from service.modelpack.manifest import Manifest
from service.vision.decode import DecodeLimits
from service.vision.detect import DetectorConfig
from service.vision.pipeline import PipelineConfig
from service.vision.quality import QualityPolicy


class SettingsError(ValueError):
    """Settings that cannot be used: a missing file or a value with no calibration behind it."""


class VisionSettings(BaseModel):
    threads: int = Field(
        2, ge=1, le=64,
        description="model runs one call may make side by side (each model is single-threaded)",
    )  # fmt: skip
    processes: int | None = Field(
        None, ge=0, le=256,
        description="worker processes for the face work of requests and stream frames; 0: in "
        "the serving process; default: one per core, within a container's CPU quota",
    )  # fmt: skip
    worker_timeout_s: float = Field(
        30.0, gt=0, description="longest the face work of one request or frame may take before "
        "its worker is killed and replaced",
    )  # fmt: skip
    liveness: bool = True
    fmr_target: str = Field("1e-4", description="false match rate the operating threshold is for")
    allow_multiple_faces: bool = Field(
        False, description="verify the most central face instead of refusing MULTIPLE_FACES"
    )


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="listen address; beyond loopback TLS is required")
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    workers: int = Field(
        32, ge=2, le=256,
        description="threads serving calls (each waits on a vision worker or a stream's frames)",
    )  # fmt: skip
    reserved_workers: int = Field(
        8, ge=1, description="threads streams and health Watch calls may not take: kept for "
        "unary calls (more than one client's security.client_concurrency)",
    )  # fmt: skip
    max_concurrent_rpcs: int = Field(64, ge=1, description="calls beyond this are refused")
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="per request")
    grace_seconds: float = Field(30.0, ge=0, description="time in-flight calls get at SIGTERM")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = Field(False, description="allow plaintext on a non-loopback address")


AUDIT_KEY_FILE = "audit-chain.key"


class StorageSettings(BaseModel):
    data_dir: Path = Field(Path("data"), description="SQLite database, index snapshot, keys")
    database_url: str | None = Field(None, description="default: SQLite in data_dir")
    key_file: Path | None = Field(None, description="template keyring (or FACEGUARD_TEMPLATE_KEYS)")
    dev_generate_key: bool = Field(
        False, description="development only: create a keyring in data_dir if there is none"
    )
    snapshot_every: int = Field(1000, ge=1, description="index snapshot after this many changes")
    audit_key_file: Path | None = Field(
        None,
        description="HMAC key of the audit chain, kept outside the database (default: "
        "audit-chain.key beside the template key file, made when missing)",
    )
    audit_checkpoint_dir: Path | None = Field(
        None, description="signed chain-head checkpoints (default: data_dir/audit-checkpoints)"
    )
    audit_checkpoint_every_s: float = Field(
        60.0, ge=0, description="seconds between checkpoints while serving (0: only at start/stop)"
    )
    auto_migrate: bool = Field(
        True,
        description="upgrade the database schema at start, under a lock; false: refuse to "
        "serve a schema older than this version (`faceguard db upgrade` is a deploy step)",
    )

    def audit_key_path(self) -> Path:
        folder = self.key_file.parent if self.key_file is not None else self.data_dir
        return self.audit_key_file or folder / AUDIT_KEY_FILE

    def checkpoint_dir(self) -> Path:
        return self.audit_checkpoint_dir or self.data_dir / "audit-checkpoints"

    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'faceguard.db'}"


class FaissSettings(BaseModel):
    """The FAISS index: in the serving process, snapshotted to a sealed file."""

    index_file: Path | None = Field(
        None, description="the sealed index snapshot (default: data_dir/index.faiss)"
    )
    exact_limit: int = Field(
        50_000, ge=1, description="exact search up to this many templates; beyond it, "
        "approximate candidates re-scored exactly",
    )  # fmt: skip
    probe_fraction: float = Field(
        0.3, gt=0, le=1, description="share of the inverted lists an approximate search scans"
    )

    def snapshot_path(self, data_dir: Path) -> Path:
        return self.index_file or data_dir / "index.faiss"


class GallerySettings(BaseModel):
    """The vector index behind 1:N search (service/gallery/backend.py) and its options."""

    backend: Literal["faiss"] = Field("faiss", description="the vector index backend")
    follow_poll_s: float = Field(
        0.5, gt=0, le=60, description="seconds between reads of the store's change feed when "
        "no change notification came (SQLite's only wake-up; PostgreSQL's fallback)",
    )  # fmt: skip
    faiss: FaissSettings = FaissSettings()


class SecuritySettings(BaseModel):
    """Client identity and abuse limits (see service/api/auth.py and service/api/limits.py)."""

    client_ca: Path | None = Field(
        None, description="CA of client certificates: turns on mutual TLS (needs server TLS)"
    )
    client_rate: float = Field(50.0, ge=0, description="calls per second per client; 0: off")
    client_burst: int = Field(100, ge=1, description="calls a client may make at once")
    device_rate: float = Field(5.0, ge=0, description="calls per second per device; 0: off")
    device_burst: int = Field(20, ge=1, description="calls a device may make at once")
    client_concurrency: int = Field(
        4, ge=1, description="calls of any kind in flight per client (certificate); at most "
        "server.reserved_workers",
    )  # fmt: skip
    kiosk_concurrency: int = Field(
        1, ge=1, description="unary kiosk calls (verify, identify, liveness) in flight per kiosk "
        "certificate: each holds a vision worker while it runs",
    )  # fmt: skip
    client_streams: int = Field(
        2, ge=1, description="streams and health Watch calls open per client (certificate)"
    )
    small_message_bytes: int = Field(
        64 * 1024, ge=1024, description="limit for requests that carry no image"
    )
    stream_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="limit for all messages of one streamed call"
    )


class ObservabilitySettings(BaseModel):
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; None: off, 0: any free port"
    )
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    log_format: str = Field("json", pattern="^(json|text)$", description="json: one per line")


class PrivacySettings(BaseModel):
    inactive_days: float | None = Field(
        None, gt=0, description="purge templates of customers inactive this long; None: never"
    )
    purge_every_hours: float | None = Field(
        None, gt=0, description="run the retention purge inside the service this often"
    )
    outbox_keep_days: float | None = Field(
        30.0, gt=0,
        description="the purge deletes fraud-engine callbacks delivered longer ago than this "
        "(the audit chain keeps the events); None: keep them",
    )  # fmt: skip


class CalibrationSettings(BaseModel):
    """Threshold calibration on the enrolled gallery (service/calibration/)."""

    every_hours: float = Field(
        720.0, ge=0, description="the service proposes (never applies) a calibration this "
        "often; 0: never",
    )  # fmt: skip
    sample_customers: int = Field(
        5000, ge=2, le=100_000,
        description="customers sampled per proposal, at most; a request may ask for fewer",
    )  # fmt: skip
    templates_per_customer: int = Field(
        3, ge=1, le=20, description="templates of each sampled customer, at most"
    )
    max_pairs: int = Field(
        2_000_000, ge=1000, le=100_000_000,
        description="cross-customer impostor pairs scored per proposal, at most",
    )  # fmt: skip
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="level of the thresholds' confidence intervals"
    )


_LIMITS = SessionLimits()
_LIVENESS = LivenessPolicy()


class StreamSettings(BaseModel):
    """Streamed sessions (VerifyStream, IdentifyStream): limits, challenges, liveness policy.

    The defaults and where the thresholds come from are in service/liveness/session_policy.py.
    """

    max_duration_s: float = Field(_LIMITS.max_duration_s, gt=0, description="per session")
    max_frames: int = Field(_LIMITS.max_frames, ge=1, description="frames per session")
    idle_timeout_s: float = Field(
        _LIMITS.idle_timeout_s, gt=0, description="a session with no frame this long is dropped"
    )
    no_face_timeout_s: float = Field(
        _LIMITS.no_face_timeout_s, gt=0,
        description="a session with no face for this long ends (NO_FACE_TIMEOUT)",
    )  # fmt: skip
    response_window_s: float = Field(
        _LIMITS.response_window_s, gt=0, description="time to answer a challenge"
    )
    baseline_frames: int = Field(
        _LIMITS.baseline_frames, ge=1, description="face frames at rest before the prompt"
    )
    rest_s: float = Field(
        _LIMITS.rest_s, ge=0, description="the head rests this long before each prompt"
    )
    min_frames: int = Field(
        _LIMITS.min_frames, ge=1, description="face frames observed when no challenge is asked"
    )
    require_challenge: bool = Field(
        _LIMITS.require_challenge, description="every session answers a random challenge"
    )
    challenges: tuple[Challenge, ...] = Field(
        _LIMITS.challenges, min_length=1, description="the set a challenge is picked from"
    )
    challenges_per_session: int = Field(
        _LIMITS.challenges_per_session, ge=1, description="challenges asked one after another"
    )
    liveness: LivenessPolicy = _LIVENESS

    def limits(self) -> SessionLimits:
        if self.challenges_per_session > len(set(self.challenges)):
            raise SettingsError("stream.challenges_per_session exceeds the distinct challenges")
        if self.challenges_per_session * (self.response_window_s + 1.0) > self.max_duration_s:
            raise SettingsError("stream.max_duration_s must leave room for every response window")
        return SessionLimits(
            max_duration_s=self.max_duration_s, max_frames=self.max_frames,
            idle_timeout_s=self.idle_timeout_s, response_window_s=self.response_window_s,
            no_face_timeout_s=self.no_face_timeout_s,
            baseline_frames=self.baseline_frames, rest_s=self.rest_s, min_frames=self.min_frames,
            require_challenge=self.require_challenge, challenges=self.challenges,
            challenges_per_session=self.challenges_per_session,
        )  # fmt: skip


class RiskSettings(BaseModel):
    """Risk policy and fraud-engine callbacks (service/risk/).

    Velocity windows, lockout cool-down and every rule's weight are in the versioned policy
    file, so each decision's recorded policy version says which values decided it.
    """

    policy_file: Path | None = Field(None, description="risk policy TOML; default: the shipped")
    callback_target: str | None = Field(
        None, description="HOST:PORT of the bank's FraudEngine; None: events wait in the outbox"
    )
    callback_tls_ca: Path | None = Field(None, description="CA of the fraud engine: use TLS")
    callback_tls_cert: Path | None = Field(None, description="client certificate (mutual TLS)")
    callback_tls_key: Path | None = Field(None, description="client private key (mutual TLS)")
    hmac_key_file: Path | None = Field(
        None, description="hex HMAC key for event signatures; dev mode creates one in data_dir"
    )
    hmac_key_id: str = Field("k1", min_length=1, max_length=64)
    callback_timeout_s: float = Field(5.0, gt=0, description="deadline of one delivery")
    workers: int = Field(4, ge=1, le=64, description="deliveries in flight at once")
    poll_interval_s: float = Field(0.2, gt=0, description="outbox poll when it was empty")
    backoff_initial_s: float = Field(0.5, gt=0, description="first retry delay (then doubled)")
    backoff_max_s: float = Field(60.0, gt=0, description="longest retry delay")
    dead_letter_after: int = Field(10, ge=1, description="attempts before an event dead-letters")
    assess: str = Field(
        "off", pattern="^(off|fail_open|fail_closed)$",
        description="consult FraudEngine.Assess on each decision; when it is slow or down, "
        "fail_open keeps faceguard's outcome and fail_closed declines",
    )  # fmt: skip
    assess_timeout_s: float = Field(0.2, gt=0, description="deadline of the Assess consult")


# The client commands' server address (HOST:PORT): not the service's `[server]` table, which
# the prefix would otherwise read it as (set that table's fields as FACEGUARD_SERVER__PORT...).
CLIENT_SERVER_VARIABLE = "FACEGUARD_SERVER"


class ServiceEnvironment(EnvSettingsSource):
    """The `FACEGUARD_*` environment, less the client commands' FACEGUARD_SERVER."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        variables = dict(super()._load_env_vars())
        for name in (CLIENT_SERVER_VARIABLE, CLIENT_SERVER_VARIABLE.lower()):
            variables.pop(name, None)
        return variables


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACEGUARD_", env_nested_delimiter="__", extra="forbid"
    )

    vision: VisionSettings = VisionSettings()
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    gallery: GallerySettings = GallerySettings()
    security: SecuritySettings = SecuritySettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    privacy: PrivacySettings = PrivacySettings()
    detector: DetectorConfig = DetectorConfig()
    decode: DecodeLimits = DecodeLimits()
    quality: QualityPolicy = QualityPolicy()
    stream: StreamSettings = StreamSettings()
    risk: RiskSettings = RiskSettings()
    calibration: CalibrationSettings = CalibrationSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            ServiceEnvironment(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )

    def service_pipeline_config(self) -> PipelineConfig:
        """The pipeline as the service runs it: no search for faces far below the quality gate.

        A face under the gate's minimum size can only be refused, so detection starts at 3/4
        of it (a near miss still gets LOW_QUALITY_SIZE, "step closer", instead of NO_FACE).
        This halves detection time on kiosk frames; evaluation keeps the configured minimum.
        """
        config = self.pipeline_config()
        floor = round(0.75 * self.quality.face_px)
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
