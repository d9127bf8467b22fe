"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from faceguard.v1 import enrollment_pb2_grpc, verification_pb2_grpc
from service.cli.certs import write_dev_pki
from tools import postgres

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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development PKI (CA, a localhost server and the development clients) for a module's
    mutual TLS server; a module that needs other clients defines its own `pki`."""
    out = tmp_path_factory.mktemp("pki")
    write_dev_pki(out, ("localhost", "127.0.0.1"))
    return out


# gRPC clients of the module's `served` server (a fixture each test module defines: the
# servers differ in settings), one channel per module.


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
