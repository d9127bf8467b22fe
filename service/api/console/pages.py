"""The console's pages: they convert forms and queries to the use cases of
`service.app.console` (reads and audited actions) and the risk admin's, and render the
answers. Blocking store work runs in worker threads, never on the event loop."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from service.api.console import charts
from service.api.console.rendering import engine_of, render, reviews_of
from service.api.console.security import admin_only, identity
from service.app import console
from service.app.decision_records import engine_parts, get_decision
from service.app.requests import row_after
from service.errors import FaceguardError, InvalidInput, NotFound, TooLarge
from service.store.lists import LISTS
from service.store.reviews import NOTE_CHARS

ROUTES = web.RouteTableDef()
PAGE_SIZE = 50
EXPORT_ROWS = 10_000
TEXT_LIMIT = 128
CSV_COLUMNS = (
    "occurred_at", "event_id", "type", "outcome", "customer_id", "device_id", "reason_codes",
    "match_score", "threshold", "liveness_score", "quality_score", "risk_score",
    "policy_version",
)  # fmt: skip


def _text(values: Any, name: str, limit: int = TEXT_LIMIT) -> str:
    value = str(values.get(name, "")).strip()
    if len(value) > limit:
        raise InvalidInput("TEXT_TOO_LONG", f"{name} is at most {limit} characters")
    return value


def _time(values: Any, name: str) -> datetime | None:
    """A `datetime-local` field, read as UTC."""
    value = _text(values, name, 32)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput("INVALID_TIME", f"{name} is not a date and time") from None


def _filter(values: Any) -> console.DecisionFilter:
    return console.decision_filter(
        _text(values, "outcome"), _text(values, "reason").upper(), _text(values, "customer_id"),
        _text(values, "device_id"), _time(values, "since"), _time(values, "until"),
    )  # fmt: skip


def _failure(request: web.Request, exc: FaceguardError) -> web.Response:
    status = 404 if isinstance(exc, NotFound) else 400 if isinstance(
        exc, InvalidInput | TooLarge) else 409  # fmt: skip
    return render(request, "error.html", status=status, reason=exc.reason, message=str(exc))


@web.middleware
async def domain_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A refused input or missing subject is a page saying why, never a traceback."""
    try:
        return await handler(request)
    except FaceguardError as exc:
        return _failure(request, exc)


def _done(location: str, event_id: str) -> web.HTTPSeeOther:
    """After an action: back to its page, naming the audit event it wrote."""
    separator = "&" if "?" in location else "?"
    return web.HTTPSeeOther(f"{location}{separator}{urlencode({'done': event_id})}")


# ---- dashboard ------------------------------------------------------------------------


@ROUTES.get("/")
async def dashboard(request: web.Request) -> web.Response:
    engine = engine_of(request)
    figures = await asyncio.to_thread(console.dashboard, engine)
    backlog = await asyncio.to_thread(engine.risk.outbox.counts) if engine.risk else {}
    dead = await asyncio.to_thread(engine.risk.outbox.dead_letters, 20) if engine.risk else []
    per_device = [(device, sum(n.values())) for device, n in figures.devices]
    return render(
        request, "dashboard.html", figures=figures, backlog=backlog, dead=dead,
        hours_chart=charts.stacked_hours(figures.hours, figures.per_hour),
        reasons_chart=charts.horizontal(figures.reasons, "Top reason codes (24 h)"),
        devices_chart=charts.horizontal(per_device, "Decisions per device (24 h)", "#6a1b9a"),
        colours=charts.OUTCOME_COLOURS,
    )  # fmt: skip


# ---- decisions ------------------------------------------------------------------------


@ROUTES.get("/decisions")
async def decisions(request: web.Request) -> web.Response:
    wanted = _filter(request.query)
    before = row_after(request.query.get("before", "")) or None
    rows, cursor = await asyncio.to_thread(
        console.decisions, engine_of(request), wanted, PAGE_SIZE, before
    )
    query = {k: v for k, v in request.query.items() if k != "before" and v}
    return render(
        request, "decisions.html", rows=rows, wanted=wanted, query=query,
        next_page=urlencode({**query, "before": cursor}) if cursor else "",
        export=urlencode(query), outcomes=console.OUTCOMES,
    )  # fmt: skip


def _csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@ROUTES.get("/decisions.csv")
async def decisions_csv(request: web.Request) -> web.Response:
    wanted = _filter(request.query)
    engine = engine_of(request)
    found: list[console.DecisionRow] = []
    cursor: int | None = None
    while len(found) < EXPORT_ROWS:
        rows, cursor = await asyncio.to_thread(console.decisions, engine, wanted, 500, cursor)
        found += rows
        if cursor is None:
            break
    found = found[:EXPORT_ROWS]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in found:
        p = row.payload
        writer.writerow([_csv_cell(v) for v in (
            row.occurred_at.isoformat(), row.event_id, row.type, row.outcome, row.customer_id,
            row.device_id, ";".join(row.reason_codes), p.get("match_score"), p.get("threshold"),
            p.get("liveness_score"), p.get("quality_score"), p.get("risk_score"),
            p.get("policy_version"),
        )])  # fmt: skip
    await asyncio.to_thread(
        console.export_decisions, engine, identity(request), len(found), request.query_string
    )
    return web.Response(
        text=out.getvalue(), content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="decisions.csv"'},
    )  # fmt: skip


