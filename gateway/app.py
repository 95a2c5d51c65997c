"""The gateway object (streams, sessions, peers) and the aiohttp application around it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from .config import Config, ConfigError
from .core.events import EventBus
from .core.registry import StreamRegistry
from .egress.analysis import Processing
from .egress.encoders import SharedEncoder
from .egress.recordings import Recordings
from .egress.rtp import RtpOutputs
from .ingress.rtp import RtpInput, open_rtp_input
from .logs import request_id_middleware_factory
from .sip.endpoint import EndpointError
from .sip.service import SipService
from .web import api, dashboard, live, metrics, openapi, outputs, recordings, webrtc_http
from .web.auth import AUTH, Authenticator, auth_middleware_factory
from .web.keys import GATEWAY, MAX_BODY
from .web.outputs import FieldError, parse_input, parse_output
from .web.problem import error_middleware_factory
from .webrtc.peer import IceConfig, PeerFactory
from .webrtc.session import WebRTCSession

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "web" / "static"


class Gateway:
    """Everything live: the stream registry, the WebRTC sessions, the peer factory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        s = config.streams
        self.registry = StreamRegistry(
            ring_frames=s.ring_frames,
            allow_dynamic=s.allow_dynamic,
            idle_timeout=s.idle_timeout_s,
            declared=tuple(s.declared),
        )
        w = config.webrtc
        self.peers = PeerFactory(
            IceConfig(
                ice_servers=w.ice_servers, host_addresses=w.host_addresses, nat_1to1=w.nat_1to1
            )
        )
        self.sessions: dict[str, WebRTCSession] = {}
        self.rtp_outputs = RtpOutputs(config.rtp.multicast_interface or None)
        self.rtp_inputs: dict[str, RtpInput] = {}
        self.events = EventBus()
        self.stopping = asyncio.Event()  # set when shutdown begins: no new sessions
        self.recordings = Recordings(config.recording, self.registry, self.events,
                                     w.opus_bitrate)
        self.processing = Processing(config.processing, self.registry, self.events)
        self.sip: SipService | None = None
        if config.sip.enabled:
            self.sip = SipService(config.sip, self.registry, self.rtp_outputs, w.opus_bitrate)
        self._tasks: set[asyncio.Task[Any]] = set()

    def add_session(self, session: WebRTCSession) -> None:
        self.sessions[session.id] = session
        timeout = self.config.webrtc.connect_timeout_s
        self._spawn(webrtc_http.close_if_never_connected(session, timeout))
        self._spawn(self._forget_when_closed(session))

    async def _forget_when_closed(self, session: WebRTCSession) -> None:
        await session.closed.wait()
        self.sessions.pop(session.id, None)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def sender_is_stale(self, session: WebRTCSession) -> bool:
        return webrtc_http.sender_is_stale(session, self.config.webrtc.takeover_after_s)

    async def start(self) -> None:
        if not self.config.auth.enabled:
            if self.config.http.allow_insecure:
                log.warning("no credentials configured and --insecure: anyone who reaches "
                            "%s may publish, listen and dial out", self.config.http.host)
            else:
                log.warning("no credentials configured: access control is off, so the "
                            "gateway serves loopback only (configure [auth] to open it up)")
        self.processing.check()
        self.processing.start()
        await self.recordings.start()
        self.registry.start()
        await self._start_configured_io()
        if self.sip is not None:
            try:
                await self.sip.start()
            except EndpointError as exc:
                raise ConfigError(
                    f"sip: {exc.strerror} (set sip.port, or sip.enabled = false)"
                ) from None

    async def _start_configured_io(self) -> None:
        """Inputs and outputs declared in the config file; a bad entry stops start-up."""
        for where, entries in (("rtp.inputs", self.config.rtp.inputs),
                               ("rtp.outputs", self.config.rtp.outputs)):
            for i, entry in enumerate(entries):
                try:
                    stream = self.registry.get_or_create(str(entry.get("stream", "")))
                    if where == "rtp.inputs":
                        rtp_input = await open_rtp_input(
                            stream, self.config.rtp.bind_host, max_depth=5, **parse_input(entry)
                        )
                        self.rtp_inputs[rtp_input.id] = rtp_input
                    else:
                        args = parse_output(entry, self.config.webrtc.opus_bitrate)
                        await self.rtp_outputs.create(stream, **args)
                except (FieldError, ValueError) as exc:
                    raise ConfigError(f"{where}[{i}]: {exc}") from None

    async def stop(self) -> None:
        """Graceful shutdown: refuse new sessions, hang up calls (BYE), finalize
        recordings, send RTCP BYE, close sessions; bounded by http.shutdown_timeout_s."""
        self.stopping.set()
        log.info("shutting down: %d sessions, %d calls, %d recordings", len(self.sessions),
                 len(self.sip.calls) if self.sip else 0, len(self.recordings.active))
        try:
            await asyncio.wait_for(self._stop_everything(),
                                   max(1.0, self.config.http.shutdown_timeout_s - 0.5))
        except TimeoutError:
            log.error("shutdown took longer than %.0f s; stopping anyway",
                      self.config.http.shutdown_timeout_s)
        for task in list(self._tasks):
            task.cancel()
        await self.registry.stop()

    async def _stop_everything(self) -> None:
        await asyncio.gather(
            self.sip.stop() if self.sip is not None else asyncio.sleep(0),
            self.recordings.stop(),
            *(s.close("gateway shutting down") for s in list(self.sessions.values())),
            *(i.close("gateway shutting down") for i in list(self.rtp_inputs.values())),
        )
        self.processing.stop()
        self.rtp_outputs.close()

    def stats(self) -> dict[str, Any]:
        return {
            "streams": len(self.registry.streams),
            "sessions": len(self.sessions),
            "encoders_active": sum(len(s.egress) for s in self.registry.streams.values()),
            "encoders_created_total": SharedEncoder.created_total,
            "clock_ticks": self.registry.ticks,
            "clock_late_ticks": self.registry.clock_late_ticks,
            "sip_calls": len(self.sip.calls) if self.sip else 0,
        }


def create_app(config: Config) -> web.Application:
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[request_id_middleware_factory(), error_middleware_factory(),
                     auth_middleware_factory()],
    )
    app[AUTH] = Authenticator(config.auth)
    gateway = Gateway(config)
    app[GATEWAY] = gateway
    app[MAX_BODY] = config.http.max_body_bytes

    async def on_startup(app: web.Application) -> None:
        await gateway.start()

    async def on_shutdown(app: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    webrtc_http.add_routes(app)
    api.add_routes(app)
    outputs.add_routes(app)
    recordings.add_routes(app)
    live.add_routes(app)
    metrics.add_routes(app)
    dashboard.add_routes(app)
    openapi.add_routes(app)  # last: it documents every route added before it
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/publish", _page("publish.html"))
    app.router.add_get("/listen", _page("listen.html"))
    app.router.add_static("/static", STATIC)
    return app


def _page(name: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name)

    return handler
