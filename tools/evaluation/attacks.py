"""Presentation-attack material made from a still image or a recorded frame sequence.

Real attack recordings are scarce (one phone-replay video in the development data), so the
streamed liveness checks are evaluated on attacks rendered here, each modelled on what a camera
really sees (ISO/IEC 30107-3 calls these presentation attack instruments):

- `printed_photo`: a paper print held in the hand. A flat plane, so every frame is the photo
  under one homography (rigid motion plus perspective tilt); paper's narrow gamut (lower
  contrast, warm white), a white paper margin, uneven lighting; no blink, no response.
- `screen_replay`: the photo on a phone held in front of the camera: the display's pixel grid
  resampled by the camera (moiré), the display's gamma and bluish white point, refresh flicker
  beating against the camera's frame rate, a black bezel, a small hand tremor.
- `replayed_video`: a real frame sequence shown on that phone: the head moves and blinks
  naturally but cannot follow a prompt it never saw.

All take and return BGR uint8 frames of the input's size and are deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Pinhole camera of the rendered frames: focal length in units of the frame width (~53 degrees
# horizontal field of view, a typical webcam).
FOCAL = 1.0
# Display pixel pitch, in display pixels per photo pixel: each photo pixel is drawn as a 3x3
# block of red, green and blue stripes with a dark gap, as on an LCD.
SUBPIXELS = 3
# Optical blur of the camera seen on the display, in display pixels (sigma).
OPTICAL_BLUR = 1.1


@dataclass(frozen=True)
class HandMotion:
    """Smooth random hand motion: per axis, a sum of slow sinusoids with random phases.

    Amplitudes: yaw/pitch/roll in degrees, shift in fractions of the frame size, zoom as a
    relative change of distance. Frequencies 0.15 to 1.2 Hz, as a hand holding an object.
    """

    yaw: float
    pitch: float
    roll: float
    shift: float
    zoom: float

    def poses(self, frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
        """(frames, 6): yaw, pitch, roll (deg), x, y shift (fraction), zoom (relative)."""
        t = np.arange(frames) / fps
        amplitudes = np.array([self.yaw, self.pitch, self.roll, self.shift, self.shift, self.zoom])
        out = np.zeros((frames, 6))
        for axis, amplitude in enumerate(amplitudes):
            freqs = rng.uniform(0.15, 1.2, size=3)
            phases = rng.uniform(0, 2 * np.pi, size=3)
            weights = rng.uniform(0.3, 1.0, size=3)
            waves = zip(weights, freqs, phases, strict=True)
            wave = sum(w * np.sin(2 * np.pi * f * t + p) for w, f, p in waves)
            out[:, axis] = amplitude * wave / weights.sum()
        return out


PRINT_MOTION = HandMotion(yaw=18.0, pitch=12.0, roll=6.0, shift=0.05, zoom=0.08)
SCREEN_MOTION = HandMotion(yaw=6.0, pitch=5.0, roll=2.0, shift=0.02, zoom=0.03)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def plane_homography(
    content_size: tuple[int, int], frame_size: tuple[int, int], fill: float, pose: np.ndarray
) -> np.ndarray:
    """Homography taking content pixels to frame pixels for a flat object seen by a camera.

    The object is centred in front of the camera at the distance where its width covers `fill`
    of the frame width, then rotated by (yaw, pitch, roll) about its centre, shifted and moved
    nearer or farther (`pose` as from HandMotion.poses).
    """
    cw, ch = content_size
    fw, fh = frame_size
    focal = FOCAL * fw
    camera = np.array([[focal, 0, fw / 2.0], [0, focal, fh / 2.0], [0, 0, 1]])
    distance = FOCAL / fill * (1.0 + pose[5])  # object width 1 unit, seen fill * fw wide
    # content pixel -> object plane point (width 1, centred)
    to_plane = np.array([[1.0 / cw, 0, -0.5], [0, 1.0 / cw, -0.5 * ch / cw], [0, 0, 1]])
    rotation = _rotation(pose[0], pose[1], pose[2])
    translation = np.array([pose[3] * distance, pose[4] * distance, distance])
    extrinsic = np.column_stack([rotation[:, 0], rotation[:, 1], translation])
    return camera @ extrinsic @ to_plane


def _background(frame_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plausible, smooth room background: a vertical gradient between two muted colours."""
    fw, fh = frame_size
    top, bottom = rng.uniform(40, 200, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, fh)[:, None, None]
    image = (1 - ramp) * top + ramp * bottom
    return np.ascontiguousarray(np.broadcast_to(image, (fh, fw, 3))).astype(np.float32)


