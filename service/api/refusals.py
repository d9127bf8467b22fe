"""Audit of calls refused for who sent them: a kiosk certificate claiming another device, or
any certificate calling a method its role does not allow (a kiosk probing RiskAdmin).

`AuthInterceptor` refuses them (PERMISSION_DENIED `DEVICE_MISMATCH` / `ROLE_NOT_ALLOWED`)
before the limits run, so each audit row here takes a token from the device's own rate bucket
(a certificate without a device: its own): a caller that floods such calls gets them refused
all the same, but cannot write audit rows faster than it may make calls (the ones beyond are
logged, not audited).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from service.api.auth import DeviceRefusal, Identity, device_holders
from service.api.limits import RateLimiter
from service.app.engine import Engine
from service.errors import Unavailable

log = logging.getLogger(__name__)

# The audit event type of a kiosk method's refused call.
KINDS = {
    "Verify": "VERIFY",
    "VerifyStream": "VERIFY",
    "Identify": "IDENTIFY",
    "IdentifyStream": "IDENTIFY",
    "CheckLiveness": "CHECK_LIVENESS",
}


def device_refusal_auditor(engine: Callable[[], Engine], budget: RateLimiter) -> DeviceRefusal:
    """Audits a refused call as a declined attempt of the certificate's own device (a claim of
    another device on a kiosk method counts for that device's velocity, never against the
    customer it names), with the certificate that made it, and the device it claimed or the
    method it was refused."""

    def audit(method: str, identity: Identity, message: Any, reason: str) -> None:
        device = identity.device_id or ""
        if budget.wait_for(device or identity.limit_key):
            log.warning("%s of %s not audited: over the rate", reason, identity.client)
            return
        if message is None:
            what = {"method": method}
        else:
            claimed = sorted({h.device_id for h in device_holders(message)} - {device})
            what = {"claimed_device": ",".join(claimed)}
        try:
            engine().decisions.refuse(
                KINDS.get(method.rsplit("/", 1)[-1], "CALL") if message is not None else "CALL",
                device, "", reason, client=identity.client,
                certificate=identity.fingerprint or "", **what,
            )  # fmt: skip
        except Unavailable:  # models still loading: nothing to audit in yet
            log.warning("%s of %s not audited: engine not ready", reason, identity.client)
        except Exception:  # the refusal itself must still be answered as PERMISSION_DENIED
            log.exception("%s of %s not audited", reason, identity.client)

    return audit
