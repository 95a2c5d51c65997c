"""Errors as RFC 9457 problem details: one JSON shape for every 4xx/5xx."""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from ..models.info import omitted
from .keys import MAX_BODY
from .reply import reply

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    field: str = Field(description="the request field at fault, or `body`")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the shape of every 4xx and 5xx response."""

    type: str = Field(json_schema_extra={"format": "uri-reference", "default": "about:blank"})
    title: str = Field(description="the HTTP reason phrase")
    status: int = Field(json_schema_extra={"minimum": 400, "maximum": 599})
    detail: str | None = omitted(description="what went wrong, for a person")
    instance: str | None = omitted(json_schema_extra={"format": "uri-reference"})
    errors: list[FieldProblem] | None = omitted()


class ValidationProblem(Problem):
    """A 400 naming the request fields at fault."""

    status: Literal[400]
    errors: list[FieldProblem] = Field(json_schema_extra={"minItems": 1})


def problem(status: int, title: str, detail: str = "",
            errors: list[tuple[str, str]] | None = None) -> web.Response:
    body = Problem(type="about:blank", title=title, status=status, detail=detail or None,
                   errors=[FieldProblem(field=f, message=m) for f, m in errors]
                   if errors else None)
    return reply(body, status, "application/problem+json")


def overloaded(refusal) -> web.Response:  # type: ignore[no-untyped-def]
    """503 for work refused by admission control, with when to try again."""
    resp = problem(503, "Service Unavailable", refusal.reason)
    resp.headers["Retry-After"] = str(refusal.retry_after_s)
    return resp


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