def _sensor(frame: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Camera blur and noise, then 8-bit quantisation."""
    frame = cv2.GaussianBlur(frame, (3, 3), 0.6)
    frame = frame + rng.normal(0.0, noise, size=frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _composite(content: np.ndarray, homography: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Content warped into the frame over the background (float32 BGR)."""
    fh, fw = background.shape[:2]
    warped = cv2.warpPerspective(content, homography, (fw, fh), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(
        np.ones(content.shape[:2], np.float32), homography, (fw, fh), flags=cv2.INTER_LINEAR
    )[..., None]
    return warped * mask + background * (1.0 - mask)


def _print(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo as printed on paper: narrow gamut, warm paper white, a white margin."""
    photo = image.astype(np.float32)
    paper = np.array([228.0, 238.0, 245.0]) * rng.uniform(0.95, 1.0)  # BGR, slightly warm
    ink = 25.0
    printed = ink + (photo / 255.0) ** 1.1 * (paper - ink)  # dot gain darkens mid-tones
    margin = round(0.06 * max(image.shape[:2]))
    return cv2.copyMakeBorder(
        printed, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=paper.tolist()
    )


def _lighting(frame_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth illumination field (0.75 to 1.1): a lamp's fall-off across a matte sheet."""
    fw, fh = frame_size
    cx, cy = rng.uniform(0, fw), rng.uniform(0, fh)
    y, x = np.mgrid[0:fh, 0:fw].astype(np.float32)
    falloff = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.8 * fw) ** 2))
    return (0.75 + 0.35 * falloff)[..., None]


def printed_photo(image: np.ndarray, frames: int, fps: float, seed: int) -> list[np.ndarray]:
    """A printed photo held in the hand and moved (rigidly, with perspective tilt); no blink."""
    rng = np.random.default_rng(seed)
    fh, fw = image.shape[:2]
    paper = _print(image, rng)
    content_size = (paper.shape[1], paper.shape[0])
    background = _background((fw, fh), rng)
    poses = PRINT_MOTION.poses(frames, fps, rng)
    light = _lighting((fw, fh), rng)
    fill = rng.uniform(0.85, 1.0)
    out = []
    for pose in poses:
        homography = plane_homography(content_size, (fw, fh), fill, pose)
        mask = cv2.warpPerspective(np.ones(paper.shape[:2], np.float32), homography, (fw, fh))[
            ..., None
        ]
        frame = _composite(paper, homography, background)
        frame = frame * (light * mask + (1.0 - mask))
        out.append(_sensor(frame, rng, noise=2.0))
    return out


@dataclass(frozen=True)
class DisplayLook:
    """How one phone shows pictures to the camera; drawn once per attack.

    gamma: below 1, the display's tone curve against the camera's expectation (mid-tones
    lifted). white: its bluish white point (BGR). exposure: an emissive screen is brighter than
    the dim, reflective room the camera exposes for (the development replay video's face is
    2.2x brighter than the live one's), so the picture is over-exposed and its highlights clip.
    """

    gamma: float
    white: np.ndarray
    exposure: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> DisplayLook:
        white = np.array([1.0, 0.93, 0.86]) * rng.uniform(0.85, 1.0)
        return cls(rng.uniform(0.8, 0.9), white, rng.uniform(1.3, 1.9))


