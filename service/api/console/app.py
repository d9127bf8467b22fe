"""The console's aiohttp application: routes, the guard, security headers, templates."""

from __future__ import annotations

from aiohttp import web

from service.api.console import pages
from service.api.console.rendering import ENGINE, HERE, REVIEWS, TEMPLATES, templates
from service.api.console.security import (
    CSRF_KEY,
    GATE,
    Gate,
    guard,
    new_csrf_key,
    security_headers,
)
from service.app.engine import Engine
from service.app.reviews import Reviews


def build_app(engine: Engine, reviews: Reviews, gate: Gate) -> web.Application:
    """The console over a built engine and its REVIEW queue; forms are small, so request
    bodies are capped."""
    app = web.Application(middlewares=[guard, pages.domain_errors], client_max_size=64 * 1024)
    app[ENGINE] = engine
    app[REVIEWS] = reviews
    app[GATE] = gate
    app[TEMPLATES] = templates()
    app[CSRF_KEY] = new_csrf_key()
    app.on_response_prepare.append(security_headers)
    app.add_routes(pages.ROUTES)
    app.router.add_static("/static", HERE / "static", follow_symlinks=False)
    return app
