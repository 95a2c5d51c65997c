"""The operator's dashboard at /dashboard: every stream, its sender and listeners, live.

The page is static (``static/dashboard.html`` + ``dashboard.js``, no build step) and works
only through the public JSON API and the events feed, so it needs nothing here but its
route: whatever the dashboard can do, a script with curl can do too.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).parent / "static" / "dashboard.html"


async def dashboard(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard)
