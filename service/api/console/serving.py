"""Running the console: an aiohttp server on its own event loop thread, HTTPS only, with a
client certificate required by the TLS handshake itself (no certificate: no connection)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass

from aiohttp import web

from service.api.console.app import build_app
from service.api.console.security import Gate
from service.api.limits import RateLimiter
from service.api.refusals import device_refusal_auditor
from service.app.engine import Engine
from service.app.reviews import Reviews
from service.config import Settings, SettingsError

log = logging.getLogger(__name__)


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The console's TLS: its certificate, and client certificates from the client CA only."""
    console = settings.console
    cert = console.tls_cert or settings.server.tls_cert
    key = console.tls_key or settings.server.tls_key
    client_ca = console.client_ca or settings.security.client_ca
    if cert is None or key is None or client_ca is None:
        raise SettingsError(
            "console.enabled needs a certificate, its key and a client CA (console.tls_cert, "
            "tls_key, client_ca, or the server's server.tls_cert, tls_key and "
            "security.client_ca): the console only serves clients with a certificate"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class ConsoleServer:
    """A started console; `url` is where it answers."""

    url: str
    port: int
    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner
    thread: threading.Thread

    def stop(self) -> None:
        """Close the listener and in-flight requests, then end the loop's thread."""
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def start_console(settings: Settings, engine: Engine) -> ConsoleServer:
    """Bind the console's port and serve it from a thread; returns once it listens."""
    context = ssl_context(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="console", daemon=True)
    thread.start()
    reviews = Reviews(engine.gallery.store, settings.reviews.claim_ttl_s)
    security = settings.security
    gate = Gate(
        RateLimiter(security.client_rate, security.client_burst),
        device_refusal_auditor(lambda: engine, RateLimiter(security.device_rate,
                                                            security.device_burst)),
    )  # fmt: skip
    app = build_app(engine, reviews, gate)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def listen() -> int:
        await runner.setup()
        site = web.TCPSite(
            runner, settings.console.host, settings.console.port, ssl_context=context,
            reuse_port=False,
        )  # fmt: skip
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    try:
        port = asyncio.run_coroutine_threadsafe(listen(), loop).result(timeout=30)
    except OSError as exc:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        raise SettingsError(
            f"cannot listen on {settings.console.host}:{settings.console.port}: {exc}"
        ) from exc
    host = settings.console.host
    url = f"https://{f'[{host}]' if ':' in host else host}:{port}/"
    log.info("faceguard console on %s (client certificate with the analyst or admin role)", url)
    return ConsoleServer(url, port, loop, runner, thread)
