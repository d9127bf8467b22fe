"""`faceguard review ...`: the REVIEW queue client (analyst or admin role).

`list` shows the open reviews one line each, oldest first; `claim` takes one (a lease that
lapses after the server's `reviews.claim_ttl_s`); `resolve` approves or declines a claimed
review with a note; `show` prints one decision in full: every rule, fired or not, the match
against its threshold, liveness, versions, the callback's delivery and the review's state.
Same connection and TLS options as the other client commands; `--json` prints the reply.
Exit statuses: `enrollment.exit_status` (0 done, 4 refused, 5 no answer).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from enrollment.cli import connection_options, emit
from enrollment.render import (
    message_json,
    print_decision,
    print_fields,
    print_json,
    print_lines,
    print_records,
)

RULE_COLUMNS = ("rule", "reason_code", "fired", "score", "hard", "detail")


def add_review_commands(commands: argparse._SubParsersAction, handler: Callable) -> None:
    """Register `faceguard review` on the parser (no grpc import here)."""
    review = commands.add_parser("review", help="the REVIEW queue (analyst or admin role)")
    actions = review.add_subparsers(dest="review_action", required=True)
    listing = actions.add_parser("list", help="open reviews, oldest first, one line each")
    listing.add_argument("--customer-id", default="", help="only this customer's reviews")
    listing.add_argument("--device-id", default="", help="only this device's reviews")
    listing.add_argument(
        "--limit", dest="page_size", type=int, default=50,
        help="reviews per page (at most 500)",
    )  # fmt: skip
    listing.add_argument("--page-token", default="")
    claim = actions.add_parser("claim", help="take a review (others cannot while it lasts)")
    claim.add_argument("event_id", help="the REVIEW decision's event id")
    resolve = actions.add_parser("resolve", help="approve or decline a review you claimed")
    resolve.add_argument("event_id", help="the REVIEW decision's event id")
    verdict = resolve.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_const", const="APPROVE", dest="resolution")
    verdict.add_argument("--decline", action="store_const", const="DECLINE", dest="resolution")
    resolve.add_argument("--note", required=True, help="why (1-500 characters, audited)")
    show = actions.add_parser("show", help="one decision in full (any decision event)")
    show.add_argument("event_id", help="the decision's event id")
    for sub in (listing, claim, resolve, show):
        connection_options(sub)
        sub.set_defaults(handler=handler)


def _call(args: argparse.Namespace, stub) -> dict[str, Any]:
    from faceguard.v1 import common_pb2, risk_pb2

    action, timeout = args.review_action, args.timeout
    if action == "list":
        request = risk_pb2.ListReviewsRequest(
            customer_id=args.customer_id, device_id=args.device_id, page_size=args.page_size,
            page_token=args.page_token,
        )  # fmt: skip
        return message_json(stub.ListReviews(request, timeout=timeout))
    if action == "claim":
        request = risk_pb2.ClaimReviewRequest(event_id=args.event_id)
        return message_json(stub.ClaimReview(request, timeout=timeout))
    if action == "resolve":
        request = risk_pb2.ResolveReviewRequest(
            event_id=args.event_id, resolution=common_pb2.Outcome.Value(args.resolution),
            note=args.note,
        )  # fmt: skip
        return message_json(stub.ResolveReview(request, timeout=timeout))
    request = risk_pb2.GetDecisionRequest(event_id=args.event_id)
    return message_json(stub.GetDecision(request, timeout=timeout))


def review_line(review: dict[str, Any]) -> str:
    """One open review: time, customer, device, reasons, who holds it until when, event id."""
    claim = "-"
    if review.get("claimed_by"):
        claim = f"{review['claimed_by']} until {review.get('claim_expires_at', '')[:19]}"
    fields = (
        review.get("occurred_at", "")[:19].replace("T", " "), review.get("customer_id") or "-",
        review.get("device_id") or "-", ",".join(review.get("reason_codes") or []) or "-",
        claim, review.get("event_id"),
    )  # fmt: skip
    return "  ".join(str(f) for f in fields)


def show(args: argparse.Namespace, reply: dict[str, Any]) -> None:
    if args.review_action == "list":
        print_lines([review_line(r) for r in reply.get("reviews", [])], "no open reviews",
                    reply.get("next_page_token", ""))  # fmt: skip
        return
    if args.review_action != "show":
        print_fields(reply)
        return
    decision = reply.get("decision", {})
    print_decision(decision)
    print_records(decision.get("rules", []), RULE_COLUMNS, "no rules evaluated")
    versions = decision.get("model_versions", {})
    print_fields({
        "models": ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "-",
        "calibration": decision.get("calibration_version") or "-",
        "callback": _callback(reply.get("callback")),
        "review": _review_state(reply.get("review")),
    })  # fmt: skip


def _callback(callback: dict[str, Any] | None) -> str:
    if not callback or not callback.get("status"):
        return "not sent"
    error = f", last error {callback['last_error']}" if callback.get("last_error") else ""
    return f"{callback['status']} after {callback.get('attempts', 0)} attempts{error}"


def _review_state(review: dict[str, Any] | None) -> str:
    if not review or not review.get("event_id"):
        return "-"
    if review.get("resolution"):
        return (
            f"{review['resolution']} by {review.get('resolved_by')}: {review.get('note')} "
            f"(event {review.get('resolution_event_id')})"
        )
    if review.get("claimed_by"):
        return f"open, claimed by {review['claimed_by']} until {review.get('claim_expires_at')}"
    return "open, unclaimed"


def run(args: argparse.Namespace) -> int:
    from enrollment.client import open_channel, reporting_errors
    from faceguard.v1 import risk_pb2_grpc

    channel = open_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key)

    def command() -> int:
        reply = _call(args, risk_pb2_grpc.RiskAdminStub(channel))
        if args.json:
            print_json(reply)
        else:
            show(args, reply)
        return 0

    try:
        return reporting_errors(lambda payload: emit(args, payload), command)
    finally:
        channel.close()
