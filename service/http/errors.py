"""Router-level refusals in the service's one error shape, ``{"error": ..., "detail": ...}``.

* :func:`http_error` -- FastAPI's handler for Starlette's HTTP errors (an unknown method, ...):
  JSON, and a 405's ``Allow`` lists every method of the path, not only the first route's
  (``GET /jobs/{id}`` and ``DELETE /jobs/{id}`` are two routes of one path).
* :class:`JsonNotFound` -- ASGI middleware: the plain-text ``Not Found`` BentoML's router answers
  for a path no route matches (such as one with a newline in it) becomes the JSON 404 the
  OpenAPI document promises.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application accepts on this request's path."""
    allowed: set[str] = set()
    for route in request.app.routes:
        for method in METHODS:
            match, _ = route.matches({**request.scope, "method": method})
            if match == Match.FULL:
                allowed.add(method)
    return sorted(allowed)


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    """A Starlette HTTP error as ``{"error", "detail"}`` (405: with the path's full ``Allow``)."""
    headers = dict(error.headers or {})
    if error.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    name = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
    return JSONResponse({"error": name, "detail": str(error.detail)}, status_code=error.status_code, headers=headers)


class JsonNotFound:
    """ASGI middleware: a ``text/plain`` 404 becomes ``{"error": "not_found", "detail": ...}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def json_send(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 404:
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if kind.startswith(b"text/plain"):
                    replaced = True
                    body = json.dumps({"error": "not_found", "detail": f"no route for {scope['method']} {scope['path']!r}"}).encode()
                    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 404, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
            if replaced:
                return
            await send(message)

        await self.app(scope, receive, json_send)
