"""Errors as RFC 9457 problem details: one JSON shape for every 4xx/5xx."""

from __future__ import annotations

from aiohttp import web

from .keys import MAX_BODY


def problem(status: int, title: str, detail: str = "", **extra: object) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")


def error_middleware_factory():  # type: ignore[no-untyped-def]
    """Turn aiohttp's own HTTP errors (404, 405, 413) into problem details too."""

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

    return middleware
