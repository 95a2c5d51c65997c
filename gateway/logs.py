"""Logging: JSON lines for machines, text for terminals, and a request id on every line.

The request id is a context variable: set by the HTTP middleware (from ``X-Request-Id``
or fresh) and by the SIP layer (the Call-ID); asyncio tasks inherit the context they were
created in, so a WebRTC session or a call logs its start, its end and everything between
with the id of the request that created it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import time

from aiohttp import web

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                         default=None)
SAFE_ID = re.compile(r"^[A-Za-z0-9._@:-]{1,64}$")


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id  # type: ignore[attr-defined]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once, for `gateway serve`."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def request_id_middleware_factory():  # type: ignore[no-untyped-def]
    """Every request gets an id (the client's X-Request-Id if sane), echoed in the reply."""

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        given = request.headers.get("X-Request-Id", "")
        rid = given if SAFE_ID.match(given) else secrets.token_hex(6)
        token = request_id.set(rid)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-Id"] = rid
            raise
        finally:
            request_id.reset(token)
        response.headers["X-Request-Id"] = rid
        return response

    return middleware
