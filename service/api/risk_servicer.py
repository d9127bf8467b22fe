"""The RiskAdmin servicer: messages in, RiskAdmin, review and decision use cases out. Who may
call what (admin, analyst) is in auth's ROLE_POLICY."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import grpc
from google.protobuf import struct_pb2

from faceguard.v1 import common_pb2, risk_pb2, risk_pb2_grpc
from service.api import auth
from service.api.errors import mapped
from service.api.messages import datetime_from, decision_message, timestamp
from service.api.servicers import UsesEngine
from service.app import decisions
from service.app.reviews import Reviews
from service.config import ReviewSettings
from service.engine import Engine
from service.errors import InvalidInput
from service.gallery.audit import EventRecord
from service.gallery.lists import ListEntry
from service.gallery.watchlist import WatchlistEntry
from service.risk.admin import RiskAdmin
from service.risk.velocity import Lockout
from service.store.reviews import Review


def _list_name(value: int) -> str:
    """The list's name; proto3 keeps an enum number it does not know, so that is refused too."""
    if value == risk_pb2.RISK_LIST_UNSPECIFIED or value not in risk_pb2.RiskList.values():
        raise InvalidInput(
            "INVALID_LIST", "list is required: CUSTOMER_BLOCKLIST or DEVICE_BLACKLIST"
        )
    return risk_pb2.RiskList.Name(value)


def _entry(entry: ListEntry) -> risk_pb2.ListEntry:
    return risk_pb2.ListEntry(
        list=risk_pb2.RiskList.Value(entry.list), subject=entry.subject, reason=entry.reason,
        case_ref=entry.case_ref, operator_id=entry.operator_id,
        added_at=timestamp(entry.added_at), event_id=entry.event_id,
    )  # fmt: skip


def _watch(entry: WatchlistEntry) -> risk_pb2.WatchlistEntry:
    return risk_pb2.WatchlistEntry(
        entry_id=entry.entry_id, label=entry.label, reason=entry.reason,
        case_ref=entry.case_ref, template_count=entry.template_count,
        added_at=timestamp(entry.added_at), event_id=entry.event_id,
    )  # fmt: skip


def _lockout(lockout: Lockout) -> risk_pb2.Lockout:
    return risk_pb2.Lockout(
        scope=lockout.scope, customer_id=lockout.customer_id, device_id=lockout.device_id,
        failures=lockout.failures, devices=lockout.devices, until=timestamp(lockout.until),
    )  # fmt: skip


def _event(record: EventRecord, delivery: str) -> risk_pb2.Event:
    payload = struct_pb2.Struct()
    payload.update(record.payload)
    return risk_pb2.Event(
        event_id=record.event_id, occurred_at=timestamp(record.occurred_at), type=record.type,
        customer_id=record.customer_id or "", device_id=record.device_id or "",
        outcome=record.outcome, payload=payload, delivery=delivery,
    )  # fmt: skip


def _review(review: Review) -> risk_pb2.Review:
    return risk_pb2.Review(
        event_id=review.event_id, occurred_at=timestamp(review.occurred_at), type=review.type,
        customer_id=review.customer_id, device_id=review.device_id,
        reason_codes=list(review.reason_codes), claimed_by=review.claimed_by,
        claim_expires_at=timestamp(review.claim_expires_at), resolution=review.resolution,
        note=review.note, resolved_by=review.resolved_by,
        resolved_at=timestamp(review.resolved_at),
        resolution_event_id=review.resolution_event_id,
    )  # fmt: skip


def _resolution(value: int) -> str:
    if value not in (common_pb2.APPROVE, common_pb2.DECLINE):
        raise InvalidInput("INVALID_RESOLUTION", "resolution must be APPROVE or DECLINE")
    return common_pb2.Outcome.Name(value)


def _caller() -> str:
    """The caller's certificate name: who claimed or resolved a review."""
    identity = auth.CURRENT.get()
    return identity.client if identity is not None else "unknown"


def _times(request: Any) -> dict[str, Any]:
    return {
        name: datetime_from(getattr(request, name), name) if request.HasField(name) else None
        for name in ("since", "until")
    }


