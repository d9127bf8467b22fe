"""`faceguard calibration ...`: the Calibration client (admin role).

`propose` samples the enrolled gallery and stores a proposal; `list` and `show` read them (and
the live calibration); `approve` and `reject` decide one, with a reason. Same connection and
TLS options as the other client commands; each prints the reply, or one JSON object with
`--json`; a failed call prints its status and reason code and exits with the client
commands' status for it (enrollment/exit_status.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from enrollment.cli import connection_options, emit
from enrollment.render import message_json


def _calibration_id(text: str) -> int:
    """A proposal id as the service issues them: a positive 64-bit integer."""
    value = int(text)
    if not 0 < value < 2**64:
        raise argparse.ArgumentTypeError(f"{text} is not a calibration id")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} is not a customer count")
    return value


def add_calibration_commands(commands: argparse._SubParsersAction, handler: Callable) -> None:
    """Register `faceguard calibration` on the parser (no grpc import here)."""
    calibration = commands.add_parser(
        "calibration", help="thresholds calibrated on the enrolled gallery (admin role)"
    )
    actions = calibration.add_subparsers(dest="calibration_command", required=True)
    propose = actions.add_parser(
        "propose", help="estimate thresholds per FMR target from a sample of the gallery"
    )
    propose.add_argument(
        "--sample-customers", type=_count, default=0,
        help="customers to sample (default and most: calibration.sample_customers)",
    )  # fmt: skip
    propose.add_argument("--operator", required=True, help="staff id proposing it")
    listing = actions.add_parser("list", help="proposals, newest first, and the live one")
    listing.add_argument("--page-size", type=int, default=20)
    listing.add_argument("--page-token", default="")
    show = actions.add_parser("show", help="one proposal")
    show.add_argument("id", type=_calibration_id)
    subs = [propose, listing, show]
    for verdict in ("approve", "reject"):
        decide = actions.add_parser(
            verdict,
            help="apply its thresholds to every decision from now on"
            if verdict == "approve"
            else "refuse it",
        )
        decide.add_argument("id", type=_calibration_id)
        decide.add_argument("--reason", required=True)
        decide.add_argument("--operator", required=True)
        subs.append(decide)
    for sub in subs:
        connection_options(sub)
        sub.set_defaults(handler=handler)
    propose.set_defaults(timeout=600.0)  # a full sample takes tens of seconds (bench calibration)


def _call(args: argparse.Namespace, stub) -> dict[str, Any]:
    from faceguard.v1 import calibration_pb2

    command, timeout = args.calibration_command, args.timeout
    if command == "propose":
        request = calibration_pb2.ProposeCalibrationRequest(
            sample_customers=args.sample_customers, operator_id=args.operator
        )
        return message_json(stub.ProposeCalibration(request, timeout=timeout))
    if command == "list":
        request = calibration_pb2.ListCalibrationsRequest(
            page_size=args.page_size, page_token=args.page_token
        )
        return message_json(stub.ListCalibrations(request, timeout=timeout))
    if command == "show":
        return message_json(
            stub.GetCalibration(calibration_pb2.GetCalibrationRequest(id=args.id), timeout=timeout)
        )
    verdict = (
        calibration_pb2.CALIBRATION_APPROVE if command == "approve"
        else calibration_pb2.CALIBRATION_REJECT
    )  # fmt: skip
    request = calibration_pb2.DecideCalibrationRequest(
        id=args.id, verdict=verdict, reason=args.reason, operator_id=args.operator
    )
    return message_json(stub.DecideCalibration(request, timeout=timeout))


def run(args: argparse.Namespace) -> int:
    from enrollment.client import open_channel, reporting_errors
    from faceguard.v1 import calibration_pb2_grpc

    channel = open_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key)

    def command() -> int:
        emit(args, _call(args, calibration_pb2_grpc.CalibrationStub(channel)))
        return 0

    try:
        return reporting_errors(lambda payload: emit(args, payload), command)
    finally:
        channel.close()
