"""Liveness on real people answering challenges: `faceguard eval liveness --responders DIR`.

The clips of `DIR` (with a `labels.csv`: clip, person, event, onset_s, end_s, notes) show people
turning the head, looking up and blinking, but nobody was answering faceguard. Each prompt is
therefore emulated: the session (`Session`, the service's own state machine, frame by frame at
15 frames/s) watches the person at rest facing the camera (the second before the move where
the clip has such a rest, else the person's first such rest in any of their clips), and when
it sends its prompt the replay jumps to `LEAD_S` before the move's labelled onset, as a person
who reacts that long after the prompt. A person whose prompt is due waits for it, still, up to
`WAIT_S`; a session that has not prompted by then sees the move unprompted, as a real person
who moved too early would be seen.

Two figures come out of it:

- per labelled event, a one-challenge session asking that event's challenge: detected or not,
  seconds from prompt to detection, and how it ended;
- the default policy's two-challenge session over each ordered pair of one person's events of
  different challenge types. After the first answer the clip runs on as recorded (a person
  who is not told otherwise holds the answer or comes back in their own time); when the
  session asks them to look at the camera, they take `RETURN_S` to come back and then rest,
  facing the camera, before the second move, prompted the same way. Passes, time from the
  session's start to its decision, and every `FACE_CHANGED` end are counted.

`EYES_CLOSED` events (eyes closed for a second or more) are asked as BLINK challenges and
reported apart: a deliberate closure that opens again within `blink_max_s` answers BLINK,
eyes held shut longer do not.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from service.config import SettingsError, StreamSettings
from service.errors import FaceguardError
from service.liveness.session import Observation, Session
from service.liveness.session_policy import Challenge, LivenessPolicy, SessionLimits
from service.vision.pipeline import FacePipeline
from tools.evaluation.runner import Progress
from tools.evaluation.stream_eval import FPS, analyse
from tools.evaluation.video import read_video

LEAD_S = 0.3  # the prompt goes out this long before the labelled onset (reaction time)
REST_BEFORE_S = 1.0  # rest shown before the prompt is due (more than the session's rest rule)
WAIT_S = 3.0  # the longest a person who is ready waits, still, for the prompt
NEUTRAL_YAW = 8.0  # degrees: facing the camera, for the emulated rest
REST_SPREAD = 3.0  # degrees: still, for the emulated rest
RETURN_S = 1.0  # after an answer, the person's own return from the move before the next rest
CHALLENGE_EVENTS = {str(c): c for c in Challenge} | {"EYES_CLOSED": Challenge.BLINK}


@dataclass(frozen=True)
class Event:
    """One labelled move of a clip (onset in seconds from the clip's start)."""

    clip: str
    person: str
    kind: str  # TURN_LEFT, TURN_RIGHT, LOOK_UP, BLINK, EYES_CLOSED
    onset_s: float

    @property
    def challenge(self) -> Challenge:
        return CHALLENGE_EVENTS[self.kind]

    @property
    def name(self) -> str:
        return f"{self.clip}@{self.onset_s:g}:{self.kind}"


def read_labels(path: Path) -> list[Event]:
    """The labelled events that a challenge can ask for; other rows (NONE, LOOK_DOWN, rows
    without an onset) are not challenges and are skipped. A malformed file is a SettingsError
    naming the line (the command prints it, not a traceback)."""
    events = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"clip", "person", "event", "onset_s"} - set(reader.fieldnames or ())
        if missing:
            raise SettingsError(f"{path}: no column {', '.join(sorted(missing))}")
        for row in reader:
            kind = (row["event"] or "").strip()
            onset = (row["onset_s"] or "").strip()
            if kind not in CHALLENGE_EVENTS or not onset:
                continue
            try:
                onset_s = float(onset)
            except ValueError:
                onset_s = -1.0
            clip = (row["clip"] or "").strip()
            if not 0.0 <= onset_s < 3600.0 or not clip or Path(clip).name != clip:
                raise SettingsError(f"{path}:{reader.line_num}: bad clip or onset_s: {row}")
            events.append(Event(clip, (row["person"] or "").strip(), kind, onset_s))
    if not events:
        raise SettingsError(f"{path}: no labelled challenge events")
    return events


