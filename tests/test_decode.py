"""Tests for `service.vision.decode`: every accepted format and mode, and every way bytes go bad.

Images are built in memory with Pillow; real files from the shared data are decoded when present.
"""

from __future__ import annotations

import io
import statistics
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from service.vision.decode import (
    DecodeLimits,
    DecodeReason,
    ImageDecodeError,
    decode_image,
    reduction,
)

RNG = np.random.default_rng(7)
PATTERN = PILImage.fromarray(RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")
DEFAULT_LIMITS = DecodeLimits()


def gradient(width: int, height: int) -> PILImage.Image:
    """A smooth colour ramp: lossy codecs reproduce it closely, unlike noise."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, axis=1)
    return PILImage.fromarray(np.dstack([x, y, 255 - x]).astype(np.uint8), "RGB")


def encode(image: PILImage.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reject_reason(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, limits)
    return caught.value.reason


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB but carries one tiny IDAT: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + png_chunk(b"IEND", b"")
    )


def bmp_header_only(width: int, height: int) -> bytes:
    """A 24-bit BMP file and info header that declare width x height with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


# --- every accepted format and mode ------------------------------------------------------------

LOSSLESS_CASES = [
    ("PNG", "1", "PNG"),
    ("PNG", "L", "PNG"),
    ("PNG", "P", "PNG"),
    ("PNG", "RGB", "PNG"),
    ("BMP", "1", "BMP"),
    ("BMP", "L", "BMP"),
    ("BMP", "P", "BMP"),
    ("BMP", "RGB", "BMP"),
    ("PPM", "1", "PNM"),
    ("PPM", "L", "PNM"),
    ("PPM", "RGB", "PNM"),
    ("WEBP", "RGB", "WEBP"),
]


@pytest.mark.parametrize(("fmt", "mode", "expected_format"), LOSSLESS_CASES)
def test_lossless_formats_decode_to_exact_rgb(fmt: str, mode: str, expected_format: str) -> None:
    source = PATTERN.convert(mode)
    image = decode_image(
        encode(source, fmt, lossless=True) if fmt == "WEBP" else encode(source, fmt)
    )

    assert image.format == expected_format
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(image.rgb, np.asarray(source.convert("RGB")))


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("WEBP", "RGB")]
)
def test_lossy_formats_decode_close_to_source(fmt: str, mode: str) -> None:
    source = gradient(64, 48).convert(mode)
    image = decode_image(encode(source, fmt, quality=95))

    assert image.format == fmt
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (48, 64, 3)
    error = np.abs(image.rgb.astype(int) - np.asarray(source.convert("RGB"), dtype=int))
    assert error.mean() < 3


def test_grayscale_comes_out_as_three_equal_channels() -> None:
    image = decode_image(encode(PATTERN.convert("L"), "PPM"))
    assert np.array_equal(image.rgb[..., 0], image.rgb[..., 1])
    assert np.array_equal(image.rgb[..., 1], image.rgb[..., 2])


ALPHA = np.array([0, 128, 255, 255], dtype=np.uint8)  # per column block: clear, half, opaque


def alpha_source(mode: str) -> tuple[PILImage.Image, np.ndarray]:
    """An image whose alpha steps across its width, and its expected composite over white."""
    rgb = np.asarray(PATTERN, dtype=np.float64)
    alpha = np.repeat(ALPHA, 8)[None, :].repeat(24, axis=0)
    rgba = PILImage.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA").convert(mode)
    colour = np.asarray(rgba.convert("RGBA"), dtype=np.float64)
    weight = colour[..., 3:] / 255.0
    expected = colour[..., :3] * weight + 255.0 * (1.0 - weight)
    return rgba, expected


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "P"), ("WEBP", "RGBA")]
)
def test_alpha_is_composited_over_white(fmt: str, mode: str) -> None:
    source, expected = alpha_source(mode)
    data = encode(source, fmt, lossless=True) if fmt == "WEBP" else encode(source, fmt)
    image = decode_image(data)

    assert image.rgb.shape == (24, 32, 3)
    assert np.abs(image.rgb.astype(float) - expected).max() <= 1.0
    assert (image.rgb[:, :8] == 255).all()  # fully transparent: white, whatever the colour


