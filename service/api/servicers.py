"""gRPC servicers: messages in, engine use case, messages out. No business logic here.

They get the engine through a callable, so the server can bind its port and report
NOT_SERVING while the models load, answering UNAVAILABLE until the engine exists.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from faceguard.v1 import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api import auth
from service.api.messages import consent_from, customer_message, decision_message
from service.api.status import mapped, mapped_stream
from service.api.streaming import prompt_message, run_stream
from service.app.engine import Engine
from service.app.streams import ActiveSessions, Opening, StreamRun
from service.config import StreamSettings
from service.liveness.session import Prompt


class UsesEngine:
    """A servicer's engine, got per call: UNAVAILABLE (NOT_READY) until it is built."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine()


class FaceVerificationServicer(UsesEngine, verification_pb2_grpc.FaceVerificationServicer):
    def __init__(self, engine: Callable[[], Engine], stream: StreamSettings | None = None) -> None:
        super().__init__(engine)
        self.stream_settings = stream or StreamSettings()
        self.sessions = ActiveSessions()

    @mapped
    def Verify(self, request: verification_pb2.VerifyRequest, context: grpc.ServicerContext):
        decision = self.engine.kiosk.verify(
            request.customer_id, [f.data for f in request.frames], request.device_id
        )
        return verification_pb2.VerifyResponse(decision=decision_message(decision))

    @mapped
    def Identify(self, request: verification_pb2.IdentifyRequest, context: grpc.ServicerContext):
        candidates, decision = self.engine.kiosk.identify(
            request.image.data, request.top_k, request.min_score, request.device_id,
            searcher=auth.searcher(),
        )  # fmt: skip
        return verification_pb2.IdentifyResponse(
            candidates=[verification_pb2.Candidate(customer_id=c, score=s) for c, s in candidates],
            decision=decision_message(decision),
        )

    @mapped
    def CheckLiveness(
        self, request: verification_pb2.CheckLivenessRequest, context: grpc.ServicerContext
    ):
        decision = self.engine.kiosk.check_liveness(
            [f.data for f in request.frames], request.device_id
        )
        return verification_pb2.CheckLivenessResponse(decision=decision_message(decision))

    def _session(self, requests, context: grpc.ServicerContext, identify: bool):
        def begin(opening: Opening) -> StreamRun:
            return StreamRun(self.engine.kiosk, self.stream_settings, opening)

        return run_stream(
            requests, context, begin, self.sessions, identify,
            self.stream_settings.idle_timeout_s,
        )  # fmt: skip

    @mapped_stream
    def VerifyStream(self, request_iterator, context: grpc.ServicerContext):
        for step in self._session(request_iterator, context, identify=False):
            if isinstance(step, Prompt):
                yield verification_pb2.VerifyStreamResponse(prompt=prompt_message(step))
            else:
                result = verification_pb2.VerifyResponse(decision=decision_message(step.decision))
                yield verification_pb2.VerifyStreamResponse(result=result)

    @mapped_stream
    def IdentifyStream(self, request_iterator, context: grpc.ServicerContext):
        for step in self._session(request_iterator, context, identify=True):
            if isinstance(step, Prompt):
                yield verification_pb2.IdentifyStreamResponse(prompt=prompt_message(step))
            else:
                result = verification_pb2.IdentifyResponse(
                    candidates=[
                        verification_pb2.Candidate(customer_id=c, score=s)
                        for c, s in step.candidates
                    ],
                    decision=decision_message(step.decision),
                )
                yield verification_pb2.IdentifyStreamResponse(result=result)


class EnrollmentServicer(UsesEngine, enrollment_pb2_grpc.EnrollmentServicer):
    @mapped
    def Enroll(self, request: enrollment_pb2.EnrollRequest, context: grpc.ServicerContext):
        customer, decision = self.engine.enrolment.enroll(
            request.customer_id,
            [i.data for i in request.images],
            consent_from(request.consent, request.HasField("consent")),
        )
        return enrollment_pb2.EnrollResponse(
            customer=customer_message(customer), decision=decision_message(decision)
        )

    @mapped
    def UpdateTemplates(
        self, request: enrollment_pb2.UpdateTemplatesRequest, context: grpc.ServicerContext
    ):
        customer, decision = self.engine.enrolment.update_templates(
            request.customer_id, [i.data for i in request.images], request.replace,
            request.operator_id,
        )  # fmt: skip
        return enrollment_pb2.EnrollResponse(
            customer=customer_message(customer), decision=decision_message(decision)
        )

    @mapped
    def Delete(self, request: enrollment_pb2.DeleteRequest, context: grpc.ServicerContext):
        event_id = self.engine.enrolment.delete(
            request.customer_id, request.reason, request.operator_id
        )
        return enrollment_pb2.DeleteResponse(event_id=event_id)

    @mapped
    def Get(self, request: enrollment_pb2.GetRequest, context: grpc.ServicerContext):
        return customer_message(self.engine.enrolment.get(request.customer_id))

    @mapped
    def List(self, request: enrollment_pb2.ListRequest, context: grpc.ServicerContext):
        records, cursor = self.engine.enrolment.list(request.page_size, request.page_token)
        return enrollment_pb2.ListResponse(
            customers=[customer_message(r) for r in records], next_page_token=cursor or ""
        )
