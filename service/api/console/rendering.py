"""Pages from autoescaped Jinja2 templates, with the operator and their CSRF token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from service.api.console.security import ADMIN, CSRF_FIELD, CSRF_TOKEN, identity
from service.app.engine import Engine
from service.app.reviews import Reviews

HERE = Path(__file__).resolve().parent
ENGINE = web.AppKey("engine", Engine)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
REVIEWS = web.AppKey("reviews", Reviews)


def templates() -> jinja2.Environment:
    """Autoescaped templates; an undefined name is an error, not an empty string."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    """A page, with the operator, their CSRF token and their rights in its context."""
    who = identity(request)
    text = request.app[TEMPLATES].get_template(name).render(
        operator=who.client, is_admin=ADMIN in who.roles, csrf=request[CSRF_TOKEN],
        csrf_field=CSRF_FIELD, path=request.path, **context,
    )  # fmt: skip
    return web.Response(text=text, status=status, content_type="text/html")


def engine_of(request: web.Request) -> Engine:
    return request.app[ENGINE]


def reviews_of(request: web.Request) -> Reviews:
    return request.app[REVIEWS]
