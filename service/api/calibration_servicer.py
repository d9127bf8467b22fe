"""The Calibration servicer: messages in, CalibrationAdmin use case out. Admin role only."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from faceguard.v1 import calibration_pb2, calibration_pb2_grpc
from service.api.auth import CURRENT
from service.api.messages import timestamp
from service.api.servicers import UsesEngine
from service.api.status import mapped
from service.app.calibration import CalibrationAdmin
from service.app.engine import Engine
from service.config import CalibrationSettings
from service.errors import InvalidInput
from service.store.calibrations import CalibrationRecord

_VERDICTS = {calibration_pb2.CALIBRATION_APPROVE: True, calibration_pb2.CALIBRATION_REJECT: False}


def proposal_message(record: CalibrationRecord) -> calibration_pb2.CalibrationProposal:
    return calibration_pb2.CalibrationProposal(
        id=record.id, version=record.version,
        status=calibration_pb2.CalibrationStatus.Value(f"CALIBRATION_{record.status}"),
        created_at=timestamp(record.created_at), proposer=record.proposer,
        embedder=record.embedder, people=record.people, templates=record.templates,
        impostor_pairs=record.impostor_pairs, confidence=record.confidence,
        targets=[calibration_pb2.TargetCalibration(**vars(t)) for t in record.targets],
        live_version=record.live_version, decided_by=record.decided_by or "",
        decided_at=timestamp(record.decided_at), reason=record.reason or "",
        event_id=record.event_id or "",
    )  # fmt: skip


def _client() -> str:
    identity = CURRENT.get()
    return identity.client if identity is not None else ""


class CalibrationServicer(UsesEngine, calibration_pb2_grpc.CalibrationServicer):
    def __init__(self, engine: Callable[[], Engine], settings: CalibrationSettings) -> None:
        super().__init__(engine)
        self.settings = settings

    @property
    def admin(self) -> CalibrationAdmin:
        return CalibrationAdmin(self.engine, self.settings)

    @mapped
    def ProposeCalibration(
        self, request: calibration_pb2.ProposeCalibrationRequest, context: grpc.ServicerContext
    ):
        return proposal_message(
            self.admin.propose(request.operator_id, request.sample_customers, _client())
        )

    @mapped
    def ListCalibrations(
        self, request: calibration_pb2.ListCalibrationsRequest, context: grpc.ServicerContext
    ):
        admin = self.admin
        records, token = admin.page(request.page_size, request.page_token)
        live = admin.live()
        return calibration_pb2.ListCalibrationsResponse(
            calibrations=[proposal_message(r) for r in records], next_page_token=token,
            live=calibration_pb2.LiveCalibration(
                version=live.version, fmr_target=live.fmr_target, threshold=live.threshold,
                thresholds=live.thresholds,
            ),
        )  # fmt: skip

    @mapped
    def GetCalibration(
        self, request: calibration_pb2.GetCalibrationRequest, context: grpc.ServicerContext
    ):
        return proposal_message(self.admin.get(request.id))

    @mapped
    def DecideCalibration(
        self, request: calibration_pb2.DecideCalibrationRequest, context: grpc.ServicerContext
    ):
        if request.verdict not in _VERDICTS:
            raise InvalidInput(
                "INVALID_VERDICT", "verdict is required: CALIBRATION_APPROVE or CALIBRATION_REJECT"
            )
        return proposal_message(self.admin.decide(
            request.id, _VERDICTS[request.verdict], request.reason, request.operator_id,
            _client(),
        ))  # fmt: skip
