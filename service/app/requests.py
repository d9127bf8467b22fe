"""Request validation shared by the use cases: ids, counts, operator text, consent, quality.

Each check raises the service's own error with a precise reason code (INVALID_CUSTOMER_ID,
TOO_MANY_FRAMES, CONSENT_REQUIRED, ...) before any face work or storage is touched.
"""

from __future__ import annotations

import re

from service.domain import Consent
from service.errors import InvalidInput, NotFound, TooLarge, Unprocessable
from service.vision.types import FaceAnalysis

# Quality settings about face size: a refusal for them suggests the ID/web photo profile.
SIZE_SETTINGS = frozenset({"min_face_px", "min_inter_eye_px"})

CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")  # used with fullmatch only


def check_customer_id(customer_id: str) -> str:
    if not CUSTOMER_ID.fullmatch(customer_id or ""):  # `$` would allow a trailing newline
        raise InvalidInput(
            "INVALID_CUSTOMER_ID",
            "customer_id must be 1-64 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit",
        )
    return customer_id


def not_enrolled(customer_id: str) -> NotFound:
    return NotFound("CUSTOMER_NOT_FOUND", f"customer {customer_id} is not enrolled")


def check_count(items: list[bytes], limit: int, what: str) -> None:
    if not items:
        raise InvalidInput(f"NO_{what.upper()}", f"at least one {what[:-1]} is required")
    if len(items) > limit:
        raise TooLarge(f"TOO_MANY_{what.upper()}", f"at most {limit} {what} per request")


def require_text(name: str, value: str, limit: int) -> str:
    """An operator's free text (a reason, a case, an id): 1-`limit` printable characters, so
    nothing unbounded or control characters reach the audit chain (INVALID_<NAME>)."""
    if not value or len(value) > limit or not value.isprintable():
        raise InvalidInput(
            f"INVALID_{name.upper()}", f"{name} must be 1-{limit} printable characters"
        )
    return value


def check_consent(consent: Consent | None) -> Consent:
    """An enrolment's consent: present and naming the operator who took it (the type itself
    checks the rest when it is made)."""
    if consent is None or not consent.operator_id:
        raise InvalidInput(
            "CONSENT_REQUIRED",
            "a consent record with purpose, time, channel and operator is required",
        )
    return consent


def quality_gate(analysis: FaceAnalysis, where: str, image: int | None = None) -> None:
    """Refuse a face below the quality policy, saying what was measured against what is
    required and which setting moves it; the ErrorInfo metadata carries the same values
    (e.g. face_px 62, min_face_px 80) and the refused image's index, for clients."""
    quality = analysis.quality
    if not quality.reasons:
        return
    reasons = ", ".join(quality.reasons)
    found = quality.shortfalls
    details = "; ".join(s.text for s in found) or f"quality {quality.score:.0f}/100"
    metadata = {"reasons": reasons}
    if image is not None:
        metadata["image"] = str(image)
    for shortfall in found:
        metadata[shortfall.measure] = f"{shortfall.value:.3g}"
        metadata[shortfall.setting] = f"{shortfall.limit:g}"
    hint = ""
    if any(s.setting in SIZE_SETTINGS for s in found):
        hint = (
            '; for ID or web photos the service needs quality.profile = "id_photo" '
            "(FACEGUARD_QUALITY__PROFILE=id_photo)"
        )
    raise Unprocessable(
        str(quality.reasons[0]), f"{where}: {details} ({reasons}){hint}", **metadata
    )


def page_limit(size: int, default: int = 50, limit: int = 500) -> int:
    """A requested page size: 0 asks for `default`; more than `limit` is refused
    (PAGE_TOO_LARGE), so no caller can ask the store for an unbounded page."""
    if size > limit:
        raise TooLarge("PAGE_TOO_LARGE", f"page_size is at most {limit}")
    return size or default


def row_after(token: str) -> int:
    """The row id a page token continues after (0: from the start). Tokens are the decimal row
    ids this service issued; anything else, including non-ASCII digits and numbers beyond a
    64-bit id, is refused (INVALID_PAGE_TOKEN) before it reaches a query."""
    if not token:
        return 0
    if not (token.isascii() and token.isdigit() and len(token) <= 18):
        raise InvalidInput("INVALID_PAGE_TOKEN", "page_token is not one this service issued")
    return int(token)