SIXTEEN_BIT = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = np.array([[0, 0, 1, 128, 255]], dtype=np.uint8)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image = decode_image(encode(PILImage.fromarray(SIXTEEN_BIT), "PNG"))
    np.testing.assert_array_equal(image.rgb[..., 0], SIXTEEN_BIT_AS_8)
    np.testing.assert_array_equal(image.rgb[..., 2], SIXTEEN_BIT_AS_8)


def test_16_bit_pgm_is_scaled_not_clipped() -> None:
    data = b"P5\n5 1\n65535\n" + SIXTEEN_BIT.astype(">u2").tobytes()
    image = decode_image(data)
    assert image.format == "PNM"
    np.testing.assert_array_equal(image.rgb[..., 1], SIXTEEN_BIT_AS_8)


def test_decoded_pixels_are_read_only() -> None:
    image = decode_image(encode(PATTERN, "PNG"))
    assert not image.rgb.flags.writeable
    assert image.rgb.flags.c_contiguous


# --- EXIF orientation --------------------------------------------------------------------------

# Where the stored top-left corner appears once displayed, per EXIF orientation.
CORNER_AFTER_ORIENTATION = {1: "top-left", 3: "bottom-right", 6: "top-right", 8: "bottom-left"}


def corner_marked_image() -> PILImage.Image:
    """48 wide x 32 high blue image with a 16x16 red block in its stored top-left corner."""
    pixels = np.zeros((32, 48, 3), dtype=np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[:16, :16] = (255, 0, 0)
    return PILImage.fromarray(pixels, "RGB")


def red_corner(rgb: np.ndarray) -> str:
    """Name the corner whose 8x8 patch is red."""
    height, width = rgb.shape[:2]
    patches = {
        "top-left": rgb[4:12, 4:12],
        "top-right": rgb[4:12, width - 12 : width - 4],
        "bottom-left": rgb[height - 12 : height - 4, 4:12],
        "bottom-right": rgb[height - 12 : height - 4, width - 12 : width - 4],
    }
    red = [
        name
        for name, patch in patches.items()
        if patch[..., 0].mean() > 200 and patch[..., 2].mean() < 60
    ]
    assert len(red) == 1, f"expected one red corner, got {red}"
    return red[0]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", sorted(CORNER_AFTER_ORIENTATION))
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    exif = PILImage.Exif()
    exif[0x0112] = orientation  # Orientation tag
    image = decode_image(encode(corner_marked_image(), fmt, exif=exif.tobytes(), quality=95))

    rotated = orientation in (6, 8)
    assert image.rgb.shape == ((48, 32, 3) if rotated else (32, 48, 3))
    assert red_corner(image.rgb) == CORNER_AFTER_ORIENTATION[orientation]


# --- rejected inputs ---------------------------------------------------------------------------


def test_empty_bytes_are_rejected() -> None:
    assert reject_reason(b"") == DecodeReason.EMPTY == "IMAGE_EMPTY"


def test_bytes_over_the_limit_are_rejected_before_sniffing() -> None:
    data = encode(PATTERN, "PNG")
    assert reject_reason(data, DecodeLimits(max_bytes=len(data) - 1)) == "IMAGE_TOO_LARGE"
    assert decode_image(data, DecodeLimits(max_bytes=len(data))).width == 32


def test_pixels_over_the_limit_are_rejected() -> None:
    data = encode(PATTERN, "JPEG")
    assert reject_reason(data, DecodeLimits(max_pixels=32 * 24 - 1)) == "IMAGE_TOO_LARGE"
    assert decode_image(data, DecodeLimits(max_pixels=32 * 24)).height == 24


@pytest.mark.parametrize(
    ("size", "factor"),
    [((640, 480), 1), ((2559, 2559), 1), ((2560, 100), 2), ((100, 5120), 4), ((7296, 5472), 4),
     ((12000, 9000), 8)],
)  # fmt: skip
def test_jpeg_reduction_keeps_the_long_side_at_the_working_size(size, factor: int) -> None:
    assert reduction(size, 1280) == factor


def test_a_large_jpeg_is_decoded_at_reduced_size_with_its_orientation() -> None:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise on display
    data = encode(gradient(5200, 2600), "JPEG", quality=90, exif=exif.tobytes())
    image = decode_image(data)
    assert (image.width, image.height) == (650, 1300)  # 1/4 scale, then turned upright
    assert decode_image(data, DecodeLimits(reduce_to_side=5200)).height == 5200


def test_formats_without_reduced_decoding_have_a_lower_pixel_limit() -> None:
    limits = DecodeLimits(max_full_pixels=32 * 24 - 1)
    for fmt in ("PNG", "WEBP", "BMP", "PPM"):
        assert reject_reason(encode(PATTERN, fmt), limits) == "IMAGE_TOO_LARGE"
    assert decode_image(encode(PATTERN, "JPEG"), limits).width == 32


def test_a_jpeg_header_that_declares_more_blocks_than_its_scan_can_code_is_corrupt() -> None:
    data = bytearray(encode(gradient(64, 48), "JPEG", quality=90))
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, 3000, 4000)
    assert reject_reason(bytes(data)) == "IMAGE_CORRUPT"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_file_cut_before_its_end_marker_is_corrupt(fmt: str) -> None:
    data = encode(gradient(320, 240), fmt, quality=90)
    for cut in (len(data) // 3, len(data) - 1):
        assert reject_reason(data[:cut]) == "IMAGE_CORRUPT"


@pytest.mark.parametrize("header", [png_header_only, bmp_header_only])
@pytest.mark.parametrize("side", [100_000, 7_000])  # above and below Pillow's own bomb limit
def test_bomb_headers_are_rejected_fast_without_decoding(header, side: int) -> None:
    started = time.perf_counter()
    assert reject_reason(header(side, side)) == "IMAGE_TOO_LARGE"
    # Decoding 49 MP, let alone 10 GP, would take far longer (or fail to allocate).
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("as_error", [False, True])
def test_pillow_bomb_warning_band_maps_to_too_large(as_error: bool) -> None:
    """100 MP lies between Pillow's warning and error limits; -W error must not change the code."""
    with warnings.catch_warnings():
        warnings.simplefilter("error" if as_error else "ignore", PILImage.DecompressionBombWarning)
        assert reject_reason(png_header_only(10_000, 10_000)) == "IMAGE_TOO_LARGE"


def foreign_formats() -> dict[str, bytes]:
    return {
        "gif": encode(PATTERN, "GIF"),
        "tiff": encode(PATTERN, "TIFF"),
        "ico": encode(PATTERN, "ICO"),
        "tga": encode(PATTERN, "TGA"),
        "pdf": encode(PATTERN, "PDF"),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "text": b"hello, this is not an image",
        "pfm": b"Pf\n1 1\n-1.0\n" + struct.pack("<f", 0.5),
        "wav": b"RIFF\x24\x00\x00\x00WAVEfmt ",
    }


@pytest.mark.parametrize("name", sorted(foreign_formats()))
def test_other_formats_are_unsupported(name: str) -> None:
    assert reject_reason(foreign_formats()[name]) == "IMAGE_UNSUPPORTED_FORMAT"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "PPM"])
