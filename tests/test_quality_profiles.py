"""Quality profiles (kiosk, id_photo) and the refusals that say what was measured against
what is required, and which setting moves it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.vision.pipeline import FacePipeline
from service.vision.quality import PROFILES, QualityPolicy


def test_a_profile_sets_the_size_limits_and_explicit_values_win(monkeypatch) -> None:
    assert QualityPolicy().min_face_px == 80.0 and QualityPolicy().min_inter_eye_px == 40.0
    photo = QualityPolicy(profile="id_photo")
    assert (photo.min_face_px, photo.min_inter_eye_px) == (45.0, 20.0)
    assert QualityPolicy(profile="id_photo", min_face_px=60.0).min_face_px == 60.0
    monkeypatch.setenv("FACEGUARD_QUALITY__PROFILE", "id_photo")
    assert Settings().quality.min_face_px == PROFILES["id_photo"]["min_face_px"]
    monkeypatch.setenv("FACEGUARD_QUALITY__PROFILE", "webcam")
    with pytest.raises(ValidationError, match="quality profile is one of kiosk, id_photo"):
        Settings()


def test_a_web_photo_falls_short_of_the_kiosk_gate_in_measured_terms(shared_data: Path) -> None:
    """A 150x150 LFW photo: its face is ~60 px, under the kiosk's 80 and over id_photo's 45."""
    path = sorted((shared_data / "faces" / "lfw" / "Abdullah").glob("*.jpg"))[0]
    kiosk = FacePipeline(Settings().pipeline_config()).analyse(path.read_bytes())[0].quality
    size = [s for s in kiosk.shortfalls if s.reason == "LOW_QUALITY_SIZE"]
    face = next(s for s in size if s.measure == "face_px")
    assert face.limit == 80.0 and 40 < face.value < 80 and face.setting == "min_face_px"
    assert face.text == f"face {face.value:.0f} px, needs 80 (quality.min_face_px)"
    photo = Settings(quality={"profile": "id_photo"}).pipeline_config()
    assert not FacePipeline(photo).analyse(path.read_bytes())[0].quality.reasons
