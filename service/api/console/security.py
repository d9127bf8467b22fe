"""Who may use the console and how its forms are protected.

- Identity: the TLS layer has verified the client certificate against `security.client_ca`
  (the console's SSL context requires one); the identity is read from it exactly as the gRPC
  interceptor reads it (`service.api.auth.identity_from_pem`): roles from its SAN URIs, the
  operator's name from its common name.
- Roles: `analyst` reads every page and resolves reviews; `admin` may do everything. A page
  or action marked `admin_only` answers 403 to an analyst; a certificate with neither role
  gets 403 everywhere. Each such refusal is audited like a gRPC call refused for its role
  (`service.api.refusals`: a declined CALL of the certificate's device, at its rate).
- Rate: each certificate's requests take tokens from `security.client_rate`/`client_burst`
  as its gRPC calls do; beyond them the answer is 429 with Retry-After.
- CSRF: every form carries a token, HMAC-SHA256 of the certificate's fingerprint under a key
  made at start, so a token is bound to the client and useless to another; a POST without it
  (or with another client's) is refused with 403, and so is one whose Origin is another site.
- Headers: a strict Content-Security-Policy (nothing but this origin, no script at all, no
  framing), X-Frame-Options DENY, nosniff, no referrer to other sites, no caching of pages.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from service.api.auth import DeviceRefusal, Identity, identity_from_pem
from service.api.limits import RateLimiter

log = logging.getLogger(__name__)

ANALYST, ADMIN = "analyst", "admin"
CONSOLE_ROLES = frozenset({ANALYST, ADMIN})
CSRF_FIELD = "csrf"
CSRF_KEY = web.AppKey("csrf_key", bytes)
OPERATOR = web.RequestKey("operator", Identity)
CSRF_TOKEN = web.RequestKey("csrf_token", str)
# Pico's stylesheet draws its icons as data: SVG images; nothing else may load from anywhere
# but this origin, and there is no script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; object-src 'none'; img-src 'self' data:; "
    "style-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes forms send Origin: null
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Gate:
    """What the guard needs besides the request: each certificate's rate, and the auditor of
    requests refused for their role."""

    clients: RateLimiter
    refused: DeviceRefusal


GATE = web.AppKey("gate", Gate)


def admin_only(handler: Handler) -> Handler:
    """Mark a page or action as the admin role's alone."""
    handler.admin_only = True  # type: ignore[attr-defined]
    return handler


def peer_identity(request: web.Request) -> Identity | None:
    """The identity of the request's verified client certificate (None: no certificate)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return identity_from_pem(ssl.DER_cert_to_PEM_cert(der).encode()) if der else None


def identity(request: web.Request) -> Identity:
    """The operator of this request (set by `guard`)."""
    return request[OPERATOR]


def csrf_token(key: bytes, who: Identity) -> str:
    return hmac.new(key, (who.fingerprint or who.client).encode(), hashlib.sha256).hexdigest()


def new_csrf_key() -> bytes:
    return os.urandom(32)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Identity, role and CSRF checks before any handler runs."""
    who = peer_identity(request)
    if who is None:
        raise web.HTTPUnauthorized(text="a client certificate is required")
    gate = request.app[GATE]
    wait = gate.clients.wait_for(who.limit_key)
    if wait > 0:
        raise web.HTTPTooManyRequests(
            text="too many requests", headers={"Retry-After": str(math.ceil(wait))}
        )
    needed = (
        "the analyst or admin role" if not who.roles & CONSOLE_ROLES
        else "the admin role" if getattr(handler, "admin_only", False) and ADMIN not in who.roles
        else None
    )  # fmt: skip
    if needed is not None:
        log.warning("console refused %s: client %s lacks %s", request.path, who.client, needed)
        method = f"console {request.method} {request.path[:128]}"
        await asyncio.to_thread(gate.refused, method, who, None, "ROLE_NOT_ALLOWED")
        raise web.HTTPForbidden(text=f"this page needs {needed}")
    request[OPERATOR] = who
    request[CSRF_TOKEN] = csrf_token(request.app[CSRF_KEY], who)
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            raise web.HTTPForbidden(text="cross-site request refused")
        form = await request.post()
        sent = form.get(CSRF_FIELD)
        if not isinstance(sent, str) or not hmac.compare_digest(sent, request[CSRF_TOKEN]):
            log.warning("console refused a POST to %s from %s: bad CSRF token", request.path,
                        who.client)  # fmt: skip
            raise web.HTTPForbidden(text="missing or invalid CSRF token")
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the same headers on every answer, errors included."""
    response.headers.update(SECURITY_HEADERS)