class RiskAdminServicer(UsesEngine, risk_pb2_grpc.RiskAdminServicer):
    def __init__(self, engine: Callable[[], Engine], reviews: ReviewSettings | None = None) -> None:
        super().__init__(engine)
        self.review_settings = reviews or ReviewSettings()

    @property
    def admin(self) -> RiskAdmin:
        return RiskAdmin(self.engine)

    @property
    def reviews(self) -> Reviews:
        store, _ = decisions.engine_parts(self.engine)
        return Reviews(store, self.review_settings.claim_ttl_s)

    @mapped
    def AddListEntry(self, request: risk_pb2.AddListEntryRequest, context: grpc.ServicerContext):
        return _entry(self.admin.add_entry(
            _list_name(request.list), request.subject, request.reason, request.case_ref,
            request.operator_id,
        ))  # fmt: skip

    @mapped
    def RemoveListEntry(
        self, request: risk_pb2.RemoveListEntryRequest, context: grpc.ServicerContext
    ):
        event_id = self.admin.remove_entry(
            _list_name(request.list), request.subject, request.reason, request.operator_id
        )
        return risk_pb2.RemoveResponse(event_id=event_id)

    @mapped
    def ListEntries(self, request: risk_pb2.ListEntriesRequest, context: grpc.ServicerContext):
        page, token = self.admin.entries(
            _list_name(request.list), request.page_size, request.page_token
        )
        return risk_pb2.ListEntriesResponse(
            entries=[_entry(e) for e in page], next_page_token=token
        )

    @mapped
    def EnrollWatchlistFace(
        self, request: risk_pb2.EnrollWatchlistRequest, context: grpc.ServicerContext
    ):
        return _watch(self.admin.enroll_watchlist(
            request.label, [i.data for i in request.images], request.reason, request.case_ref,
            request.operator_id,
        ))  # fmt: skip

    @mapped
    def RemoveWatchlistEntry(
        self, request: risk_pb2.RemoveWatchlistRequest, context: grpc.ServicerContext
    ):
        event_id = self.admin.remove_watchlist(
            request.entry_id, request.reason, request.operator_id
        )
        return risk_pb2.RemoveResponse(event_id=event_id)

    @mapped
    def ListWatchlist(self, request: risk_pb2.ListWatchlistRequest, context: grpc.ServicerContext):
        page, token = self.admin.watchlist(request.page_size, request.page_token)
        return risk_pb2.ListWatchlistResponse(
            entries=[_watch(e) for e in page], next_page_token=token
        )

    @mapped
    def QueryEvents(self, request: risk_pb2.QueryEventsRequest, context: grpc.ServicerContext):
        store, outbox = decisions.engine_parts(self.engine)
        where = decisions.event_filter(
            request.customer_id, request.device_id, request.outcome, request.type,
            **_times(request),
        )  # fmt: skip
        page = decisions.query_events(
            store, outbox, where, request.reason_code, request.page_size, request.page_token
        )
        return risk_pb2.QueryEventsResponse(
            events=[_event(r, page.deliveries.get(r.event_id, "")) for r in page.events],
            next_page_token=page.next_page_token,
        )

    @mapped
    def ListDeadLetters(
        self, request: risk_pb2.ListDeadLettersRequest, context: grpc.ServicerContext
    ):
        return risk_pb2.ListDeadLettersResponse(dead_letters=[
            risk_pb2.DeadLetter(
                event_id=item.event_id, customer_id=item.document.get("customer_id", ""),
                attempts=item.attempts, last_error=item.last_error,
                created_at=timestamp(item.created_at),
            )
            for item in self.admin.dead_letters(request.page_size)
        ])  # fmt: skip

    @mapped
    def ReplayDeadLetters(
        self, request: risk_pb2.ReplayDeadLettersRequest, context: grpc.ServicerContext
    ):
        count, event_id = self.admin.replay(list(request.event_ids), request.operator_id)
        return risk_pb2.ReplayDeadLettersResponse(replayed=count, event_id=event_id)

    @mapped
    def ListLockouts(self, request: risk_pb2.ListLockoutsRequest, context: grpc.ServicerContext):
        return risk_pb2.ListLockoutsResponse(
            lockouts=[_lockout(x) for x in self.admin.lockouts(request.page_size)]
        )

    @mapped
    def LiftLockout(self, request: risk_pb2.LiftLockoutRequest, context: grpc.ServicerContext):
        identity = auth.CURRENT.get()
        event_id, lifted = self.admin.lift_lockout(
            request.customer_id, request.device_id, request.reason,
            identity.client if identity is not None else "unknown",
        )  # fmt: skip
        return risk_pb2.LiftLockoutResponse(event_id=event_id, lifted=[_lockout(x) for x in lifted])

    @mapped
    def ListReviews(self, request: risk_pb2.ListReviewsRequest, context: grpc.ServicerContext):
        page, token = self.reviews.open(
            request.page_size, request.page_token, request.customer_id, request.device_id
        )
        return risk_pb2.ListReviewsResponse(
            reviews=[_review(r) for r in page], next_page_token=token
        )

    @mapped
    def ClaimReview(self, request: risk_pb2.ClaimReviewRequest, context: grpc.ServicerContext):
        return _review(self.reviews.claim(request.event_id, _caller()))

    @mapped
    def ResolveReview(self, request: risk_pb2.ResolveReviewRequest, context: grpc.ServicerContext):
        resolution = _resolution(request.resolution)
        return _review(self.reviews.resolve(request.event_id, _caller(), resolution, request.note))

    @mapped
    def GetDecision(self, request: risk_pb2.GetDecisionRequest, context: grpc.ServicerContext):
        store, outbox = decisions.engine_parts(self.engine)
        detail = decisions.get_decision(store, outbox, request.event_id)
        decision = decision_message(detail.decision)
        del decision.rules[:]  # the analyst sees every rule's detail (case refs included)
        decision.rules.extend(common_pb2.RuleResult(**asdict(r)) for r in detail.decision.rules)
        callback = detail.callback
        return risk_pb2.DecisionDetail(
            event=_event(detail.record, callback.status if callback else ""),
            decision=decision,
            callback=risk_pb2.CallbackDelivery(
                status=callback.status, attempts=callback.attempts,
                last_error=callback.last_error, created_at=timestamp(callback.created_at),
            ) if callback else None,
            review=_review(detail.review) if detail.review else None,
        )  # fmt: skip
