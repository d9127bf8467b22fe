"""Server assembly: engine from settings, gRPC server with health, reflection and limits.

Readiness goes through grpc health: NOT_SERVING until the models are loaded and the index is
consistent with the store, then SERVING; on SIGTERM it turns NOT_SERVING, in-flight calls get
`grace_seconds` to finish, and the index snapshot is written before exit.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from faceguard.v1 import (
    calibration_pb2,
    calibration_pb2_grpc,
    enrollment_pb2,
    enrollment_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.calibration_servicer import CalibrationServicer
from service.api.console.serving import ConsoleServer, start_console
from service.api.limits import check_shares
from service.api.operations import Operations, interceptors
from service.api.risk_servicer import RiskAdminServicer
from service.api.servicers import EnrollmentServicer, FaceVerificationServicer
from service.app.assembly import build_engine
from service.app.engine import Engine
from service.config import Settings, SettingsError
from service.errors import Unavailable

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    verification_pb2.DESCRIPTOR.services_by_name["FaceVerification"].full_name,
    enrollment_pb2.DESCRIPTOR.services_by_name["Enrollment"].full_name,
    risk_pb2.DESCRIPTOR.services_by_name["RiskAdmin"].full_name,
    calibration_pb2.DESCRIPTOR.services_by_name["Calibration"].full_name,
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    server, client_ca = settings.server, settings.security.client_ca
    if server.tls_cert and server.tls_key:
        # With a client CA, TLS itself refuses clients without a certificate it signed.
        return grpc.ssl_server_credentials(
            [(server.tls_key.read_bytes(), server.tls_cert.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca else None,
            require_client_auth=client_ca is not None,
        )
    if client_ca is not None:
        raise SettingsError("security.client_ca (mutual TLS) needs server.tls_cert and tls_key")
    if not _is_loopback(server.host) and not server.insecure:
        raise SettingsError(
            f"listening on {server.host} needs TLS (server.tls_cert and server.tls_key) "
            "or an explicit --insecure"
        )
    return None


class EngineHolder:
    """The engine once it is built: calls before that are answered UNAVAILABLE (NOT_READY)."""

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def set(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def get(self) -> Engine:
        if self._engine is None:
            raise Unavailable("NOT_READY", "models are loading; retry shortly")
        return self._engine


@dataclass
class Running:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    engine: Engine
    operations: Operations
    console: ConsoleServer | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.operations.metrics_port

    def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish, then persist the index."""
        self.health.enter_graceful_shutdown()
        if self.console is not None:
            self.console.stop()
        self.server.stop(grace).wait()
        self.engine.stop()
        self.operations.stop()
        self.engine.close()
        self.engine.save()


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind the port, refusing one another process already serves (the server sets no
    SO_REUSEPORT, so the kernel refuses the second bind instead of splitting the calls)."""
    try:
        if credentials:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError as exc:
        raise SettingsError(f"cannot listen on {address}: the port is in use ({exc})") from exc


def start(settings: Settings) -> Running:
    """Start serving; returns once the port is bound and the service reports SERVING."""
    credentials = _credentials(settings)
    check_shares(settings.server, settings.security)
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.server.max_message_bytes),
        ("grpc.max_send_message_length", settings.server.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    holder = EngineHolder()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.server.workers, thread_name_prefix="rpc"),
        options=options,
        maximum_concurrent_rpcs=settings.server.max_concurrent_rpcs,
        interceptors=interceptors(settings, credentials is None, holder.get),
    )
    verification_pb2_grpc.add_FaceVerificationServicer_to_server(
        FaceVerificationServicer(holder.get, settings.stream), server
    )
    enrollment_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentServicer(holder.get), server)
    risk_pb2_grpc.add_RiskAdminServicer_to_server(
        RiskAdminServicer(holder.get, settings.reviews), server
    )
    calibration_pb2_grpc.add_CalibrationServicer_to_server(
        CalibrationServicer(holder.get, settings.calibration), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, reflection.SERVICE_NAME, health.SERVICE_NAME), server
    )
    address = f"{settings.server.host}:{settings.server.port}"
    port = _bind(server, address, credentials)
    server.start()
    operations = Operations(settings, ready=lambda: holder.ready)
    try:
        holder.set(build_engine(settings))
    except BaseException:
        operations.stop()
        server.stop(0)
        raise
    holder.get().start()  # callbacks of decisions, including those before a kill
    operations.engine_built(holder.get())
    console = None
    if settings.console.enabled:  # the web console, on its own port (off by default)
        try:
            console = start_console(settings, holder.get())
        except BaseException:
            operations.stop()
            server.stop(0)
            raise
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "faceguard serving on %s:%d (%s)",
        settings.server.host,
        port,
        "TLS" if credentials else "plaintext",
    )
    return Running(server, port, health_servicer, holder.get(), operations, console)


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    running = start(settings)
    stop.wait()
    log.info("shutting down: %.0f s for in-flight calls", settings.server.grace_seconds)
    running.stop(settings.server.grace_seconds)
    return 0
