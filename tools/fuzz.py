"""`faceguard fuzz`: mutation fuzzing of the image decoder and of request validation.

Two targets, each fed deterministic inputs (input i of a run is the same on every machine):

- `decode`: mutated images of every accepted format (bit flips, interesting bytes, cuts,
  splices, header rewrites) and random bytes behind each magic signature, through
  `decode_image`. It may only answer with an image or `ImageDecodeError`.
- `request`: mutated serialized requests of every method of the service, parsed as gRPC
  would and then checked as the service checks them before any model runs (field
  validation, consent conversion, stream opening, device binding, size accounting). Only
  `DecodeError` (gRPC refuses the bytes) and domain errors are allowed.

Any other exception is a crash. Inputs run in worker processes, so an interpreter crash
(a segfault in a native decoder) is counted too instead of ending the run.
"""

from __future__ import annotations

import io
import random
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import numpy as np
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from PIL import Image as PILImage

from faceguard.v1 import common_pb2, enrollment_pb2, risk_pb2, verification_pb2
from service.api.auth import Identity, bind_device
from service.api.limits import carries_bulk
from service.api.messages import consent_from
from service.api.streaming import opening_of
from service.app.requests import check_consent, check_count, check_customer_id
from service.errors import FaceguardError
from service.vision.decode import DecodeLimits, ImageDecodeError, decode_image

TARGETS = ("decode", "request")
_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE)
_MAGICS = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP8 ", b"BM", b"P5\n", b"P6\n",
)  # fmt: skip
_LIMITS = DecodeLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000)


@cache
def seed_images() -> tuple[bytes, ...]:
    """Small valid images in every accepted format and several pixel modes."""
    rng = np.random.default_rng(0)
    rgb = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    base = PILImage.fromarray(rgb)
    variants: list[tuple[PILImage.Image, str, dict[str, Any]]] = [
        (base, "JPEG", {"quality": 80}),
        (base, "JPEG", {"progressive": True}),
        (base, "PNG", {}),
        (base.convert("RGBA"), "PNG", {}),
        (base.convert("P"), "PNG", {}),
        (base.convert("L"), "PNG", {}),
        (PILImage.fromarray(rgb[:, :, 0].astype(np.uint16) * 257), "PNG", {}),
        (base, "BMP", {}),
        (base, "WEBP", {"quality": 60}),
        (base, "PPM", {}),
        (base.convert("L"), "PPM", {}),
        (base.convert("1"), "PPM", {}),
    ]
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotated: exercises the EXIF transpose
    variants.append((base, "JPEG", {"exif": exif.tobytes()}))
    out = []
    for image, kind, options in variants:
        buffer = io.BytesIO()
        image.save(buffer, kind, **options)
        out.append(buffer.getvalue())
    return tuple(out)


