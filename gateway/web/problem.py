"""Errors as RFC 9457 problem details: one JSON shape for every 4xx/5xx."""

from __future__ import annotations

import logging

from aiohttp import web

from .keys import MAX_BODY

log = logging.getLogger(__name__)


def problem(status: int, title: str, detail: str = "", **extra: object) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")


def error_middleware_factory():  # type: ignore[no-untyped-def]
    """Turn aiohttp's own HTTP errors (404, 405, 413), and unexpected exceptions (500),
    into problem details too."""

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/problem+json":
                raise
            detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else ""
            if exc.status == 413:
                detail = f"request body larger than {request.app[MAX_BODY]} bytes"
            resp = problem(exc.status, exc.reason, detail)
            for name in ("Allow",):
                if name in exc.headers:
                    resp.headers[name] = exc.headers[name]
            return resp
        except Exception as exc:  # a bug: still answer in the one error shape, and log it
            if isinstance(exc, ConnectionError) or request.writer.output_size > 0:
                raise  # the client is gone, or a streamed reply (SSE) has begun
            log.exception("%s %s failed", request.method, request.path)
            return problem(500, "Internal Server Error", "unexpected error; see the log")

    return middleware
