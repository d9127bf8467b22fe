"""Decisions and records as people read them (enrollment/render.py), from their JSON form."""

from __future__ import annotations

from rich.console import Console

from enrollment.render import decision_summary, decision_table, records_table


def rule(code: str, fired: bool, detail: str = "", hard: bool = False, score: float = 0.0):
    return {
        "rule": code.lower(), "fired": fired, "reason_code": code, "score": score,
        "hard": hard, "detail": detail,
    }  # fmt: skip


def rendered(table, width: int = 120) -> str:
    console = Console(width=width, record=True)
    console.print(table)
    return console.export_text()


def test_a_velocity_lockout_leads_the_summary_and_the_table() -> None:
    decision = {
        "outcome": "DECLINE", "customer_id": "alice", "match_score": 0.81, "threshold": 0.53,
        "fmr_target": "1e-4", "reason_codes": ["MATCH", "VELOCITY"], "risk_score": 100.0,
        "policy_version": "p1", "event_id": "e-1",
        "rules": [
            rule("BLOCKLISTED", False),
            rule("VELOCITY", True, "customer locked 896 s more", hard=True, score=100.0),
        ],
    }  # fmt: skip
    assert decision_summary(decision) == (
        "DECLINE: velocity lockout (customer locked 896 s more); "
        "alice matched at 0.810 (threshold 0.530)"
    )
    text = rendered(decision_table(decision))
    assert "rule VELOCITY" in text and "customer locked 896 s more, hard" in text
    assert "0.810 against threshold 0.530 (FMR 1e-4)" in text
    assert "1 of 2 rules fired" in text and "BLOCKLISTED" not in text


def test_a_failed_session_says_what_was_asked_and_seen() -> None:
    decision = {
        "outcome": "DECLINE", "reason_codes": ["MATCH", "LIVENESS_FAILED"], "match_score": 0.7,
        "threshold": 0.53, "rules": [], "event_id": "e-2",
        "liveness": {
            "score": 0.2, "passed": False, "challenge": "TURN_LEFT", "response": "NONE",
            "checks": [{"name": "challenge", "passed": False}, {"name": "motion", "passed": True}],
        },
    }  # fmt: skip
    assert decision_summary(decision).startswith(
        "DECLINE: liveness failed (asked TURN_LEFT, saw NONE)"
    )
    text = rendered(decision_table(decision))
    assert "session failed, score 0.20; asked TURN_LEFT, saw NONE; failed checks: challenge" in text


def test_an_empty_listing_says_so() -> None:
    assert records_table([], ("customer_id",), "no customers") == "no customers"
    table = records_table([{"customer_id": "a" * 90}], ("customer_id",), "none")
    text = rendered(table, width=40)  # folded over lines, never cut with an ellipsis
    assert "a" * 90 in "".join(c for c in text if c == "a")