@ROUTES.get("/decisions/{event_id}")
async def decision(request: web.Request) -> web.Response:
    engine = engine_of(request)
    store, outbox = engine_parts(engine)
    detail = await asyncio.to_thread(
        get_decision, store, outbox, request.match_info["event_id"][:36]
    )
    policy = engine.risk.checks.policy if engine.risk else None
    recorded = detail.decision.policy_version
    resolved = detail.review.resolution_event_id if detail.review else ""
    resolution_delivery = await asyncio.to_thread(outbox.get, resolved) if resolved else None
    return render(
        request, "decision.html", row=detail.record, p=detail.decision, delivery=detail.callback,
        review=detail.review, resolution_delivery=resolution_delivery, now=datetime.now(UTC),
        policy=policy if policy and policy.version == recorded else None,
        liveness_threshold=engine.policy.liveness_threshold, done=request.query.get("done", ""),
    )  # fmt: skip


# ---- the REVIEW queue -----------------------------------------------------------------


@ROUTES.get("/reviews")
async def review_queue(request: web.Request) -> web.Response:
    token = request.query.get("after", "")
    page, next_token = await asyncio.to_thread(reviews_of(request).open, PAGE_SIZE, token)
    return render(
        request, "reviews.html", reviews=page, now=datetime.now(UTC),
        next_page=urlencode({"after": next_token}) if next_token else "",
    )  # fmt: skip


@ROUTES.post("/reviews/{event_id}/claim")
async def claim_review(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"][:36]
    action = await asyncio.to_thread(
        console.claim_review, engine_of(request), reviews_of(request), identity(request), event_id
    )
    raise _done(f"/decisions/{event_id}", action)


@ROUTES.post("/reviews/{event_id}/resolve")
async def resolve_review(request: web.Request) -> web.Response:
    form = await request.post()
    event_id = request.match_info["event_id"][:36]
    review = await asyncio.to_thread(
        console.resolve_review, reviews_of(request), identity(request), event_id,
        _text(form, "resolution"), _text(form, "note", NOTE_CHARS),
    )  # fmt: skip
    raise _done(f"/decisions/{event_id}", review.resolution_event_id)


# ---- lockouts -------------------------------------------------------------------------


@ROUTES.get("/lockouts")
async def lockouts(request: web.Request) -> web.Response:
    engine = engine_of(request)
    held = await asyncio.to_thread(engine.risk_admin.lockouts, 500) if engine.risk else []
    return render(request, "lockouts.html", lockouts=held, done=request.query.get("done", ""))


@ROUTES.post("/lockouts/lift")
@admin_only
async def lift_lockout(request: web.Request) -> web.Response:
    form = await request.post()
    event_id = await asyncio.to_thread(
        console.lift_lockout, engine_of(request), identity(request),
        _text(form, "customer_id"), _text(form, "device_id"), _text(form, "reason", 256),
    )  # fmt: skip
    raise _done("/lockouts", event_id)


# ---- lists ----------------------------------------------------------------------------


@ROUTES.get("/lists")
@admin_only
async def lists(request: web.Request) -> web.Response:
    admin = engine_of(request).risk_admin
    entries = {name: (await asyncio.to_thread(admin.entries, name, 500, ""))[0] for name in LISTS}
    watchlist, _ = await asyncio.to_thread(admin.watchlist, 500, "")
    return render(
        request, "lists.html", entries=entries, watchlist=watchlist,
        done=request.query.get("done", ""),
    )  # fmt: skip


@ROUTES.post("/lists/add")
@admin_only
async def list_add(request: web.Request) -> web.Response:
    form = await request.post()
    event_id = await asyncio.to_thread(
        console.add_list_entry, engine_of(request), identity(request), _text(form, "list"),
        _text(form, "subject"), _text(form, "reason", 256), _text(form, "case_ref"),
    )  # fmt: skip
    raise _done("/lists", event_id)


@ROUTES.post("/lists/remove")
@admin_only
async def list_remove(request: web.Request) -> web.Response:
    form = await request.post()
    event_id = await asyncio.to_thread(
        console.remove_list_entry, engine_of(request), identity(request), _text(form, "list"),
        _text(form, "subject"), _text(form, "reason", 256) or "removed in the console",
    )  # fmt: skip
    raise _done("/lists", event_id)


@ROUTES.post("/watchlist/remove")
@admin_only
async def watchlist_remove(request: web.Request) -> web.Response:
    form = await request.post()
    event_id = await asyncio.to_thread(
        console.remove_watchlist_entry, engine_of(request), identity(request),
        _text(form, "entry_id", 36), _text(form, "reason", 256) or "removed in the console",
    )  # fmt: skip
    raise _done("/lists", event_id)


# ---- customers ------------------------------------------------------------------------


@ROUTES.get("/customers")
@admin_only
async def customer(request: web.Request) -> web.Response:
    engine = engine_of(request)
    customer_id = _text(request.query, "customer_id")
    record = last = None
    if customer_id:
        record = await asyncio.to_thread(engine.enrolment.get, customer_id)
        last = await asyncio.to_thread(console.last_activity, engine, customer_id)
    return render(
        request, "customer.html", customer_id=customer_id, record=record, last=last,
        done=request.query.get("done", ""),
    )  # fmt: skip


@ROUTES.post("/customers/erase")
@admin_only
async def erase(request: web.Request) -> web.Response:
    form = await request.post()
    customer_id = _text(form, "customer_id")
    if _text(form, "confirm") != customer_id:
        raise InvalidInput("NOT_CONFIRMED", "type the customer id again to confirm the erasure")
    event_id = await asyncio.to_thread(
        console.erase_customer, engine_of(request), identity(request), customer_id,
        _text(form, "reason", 256) or "erased in the console",
    )  # fmt: skip
    raise _done("/customers", event_id)
