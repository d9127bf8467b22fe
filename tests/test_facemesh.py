"""The face mesh model: built from the manifest, its 468 points land on the face in image
pixels, whatever the face's position and in-plane rotation; the pipeline exposes it as cues.

Needs the built models (`faceguard models build`); the photos are the manifest's samples.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from service.modelpack.manifest import load_manifest
from service.vision.facemesh import crop_transform
from service.vision.liveness_cues import LEFT_EYE, RIGHT_EYE, FrameCues
from service.vision.pipeline import FacePipeline, PipelineConfig
from service.vision.types import Face, Image
from tools.analyze import sample_images

NOSE_TIP = 1


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineConfig(threads=2))


@pytest.fixture(scope="module")
def faces(
    pipeline: FacePipeline, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[Image, Face]]:
    """Every face found in the sample photos whose detector box is at least 60 px wide."""
    out = []
    for path in sample_images(tmp_path_factory.mktemp("samples")):
        image = pipeline.decode(Path(path).read_bytes())
        out += [(image, f) for f in pipeline.detect(image) if f.width >= 60]
    assert out
    return out


def _agrees_with_detector(mesh: np.ndarray, face: Face) -> None:
    """The mesh's eye centres and nose tip lie near MTCNN's, within a share of the face width
    (measured on the samples: eyes <= 0.06, nose <= 0.12: the two models place the nose
    point differently)."""
    # Image-left eye is the person's right eye.
    right_eye = mesh[list(RIGHT_EYE), :2].mean(axis=0)
    left_eye = mesh[list(LEFT_EYE), :2].mean(axis=0)
    for ours, theirs, tolerance in (
        (right_eye, 0, 0.08), (left_eye, 1, 0.08), (mesh[NOSE_TIP, :2], 2, 0.14)
    ):  # fmt: skip
        error = np.linalg.norm(ours - face.landmarks[theirs]) / face.width
        assert error < tolerance


def test_the_mesh_model_is_in_the_manifest_and_loaded(pipeline: FacePipeline) -> None:
    manifest = load_manifest()
    name = manifest.section("facemesh")["model"]
    assert manifest.models[name].onnx_sha256
    assert pipeline.facemesh is not None
    assert pipeline.model_versions["facemesh"] == name


def test_mesh_points_land_on_each_sample_face(
    pipeline: FacePipeline, faces: list[tuple[Image, Face]]
) -> None:
    confident = 0
    for image, face in faces:
        mesh, flag = pipeline.facemesh.mesh_and_score(image.rgb, face)
        assert mesh.shape == (468, 3) and mesh.dtype == np.float32
        if flag > 0.9:  # one partly hidden sample face gets 0.76, and a looser fit
            confident += 1
            _agrees_with_detector(mesh, face)
    assert confident >= 0.9 * len(faces)


def test_mesh_follows_a_rotated_and_shifted_face(
    pipeline: FacePipeline, faces: list[tuple[Image, Face]]
) -> None:
    image, face = faces[0]
    height, width = image.rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), 25.0, 1.0)
    matrix[:, 2] += (30.0, -20.0)
    rotated = cv2.warpAffine(image.rgb, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    # What the detector reports on the rotated image: an upright box around the moved centre.
    centre = (face.box[:2] + face.box[2:]) / 2.0 @ matrix[:, :2].T + matrix[:, 2]
    half = (face.box[2:] - face.box[:2]) / 2.0
    moved = Face(
        box=np.concatenate([centre - half, centre + half]),
        score=face.score,
        landmarks=face.landmarks @ matrix[:, :2].T + matrix[:, 2],
    )
    mesh = pipeline.facemesh.mesh_and_score(rotated, moved)[0]
    _agrees_with_detector(mesh, moved)
    upright = pipeline.facemesh.mesh_and_score(image.rgb, face)[0]
    expected = upright[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    assert np.median(np.linalg.norm(mesh[:, :2] - expected, axis=1)) < 0.04 * face.width


def test_crop_transform_puts_the_eyes_level_and_the_face_in_the_middle() -> None:
    face = Face(
        box=np.array([100.0, 100.0, 200.0, 220.0]),
        score=1.0,
        landmarks=np.array([[130.0, 150.0], [170.0, 140.0], [150, 170], [135, 195], [165, 190]]),
    )
    matrix = crop_transform(face, 1.5, 192)
    eyes = face.landmarks[:2] @ matrix[:, :2].T + matrix[:, 2]
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-6)
    centre = np.array([150.0, 160.0]) @ matrix[:, :2].T + matrix[:, 2]
    assert centre == pytest.approx([96.0, 96.0], abs=1e-6)
    assert np.sqrt(abs(np.linalg.det(matrix[:, :2]))) == pytest.approx(192 / 180)


def test_pipeline_cues_and_their_absence(
    pipeline: FacePipeline, faces: list[tuple[Image, Face]]
) -> None:
    image, face = faces[0]
    cues = pipeline.cues(image, face)
    assert isinstance(cues, FrameCues)
    assert 0.1 < cues.eye_openness < 0.5
    assert cues.face_width > 0.5 * face.width
    assert FacePipeline(PipelineConfig(threads=1, facemesh=False)).cues(image, face) is None
