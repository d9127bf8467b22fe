"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import milvus
import pytest

from faceguard.v1 import enrollment_pb2_grpc, verification_pb2_grpc
from service.api.server import Running
from service.cli.certs import write_dev_pki
from service.config import Settings
from service.risk.callback import load_signing_key, write_signing_key
from tests.service_helpers import serving, tls_channel
from tools import postgres
from tools.fraud_sink import RunningSink, start_sink

# Development data lives beside the repository, never inside it (see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared development data folder; skips the test on machines that do not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared development data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for the portable store tests.

    FACEGUARD_TEST_POSTGRES_URL names an existing throwaway database; otherwise a temporary
    server is started from the machine's PostgreSQL binaries, and the tests skip without them.
    """
    given = os.environ.get("FACEGUARD_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bin_dir = postgres.server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (Debian package postgresql) on this machine")
    with postgres.temporary_server(bin_dir) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once on SQLite and once on PostgreSQL: the store is portable, and
    its tests run on both (PostgreSQL ones skip without its binaries)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'g.db'}"
    url = request.getfixturevalue("postgres_url")
    postgres.reset_database(url)
    return url


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[milvus.MilvusServer]:
    """A real Milvus standalone server on a fresh data folder (tests/milvus.py), stopped at
    the end of the session; the tests skip when it cannot be started here."""
    try:
        server = milvus.start(tmp_path_factory.mktemp("milvus"))
    except milvus.ServerUnavailable as exc:
        pytest.skip(f"no Milvus server: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development PKI (CA, a localhost server and the development clients) for a module's
    mutual TLS server; a module that needs other clients defines its own `pki`."""
    out = tmp_path_factory.mktemp("pki")
    write_dev_pki(out, ("localhost", "127.0.0.1"))
    return out


@pytest.fixture(scope="module")
def sink(folder: Path) -> Iterator[RunningSink]:
    """A reference fraud sink for a module whose server delivers to it (`sink_risk`): its
    database `folder`/sink.db, trusting the HMAC key `folder`/hmac.key (id k1) written here;
    `folder` is a fixture of the module."""
    key = folder / "hmac.key"
    write_signing_key(key)
    running = start_sink(folder / "sink.db", {"k1": load_signing_key(key, "k1")})
    yield running
    running.stop()


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[Settings], Running]]:
    """Starts a server for the module from the module's settings (`served = serve(settings)` in
    its `served` fixture: the servers differ only in settings) and stops every server it started
    at the module's end. Request it last, so that what the server uses (a fraud sink) outlives it.
    """
    with ExitStack() as servers:
        yield lambda settings: servers.enter_context(serving(settings, grace=2))


# gRPC clients of the module's `served` server (a fixture each test module defines from
# `serve`), one channel per module.


@pytest.fixture(scope="module")
def channel(served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as chan:
        yield chan


@pytest.fixture(scope="module")
def enrollment(channel: grpc.Channel) -> enrollment_pb2_grpc.EnrollmentStub:
    return enrollment_pb2_grpc.EnrollmentStub(channel)


@pytest.fixture(scope="module")
def kiosk(channel: grpc.Channel) -> verification_pb2_grpc.FaceVerificationStub:
    return verification_pb2_grpc.FaceVerificationStub(channel)


@pytest.fixture(scope="module")
def tls_client(served: Running, pki: Path) -> Iterator[Callable[[str], grpc.Channel]]:
    """Channels to the module's mutual TLS server as one of `pki`'s clients (`tls_client("admin")`),
    each closed at the module's end."""
    with ExitStack() as channels:
        yield lambda client: channels.enter_context(tls_channel(served.port, pki, client))
