"""JSON responses from the models that describe them (``models.info``): encoded by
pydantic straight to bytes, in the shape the OpenAPI document gives."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel


def reply(model: BaseModel, status: int = 200,
          content_type: str = "application/json") -> web.Response:
    return web.Response(body=model.__pydantic_serializer__.to_json(model), status=status,
                        content_type=content_type)
