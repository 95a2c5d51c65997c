"""Recordings over HTTP: list, download (with Range, so a browser can seek), delete."""

from __future__ import annotations

import errno
import mimetypes

from aiohttp import web

from ..models.info import RecordingList
from ..recording.errors import RecordingError
from ..recording.store import MAX_ID_CHARS, valid_id
from .keys import gateway_of
from .problem import problem
from .reply import reply

CONTENT_TYPES = {".wav": "audio/wav", ".opus": "audio/ogg", ".part": "application/octet-stream"}


async def list_recordings(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    items = await gw.recordings.list()
    return reply(RecordingList(recordings=items,  # type: ignore[arg-type]
                               active=[r.info() for r in gw.recordings.active.values()]))


def _not_found(recording_id: str) -> web.Response:
    if valid_id(recording_id):
        return problem(404, "Not Found", "no such recording")
    return problem(404, "Not Found", f"no such recording: a recording id is 1-{MAX_ID_CHARS} "
                                     "characters of A-Z, a-z, 0-9, '-' and '_'")


async def get_recording(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    try:
        path = gw.recordings.store.path_of(request.match_info["id"])
    except KeyError:
        return _not_found(request.match_info["id"])
    name = path.name[: -len(".part")] if path.name.endswith(".part") else path.name
    suffix = "." + name.rsplit(".", 1)[-1]
    ctype = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={
        "Content-Type": ctype,
        "Content-Disposition": f'attachment; filename="{name}"',
    })


async def delete_recording(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    try:
        await gw.recordings.delete(request.match_info["id"])
    except KeyError:
        return _not_found(request.match_info["id"])
    except RecordingError as exc:
        return problem(409, "Conflict", str(exc))
    return web.Response(status=204)


def storage_problem(exc: OSError | RecordingError) -> web.Response:
    """A recording that cannot start: the disk is full (507) or not writable (500)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return problem(507, "Insufficient Storage", f"cannot record: {exc.strerror}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return problem(500, "Internal Server Error", f"cannot record: {reason}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/recordings", list_recordings)
    app.router.add_get("/api/v1/recordings/{id}", get_recording)
    app.router.add_delete("/api/v1/recordings/{id}", delete_recording)
