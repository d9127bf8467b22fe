"""Audit of calls refused for who sent them: a kiosk certificate claiming another device.

`AuthInterceptor` refuses the claim (PERMISSION_DENIED `DEVICE_MISMATCH`) before the limits
run, so each audit row here takes a token from the device's own rate bucket: a kiosk that
floods claims gets them refused all the same, but cannot write audit rows faster than it may
make calls (the ones beyond are logged, not audited).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from service.api.auth import DeviceRefusal, Identity, device_holders
from service.api.limits import RateLimiter
from service.engine import Engine
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
    """Audits a kiosk's claim of another device as a declined attempt of the certificate's own
    device (so it counts for that device's velocity, never against the customer it names),
    with the certificate that made it and the device it claimed."""

    def audit(method: str, identity: Identity, message: Any) -> None:
        device = identity.device_id or ""
        if budget.wait_for(device):
            log.warning("device claim of %s not audited: over the device's rate", identity.client)
            return
        claimed = sorted({h.device_id for h in device_holders(message)} - {device})
        try:
            engine().refuse(
                KINDS.get(method.rsplit("/", 1)[-1], "CALL"), device, "", "DEVICE_MISMATCH",
                client=identity.client, certificate=identity.fingerprint or "",
                claimed_device=",".join(claimed),
            )  # fmt: skip
        except Unavailable:  # models still loading: nothing to audit in yet
            log.warning("device claim of %s not audited: engine not ready", identity.client)

    return audit
