"""Client commands of `faceguard`: `enroll add|import|delete|get|list`, `verify`, `identify`.

Each prints the decision (or record) readably, or as one JSON object with `--json`; a failed
call prints its status and reason code and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "127.0.0.1:50051"
DEVICE_HELP = "kiosk device id (default: the one bound to the kiosk's client certificate)"


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT of the service")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate: use TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_client_commands(commands: argparse._SubParsersAction, handler: Callable) -> None:
    """Register the client commands on the `faceguard` parser (no grpc import here)."""
    enroll = commands.add_parser("enroll", help="enrolment desk: register and manage customers")
    actions = enroll.add_subparsers(dest="enroll_command", required=True)

    add = actions.add_parser("add", help="enrol a customer from one or more images")
    add.add_argument("--customer-id", required=True)
    add.add_argument("images", nargs="+", type=Path)
    add.add_argument("--purpose", default="identity verification at branch kiosks")
    add.add_argument("--channel", default="branch")
    add.add_argument("--operator", required=True, help="staff id recording the consent")

    batch = actions.add_parser("import", help="bulk enrolment from folders or a CSV manifest")
    batch.add_argument("source", type=Path, help="folder per customer, or CSV customer_id,path")
    batch.add_argument("--workers", type=int, default=4, help="concurrent enrolments")
    batch.add_argument("--state", type=Path, help="resume file (default: SOURCE.import-state)")
    batch.add_argument("--purpose", default="identity verification at branch kiosks")
    batch.add_argument("--channel", default="branch")
    batch.add_argument("--operator", required=True)

    delete = actions.add_parser("delete", help="erase a customer's biometric data")
    delete.add_argument("--customer-id", required=True)
    delete.add_argument("--reason", default="erasure request")
    delete.add_argument("--operator", required=True)

    get = actions.add_parser("get", help="one customer's record")
    get.add_argument("--customer-id", required=True)

    listing = actions.add_parser("list", help="enrolled customers, a page at a time")
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--page-token", default="")

    verify = commands.add_parser("verify", help="kiosk: 1:1 verify frames against a customer")
    verify.add_argument("--customer-id", required=True)
    verify.add_argument("frames", nargs="+", type=Path)
    verify.add_argument("--device-id", default="", help=DEVICE_HELP)

    identify = commands.add_parser("identify", help="kiosk: 1:N search for a face")
    identify.add_argument("image", type=Path)
    identify.add_argument("--top-k", type=int, default=5)
    identify.add_argument("--min-score", type=float, default=0.0)
    identify.add_argument("--device-id", default="", help=DEVICE_HELP)

    health = commands.add_parser("health", help="is the service SERVING (exit 0) or not (1)")

    for sub in (add, batch, delete, get, listing, verify, identify, health):
        connection_options(sub)
        sub.set_defaults(handler=handler)


def emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(payload))


def _consent(args: argparse.Namespace):
    from google.protobuf.timestamp_pb2 import Timestamp

    from faceguard.v1 import enrollment_pb2

    given = Timestamp()
    given.FromDatetime(datetime.now(UTC))
    return enrollment_pb2.Consent(
        purpose=args.purpose, given_at=given, channel=args.channel, operator_id=args.operator
    )


def _read_images(paths: list[Path]):
    from faceguard.v1 import common_pb2

    return [common_pb2.Image(data=path.read_bytes()) for path in paths]


def as_dict(message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _call(args: argparse.Namespace, stubs) -> dict[str, Any]:
    from faceguard.v1 import enrollment_pb2, verification_pb2

    command = getattr(args, "enroll_command", None) or args.command
    timeout = args.timeout
    if command == "health":
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(stubs.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}
    if command == "add":
        request = enrollment_pb2.EnrollRequest(
            customer_id=args.customer_id, images=_read_images(args.images), consent=_consent(args)
        )
        return as_dict(stubs.enrollment.Enroll(request, timeout=timeout))
    if command == "delete":
        request = enrollment_pb2.DeleteRequest(
            customer_id=args.customer_id, reason=args.reason, operator_id=args.operator
        )
        return as_dict(stubs.enrollment.Delete(request, timeout=timeout))
    if command == "get":
        request = enrollment_pb2.GetRequest(customer_id=args.customer_id)
        return as_dict(stubs.enrollment.Get(request, timeout=timeout))
    if command == "list":
        request = enrollment_pb2.ListRequest(page_size=args.page_size, page_token=args.page_token)
        return as_dict(stubs.enrollment.List(request, timeout=timeout))
    if command == "verify":
        request = verification_pb2.VerifyRequest(
            customer_id=args.customer_id, frames=_read_images(args.frames), device_id=args.device_id
        )
        return as_dict(stubs.verification.Verify(request, timeout=timeout))
    request = verification_pb2.IdentifyRequest(
        image=_read_images([args.image])[0], top_k=args.top_k, min_score=args.min_score,
        device_id=args.device_id,
    )  # fmt: skip
    return as_dict(stubs.verification.Identify(request, timeout=timeout))


def run(args: argparse.Namespace) -> int:
    from enrollment.client import reporting_errors, stubs

    connection = stubs(args)

    def command() -> int:
        if getattr(args, "enroll_command", None) == "import":
            from enrollment.importer import run_import

            return run_import(args, connection, _consent(args))
        result = _call(args, connection)
        emit(args, result)
        return 0 if result.get("status", "SERVING") == "SERVING" else 1

    try:
        return reporting_errors(lambda payload: emit(args, payload), command)
    finally:
        connection.channel.close()