def test_truncated_images_are_corrupt(fmt: str) -> None:
    data = encode(PATTERN.resize((64, 48)), fmt)
    assert reject_reason(data[: len(data) // 2]) == "IMAGE_CORRUPT"


def test_jpeg_missing_only_its_last_bytes_is_corrupt() -> None:
    """Decoders may fill a missing tail with grey (OpenCV 4 did); a cut file must be refused."""
    data = encode(PATTERN.resize((64, 48)), "JPEG")
    assert reject_reason(data[:-4]) == "IMAGE_CORRUPT"


@pytest.mark.parametrize(
    "magic", [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", b"BM", b"P5\n"]
)
def test_known_signature_with_garbage_is_corrupt(magic: bytes) -> None:
    assert reject_reason(magic + b"\x13\x37" * 40) == "IMAGE_CORRUPT"


def test_zero_sized_png_is_corrupt() -> None:
    assert reject_reason(png_header_only(0, 10)) == "IMAGE_CORRUPT"


# --- no crash on any input ---------------------------------------------------------------------

SAMPLES = {
    "JPEG": encode(PATTERN, "JPEG"),
    "PNG": encode(PATTERN, "PNG"),
    "PNG-RGBA": encode(alpha_source("RGBA")[0], "PNG"),
    "WEBP": encode(PATTERN, "WEBP"),
    "BMP": encode(PATTERN, "BMP"),
    "PPM": encode(PATTERN, "PPM"),
}
SMALL_LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=1 << 20)
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_image_or_decode_error(data: bytes) -> None:
    """The decoder's whole contract: a well-formed Image, or ImageDecodeError with a known code."""
    try:
        image = decode_image(data, SMALL_LIMITS)
    except ImageDecodeError as error:
        assert error.reason in set(DecodeReason)
        return
    assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3 and image.rgb.shape[2] == 3
    assert 0 < image.width * image.height <= SMALL_LIMITS.max_pixels
    assert image.format in {"JPEG", "PNG", "WEBP", "BMP", "PNM"}


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash(data: bytes) -> None:
    assert_image_or_decode_error(data)


@FUZZ
@given(
    magic=st.sampled_from(
        [
            b"\xff\xd8\xff",
            b"\x89PNG\r\n\x1a\n",
            b"RIFF\0\0\0\0WEBP",
            b"BM",
            b"P1 ",
            b"P2\n",
            b"P3\t",
            b"P4 ",
            b"P5\n",
            b"P6 ",
        ]
    ),
    tail=st.binary(max_size=2048),
)
def test_random_bytes_behind_a_valid_signature_never_crash(magic: bytes, tail: bytes) -> None:
    assert_image_or_decode_error(magic + tail)


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLES)), draw=st.data())
def test_mutated_and_truncated_images_never_crash(name: str, draw: st.DataObject) -> None:
    data = bytearray(SAMPLES[name])
    for _ in range(draw.draw(st.integers(0, 8), label="mutations")):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(data)), label="length")
    assert_image_or_decode_error(bytes(data[:cut]))


# --- real files and speed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected_format"),
    [
        ("faces/lfw/*/*.jpg", "JPEG"),
        ("faces/att_orl/*/*.pgm", "PNM"),
        ("faces/faceapi_bbt/*/*.png", "PNG"),
    ],
)
def test_real_files_decode(shared_data: Path, pattern: str, expected_format: str) -> None:
    path = min(shared_data.glob(pattern), default=None)
    if path is None:
        pytest.skip(f"no {pattern} under {shared_data}")
    with PILImage.open(path) as reference:
        width, height = reference.size
    image = decode_image(path.read_bytes())
    assert image.format == expected_format
    assert image.rgb.shape == (height, width, 3)
    assert image.rgb.std() > 5  # real content, not a uniform fill


def test_vga_jpeg_decodes_in_a_few_milliseconds() -> None:
    data = encode(gradient(640, 480), "JPEG", quality=90)
    decode_image(data)  # warm up
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        decode_image(data)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.02  # about 2 ms measured; generous for shared CI
