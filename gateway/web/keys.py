"""Typed aiohttp application keys."""

from __future__ import annotations

from aiohttp import web

from ..gateway import Gateway
from .connection_guard import ConnectionGuard
from .turns import Turns

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
HTTP_GUARD: web.AppKey[ConnectionGuard] = web.AppKey("http_guard", ConnectionGuard)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
TURNS: web.AppKey[Turns] = web.AppKey("turns", Turns)


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def turns_of(request: web.Request) -> Turns:
    return request.app[TURNS]
