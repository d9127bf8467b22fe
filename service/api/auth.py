"""Who may call what: client identity from the TLS client certificate, roles per method.

Identity (see `service.certs`): the certificate's SAN URIs `faceguard://role/<role>` give its
roles and `faceguard://device/<id>` a kiosk's device id; the common name names the client.
The TLS layer has already verified the certificate against `security.client_ca`, so the
interceptor only reads it.

- A method is allowed to the roles `ROLE_POLICY` gives it (exact name first, then the
  service's `/*`); a method missing from the policy is denied to everyone, so a new service
  stays closed until someone decides who may call it.
- No certificate: UNAUTHENTICATED (CLIENT_CERT_REQUIRED). Wrong role: PERMISSION_DENIED
  (ROLE_NOT_ALLOWED).
- RiskAdmin is the admin's; the `analyst` (a fraud analyst) may also read it (lists,
  watchlist, events, decisions, dead letters, lockouts) and work the REVIEW queue, but
  change nothing else (no list, watchlist, replay or lockout changes).
- Identify is also open to `investigator` and `admin`: only they may search below the
  operating threshold (`searcher`), and the decision's event names them. They hold no device:
  a `device_id` in their request is refused (DEVICE_MISMATCH).
- Device binding: a kiosk certificate carries its device id; every `device_id` in a request
  (top level, and in any sub-message it sets, such as a stream's start options and frames)
  must be that id or empty (then filled in from the certificate), otherwise
  PERMISSION_DENIED (DEVICE_MISMATCH). A kiosk certificate without a device id is refused.
- Development: a plaintext server has no client identities, so every caller gets every role
  (the server logs one warning at start). Listening in plaintext beyond loopback already
  needs an explicit `--insecure`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from service.api.calls import CallInterceptor, CallWatch
from service.api.errors import rich_status
from service.certs import DEVICE_URI, ROLE_URI, ROLES

log = logging.getLogger(__name__)

# RiskAdmin calls an analyst may make too: reading, and working the REVIEW queue.
ANALYST_METHODS = (
    "ListEntries", "ListWatchlist", "QueryEvents", "ListDeadLetters", "ListLockouts",
    "ListReviews", "ClaimReview", "ResolveReview", "GetDecision",
)  # fmt: skip
PUBLIC = frozenset({"*"})  # callable without any identity: health checks and reflection
ROLE_POLICY: Mapping[str, frozenset[str]] = {
    "/faceguard.v1.FaceVerification/*": frozenset({"kiosk"}),
    "/faceguard.v1.FaceVerification/Identify": frozenset({"kiosk", "investigator", "admin"}),
    "/faceguard.v1.Enrollment/*": frozenset({"enrollment"}),
    "/faceguard.v1.RiskAdmin/*": frozenset({"admin"}),
    **{f"/faceguard.v1.RiskAdmin/{m}": frozenset({"admin", "analyst"}) for m in ANALYST_METHODS},
    "/faceguard.v1.Calibration/*": frozenset({"admin"}),
    "/grpc.health.v1.Health/*": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/*": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/*": PUBLIC,
}
DEVICE_FIELD = "device_id"
# Roles that may search the gallery below the operating threshold (an audited right).
SEARCH_ROLES = frozenset({"investigator", "admin"})


@dataclass(frozen=True)
class Identity:
    """The caller: `client` names it in logs; `device_id` is bound for kiosks; `fingerprint`
    (SHA-256 of the certificate) tells apart two certificates with the same common name."""

    client: str
    roles: frozenset[str]
    device_id: str | None = None
    development: bool = False
    fingerprint: str | None = None

    @property
    def limit_key(self) -> str:
        """What limits count by: the certificate itself, or the peer host without one."""
        return self.fingerprint or self.client


CURRENT: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "faceguard_identity", default=None
)


def allowed_roles(
    method: str, policy: Mapping[str, frozenset[str]] = ROLE_POLICY
) -> frozenset[str] | None:
    """The roles that may call `method` (`/package.Service/Method`), or None: nobody."""
    if method in policy:
        return policy[method]
    service = method.rsplit("/", 1)[0]
    return policy.get(service + "/*")


@functools.lru_cache(maxsize=4096)
def identity_from_pem(pem: bytes) -> Identity:
    """Read client name, roles and device id from a verified client certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    client = str(names[0].value) if names else cert.fingerprint(cert.signature_hash_algorithm).hex()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    roles = frozenset(u[len(ROLE_URI) :] for u in uris if u.startswith(ROLE_URI)) & set(ROLES)
    devices = [u[len(DEVICE_URI) :] for u in uris if u.startswith(DEVICE_URI)]
    # Several device ids would make the binding ambiguous: such a certificate binds none.
    device = devices[0] if len(devices) == 1 else None
    return Identity(client, roles, device, fingerprint=cert.fingerprint(hashes.SHA256()).hex())


def searcher() -> str | None:
    """The current caller's name when it may search below the operating threshold, else None
    (a kiosk). A development server's callers hold every role."""
    identity = CURRENT.get()
    return identity.client if identity is not None and identity.roles & SEARCH_ROLES else None


def peer_identity(context: grpc.ServicerContext) -> Identity | None:
    pems = context.auth_context().get("x509_pem_cert")
    return identity_from_pem(bytes(pems[0])) if pems else None