def mutate(data: bytes, rng: random.Random, donors: tuple[bytes, ...]) -> bytes:
    """One to eight mutations, biased towards the header where parsers branch."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not buffer:
            buffer += rng.randbytes(rng.randint(1, 64))
        head = rng.random() < 0.5
        at = rng.randrange(min(len(buffer), 96) if head else len(buffer))
        kind = rng.randrange(8)
        if kind == 0:
            buffer[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buffer[at] = rng.choice(_INTERESTING)
        elif kind == 2:
            del buffer[at : at + rng.randint(1, 64)]
        elif kind == 3:
            buffer[at:at] = rng.randbytes(rng.randint(1, 32))
        elif kind == 4:
            del buffer[rng.randint(0, len(buffer)) :]  # truncate
        elif kind == 5:
            start = rng.randrange(len(buffer))
            buffer[at:at] = buffer[start : start + rng.randint(1, 128)]  # duplicate a run
        elif kind == 6:
            donor = rng.choice(donors)
            buffer[at:] = donor[rng.randrange(len(donor)) :]  # splice another file's tail
        else:
            width = rng.choice((2, 4))
            value = rng.choice((0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)) % (1 << 8 * width)
            buffer[at : at + width] = value.to_bytes(width, rng.choice(("big", "little")))
    return bytes(buffer)


def decode_input(index: int) -> bytes:
    rng = random.Random(index)
    seeds = seed_images()
    if index % 10 == 9:  # a magic signature followed by noise
        return rng.choice(_MAGICS) + rng.randbytes(rng.randint(0, 512))
    return mutate(rng.choice(seeds), rng, seeds)


def run_decode(data: bytes) -> None:
    try:
        decode_image(data, _LIMITS)
    except ImageDecodeError:
        pass


@cache
def request_examples() -> tuple[Message, ...]:
    """A valid-looking request of every method, to mutate (bytes fields kept tiny)."""
    picture = common_pb2.Image(data=seed_images()[0][:64])
    given = datetime(2026, 1, 2, tzinfo=UTC)
    consent = enrollment_pb2.Consent(purpose="kiosk", channel="branch", operator_id="op-1")
    consent.given_at.FromDatetime(given)
    options = verification_pb2.StreamOptions(session_id="s-1", device_id="K-1")
    examples: list[Message] = [
        enrollment_pb2.EnrollRequest(customer_id="c-1", images=[picture], consent=consent),
        verification_pb2.VerifyRequest(customer_id="c-1", frames=[picture], device_id="K-1"),
        verification_pb2.IdentifyRequest(image=picture, top_k=5, min_score=0.4, device_id="K-1"),
        verification_pb2.VerifyStreamRequest(
            start=verification_pb2.VerifyStreamStart(customer_id="c-1", options=options)
        ),
        verification_pb2.VerifyStreamRequest(
            frame=verification_pb2.StreamFrame(image=picture, device_id="K-1", session_id="s-1")
        ),
        verification_pb2.IdentifyStreamRequest(
            start=verification_pb2.IdentifyStreamStart(top_k=3, options=options)
        ),
    ]
    known = {type(e).DESCRIPTOR.full_name for e in examples}
    for module in (verification_pb2, enrollment_pb2, risk_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.input_type.full_name not in known:
                    known.add(method.input_type.full_name)
                    examples.append(message_factory.GetMessageClass(method.input_type)())
    return tuple(examples)


_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**62, -(2**62), 253402300800, 10**9)
_TEXTS = ("", "x" * 300, "K-1", "c-1", "a\x00b", "\n", "ü" * 70, "../../etc", "' OR 1=1 --")


def mutate_fields(message: Message, rng: random.Random, depth: int = 0) -> None:
    """Set random fields (sub-messages included) to edge values of their type."""
    fields = list(message.DESCRIPTOR.fields)
    for field in rng.sample(fields, k=min(len(fields), rng.randint(1, 3))):
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry or depth > 3:
                continue
            target = getattr(message, field.name)
            target = target.add() if field.is_repeated else target
            mutate_fields(target, rng, depth + 1)
            continue
        value: Any
        if field.cpp_type == field.CPPTYPE_STRING:
            text = rng.choice(_TEXTS)
            value = text.encode() if field.type == field.TYPE_BYTES else text
        elif field.cpp_type == field.CPPTYPE_BOOL:
            value = rng.random() < 0.5
        elif field.cpp_type in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE):
            value = rng.choice((0.0, -1.0, 1e30, -1e30, float("nan"), float("inf"), 0.5))
        elif field.cpp_type == field.CPPTYPE_ENUM:
            value = rng.choice([v.number for v in field.enum_type.values])
        else:
            value = _fit(field, rng.choice(_INTS))
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def _fit(field: Any, value: int) -> int:
    """Wrap an integer into the field's range (protobuf refuses out-of-range values)."""
    bits = 64 if field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64) else 32
    unsigned = field.cpp_type in (field.CPPTYPE_UINT32, field.CPPTYPE_UINT64)
    value %= 1 << bits
    return value if unsigned or value < 1 << (bits - 1) else value - (1 << bits)