def _display(content: np.ndarray, look: DisplayLook) -> np.ndarray:
    """Content as a phone display emits it, at SUBPIXELS x resolution, with a black bezel.

    Display colour per `look`, boosted saturation; then each pixel drawn as vertical R, G, B
    stripes with dark gaps (the grid the camera aliases into moiré).
    """
    pixels = content.astype(np.float32) / 255.0
    grey = pixels.mean(axis=2, keepdims=True)
    saturated = np.clip(grey + 1.25 * (pixels - grey), 0.0, 1.0)
    emitted = (saturated**look.gamma) * look.white * look.exposure * 255.0
    big = cv2.resize(
        emitted.astype(np.float32), None, fx=SUBPIXELS, fy=SUBPIXELS,
        interpolation=cv2.INTER_NEAREST,
    )  # fmt: skip
    stripes = np.full((SUBPIXELS, SUBPIXELS, 3), 0.25, np.float32)
    for channel, column in zip((2, 1, 0), range(SUBPIXELS), strict=True):  # R, G, B columns
        stripes[:-1, column, channel] = 1.0
    stripes /= stripes.mean(axis=(0, 1))  # the grid dims nothing on average
    tiles = np.tile(stripes, (content.shape[0], content.shape[1], 1))
    # The lens blurs the grid before the sensor samples it: what survives aliases into moiré
    # of a few percent, as in camera captures of phone screens.
    screen = cv2.GaussianBlur(big * tiles, (0, 0), OPTICAL_BLUR)
    bezel = round(0.05 * max(screen.shape[:2]))
    return cv2.copyMakeBorder(
        screen, bezel, bezel, bezel, bezel, cv2.BORDER_CONSTANT, value=(12, 12, 12)
    )


def _flicker(frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Per-frame display brightness: PWM / refresh beating with the camera (a few Hz)."""
    beat = rng.uniform(1.5, 6.0)
    t = np.arange(frames) / fps
    return 1.0 + rng.uniform(0.03, 0.08) * np.sin(2 * np.pi * beat * t + rng.uniform(0, 6.3))


def _screen_frames(
    contents: list[np.ndarray], fps: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each content frame shown on the same hand-held phone, in front of the same room.

    The phone is smaller than the camera's view (its edges show, as in the development replay
    video, where the face is 0.6x the live one's width) and the room is dim around it.
    """
    fh, fw = contents[0].shape[:2]
    look = DisplayLook.draw(rng)
    background = _background((fw, fh), rng) * rng.uniform(0.4, 0.7)
    poses = SCREEN_MOTION.poses(len(contents), fps, rng)
    flicker = _flicker(len(contents), fps, rng)
    fill = rng.uniform(0.55, 0.8)
    band_period = rng.uniform(0.15, 0.4) * fh  # rolling-shutter bands of the refresh
    band_speed = rng.uniform(20, 80)  # px per frame
    rows = np.arange(fh, dtype=np.float32)[:, None, None]
    out = []
    shown, screen = None, None
    for index, (content, pose) in enumerate(zip(contents, poses, strict=True)):
        if content is not shown:  # a still photo is drawn on the display once
            shown, screen = content, _display(content, look)
        homography = plane_homography((screen.shape[1], screen.shape[0]), (fw, fh), fill, pose)
        frame = _composite(screen, homography, background)
        bands = 1.0 + 0.04 * np.sin(2 * np.pi * (rows + band_speed * index) / band_period)
        out.append(_sensor(frame * flicker[index] * bands, rng, noise=3.0))
    return out


def screen_replay(image: np.ndarray, frames: int, fps: float, seed: int) -> list[np.ndarray]:
    """A still photo shown on a phone held in front of the camera (a small hand tremor)."""
    rng = np.random.default_rng(seed)
    return _screen_frames([image] * frames, fps, rng)


def replayed_video(frames_in: list[np.ndarray], seed: int, fps: float = 15.0) -> list[np.ndarray]:
    """A recorded frame sequence replayed on a phone: natural motion, but no prompt followed."""
    if not frames_in:
        return []
    rng = np.random.default_rng(seed)
    return _screen_frames(list(frames_in), fps, rng)