class Replay:
    """The frames a session sees: one person's clips cut and joined as the emulation says.

    A cut shifts the following frames so that the face goes on from where it was (the same
    person does not jump across the picture). A person who has reached the moment the prompt
    was due waits for it, still, up to WAIT_S (the frame is held), as a cooperative person
    does; `waited` counts those frames.
    """

    def __init__(
        self, clips: dict[str, list[Observation]], rests: dict[str, tuple[str, int, int]]
    ) -> None:
        self.clips = clips
        self.rests = rests
        self.clip = ""
        self.index = 0
        self.held = 0  # frames that still show the frame at `index` before the replay moves on
        self.due: int | None = None  # the frame where the pending prompt was due
        self.waited = 0
        self._wait_left = 0
        self._offset = np.zeros(2)
        self._last: np.ndarray | None = None  # centre of the last face shown
        self._cut = False

    def _go(self, clip: str, index: int, held: int = 0) -> None:
        self._cut = self._cut or clip != self.clip or index != self.index or held > 0
        self.clip, self.index, self.held = clip, index, held

    def rest_before(self, event: Event) -> None:
        """Show the person at rest, facing the camera, for REST_BEFORE_S before the prompt for
        `event` is due: the frames before the move where they are such a rest, else the
        person's first such rest in any of their clips (`neutral_rests`)."""
        need = round(REST_BEFORE_S * FPS)
        due = round((event.onset_s - LEAD_S) * FPS)
        own = self.clips[event.clip][max(0, due - need) : max(0, due)]
        if len(own) == need and _is_neutral_rest(own):
            clip, start, end = event.clip, due - need, due
        else:
            clip, start, end = self.rests[event.person]
        self._go(clip, start, need - (end - start))
        self.due = end
        self._wait_left = int(WAIT_S * FPS)

    def respond(self, event: Event) -> None:
        """The prompt for `event` went out: on to LEAD_S before its onset, unless the replay is
        already past it (prompted too late: the move went by unprompted)."""
        due = max(0, round((event.onset_s - LEAD_S) * FPS))
        self.due = None
        if self.clip == event.clip and self.held == 0 and self.index > due:
            return
        self._go(event.clip, due)

    def next(self) -> Observation:
        """The next frame (the session sets its times); past a clip's end, its last frame with a
        face is held."""
        frames = self.clips[self.clip]
        if self.held:
            self.held -= 1
            frame = frames[self.index]
        elif self.due is not None and self.index >= self.due and self._wait_left > 0:
            self._wait_left -= 1
            self.waited += 1
            frame = frames[min(self.index, len(frames)) - 1]
        elif self.index < len(frames):
            frame = frames[self.index]
            self.index += 1
        else:  # past the end: the person stays as last seen
            frame = next((f for f in reversed(frames) if f.face is not None), frames[-1])
        return self._placed(frame)

    def _placed(self, frame: Observation) -> Observation:
        if frame.face is None:
            return frame
        if self._cut and self._last is not None:
            self._offset = self._last - frame.face.centre
        self._cut = False
        shift = self._offset.astype(np.float32)
        face = replace(
            frame.face, box=frame.face.box + np.tile(shift, 2),
            landmarks=frame.face.landmarks + shift,
        )  # fmt: skip
        cues = frame.cues and replace(frame.cues, points=frame.cues.points + shift)
        self._last = face.centre
        return replace(frame, analysis=replace(frame.analysis, face=face, cues=cues))


def _is_neutral_rest(frames: Sequence[Observation]) -> bool:
    """Landmarks on every frame, facing the camera (|yaw| within NEUTRAL_YAW), still (pose
    within REST_SPREAD on each axis)."""
    cues = [o.cues for o in frames]
    if not cues or any(c is None for c in cues):
        return False
    yaws = [c.yaw for c in cues if c is not None]
    pitches = [c.pitch for c in cues if c is not None]
    return (
        max(abs(y) for y in yaws) <= NEUTRAL_YAW
        and max(yaws) - min(yaws) <= REST_SPREAD
        and max(pitches) - min(pitches) <= REST_SPREAD
    )


def neutral_rests(
    clips: dict[str, list[Observation]], events: Sequence[Event]
) -> dict[str, tuple[str, int, int]]:
    """Per person, (clip, start, end) of the first REST_BEFORE_S of frames facing the camera
    at rest in their clips (the longest such stretch where none is that long; its first
    frame is held to fill the rest)."""
    need = round(REST_BEFORE_S * FPS)
    found: dict[str, tuple[str, int, int]] = {}
    for person in sorted({e.person for e in events}):
        best = ("", 0, 0)
        for clip in sorted({e.clip for e in events if e.person == person}):
            frames = clips[clip]
            for start in range(len(frames)):
                length = min(need, len(frames) - start)
                while length > best[2] - best[1] and not _is_neutral_rest(
                    frames[start : start + length]
                ):
                    length -= 1
                if length > best[2] - best[1]:
                    best = (clip, start, start + length)
                if best[2] - best[1] == need:
                    break
            if best[2] - best[1] == need:
                break
        if not best[0]:
            raise ValueError(f"person {person}: no frame facing the camera to rest on")
        found[person] = best
    return found


