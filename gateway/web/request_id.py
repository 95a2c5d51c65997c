"""An id for every HTTP request, on every log line it causes (see ``gateway.logs``)."""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from ..logs import request_id

#: A client's X-Request-Id is used only if it is this tame (it goes into every log line).
SAFE_ID = re.compile(r"^[A-Za-z0-9._@:-]{1,64}$")


def request_id_middleware_factory(node: str | None = None):  # type: ignore[no-untyped-def]
    """Every request gets an id (the client's X-Request-Id if sane), echoed in the reply;
    in a cluster, ``X-Gateway-Node`` also names the node that answered."""

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        given = request.headers.get("X-Request-Id", "")
        rid = given if SAFE_ID.match(given) else secrets.token_hex(6)
        token = request_id.set(rid)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-Id"] = rid
            if node:
                exc.headers["X-Gateway-Node"] = node
            raise
        finally:
            request_id.reset(token)
        response.headers["X-Request-Id"] = rid
        if node:
            response.headers["X-Gateway-Node"] = node
        return response

    return middleware
