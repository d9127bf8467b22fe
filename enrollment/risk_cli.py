"""`faceguard risk ...`: the RiskAdmin client (lists, watchlist, events, dead letters,
velocity lockouts).

Same connection and TLS options as the other client commands; each prints the reply, or one
JSON object with `--json`; a failed call prints its status and reason code and exits 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from enrollment.cli import connection_options, emit
from enrollment.render import (
    message_json,
    print_fields,
    print_json,
    print_lines,
    print_records,
)

LISTS = {"blocklist": "CUSTOMER_BLOCKLIST", "devices": "DEVICE_BLACKLIST"}


def add_risk_commands(commands: argparse._SubParsersAction, handler: Callable) -> None:
    """Register `faceguard risk` on the parser (no grpc import here)."""
    risk = commands.add_parser("risk", help="fraud administration (admin role)")
    groups = risk.add_subparsers(dest="risk_group", required=True)
    subs = []
    for group, what in (("blocklist", "customer id"), ("devices", "device id")):
        actions = groups.add_parser(
            group,
            help=f"{'blocklisted customers' if group == 'blocklist' else 'blacklisted devices'}",
        ).add_subparsers(dest="risk_action", required=True)
        add = actions.add_parser("add", help=f"list a {what} (or update its entry)")
        add.add_argument("subject", help=what)
        add.add_argument("--reason", required=True, help="why, for the audit log")
        add.add_argument("--case", required=True, help="fraud case reference")
        add.add_argument("--operator", required=True, help="staff id making the change")
        remove = actions.add_parser("remove", help=f"take a {what} off the list")
        remove.add_argument("subject", help=what)
        remove.add_argument("--reason", default="removed", help="why, for the audit log")
        remove.add_argument("--operator", required=True, help="staff id making the change")
        show = actions.add_parser("list", help="the entries, a page at a time")
        show.add_argument("--page-size", type=int, default=50)
        show.add_argument("--page-token", default="")
        subs += [add, remove, show]

    watch = groups.add_parser("watchlist", help="known fraudsters' faces").add_subparsers(
        dest="risk_action", required=True
    )
    w_add = watch.add_parser("add", help="enrol a face into the watchlist")
    w_add.add_argument("images", nargs="+", type=Path)
    w_add.add_argument("--label", required=True, help="alias or case name (no customer id)")
    w_add.add_argument("--reason", required=True, help="why, for the audit log")
    w_add.add_argument("--case", required=True, help="fraud case reference")
    w_add.add_argument("--operator", required=True, help="staff id making the change")
    w_remove = watch.add_parser("remove", help="remove a watchlist entry")
    w_remove.add_argument("entry_id", help="the entry, as watchlist list shows it")
    w_remove.add_argument("--reason", default="removed", help="why, for the audit log")
    w_remove.add_argument("--operator", required=True, help="staff id making the change")
    w_list = watch.add_parser("list", help="watchlist entries")
    w_list.add_argument("--page-size", type=int, default=50)
    w_list.add_argument("--page-token", default="")

    events = groups.add_parser(
        "events", help="audited events, filtered: one line each (--json: everything)"
    )
    events.add_argument("--customer-id", default="", help="only this customer's events")
    events.add_argument("--device-id", default="", help="only this device's events")
    events.add_argument("--outcome", default="", help="only this outcome (APPROVE, REVIEW, ...)")
    events.add_argument("--reason", default="", help="only decisions naming this reason code")
    events.add_argument("--type", default="", help="only this event type (VERIFY, ...)")
    events.add_argument("--since", type=datetime.fromisoformat, help="ISO time, inclusive")
    events.add_argument("--until", type=datetime.fromisoformat, help="ISO time, exclusive")
    events.add_argument(
        "--limit", "--page-size", dest="page_size", type=int, default=50,
        help="events per page (at most 500)",
    )  # fmt: skip
    events.add_argument("--page-token", default="")
    events.set_defaults(risk_action="query")

    dead = groups.add_parser("dead-letters", help="callbacks that ran out of retries")
    dead_actions = dead.add_subparsers(dest="risk_action", required=True)
    d_list = dead_actions.add_parser("list", help="callbacks that ran out of retries")
    d_list.add_argument("--page-size", type=int, default=50)
    d_replay = dead_actions.add_parser("replay", help="send them again (all, or --event-id)")
    d_replay.add_argument(
        "--event-id", action="append", default=[], help="replay only this one (repeatable)"
    )
    d_replay.add_argument("--operator", required=True, help="staff id making the replay")

    lockouts = groups.add_parser("lockouts", help="velocity lockouts in force")
    l_list = lockouts.add_subparsers(dest="risk_action", required=True).add_parser(
        "list", help="customers and devices locked out now: why, since and until when"
    )
    l_list.add_argument("--page-size", type=int, default=50, help="lockouts per page")
    unlock = groups.add_parser(
        "unlock", help="lift a lockout with a reason (audited with your certificate's name)"
    )
    unlock.add_argument("--customer-id", default="", help="the customer's lockouts")
    unlock.add_argument(
        "--device-id", default="",
        help="a device's lockout; with --customer-id, the customer's lockout at that device",
    )  # fmt: skip
    unlock.add_argument("--reason", required=True, help="why the lockout is lifted (audited)")
    unlock.set_defaults(risk_action="lift")

    for sub in (*subs, w_add, w_remove, w_list, events, d_list, d_replay, l_list, unlock):
        connection_options(sub)
        sub.set_defaults(handler=handler)


def _timestamp(value: datetime | None):
    if value is None:
        return None
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _call(args: argparse.Namespace, stub) -> dict[str, Any]:
    from faceguard.v1 import common_pb2, risk_pb2

    group, action, timeout = args.risk_group, args.risk_action, args.timeout
    if group in LISTS:
        kind = risk_pb2.RiskList.Value(LISTS[group])
        if action == "add":
            request = risk_pb2.AddListEntryRequest(
                list=kind, subject=args.subject, reason=args.reason, case_ref=args.case,
                operator_id=args.operator,
            )  # fmt: skip
            return message_json(stub.AddListEntry(request, timeout=timeout))
        if action == "remove":
            request = risk_pb2.RemoveListEntryRequest(
                list=kind, subject=args.subject, reason=args.reason, operator_id=args.operator
            )
            return message_json(stub.RemoveListEntry(request, timeout=timeout))
        request = risk_pb2.ListEntriesRequest(
            list=kind, page_size=args.page_size, page_token=args.page_token
        )
        return message_json(stub.ListEntries(request, timeout=timeout))
    if group == "watchlist":
        if action == "add":
            request = risk_pb2.EnrollWatchlistRequest(
                label=args.label, reason=args.reason, case_ref=args.case,
                operator_id=args.operator,
                images=[common_pb2.Image(data=p.read_bytes()) for p in args.images],
            )  # fmt: skip
            return message_json(stub.EnrollWatchlistFace(request, timeout=timeout))
        if action == "remove":
            request = risk_pb2.RemoveWatchlistRequest(
                entry_id=args.entry_id, reason=args.reason, operator_id=args.operator
            )
            return message_json(stub.RemoveWatchlistEntry(request, timeout=timeout))
        request = risk_pb2.ListWatchlistRequest(
            page_size=args.page_size, page_token=args.page_token
        )
        return message_json(stub.ListWatchlist(request, timeout=timeout))
    if group == "events":
        request = risk_pb2.QueryEventsRequest(
            customer_id=args.customer_id, device_id=args.device_id, outcome=args.outcome,
            reason_code=args.reason, type=args.type, since=_timestamp(args.since),
            until=_timestamp(args.until), page_size=args.page_size, page_token=args.page_token,
        )  # fmt: skip
        return message_json(stub.QueryEvents(request, timeout=timeout))
    if group == "lockouts":
        request = risk_pb2.ListLockoutsRequest(page_size=args.page_size)
        return message_json(stub.ListLockouts(request, timeout=timeout))
    if group == "unlock":
        request = risk_pb2.LiftLockoutRequest(
            customer_id=args.customer_id, device_id=args.device_id, reason=args.reason
        )
        return message_json(stub.LiftLockout(request, timeout=timeout))
    if action == "list":
        request = risk_pb2.ListDeadLettersRequest(page_size=args.page_size)
        return message_json(stub.ListDeadLetters(request, timeout=timeout))
    request = risk_pb2.ReplayDeadLettersRequest(event_ids=args.event_id, operator_id=args.operator)
    return message_json(stub.ReplayDeadLetters(request, timeout=timeout))


# The records each listing shows as a table: (reply field, columns, what an empty page says).
TABLES = {
    "entries": (
        "entries", ("subject", "reason", "case_ref", "operator_id", "added_at"), "no entries"
    ),
    "watchlist": (
        "entries", ("entry_id", "label", "reason", "case_ref", "template_count", "added_at"),
        "no watchlist entries",
    ),
    "dead_letters": (
        "dead_letters", ("event_id", "customer_id", "attempts", "last_error", "created_at"),
        "no dead letters",
    ),
}  # fmt: skip


def show(args: argparse.Namespace, reply: dict[str, Any]) -> None:
    """A listing as a table ("no entries" when empty), anything else as its fields."""
    group, action = args.risk_group, args.risk_action
    if group == "events":
        print_lines([event_line(e) for e in reply.get("events", [])], "no events",
                    reply.get("next_page_token", ""))  # fmt: skip
        return
    table = (
        "watchlist" if group == "watchlist" and action == "list"
        else "entries" if group in LISTS and action == "list"
        else "dead_letters" if group == "dead-letters" and action == "list"
        else None
    )  # fmt: skip
    if table is None:
        print_fields(reply)
        return
    field, columns, empty = TABLES[table]
    print_records(reply.get(field, []), columns, empty, reply.get("next_page_token", ""))


def event_line(event: dict[str, Any]) -> str:
    """One event on one line: time, type, outcome, customer, device, reasons, delivery, id."""
    reasons = ",".join(event.get("payload", {}).get("reason_codes") or []) or "-"
    fields = (
        event.get("occurred_at", "")[:19].replace("T", " "), event.get("type"),
        event.get("outcome"), event.get("customer_id") or "-", event.get("device_id") or "-",
        reasons, event.get("delivery") or "-", event.get("event_id"),
    )  # fmt: skip
    return "  ".join(str(f) for f in fields)


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