@dataclass(frozen=True)
class Outcome:
    """How one emulated session went."""

    passed: bool
    ending: str  # PASSED, the error reason that ended it, or what the failed answer showed
    detail: str
    prompt_s: list[float]  # when each challenge prompt went out, from the session's start
    answer_s: list[float]  # seconds from each prompt to its detected answer
    decided_s: float  # seconds from the session's start to its end
    waited_s: float  # how long the person waited, still, for a prompt that was due


def replay_session(
    clips: dict[str, list[Observation]], rests: dict[str, tuple[str, int, int]],
    events: Sequence[Event], limits: SessionLimits, policy: LivenessPolicy, max_s: float = 20.0,
) -> Outcome:  # fmt: skip
    """Run one session over the replay of `events`, asking one event's challenge per prompt."""
    replay = Replay(clips, rests)
    replay.rest_before(events[0])
    session = Session(
        limits, policy, 0.0, ask_challenge=True,
        choose=lambda _: events[min(len(session.asked), len(events) - 1)].challenge,
    )  # fmt: skip
    prompts: list[float] = []

    def waited() -> float:
        return round(replay.waited / FPS, 2)

    returning: int | None = None  # frames the person still spends returning from a move
    now = 0.0
    try:
        for frame_no in range(int(max_s * FPS)):
            now = frame_no / FPS
            if now >= session.next_timer_s():
                session.expire(now)
            if session.done:
                break
            if returning is not None:
                returning -= 1
                if returning <= 0:
                    returning = None
                    replay.rest_before(events[min(len(prompts), len(events) - 1)])
            seen = replay.next()
            prompt = session.observe(replace(seen, received_s=now, captured_s=now))
            if prompt is not None and prompt.challenge is None:  # LOOK_AT_CAMERA
                returning = round(RETURN_S * FPS)
            elif prompt is not None:
                prompts.append(now)
                returning = None
                replay.respond(events[min(len(prompts), len(events)) - 1])
        session.close()
    except FaceguardError as error:
        return Outcome(False, error.reason, str(error), prompts, _answers(session), now, waited())
    report = session.report()
    last = session.response
    if report.passed:
        ending, detail = "PASSED", ""
    elif last is not None and not last.passed:
        ending, detail = last.seen, last.detail
    else:
        ending, detail = "LOW_SCORE", f"score {report.score}"
    return Outcome(report.passed, ending, detail, prompts, _answers(session), now, waited())


def _answers(session: Session) -> list[float]:
    return [r.at_s for r in session.responses if r.passed and r.at_s is not None]


def _pairs(events: Sequence[Event]) -> list[tuple[Event, Event]]:
    """Ordered pairs of one person's events asking different challenges (not EYES_CLOSED)."""
    asked = [e for e in events if e.kind in Challenge.__members__]
    return [
        (a, b) for a in asked for b in asked
        if a is not b and a.person == b.person and a.challenge != b.challenge
    ]  # fmt: skip


def _median(values: Sequence[float]) -> float | None:
    return round(float(np.median(values)), 2) if values else None


