"""How the client commands show replies: JSON for programs, a line and a table for people.

JSON (`--json`) is the reply message as protobuf's JSON mapping with the `.proto` field names
(snake_case, the names the audit payload uses) and every field printed, defaults included:
a rule that did not fire says `"fired": false` instead of vanishing, and an empty list is `[]`.
Fields with presence are left out when unset, as protobuf does: the `optional` scores of a
decision without a face (`match_score`, `quality_score`, ...) and a single-shot call's
`liveness` report, which only streamed sessions have.

For people a decision is one summary line ("DECLINE: velocity lockout (customer locked 896 s
more)") and a compact table of what mattered: the match against its threshold, quality,
liveness, the rules that fired, the event id. Records (customers, list entries, events) are
tables; an empty page says so ("no customers").
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# What each reason code means, for the summary line; unknown codes are shown as they are.
REASON_WORDS = {
    "NO_MATCH": "no match",
    "LIVENESS_FAILED": "liveness failed",
    "LIVENESS_WEAK": "weak passive liveness",
    "LIVENESS_PASSIVE_OK": "passive liveness",
    "ENROLLED": "enrolled",
    "BLOCKLISTED": "blocklisted customer",
    "DEVICE_BLACKLISTED": "blacklisted device",
    "WATCHLIST_HIT": "watchlist hit",
    "DUPLICATE_IDENTITY": "the face matches another customer",
    "VELOCITY": "velocity lockout",
    "LOW_QUALITY": "low quality",
    "WEAK_MATCH_MARGIN": "weak match margin",
}
_SUMMARY_PHRASES = 3
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@functools.cache
def _json_defaults_flag() -> str:
    """The json_format keyword that keeps default values (renamed in protobuf 5.26)."""
    from google.protobuf import json_format

    parameters = inspect.signature(json_format.MessageToDict).parameters
    if "always_print_fields_with_no_presence" in parameters:
        return "always_print_fields_with_no_presence"
    return "including_default_value_fields"


def message_json(message: Any) -> dict[str, Any]:
    """A reply as JSON: `.proto` field names, default values kept (see the module docstring)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, **{_json_defaults_flag(): True})


def print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")


