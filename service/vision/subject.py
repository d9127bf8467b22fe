"""The one face a request is about: found, checked for count, and analysed.

A verify or liveness check sends frames and wants the best face among them as a probe; an
identify or an enrolment image wants the image's single face, as a probe or as a gallery
template; a streamed session wants, frame by frame, the face it follows. Each runs here as a
whole step over a `FacePipeline`, so it can run in a worker process
(`service.app.vision_pool`) with one round trip: only the image bytes go in and only the
analysis comes back, never the decoded pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.vision.decode import ImageDecodeError
from service.vision.pipeline import FacePipeline, primary_face
from service.vision.types import Face, FaceAnalysis, Image, Quality

NO_FACE = "NO_FACE"
MULTIPLE_FACES = "MULTIPLE_FACES"

# The face work a request can ask for, by name: what a vision worker process may be asked to
# run (`service.app.vision_pool`), filled by `vision_task`. Each takes the pipeline first.
TASKS: dict[str, Callable[..., Any]] = {}
Task = TypeVar("Task", bound=Callable[..., Any])


def vision_task(function: Task) -> Task:
    """Register `function` in `TASKS` under its name."""
    TASKS[function.__name__] = function
    return function


class ImageRejected(Exception):
    """An image of the request gives no usable face.

    `reason` is a `DecodeReason` code, NO_FACE or MULTIPLE_FACES; `index` is the image's
    position in the request (None: no frame of the request held a face).
    """

    def __init__(self, reason: str, index: int | None, message: str) -> None:
        super().__init__(reason, index, message)
        self.reason = reason
        self.index = index
        self.message = message

    def __str__(self) -> str:
        return self.message


def _decode(pipeline: FacePipeline, data: bytes, index: int, what: str) -> Image:
    try:
        return pipeline.decode(data)
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc.reason), index, f"{what} {index}: {exc}") from exc


def _face_of(
    pipeline: FacePipeline, data: bytes, index: int, what: str, allow_multiple: bool
) -> tuple[Image, Face | None]:
    """The decoded image and its one face (None: no face). Several faces are refused unless
    `allow_multiple`, which takes the most central one."""
    image = _decode(pipeline, data, index, what)
    faces = pipeline.detect(image)
    if len(faces) > 1 and allow_multiple:
        faces = [primary_face(faces, image)]
    if len(faces) > 1:
        raise ImageRejected(MULTIPLE_FACES, index, f"{what} {index}: {len(faces)} faces found")
    return image, faces[0] if faces else None


@vision_task
def single_face(
    pipeline: FacePipeline, data: bytes, index: int, template: bool, allow_multiple: bool
) -> FaceAnalysis:
    """The analysis of an image's one face; `template`: embedded as a gallery template (see
    `FacePipeline.embed`), else as a probe."""
    image, face = _face_of(pipeline, data, index, "image", allow_multiple)
    if face is None:
        raise ImageRejected(NO_FACE, index, f"image {index}: no face found")
    return pipeline.analyse_faces(image, [face], template)[0]


@vision_task
def best_probe(pipeline: FacePipeline, frames: list[bytes], allow_multiple: bool) -> FaceAnalysis:
    """The best-quality face over the frames, analysed as a probe; each frame must hold at most
    one face. Only that face is embedded and scored for liveness."""
    seen = []
    for i, frame in enumerate(frames):
        image, face = _face_of(pipeline, frame, i, "frame", allow_multiple)
        if face is not None:
            seen.append((image, face))
    if not seen:
        raise ImageRejected(NO_FACE, None, "no face found in any frame")
    if len(seen) > 1:  # best quality first; a lone face is scored once, by analyse_faces
        seen.sort(key=lambda found: -pipeline.quality(found[0], [found[1]])[0].score)
    image, face = seen[0]
    return pipeline.analyse_faces(image, [face], template=False)[0]


@dataclass(frozen=True)
class FrameWish:
    """What a streamed session wants from its next frame: the face nearest the one it followed
    `last` (None: the primary face), with its embedding if its quality score is above
    `embed_above` (None: whatever its quality)."""

    last: Face | None = None
    embed_above: float | None = None

    def follow(self, faces: list[Face], image: Image) -> Face | None:
        if not faces:
            return None
        if self.last is None:
            return primary_face(faces, image)
        last = self.last.centre
        return min(faces, key=lambda f: float(np.linalg.norm(f.centre - last)))

    def wants_embedding(self, quality: Quality) -> bool:
        return self.embed_above is None or quality.score > self.embed_above


@vision_task
def stream_frame(
    pipeline: FacePipeline, data: bytes, index: int, wish: FrameWish
) -> FaceAnalysis | None:
    """Decode frame `index` of a stream and analyse only the face the session follows (None:
    no face): quality, passive liveness and mesh cues always, the embedding where the session
    wished for it; the three models run side by side."""
    image = _decode(pipeline, data, index, "frame")
    face = wish.follow(pipeline.detect(image), image)
    if face is None:
        return None
    quality = pipeline.quality(image, [face])[0]
    embedding, cues, liveness = pipeline.side_by_side.run(
        lambda: (
            pipeline.embed(pipeline.align(image, [face]), template=False)[0]
            if wish.wants_embedding(quality)
            else None
        ),
        lambda: pipeline.cues(image, face),
        lambda: pipeline.liveness(image, [face])[0],
    )
    return FaceAnalysis(face, quality, liveness, embedding, cues)
