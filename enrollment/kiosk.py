"""`faceguard kiosk`: stream a camera, a video file or an image sequence to the service.

With `--customer-id` it runs VerifyStream (1:1), without it IdentifyStream (1:N). Frames go
out at the source's own rate (a video's frame rate, `--fps` for image sequences, the camera's
pace for a webcam), JPEG-encoded with their capture time; each prompt is shown as it arrives,
in plain words with the seconds left to answer it, and the one final decision is printed (or
written as one JSON object with `--json`). It is the kiosk demo and the tool for trying the
liveness checks by hand: a recorded clip always declines when the service asks a random
challenge (the default), as it cannot answer it.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp"}
JPEG_QUALITY = 90


def add_kiosk_command(commands: argparse._SubParsersAction, handler: Callable) -> None:
    """Register `faceguard kiosk` (no grpc or opencv import here)."""
    from enrollment.cli import connection_options

    kiosk = commands.add_parser(
        "kiosk", help="kiosk: stream a camera, video or image sequence for a live session"
    )
    kiosk.add_argument(
        "source", help="video file, folder of images, image files' glob, or a webcam index (0)"
    )
    kiosk.add_argument("--customer-id", help="verify this customer (default: identify)")
    kiosk.add_argument("--device-id", default="kiosk-cli", help="the kiosk's device id")
    kiosk.add_argument("--session-id", help="default: a new UUID")
    kiosk.add_argument("--fps", type=float, help="send rate (default: the video's, else 15)")
    kiosk.add_argument("--top-k", type=int, default=5, help="identify: candidates to return")
    kiosk.add_argument(
        "--request-challenge", action="store_true",
        help="ask for a challenge even where the service's policy does not require one",
    )  # fmt: skip
    connection_options(kiosk)
    kiosk.set_defaults(handler=handler, timeout=60.0)


def _images(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in Path().glob(source)) if any(c in source for c in "*?[") else []


def open_source(source: str, fps: float | None) -> tuple[Iterator[Any], float, bool]:
    """(BGR frames, send rate, live) of a webcam index, an image folder/glob or a video file.

    A live camera paces itself; a file is replayed at its rate, so the service sees what a
    camera would have sent.
    """
    import cv2

    images = _images(source)
    if images:
        return (cv2.imread(str(p)) for p in images), fps or 15.0, False
    live = source.isdigit()
    capture = cv2.VideoCapture(int(source) if live else source)
    if not capture.isOpened():
        raise OSError(f"cannot open {source} as a camera, video or image sequence")
    rate = fps or capture.get(cv2.CAP_PROP_FPS) or 15.0

    def frames() -> Iterator[Any]:
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()

    return frames(), rate, live


def _requests(
    args: argparse.Namespace, frames: Iterator[Any], rate: float, live: bool,
    session_id: str, stop: threading.Event,
) -> Iterator[Any]:  # fmt: skip
    import cv2
    from google.protobuf.timestamp_pb2 import Timestamp

    from faceguard.v1 import common_pb2, verification_pb2

    identify = not args.customer_id
    options = verification_pb2.StreamOptions(
        session_id=session_id, device_id=args.device_id,
        request_challenge=args.request_challenge,
    )  # fmt: skip
    if identify:
        yield verification_pb2.IdentifyStreamRequest(
            start=verification_pb2.IdentifyStreamStart(top_k=args.top_k, options=options)
        )
    else:
        yield verification_pb2.VerifyStreamRequest(
            start=verification_pb2.VerifyStreamStart(customer_id=args.customer_id, options=options)
        )
    wrap = (
        verification_pb2.IdentifyStreamRequest if identify else verification_pb2.VerifyStreamRequest
    )
    next_at = time.monotonic()
    for frame in frames:
        if stop.is_set() or frame is None:
            return
        if not live:  # replay at the source's rate
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        stamp = Timestamp()
        stamp.GetCurrentTime()
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError("JPEG encoding failed")
        frame = verification_pb2.StreamFrame(
            image=common_pb2.Image(data=data.tobytes()), captured_at=stamp,
            device_id=args.device_id, session_id=session_id,
        )  # fmt: skip
        yield wrap(frame=frame)


def prompt_line(text: str, deadline_s: float, now_s: float) -> str:
    """What the kiosk shows for a prompt: the instruction and the whole seconds left."""
    left = max(0, math.ceil(deadline_s - now_s))
    return f"{text}  ({left} s left)"


class PromptDisplay:
    """The current prompt with the seconds left to its deadline, redrawn on stderr several
    times a second until the next prompt or the decision replaces it (nothing with --json)."""

    def __init__(self, enabled: bool) -> None:
        self._live: Any = None
        self._text = ""
        self._deadline_s = 0.0
        self._enabled = enabled

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(prompt_line(self._text, self._deadline_s, time.time()), style="bold yellow")

    def show(self, prompt: Any) -> None:
        """Show a Prompt message (its deadline is on the wall clock)."""
        if not self._enabled:
            return
        self._text = prompt.text or prompt.challenge
        self._deadline_s = prompt.deadline.seconds + prompt.deadline.nanos / 1e9
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self, console=Console(stderr=True), refresh_per_second=5)
            self._live.start()
        self._live.refresh()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def run_kiosk(args: argparse.Namespace) -> int:
    """Stream the source; print the decision. The exit status is the decision's (0 APPROVE,
    1 DECLINE, 3 REVIEW) or the failure's (`enrollment.exit_status`)."""
    import grpc

    from enrollment import exit_status
    from enrollment.client import describe_error, stubs
    from enrollment.render import message_json, print_decision, print_error, print_json

    try:
        frames, rate, live = open_source(args.source, args.fps)
    except OSError as error:
        failure = {"status": "LOCAL", "reason": "UNREADABLE_SOURCE", "message": str(error)}
        print_json({"error": failure}) if args.json else print_error(failure)
        return exit_status.REFUSED
    session_id = args.session_id or str(uuid.uuid4())
    stop = threading.Event()
    connection = stubs(args)
    stream = (
        connection.verification.VerifyStream
        if args.customer_id
        else connection.verification.IdentifyStream
    )
    prompts: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    display = PromptDisplay(enabled=not args.json)
    try:
        call = stream(_requests(args, frames, rate, live, session_id, stop), timeout=args.timeout)
        for reply in call:
            if reply.WhichOneof("message") == "prompt":
                prompts.append(message_json(reply.prompt))
                display.show(reply.prompt)
            else:
                result = message_json(reply.result)
        stop.set()
    except grpc.RpcError as error:
        failure = describe_error(error)
        if args.json:
            print_json({"session_id": session_id, "prompts": prompts, "error": failure})
        else:
            print_error(failure)
        return exit_status.for_error(error.code().name)
    finally:
        display.close()
        stop.set()
        connection.channel.close()
    decision = result.get("decision", {})
    if args.json:
        print_json({"session_id": session_id, "prompts": prompts, **result})
    else:
        print_decision(decision, result.get("candidates", ()))
    return exit_status.for_outcome(decision.get("outcome", ""))