def _score(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _reason_phrase(code: str, decision: dict[str, Any], rules: dict[str, dict]) -> str:
    """One reason code in words, with the numbers behind it."""
    score, threshold = decision.get("match_score"), decision.get("threshold")
    if code == "MATCH":
        who = decision.get("customer_id") or "the face"
        return f"{who} matched at {_score(score)} (threshold {_score(threshold)})"
    if code == "NO_MATCH" and score is not None:
        return f"no match (best {_score(score)}, needs {_score(threshold)})"
    if code == "NO_MATCH" and threshold is not None:
        return f"no match (no one at or above {_score(threshold)})"
    rule = rules.get(code)
    words = REASON_WORDS.get(code, code)
    if rule and rule.get("detail"):
        return f"{words} ({rule['detail']})"
    liveness = decision.get("liveness") or {}
    if code == "LIVENESS_FAILED" and liveness.get("challenge"):
        return f"{words} (asked {liveness['challenge']}, saw {liveness.get('response') or 'NONE'})"
    if code in {"LIVENESS_WEAK", "LIVENESS_PASSIVE_OK"} and decision.get("liveness_score"):
        return f"{words} {_score(decision['liveness_score'], 2)}"
    return words


def decision_summary(decision: dict[str, Any]) -> str:
    """One line: the outcome and the reasons that decided it, the weightiest first."""
    rules = {r["reason_code"]: r for r in decision.get("rules", []) if r.get("fired")}
    codes = list(decision.get("reason_codes", []))
    hard = [c for c in codes if rules.get(c, {}).get("hard")]
    ordered = hard + [c for c in codes if c not in hard and c != "MATCH"]
    ordered += ["MATCH"] if "MATCH" in codes else []
    phrases = [_reason_phrase(code, decision, rules) for code in ordered[:_SUMMARY_PHRASES]]
    more = len(ordered) - _SUMMARY_PHRASES
    tail = f" (+{more} more)" if more > 0 else ""
    return f"{decision.get('outcome', 'OUTCOME_UNSPECIFIED')}: {'; '.join(phrases)}{tail}"


def _liveness_row(decision: dict[str, Any]) -> str | None:
    session = decision.get("liveness")
    if session and session.get("checks"):
        state = "passed" if session.get("passed") else "failed"
        failed = [c["name"] for c in session["checks"] if not c.get("passed")]
        text = f"session {state}, score {_score(session.get('score'), 2)}"
        if session.get("challenge"):
            text += f"; asked {session['challenge']}, saw {session.get('response') or 'NONE'}"
        return text + (f"; failed checks: {', '.join(failed)}" if failed else "")
    if decision.get("liveness_score") is not None:
        return f"passive {_score(decision['liveness_score'], 2)} (a weak signal)"
    return None


def decision_table(decision: dict[str, Any], candidates: Sequence[dict[str, Any]] = ()) -> Table:
    """What mattered in a decision, one row each; rules that did not fire are only counted."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("outcome", decision.get("outcome", ""))
    if decision.get("customer_id"):
        table.add_row("customer", decision["customer_id"])
    if decision.get("match_score") is not None:
        fmr = decision.get("fmr_target")
        threshold = _score(decision.get("threshold"))
        match = f"{_score(decision['match_score'])} against threshold {threshold}"
        table.add_row("match", match + (f" (FMR {fmr})" if fmr else ""))
    if candidates:
        table.add_row(
            "candidates",
            ", ".join(f"{c.get('customer_id')} {_score(c.get('score'))}" for c in candidates),
        )
    if decision.get("quality_score") is not None:
        table.add_row("quality", f"{decision['quality_score']:.0f}/100")
    if (liveness := _liveness_row(decision)) is not None:
        table.add_row("liveness", liveness)
    rules = decision.get("rules", [])
    for rule in (r for r in rules if r.get("fired")):
        weight = "hard" if rule.get("hard") else f"score {rule.get('score', 0):g}"
        detail = f"{rule['detail']}, " if rule.get("detail") else ""
        table.add_row(f"rule {rule.get('reason_code') or rule.get('rule')}", f"{detail}{weight}")
    if rules:
        fired = sum(1 for r in rules if r.get("fired"))
        table.add_row(
            "risk",
            f"score {decision.get('risk_score', 0):g}, policy {decision.get('policy_version')}, "
            f"{fired} of {len(rules)} rules fired",
        )
    table.add_row("event", decision.get("event_id", ""))
    return table


def say(console: Console, text: str, style: str = "") -> None:
    """One line as written: no markup, no highlighting, never wrapped (it may be grepped)."""
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def print_decision(decision: dict[str, Any], candidates: Sequence[dict[str, Any]] = ()) -> None:
    console = Console()
    say(console, decision_summary(decision), style="bold")
    console.print(decision_table(decision, candidates))


def records_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str, title: str | None = None
) -> Table | str:
    """A table of records with the given columns (nested values as compact JSON), or the
    `empty` sentence when there are none."""
    if not rows:
        return empty
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")  # wrapped, never cut: ids and files whole
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and TIMESTAMP.match(value):
        return value[:19].replace("T", " ")  # to the second, UTC as the service gives it
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_records(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str,
    next_page_token: str = "",
) -> None:  # fmt: skip
    console = Console()
    console.print(records_table(rows, columns, empty), markup=False, highlight=False)
    if next_page_token:
        say(console, f"more: --page-token {next_page_token}")


def print_lines(lines: Sequence[str], empty: str, next_page_token: str = "") -> None:
    """A listing as one unwrapped line per record (greppable), or `empty` when there are none."""
    console = Console()
    for line in lines or [empty]:
        say(console, line)
    if next_page_token:
        say(console, f"more: --page-token {next_page_token}")


def print_fields(record: dict[str, Any]) -> None:
    """One record as a two-column table (field, value)."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.items():
        table.add_row(key, _cell(value))
    Console().print(table)


def print_error(error: dict[str, str]) -> None:
    """A failed call on stderr: what failed, and the service's explanation."""
    console = Console(stderr=True)
    say(
        console, f"error: {error.get('status')} {error.get('reason')}: {error.get('message')}",
        style="bold red",
    )  # fmt: skip
    if error.get("file"):
        say(console, f"  file: {error['file']}")
    for key, value in (error.get("metadata") or {}).items():
        say(console, f"  {key}: {value}")
