"""JSON responses from the models that describe them (``models.info``): encoded by
pydantic straight to bytes, in the shape the OpenAPI document gives."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel


def json_of(model: BaseModel) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def reply(model: BaseModel, status: int = 200,
          content_type: str = "application/json") -> web.Response:
    return web.Response(body=json_of(model), status=status, content_type=content_type)
