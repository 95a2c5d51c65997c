"""Typed aiohttp application keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from ..app import Gateway

GATEWAY: web.AppKey[Any] = web.AppKey("gateway")
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY]
