"""The use cases driven directly, without gRPC: an app built from settings with the face work in
this process (InProcessVision) and a temporary store, through verify, identify, enrol, delete
and a streamed session, which share one decision path (`Decisions`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.app.assembly import build_engine
from service.app.engine import Engine
from service.app.streams import Frame, Opening, StreamRun
from service.app.vision_pool import InProcessVision
from service.config import StreamSettings
from service.domain import APPROVE, DECLINE, Consent
from service.errors import Conflict, NotFound, Unprocessable
from tests.liveness_tracks import LiveHead
from tests.service_helpers import best_quality, people_with, service_settings, with_sections

FPS = 15.0
STREAM = StreamSettings(
    max_duration_s=7.0, max_frames=90, idle_timeout_s=1.0, response_window_s=2.0,
    challenges=("TURN_LEFT", "LOOK_UP"), challenges_per_session=2, no_face_timeout_s=30.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def people(shared_data: Path) -> list[tuple[str, list[Path]]]:
    return people_with(shared_data, minimum=3, count=5)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    settings = service_settings(tmp_path_factory.mktemp("data"))
    engine = build_engine(with_sections(settings, vision={"processes": 0}))
    assert isinstance(engine.vision, InProcessVision)
    yield engine
    engine.close()
    engine.gallery.store.close()


def consent() -> Consent:
    return Consent("kiosk verification", datetime.now(UTC), "branch", "op-1")


def blank_jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


def events(app: Engine, customer_id: str, kind: str) -> list:
    return [e for e in app.gallery.store.events_of(customer_id) if e.type == kind]


@pytest.fixture(scope="module")
def enrolled(app: Engine, people) -> list[tuple[str, list[Path]]]:
    for name, images in people[:2]:
        record, decision = app.enrolment.enroll(
            name, [p.read_bytes() for p in images[:2]], consent()
        )
        assert record.template_count == 2 and decision.outcome == APPROVE
    return people[:2]


def test_verify_and_identify_decide_and_record_once(app: Engine, enrolled) -> None:
    (alice, photos), (bob, _) = enrolled
    probe = photos[2].read_bytes()
    decision = app.kiosk.verify(alice, [probe], "kiosk-1")
    assert decision.outcome in (APPROVE, "REVIEW") and "MATCH" in decision.reason_codes
    assert decision.match_score >= app.policy.threshold
    assert decision.calibration_version == app.policy.calibration_version
    (event,) = [e for e in events(app, alice, "VERIFY") if e.event_id == decision.event_id]
    assert event.payload["rules"], "the risk policy judged the decision"
    other = app.kiosk.verify(bob, [probe], "kiosk-1")
    assert other.outcome == DECLINE and "NO_MATCH" in other.reason_codes
    candidates, found = app.kiosk.identify(probe, 3, 0.0, "kiosk-1")
    assert candidates[0][0] == alice and found.customer_id == alice


def test_a_refusal_before_the_decision_is_audited_where_it_is_caught(app: Engine, enrolled) -> None:
    alice = enrolled[0][0]
    with pytest.raises(Unprocessable) as err:
        app.kiosk.verify(alice, [blank_jpeg()], "kiosk-2")
    assert err.value.reason == "NO_FACE"
    (event,) = [
        e for e in events(app, alice, "VERIFY") if e.event_id == err.value.metadata["event_id"]
    ]
    assert event.outcome == DECLINE and event.payload["reason_codes"] == ["NO_FACE"]


def test_an_enrolment_that_loses_the_race_is_customer_exists(
    app: Engine, people, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two enrolments of one id: the second passes `has_customer` before the first commits
    (forced here, so the store already has the row) and must be CUSTOMER_EXISTS, not INTERNAL."""
    name, images = people[2]
    data = [images[0].read_bytes()]
    app.enrolment.enroll(name, data, consent())
    monkeypatch.setattr(app.gallery, "has_customer", lambda customer_id: False)
    with pytest.raises(Conflict) as err:
        app.enrolment.enroll(name, data, consent())
    assert err.value.reason == "CUSTOMER_EXISTS"
    assert app.enrolment.get(name).template_count == 1


def test_concurrent_enrolments_of_one_id_leave_one_customer(app: Engine, people) -> None:
    name, images = people[3]
    data = [images[1].read_bytes()]
    barrier, outcomes = threading.Barrier(2), []

    def enrol() -> None:
        barrier.wait()
        try:
            app.enrolment.enroll(name, data, consent())
            outcomes.append("ok")
        except Conflict as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=enrol) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["CUSTOMER_EXISTS", "ok"]


def test_delete_erases_and_later_calls_do_not_find_the_customer(app: Engine, people) -> None:
    name, images = people[4]
    app.enrolment.enroll(name, [images[0].read_bytes()], consent())
    event_id = app.enrolment.delete(name, "customer request", "op-2")
    assert [e.event_id for e in events(app, name, "DELETE")] == [event_id]
    with pytest.raises(NotFound):
        app.enrolment.get(name)
    with pytest.raises(NotFound) as err:
        app.kiosk.verify(name, [images[1].read_bytes()], "kiosk-3")
    assert err.value.metadata["event_id"]  # the refused attempt is audited too


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_streamed_session_ends_in_the_same_decision_path(
    app: Engine, enrolled, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, photos = enrolled[0]
    head = LiveHead(seed=1)
    monkeypatch.setattr(app.vision.pipeline, "cues", lambda image, face: head.next())
    clock = Clock()
    opening = Opening("s-usecase", "kiosk-4", customer_id=alice)
    run = StreamRun(app.kiosk, STREAM, opening, clock=clock)
    data = best_quality(photos).read_bytes()
    prompts = []
    while not run.done and run.session.frames < STREAM.max_frames:
        clock.now += 1.0 / FPS
        prompt = run.frame(Frame(data, clock.now, "kiosk-4", "s-usecase"), clock.now)
        if prompt is not None:
            prompts.append(prompt.code)
            if prompt.challenge is not None:
                head.respond(prompt.challenge)
    outcome = run.finish()
    assert prompts and outcome.candidates == []
    decision = outcome.decision
    assert decision.outcome == APPROVE, decision.reason_codes
    assert decision.liveness is not None and decision.liveness.passed
    (event,) = [e for e in events(app, alice, "VERIFY") if e.event_id == decision.event_id]
    assert event.payload["liveness"]["passed"]


def test_a_refused_stream_opening_is_audited(app: Engine) -> None:
    opening = Opening("s-unknown", "kiosk-5", customer_id="nobody-here")
    with pytest.raises(NotFound) as err:
        StreamRun(app.kiosk, STREAM, opening)
    (event,) = events(app, "nobody-here", "VERIFY")
    assert event.event_id == err.value.metadata["event_id"] and event.outcome == DECLINE