def request_input(index: int) -> tuple[int, bytes]:
    """Every third input edits fields of a valid request, the rest mutate its bytes."""
    rng = random.Random(index)
    examples = request_examples()
    which = rng.randrange(len(examples))
    if index % 3 == 0:
        message = type(examples[which])()
        message.CopyFrom(examples[which])
        mutate_fields(message, rng)
        return which, message.SerializeToString()
    serialized = examples[which].SerializeToString()
    donors = tuple(e.SerializeToString() or b"\x08\x01" for e in examples)
    if index % 10 == 9:
        return which, rng.randbytes(rng.randint(0, 256))
    return which, mutate(serialized or b"\x0a\x01x", rng, donors)


_KIOSK = Identity("kiosk-K-1", frozenset({"kiosk"}), "K-1")
STREAM_STARTS = (verification_pb2.VerifyStreamRequest, verification_pb2.IdentifyStreamRequest)


def validate(message: Message) -> None:
    """The checks a request meets before any model runs."""
    carries_bulk(message.DESCRIPTOR)
    message.ByteSize()
    bind_device(_KIOSK, message)
    if isinstance(message, enrollment_pb2.EnrollRequest):
        check_customer_id(message.customer_id)
        check_count([i.data for i in message.images], 10, "images")
        check_consent(consent_from(message.consent, message.HasField("consent")))
    elif isinstance(message, verification_pb2.VerifyRequest):
        check_customer_id(message.customer_id)
        check_count([f.data for f in message.frames], 10, "frames")
    elif isinstance(message, STREAM_STARTS):
        opening = opening_of(message, isinstance(message, verification_pb2.IdentifyStreamRequest))
        if not opening.identify:
            check_customer_id(opening.customer_id)


def run_request(item: tuple[int, bytes]) -> None:
    which, data = item
    kind = type(request_examples()[which])
    try:
        validate(kind.FromString(data))
    except (DecodeError, FaceguardError):
        pass


RUNNERS: dict[str, tuple[Callable[[int], Any], Callable[[Any], None]]] = {
    "decode": (decode_input, run_decode),
    "request": (request_input, run_request),
}


@dataclass
class FuzzReport:
    inputs: int = 0
    crashes: list[str] = dataclass_field(default_factory=list)


def fuzz_chunk(target: str, start: int, count: int) -> FuzzReport:
    """Inputs start..start+count of `target`, in this process."""
    make, run = RUNNERS[target]
    report = FuzzReport()
    warnings.simplefilter("ignore")  # decoders warn about the broken files they are fed
    for index in range(start, start + count):
        try:
            run(make(index))
        except Exception as exc:
            lines = traceback.format_exception_only(exc)[-1].strip()
            report.crashes.append(f"{target} input {index}: {lines}")
        report.inputs += 1
    return report


def chunks(total: int, size: int) -> Iterator[tuple[str, int, int]]:
    """Alternating targets, `total` inputs in all."""
    per_target = total // len(TARGETS)
    for offset in range(0, per_target, size):
        for target in TARGETS:
            yield target, offset, min(size, per_target - offset)


def _isolated(job: tuple[str, int, int]) -> FuzzReport:
    """Run one chunk in a process of its own: if it dies, this chunk killed it."""
    with ProcessPoolExecutor(1) as pool:
        try:
            return pool.submit(fuzz_chunk, *job).result()
        except BrokenProcessPool:
            return FuzzReport(job[2], [f"{job[0]} inputs {job[1]}+{job[2]}: worker died"])


def fuzz(total: int, workers: int, chunk: int = 2000) -> FuzzReport:
    """Run `total` inputs over `workers` processes. When a worker dies, the chunks that did
    not finish are run again one by one, so the chunk that killed it is the one reported."""
    report, again = FuzzReport(), []
    with ProcessPoolExecutor(workers) as pool:
        futures = [(job, pool.submit(fuzz_chunk, *job)) for job in chunks(total, chunk)]
        for job, future in futures:
            try:
                part = future.result()
            except BrokenProcessPool:
                again.append(job)
                continue
            report.inputs += part.inputs
            report.crashes += part.crashes
    for job in again:
        part = _isolated(job)
        report.inputs += part.inputs
        report.crashes += part.crashes
    return report
