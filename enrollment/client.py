"""Channel, stubs and error reading for the command-line client."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from enrollment import exit_status
from faceguard.v1 import enrollment_pb2_grpc, verification_pb2_grpc

MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Stubs:
    channel: grpc.Channel
    enrollment: enrollment_pb2_grpc.EnrollmentStub
    verification: verification_pb2_grpc.FaceVerificationStub


def open_channel(server: str, ca: Path | None, cert: Path | None, key: Path | None) -> grpc.Channel:
    """A channel to the service: TLS when a CA is given (mutual TLS when a client cert is too)."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if ca is None:
        return grpc.insecure_channel(server, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(server, credentials, options=options)


def stubs(args: argparse.Namespace) -> Stubs:
    channel = open_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key)
    return Stubs(
        channel,
        enrollment_pb2_grpc.EnrollmentStub(channel),
        verification_pb2_grpc.FaceVerificationStub(channel),
    )


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call's rich status, if it has one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call, or its status code name when there is none."""
    info = error_info(error)
    return info.reason if info else error.code().name


def describe_error(error: grpc.RpcError) -> dict[str, Any]:
    """Status, reason and message of a failed call, and the ErrorInfo metadata when there is
    any (a quality refusal's measured and required values, an audited attempt's event id)."""
    info = error_info(error)
    described: dict[str, Any] = {
        "status": error.code().name,
        "reason": info.reason if info else error.code().name,
        "message": error.details() or "",
    }
    if info and info.metadata:
        described["metadata"] = dict(sorted(info.metadata.items()))
    return described


def reporting_errors(report: Callable[[dict[str, Any]], None], command: Callable[[], int]) -> int:
    """Run a client command; a failed call or an unreadable input file is reported as an
    error (status, reason, message) with its exit status (`enrollment.exit_status`)."""
    try:
        return command()
    except grpc.RpcError as error:
        report({"error": describe_error(error)})
        return exit_status.for_error(error.code().name)
    except OSError as error:
        report({"error": {"status": "LOCAL", "reason": "UNREADABLE_FILE", "message": str(error)}})
        return exit_status.REFUSED
