"""The face work of a request through the vision workers, with their failures mapped to the
service's errors (a rejected image keeps its index; a lost worker is UNAVAILABLE)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.app.requests import quality_gate
from service.app.vision_pool import Vision, VisionUnavailable, VisionWorkerError
from service.errors import Internal, InvalidInput, TooLarge, Unavailable, Unprocessable
from service.store.customers import NewTemplate
from service.vision.decode import DecodeReason
from service.vision.subject import ImageRejected
from service.vision.types import FaceAnalysis


@contextmanager
def face_errors() -> Iterator[None]:
    """Map the face work's failures to the service's errors, keeping the image's index."""
    try:
        yield
    except ImageRejected as exc:
        where = {} if exc.index is None else {"image": str(exc.index)}
        if exc.reason == DecodeReason.TOO_LARGE:
            raise TooLarge(exc.reason, exc.message, **where) from exc
        if exc.reason in set(DecodeReason):
            raise InvalidInput(exc.reason, exc.message, **where) from exc
        raise Unprocessable(exc.reason, exc.message, **where) from exc
    except VisionUnavailable as exc:
        raise Unavailable("VISION_UNAVAILABLE", f"face analysis unavailable: {exc}") from exc
    except VisionWorkerError as exc:
        raise Internal("VISION_WORKER_FAILED", f"face analysis failed: {exc}") from exc


def single_face(vision: Vision, data: bytes, index: int, template: bool) -> FaceAnalysis:
    """The analysis of an image's one face (see `subject.single_face`)."""
    with face_errors():
        return vision.single_face(data, index, template)


def best_face(vision: Vision, frames: list[bytes]) -> FaceAnalysis:
    """The best face over the frames, as a probe (see `subject.best_probe`)."""
    with face_errors():
        return vision.best_probe(frames)


def gated_faces(vision: Vision, images: list[bytes]) -> list[FaceAnalysis]:
    """Enrolment (or watchlist) images analysed: one face each, passing the quality gate."""
    analyses = []
    for i, data in enumerate(images):
        analysis = single_face(vision, data, i, template=True)
        quality_gate(analysis, f"image {i}", image=i)
        analyses.append(analysis)
    return analyses


def templates_of(analyses: list[FaceAnalysis]) -> list[NewTemplate]:
    """The templates to store for gated faces (a customer's or a watchlist entry's)."""
    return [
        NewTemplate(vector=a.embedding.vector, model=a.embedding.model, quality=a.quality.score)
        for a in analyses
    ]