def peer_host(context: grpc.ServicerContext) -> str:
    """`ipv4:10.0.0.5:4711` -> `10.0.0.5` (the client key in development mode)."""
    peer = context.peer() or "unknown"
    host = peer.split(":", 1)[-1].rsplit(":", 1)[0]
    return host.strip("[]") or peer


def development_identity(context: grpc.ServicerContext) -> Identity:
    return Identity(peer_host(context), frozenset(ROLES), None, development=True)


# Told of each call refused for its caller (method, caller, the refused message or None,
# reason: DEVICE_MISMATCH or ROLE_NOT_ALLOWED), to audit it.
DeviceRefusal = Callable[[str, Identity, Any, str], None]


class _Bound(CallWatch):
    """Holds the caller's identity for the call; checks each message's device id."""

    def __init__(
        self,
        identity: Identity | None,
        device_check: bool,
        method: str = "",
        refused: DeviceRefusal | None = None,
    ) -> None:
        self.identity = identity
        self.device_check = device_check
        self.method = method
        self.refused = refused
        self.token = CURRENT.set(identity)

    def request(self, message: Any, context: grpc.ServicerContext) -> None:
        if not self.device_check or self.identity is None:
            return
        refusal = bind_device(self.identity, message)
        if refusal is not None:
            log.warning(
                "device id refused: client %s is bound to another device", self.identity.client
            )
            if self.refused is not None:
                self.refused(self.method, self.identity, message, "DEVICE_MISMATCH")
            self.deny(refusal)

    def finish(self, context: grpc.ServicerContext, failed: bool) -> None:
        CURRENT.reset(self.token)


def bind_device(identity: Identity, message: Any) -> grpc.Status | None:
    """Fill every empty `device_id` in `message` with the identity's bound device; the
    refusal status if one names another device (the message is then not to be used)."""
    for holder in device_holders(message):
        claimed = getattr(holder, DEVICE_FIELD)
        if not claimed:
            setattr(holder, DEVICE_FIELD, identity.device_id or "")
        elif claimed != identity.device_id:
            return rich_status(
                grpc.StatusCode.PERMISSION_DENIED, "DEVICE_MISMATCH",
                "device_id differs from the device bound to the client certificate",
            )  # fmt: skip
    return None


def device_holders(message: Any) -> Iterator[Any]:
    """Every message in a request that has a `device_id` field, at any depth (a streamed
    call's start options and frames carry their own).

    An unset sub-message that could hold a device id is included (and so created) unless it
    is a member of a oneof, so that leaving out, say, a stream's options cannot leave its
    device id empty; a oneof member that is not the one set is never touched.
    """
    if DEVICE_FIELD in message.DESCRIPTOR.fields_by_name:
        yield message
    for field in message.DESCRIPTOR.fields:
        kind = field.message_type
        if kind is None or kind.GetOptions().map_entry:
            continue
        if field.is_repeated:
            for item in getattr(message, field.name):
                yield from device_holders(item)
        elif message.HasField(field.name) or (
            field.containing_oneof is None and _reaches_device(kind)
        ):
            yield from device_holders(getattr(message, field.name))


@functools.cache
def _reaches_device(descriptor: Any, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message type has a `device_id` field, itself or in a singular sub-message."""
    if DEVICE_FIELD in descriptor.fields_by_name:
        return True
    seen = seen | {descriptor.full_name}
    return any(
        f.message_type is not None
        and not f.is_repeated
        and f.message_type.full_name not in seen
        and _reaches_device(f.message_type, seen)
        for f in descriptor.fields
    )


class AuthInterceptor(CallInterceptor):
    """Enforces `ROLE_POLICY`; `development` (plaintext) grants every role to every caller;
    `refused` hears of every refused device claim and role (the server audits them)."""

    def __init__(
        self,
        development: bool,
        policy: Mapping[str, frozenset[str]] = ROLE_POLICY,
        refused: DeviceRefusal | None = None,
    ) -> None:
        self.development = development
        self.policy = policy
        self.refused = refused

    def watch(self, method: str, context: grpc.ServicerContext) -> CallWatch:
        roles = allowed_roles(method, self.policy)
        if roles is None:
            log.warning("call to %s refused: the method has no role policy", method)
            context.abort_with_status(
                rich_status(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "METHOD_NOT_ALLOWED",
                    "this method is not open to any role",
                )
            )
        identity = development_identity(context) if self.development else peer_identity(context)
        if roles is PUBLIC:
            return _Bound(identity, device_check=False)
        if identity is None:
            context.abort_with_status(
                rich_status(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "CLIENT_CERT_REQUIRED",
                    "a client certificate is required",
                )
            )
        if not identity.roles & roles:
            log.warning("call to %s refused: client %s lacks the role", method, identity.client)
            if self.refused is not None:  # a kiosk probing admin calls leaves an audit row
                self.refused(method, identity, None, "ROLE_NOT_ALLOWED")
            context.abort_with_status(
                rich_status(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "ROLE_NOT_ALLOWED",
                    f"this method needs the role {' or '.join(sorted(roles))}",
                )
            )
        kiosk_call = "kiosk" in roles and not identity.development
        if kiosk_call and "kiosk" in identity.roles and identity.device_id is None:
            context.abort_with_status(
                rich_status(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "DEVICE_NOT_BOUND",
                    "a kiosk certificate must name exactly one device",
                )
            )
        return _Bound(identity, kiosk_call, method, self.refused)
