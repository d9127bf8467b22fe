"""The RiskAdmin servicer: messages in, RiskAdmin use case out. Admin role only (see auth)."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from faceguard.v1 import risk_pb2, risk_pb2_grpc
from service.api import auth
from service.api.messages import datetime_from, timestamp
from service.api.servicers import UsesEngine
from service.api.status import mapped
from service.app.risk_admin import RiskAdmin
from service.errors import InvalidInput
from service.store.lists import ListEntry
from service.store.velocity import Lockout
from service.store.watchlist import WatchlistEntry


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


class RiskAdminServicer(UsesEngine, risk_pb2_grpc.RiskAdminServicer):
    @property
    def admin(self) -> RiskAdmin:
        admin = self.engine.risk_admin
        if admin is None:
            raise ValueError("the engine was built without risk checks")
        return admin

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
        since = datetime_from(request.since, "since") if request.HasField("since") else None
        until = datetime_from(request.until, "until") if request.HasField("until") else None
        views, token = self.admin.events(
            request.customer_id, request.device_id, since, until, request.page_size,
            request.page_token,
        )  # fmt: skip
        events = []
        for view in views:
            payload = struct_pb2.Struct()
            payload.update(view.payload)
            events.append(risk_pb2.Event(
                event_id=view.event_id, occurred_at=timestamp(view.occurred_at), type=view.type,
                customer_id=view.customer_id, device_id=view.device_id, outcome=view.outcome,
                payload=payload, delivery=view.delivery,
            ))  # fmt: skip
        return risk_pb2.QueryEventsResponse(events=events, next_page_token=token)

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
