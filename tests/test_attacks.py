"""The generated presentation attacks are deterministic and show what each attack promises."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.evaluation.attacks import printed_photo, replayed_video, screen_replay

FPS = 15.0
GREY = np.full((480, 640, 3), 150, np.uint8)


def _checkerboard() -> np.ndarray:
    """A 640x480 BGR image holding a 9x7-square checkerboard (8x6 inner corners)."""
    image = np.full((480, 640, 3), 255, np.uint8)
    square = 40
    x0, y0 = (640 - 9 * square) // 2, (480 - 7 * square) // 2
    for row in range(7):
        for col in range(9):
            if (row + col) % 2 == 0:
                top_left = (x0 + col * square, y0 + row * square)
                bottom_right = (x0 + (col + 1) * square - 1, y0 + (row + 1) * square - 1)
                cv2.rectangle(image, top_left, bottom_right, (0, 0, 0), -1)
    return image


def _corners(frame: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    found, corners = cv2.findChessboardCorners(grey, (8, 6))
    assert found, "the checkerboard is not visible in the attack frame"
    refined = cv2.cornerSubPix(
        grey, corners, (5, 5), (-1, -1),
        (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.01),
    )  # fmt: skip
    return refined.reshape(-1, 2)


def _high_frequency_peak(frame: np.ndarray) -> float:
    """Strongest periodic component of the frame centre over the median, above 10 cycles."""
    centre = frame[176:304, 256:384].astype(np.float64).mean(axis=2)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(centre - centre.mean())))
    fy, fx = np.mgrid[-64:64, -64:64]
    high = np.hypot(fx, fy) > 10
    return float(spectrum[high].max() / np.median(spectrum[high]))


@pytest.mark.parametrize("make", [printed_photo, screen_replay])
def test_still_attacks_are_deterministic_by_seed(make) -> None:
    first = make(GREY, 4, FPS, seed=7)
    again = make(GREY, 4, FPS, seed=7)
    other = make(GREY, 4, FPS, seed=8)
    assert len(first) == 4
    assert all(f.shape == GREY.shape and f.dtype == np.uint8 for f in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_replayed_video_is_deterministic_and_keeps_the_sequence() -> None:
    colours = [(90, 20, 20), (20, 90, 20), (20, 20, 90), (20, 90, 20)]  # BGR, below clipping
    source = [np.full((480, 640, 3), c, np.uint8) for c in colours]
    first = replayed_video(source, seed=3)
    again = replayed_video(source, seed=3)
    assert len(first) == len(source)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # Each replayed frame shows its own source frame, in order: the screen's centre has its hue.
    for frame, colour in zip(first, colours, strict=True):
        centre = frame[220:260, 300:340].reshape(-1, 3).mean(axis=0)
        assert np.argmax(centre) == np.argmax(colour)
    assert replayed_video([], seed=1) == []


def test_printed_photo_moves_as_one_plane_with_perspective() -> None:
    frames = printed_photo(_checkerboard(), 20, FPS, seed=5)
    reference = _corners(frames[0])
    tilts = []
    for frame in frames[1:]:
        corners = _corners(frame)
        homography, _ = cv2.findHomography(reference, corners, 0)
        mapped = cv2.perspectiveTransform(reference[None], homography)[0]
        assert np.sqrt(np.mean(np.sum((mapped - corners) ** 2, axis=1))) < 0.5  # px
        affine, _ = cv2.estimateAffine2D(reference, corners, method=cv2.LMEDS)
        moved = reference @ affine[:, :2].T + affine[:, 2]
        tilts.append(np.sqrt(np.mean(np.sum((moved - corners) ** 2, axis=1))))
    # The paper tilts in depth: an affine map (no perspective) leaves a clear residual.
    assert max(tilts) > 1.0
    shift = np.abs(_corners(frames[-1]) - reference).mean()
    assert shift > 3.0  # it moves


def test_printed_photo_has_a_paper_margin() -> None:
    dark = np.full((480, 640, 3), 30, np.uint8)
    frame = printed_photo(dark, 1, FPS, seed=2)[0]
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(int)
    assert grey[200:280, 280:360].mean() < 80  # the photo itself stays dark
    for step in (1, -1):  # right and left of the centre, along the middle row
        outward = grey[240, 320::step]
        edge = int(np.argmax(outward > 80))  # where the dark photo ends
        margin = frame[240, 320 + step * (edge + 3)].astype(int)
        # next to the photo lies white paper: bright and colourless, whatever the room
        assert margin.min() > 150 and margin.max() - margin.min() < 40


def test_screen_replay_shows_moire_a_bezel_and_flicker() -> None:
    dim = np.full((480, 640, 3), 90, np.uint8)  # below the over-exposed screen's clipping
    frames = screen_replay(dim, 30, FPS, seed=4)
    printed = printed_photo(GREY, 1, FPS, seed=4)[0]
    # The display's pixel grid aliases into a periodic pattern; paper has none.
    assert _high_frequency_peak(frames[0]) > 20.0
    assert _high_frequency_peak(printed) < 20.0
    # A dark bezel surrounds the (mid-grey) picture.
    grey = cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY)
    assert (grey < 40).mean() > 0.02
    # The refresh beat makes the picture's brightness oscillate from frame to frame.
    levels = np.array([f[200:280, 280:360].mean() for f in frames])
    assert levels.std() > 1.0
