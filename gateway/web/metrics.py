"""Placeholder: filled in by the metrics work (issue 6)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Routes of this module (none yet)."""
