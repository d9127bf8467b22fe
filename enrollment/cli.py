"""Client commands of `faceguard`: `enroll add|update|import|delete|get|list`, `verify`,
`identify`, `check-liveness`, `health`.

Each prints the decision (a summary line and a table) or the records (a table), or one JSON
object with `--json` (`enrollment.render`); a failed call prints its status, reason code and
message. Exit statuses follow `enrollment.exit_status`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from enrollment import exit_status
from enrollment.render import (
    message_json,
    print_decision,
    print_error,
    print_fields,
    print_json,
    print_records,
    say,
)

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_ENV = "FACEGUARD_SERVER"
DEVICE_HELP = "kiosk device id (default: the one bound to the kiosk's client certificate)"
MIN_SCORE_HELP = (
    "cosine floor for the candidates returned; 0 means the service's calibrated operating "
    "threshold (vision.fmr_target), not 'no floor': give a lower value, e.g. 0.3, to see "
    "weaker candidates too (the decision still uses the operating threshold)"
)


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=os.environ.get(SERVER_ENV) or DEFAULT_SERVER,
        help=f"HOST:PORT of the service (environment: {SERVER_ENV})",
    )  # fmt: skip
    parser.add_argument("--tls-ca", type=Path, help="CA certificate: use TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON object (.proto field names, defaults included)",
    )  # fmt: skip


def _consent_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--purpose", default="identity verification at branch kiosks",
        help="what the customer consented to",
    )  # fmt: skip
    parser.add_argument("--channel", default="branch", help="where the consent was given")
    parser.add_argument("--operator", required=True, help="staff id recording the consent")


def add_client_commands(commands: argparse._SubParsersAction, handler: Callable) -> None:
    """Register the client commands on the `faceguard` parser (no grpc import here)."""
    enroll = commands.add_parser("enroll", help="enrolment desk: register and manage customers")
    actions = enroll.add_subparsers(dest="enroll_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="enrol a customer from one or more images")
    add.add_argument("--customer-id", required=True, help="the bank's customer id")
    add.add_argument("images", nargs="+", type=Path, help="photos of the customer (at most 10)")
    _consent_options(add)

    update = actions.add_parser(
        "update", help="add templates to an enrolled customer, or replace them (UpdateTemplates)"
    )
    update.add_argument("--customer-id", required=True, help="an enrolled customer")
    update.add_argument("images", nargs="+", type=Path, help="new photos of the customer")
    update.add_argument(
        "--replace", action="store_true", help="replace every existing template instead of adding"
    )
    update.add_argument("--operator", required=True, help="staff id making the change")

    batch = actions.add_parser("import", help="bulk enrolment from folders or a CSV manifest")
    batch.add_argument("source", type=Path, help="folder per customer, or CSV customer_id,path")
    batch.add_argument("--workers", type=int, default=4, help="concurrent enrolments")
    batch.add_argument(
        "--state", type=Path,
        help="resume file: customers already done are skipped (default: <source name>"
        ".import-state in the working directory, not beside the photos, which may be read-only)",
    )  # fmt: skip
    batch.add_argument(
        "--report", type=Path, help="write every failed customer and file, and why, as CSV"
    )
    batch.add_argument(
        "--skip-bad-images", action="store_true",
        help="enrol a customer from the images that pass, leaving out the ones refused "
        "(no face, low quality, unreadable) instead of refusing the whole customer",
    )  # fmt: skip
    _consent_options(batch)

    delete = actions.add_parser("delete", help="erase a customer's biometric data")
    delete.add_argument("--customer-id", required=True, help="the customer to erase")
    delete.add_argument("--reason", default="erasure request", help="recorded in the audit log")
    delete.add_argument("--operator", required=True, help="staff id making the erasure")

    get = actions.add_parser("get", help="one customer's record")
    get.add_argument("--customer-id", required=True, help="the customer to show")

    listing = actions.add_parser("list", help="enrolled customers, a page at a time")
    listing.add_argument("--page-size", type=int, default=50, help="customers per page")
    listing.add_argument("--page-token", default="", help="the page the last one pointed to")

    verify = commands.add_parser("verify", help="kiosk: 1:1 verify frames against a customer")
    verify.add_argument("--customer-id", required=True, help="the customer claimed")
    verify.add_argument("frames", nargs="+", type=Path, help="frames; the best face is used")
    verify.add_argument("--device-id", default="", help=DEVICE_HELP)

    identify = commands.add_parser("identify", help="kiosk: 1:N search for a face")
    identify.add_argument("image", type=Path, help="a photo with one face")
    identify.add_argument("--top-k", type=int, default=5, help="candidates to return")
    identify.add_argument("--min-score", type=float, default=0.0, help=MIN_SCORE_HELP)
    identify.add_argument("--device-id", default="", help=DEVICE_HELP)

    liveness = commands.add_parser(
        "check-liveness", help="kiosk: passive liveness of frames (CheckLiveness), no matching"
    )
    liveness.add_argument("frames", nargs="+", type=Path, help="frames; the best face is used")
    liveness.add_argument("--device-id", default="", help=DEVICE_HELP)

    health = commands.add_parser("health", help="is the service SERVING (exit 0) or not (5)")

    for sub in (add, update, batch, delete, get, listing, verify, identify, liveness, health):
        connection_options(sub)
        sub.set_defaults(handler=handler)


def _name_the_file(args: argparse.Namespace, error: dict[str, Any]) -> None:
    """Add the file a refusal is about: the service names the image by its index."""
    index = error.get("metadata", {}).get("image", "")
    paths = getattr(args, "images", None) or getattr(args, "frames", None) or []
    if index.isdigit() and int(index) < len(paths):
        error["file"] = str(paths[int(index)])


def emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """An error, or a reply without a view of its own: JSON with --json, else readable."""
    if "error" in payload:
        _name_the_file(args, payload["error"])
    if args.json:
        print_json(payload)
    elif "error" in payload:
        print_error(payload["error"])
    else:
        print_fields(payload)


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


def _call(args: argparse.Namespace, stubs) -> Any:
    """The command's call: its reply message."""
    from faceguard.v1 import enrollment_pb2, verification_pb2

    command = getattr(args, "enroll_command", None) or args.command
    timeout = args.timeout
    if command == "health":
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        return health_pb2_grpc.HealthStub(stubs.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
    if command == "add":
        request = enrollment_pb2.EnrollRequest(
            customer_id=args.customer_id, images=_read_images(args.images), consent=_consent(args)
        )
        return stubs.enrollment.Enroll(request, timeout=timeout)
    if command == "update":
        request = enrollment_pb2.UpdateTemplatesRequest(
            customer_id=args.customer_id, images=_read_images(args.images),
            replace=args.replace, operator_id=args.operator,
        )  # fmt: skip
        return stubs.enrollment.UpdateTemplates(request, timeout=timeout)
    if command == "delete":
        request = enrollment_pb2.DeleteRequest(
            customer_id=args.customer_id, reason=args.reason, operator_id=args.operator
        )
        return stubs.enrollment.Delete(request, timeout=timeout)
    if command == "get":
        request = enrollment_pb2.GetRequest(customer_id=args.customer_id)
        return stubs.enrollment.Get(request, timeout=timeout)
    if command == "list":
        request = enrollment_pb2.ListRequest(page_size=args.page_size, page_token=args.page_token)
        return stubs.enrollment.List(request, timeout=timeout)
    if command == "verify":
        request = verification_pb2.VerifyRequest(
            customer_id=args.customer_id, frames=_read_images(args.frames), device_id=args.device_id
        )
        return stubs.verification.Verify(request, timeout=timeout)
    if command == "check-liveness":
        request = verification_pb2.CheckLivenessRequest(
            frames=_read_images(args.frames), device_id=args.device_id
        )
        return stubs.verification.CheckLiveness(request, timeout=timeout)
    request = verification_pb2.IdentifyRequest(
        image=_read_images([args.image])[0], top_k=args.top_k, min_score=args.min_score,
        device_id=args.device_id,
    )  # fmt: skip
    return stubs.verification.Identify(request, timeout=timeout)


CUSTOMER_COLUMNS = ("customer_id", "template_count", "enrolled_at", "updated_at", "embedder")


def show(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    """Print a reply (JSON with --json, else a summary and a table); its exit status."""
    if args.json:
        print_json(reply)
    command = getattr(args, "enroll_command", None) or args.command
    if command == "health":
        if not args.json:
            say(Console(), reply["status"])
        return exit_status.OK if reply["status"] == "SERVING" else exit_status.UNAVAILABLE
    decision = reply.get("decision")
    if args.json:
        return exit_status.for_outcome(decision["outcome"]) if decision else exit_status.OK
    if command == "list":
        print_records(
            reply["customers"], CUSTOMER_COLUMNS, "no customers", reply.get("next_page_token", "")
        )
    elif command == "get":
        print_fields(reply)
    elif command == "delete":
        say(Console(), f"erased {args.customer_id} (event {reply['event_id']})")
    if decision is not None:
        print_decision(decision, reply.get("candidates", ()))
    return exit_status.for_outcome(decision["outcome"]) if decision else exit_status.OK


def run(args: argparse.Namespace) -> int:
    from enrollment.client import reporting_errors, stubs

    connection = stubs(args)

    def command() -> int:
        if getattr(args, "enroll_command", None) == "import":
            from enrollment.importer import run_import

            return run_import(args, connection, _consent(args))
        reply = _call(args, connection)
        return show(args, message_json(reply))

    try:
        return reporting_errors(lambda payload: emit(args, payload), command)
    finally:
        connection.channel.close()