def evaluate(
    clips: dict[str, list[Observation]], events: Sequence[Event], settings: StreamSettings,
    passive_threshold: float,
) -> dict[str, Any]:  # fmt: skip
    """Detection per challenge type (one-challenge sessions), and the default policy's
    two-challenge sessions over pairs of one person's moves."""
    limits = settings.limits()
    policy = settings.liveness.with_passive(passive_threshold)
    single = replace(limits, challenges_per_session=1)
    rests = neutral_rests(clips, events)
    detection: dict[str, dict[str, Any]] = {}
    face_changed: dict[str, int] = {}
    first_prompt: list[float] = []
    waits: list[float] = []
    for event in events:
        outcome = replay_session(clips, rests, [event], single, policy)
        row = detection.setdefault(
            event.kind, {"events": 0, "detected": 0, "answer_s": [], "missed": []}
        )
        row["events"] += 1
        found = bool(outcome.answer_s)
        row["detected"] += int(found)
        row["answer_s"].extend(outcome.answer_s)
        if not found:
            row["missed"].append(f"{event.name}: {outcome.ending} {outcome.detail}".strip())
        if outcome.ending == "FACE_CHANGED":
            face_changed[event.person] = face_changed.get(event.person, 0) + 1
        first_prompt.extend(outcome.prompt_s[:1])
        waits.append(outcome.waited_s)
    for row in detection.values():
        row["rate"] = round(row["detected"] / row["events"], 4)
        row["answer_s_median"] = _median(row.pop("answer_s"))
    count = limits.challenges_per_session
    sessions: list[tuple[tuple[Event, Event], Outcome]] = []
    if count == 2:
        for pair in _pairs(events):
            sessions.append((pair, replay_session(clips, rests, pair, limits, policy)))
    endings: dict[str, int] = {}
    for (first, _), outcome in sessions:
        endings[outcome.ending] = endings.get(outcome.ending, 0) + 1
        if outcome.ending == "FACE_CHANGED":
            face_changed[first.person] = face_changed.get(first.person, 0) + 1
        first_prompt.extend(outcome.prompt_s[:1])
        waits.append(outcome.waited_s)
    passed = [o for _, o in sessions if o.passed]
    decided = [o.decided_s for o in passed]
    return {
        "detection": detection,
        "sessions": {
            "challenges_per_session": count,
            "sessions": len(sessions),
            "passed": len(passed),
            "pass_rate": round(len(passed) / len(sessions), 4) if sessions else None,
            "decided_s_median": _median(decided),
            "decided_s_max": round(max(decided), 2) if decided else None,
            "endings": endings,
            "failed": [
                f"{a.name} then {b.name}: {o.ending} {o.detail}".strip()
                for (a, b), o in sessions if not o.passed
            ],
        },
        "face_changed": face_changed,
        "first_prompt_s_median": _median(first_prompt),
        "first_prompt_s_max": round(max(first_prompt), 2) if first_prompt else None,
        "waited_for_prompt_s_median": _median(waits),
        "waited_for_prompt_s_max": max(waits, default=None),
        "emulation": {
            "lead_s": LEAD_S, "rest_before_s": REST_BEFORE_S, "return_s": RETURN_S,
            "wait_s": WAIT_S,
        },
    }  # fmt: skip


def analyse_clips(
    pipeline: FacePipeline, root: Path, events: Sequence[Event]
) -> dict[str, list[Observation]]:
    """Every labelled clip analysed once, frame by frame at 15 frames/s."""
    names = sorted({e.clip for e in events})
    clips = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("analysing responders' clips", total=len(names))
        for name in names:
            clips[name] = analyse(pipeline, read_video(root / name, FPS))
            progress.advance(task)
    return clips


def responder_figures(
    pipeline: FacePipeline, settings: StreamSettings, passive_threshold: float, root: Path
) -> dict[str, Any]:
    """The responders' figures for a folder of clips and its labels.csv."""
    if pipeline.facemesh is None:
        raise FileNotFoundError("the face mesh model is not built: no landmark cues to evaluate")
    events = read_labels(root / "labels.csv")
    clips = analyse_clips(pipeline, root, events)
    return {"clips": len(clips), "events": len(events)} | evaluate(
        clips, events, settings, passive_threshold
    )


def tables(figures: dict[str, Any]) -> list[Table]:
    """The responders' figures as tables: detection per challenge, then the sessions."""
    detection = Table(title="responders: detection per challenge (one-challenge sessions)")
    for column in ("challenge", "events", "detected", "rate", "answer s (median)", "missed"):
        detection.add_column(column)
    for kind, row in figures["detection"].items():
        detection.add_row(
            kind, str(row["events"]), str(row["detected"]), f"{row['rate']:.0%}",
            f"{row['answer_s_median']}", "\n".join(row["missed"]),
        )  # fmt: skip
    sessions = figures["sessions"]
    summary = Table(title="responders: two-challenge sessions (default policy)", show_header=False)
    summary.add_row("sessions", str(sessions["sessions"]))
    summary.add_row("pass rate", f"{sessions['pass_rate']}")
    summary.add_row("decided s (median, max)", f"{sessions['decided_s_median']}, "
                    f"{sessions['decided_s_max']}")  # fmt: skip
    summary.add_row("endings", json.dumps(sessions["endings"]))
    summary.add_row("FACE_CHANGED ends", json.dumps(figures["face_changed"]))
    summary.add_row("first prompt s (median, max)", f"{figures['first_prompt_s_median']}, "
                    f"{figures['first_prompt_s_max']}")  # fmt: skip
    summary.add_row("failed", "\n".join(sessions["failed"]))
    return [detection, summary]
