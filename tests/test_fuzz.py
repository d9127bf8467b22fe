"""Bounded fuzzing for CI: the decoder and request validation only ever fail in the ways they
promise. `faceguard fuzz --count 100000` is the long run."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceguard.v1 import enrollment_pb2
from service.api.messages import consent_from
from service.errors import InvalidInput
from tools.fuzz import (
    decode_input,
    fuzz,
    fuzz_chunk,
    mutate,
    request_examples,
    request_input,
    run_decode,
    run_request,
    seed_images,
)

# Decoders warn about the broken files they are fed, and Pillow about huge headers that the
# decoder's own pixel limit then refuses; a warning is not a failure here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]
BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_seed_image_decodes() -> None:
    from service.vision.decode import decode_image

    assert all(decode_image(data).rgb.shape[2] == 3 for data in seed_images())


@BOUNDED
@given(st.binary(max_size=2048))
def test_decoder_on_arbitrary_bytes(data: bytes) -> None:
    run_decode(data)  # raises only if something other than ImageDecodeError escapes


@BOUNDED
@given(st.integers(min_value=0, max_value=2**32), st.sampled_from(range(13)))
def test_decoder_on_mutated_images(seed: int, which: int) -> None:
    images = seed_images()
    run_decode(mutate(images[which % len(images)], random.Random(seed), images))


@BOUNDED
@given(st.integers(min_value=0, max_value=len(request_examples()) - 1), st.binary(max_size=512))
def test_request_validation_on_arbitrary_bytes(which: int, data: bytes) -> None:
    run_request((which, data))


@BOUNDED
@given(st.integers(min_value=0, max_value=2**40))
def test_request_validation_on_mutated_requests(index: int) -> None:
    run_request(request_input(index))


def test_inputs_are_deterministic() -> None:
    assert decode_input(12345) == decode_input(12345)
    assert request_input(777) == request_input(777)


def test_an_out_of_range_consent_time_is_invalid_input_not_a_crash() -> None:
    consent = enrollment_pb2.Consent(purpose="p", channel="c", operator_id="o")
    consent.given_at.seconds = 2**62  # found by the fuzzer: used to escape as ValueError
    try:
        consent_from(consent, True)
    except InvalidInput as error:
        assert error.reason == "INVALID_TIMESTAMP"
    else:
        raise AssertionError("an impossible timestamp was accepted")


def test_a_chunk_reports_an_escaping_exception_as_a_crash(monkeypatch) -> None:
    from tools import fuzz as module

    def explode(data: bytes) -> None:
        raise KeyError("boom")

    monkeypatch.setitem(module.RUNNERS, "decode", (decode_input, explode))
    report = fuzz_chunk("decode", 0, 3)
    assert report.inputs == 3 and len(report.crashes) == 3 and "KeyError" in report.crashes[0]


def test_a_small_parallel_run_has_no_crash() -> None:
    report = fuzz(2000, workers=1, chunk=500)
    assert report.inputs == 2000 and report.crashes == []
