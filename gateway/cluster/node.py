"""This node's membership of the cluster: NATS connection, directory, media links, requests.

Single-node gateways never build one. With ``[cluster] nats_url`` (or ``--workers N``)
the gateway builds a ``ClusterNode`` and, through it:

* claims a stream before a local sender may publish into it (one publisher per stream,
  cluster-wide; 409 when another node's sender is live);
* feeds a stream from its owner while it has local readers and no local sender;
* publishes the streams it owns while another node wants them;
* posts its load every beat (what ``GET /api/v1/streams`` and placement read);
* answers requests addressed to it (end a session, list its streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from ..core.registry import StreamRegistry
from ..core.stream import Stream
from .leases import Leases, NodeBoard
from .link import Publication, RemoteSource
from .wire import Subjects, stream_of_key

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

#: A directory read that takes longer (NATS away, a JetStream leader election after a NATS
#: server died) gives the last view read instead, and so does every read for the next
#: DIRECTORY_RETRY_S: listings answer at once, a little stale.
DIRECTORY_READ_S = 1.0
DIRECTORY_RETRY_S = 2.0
#: A NATS cluster that starts with this node elects its JetStream leader within seconds:
#: the node waits this long for it. JETSTREAM_UNAVAILABLE: its error code meanwhile.
JETSTREAM_WAIT_S = 15.0
JETSTREAM_UNAVAILABLE = 10008


class ClusterError(RuntimeError):
    """The cluster cannot be joined (NATS unreachable, refused credentials); says why."""


class NodeUnreachable(ClusterError):
    """A request to another node got no answer."""


class ClusterNode:
    def __init__(self, config: Any, registry: StreamRegistry, opus_bitrate: int,
                 node: str, jitter_max_packets: int = 3) -> None:
        self.config = config  # a ClusterConfig
        self.registry = registry
        self.opus_bitrate = opus_bitrate
        self.node = node
        self.jitter_max_packets = jitter_max_packets
        self.subjects = Subjects(config.subject_prefix)
        self.nc: Client | None = None
        self.owners: Leases | None = None  # stream name -> owner
        self.leases: Leases | None = None  # once-per-cluster work
        self.board: NodeBoard | None = None
        self.publications: dict[str, Publication] = {}
        self.remote: dict[str, RemoteSource] = {}
        self.handlers: dict[str, Handler] = {}
        #: Once-per-cluster jobs: name -> (start, stop); run here while this node holds
        #: the job's lease.
        self.jobs: dict[str, tuple[Callable[[], Awaitable[Any]],
                                   Callable[[], Awaitable[Any]]]] = {}
        self.running_jobs: set[str] = set()
        self.live_nodes: list[str] = [node]  # from the node board, every beat
        self._jobs_lock = asyncio.Lock()
        self.load: Callable[[], dict[str, Any]] = dict
        self.disconnects = 0
        self.feed_silences: dict[str, int] = {}  # per stream, over every feed it had
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._closing = False
        self._last_error = ""
        self._auth_error = ""
        self._views: dict[str, dict[str, dict[str, Any]]] = {}  # last directory reads
        self.directory_stale = False
        self._retry_directory_at = 0.0

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self.nc = await self._connect()
        prefix, ttl, replicas = self.config.subject_prefix, self.config.lease_ttl_s, \
            self.config.kv_replicas
        # A directory operation gives up after a beat: one that meets a JetStream leader
        # election (a NATS server died) is retried at the next beat, not 5 s later.
        js = self.nc.jetstream(timeout=max(1.0, ttl / 3))
        self.owners = Leases(js, f"{prefix}_streams", ttl, replicas)
        self.leases = Leases(js, f"{prefix}_leases", ttl, replicas)
        self.board = NodeBoard(js, f"{prefix}_nodes", ttl, replicas)
        try:
            await self._open_directory()
        except Exception as exc:
            await self.nc.close()
            raise ClusterError(f"NATS at {self._urls()} has no usable JetStream "
                               f"(start nats-server with -js): {exc}") from None
        await self.nc.subscribe(self.subjects.want_all, cb=self._on_want)
        await self.nc.subscribe(self.subjects.node(self.node), cb=self._on_request)
        self.registry.on_created.append(self._watch)
        for stream in self.registry.streams.values():
            self._watch(stream)
        self._beat = asyncio.create_task(self._run_beat(), name="cluster-beat")
        await self.nodes()  # a first view of the directory, should it go away
        await self.owners_all()
        log.info("node %s joined the cluster at %s", self.node, self._urls())

    async def _open_directory(self) -> None:
        """Open the buckets; while NATS has no JetStream leader yet (a cluster starting
        with this node), wait up to JETSTREAM_WAIT_S for one."""
        assert self.owners is not None and self.leases is not None and self.board is not None
        deadline = time.monotonic() + JETSTREAM_WAIT_S
        while True:
            try:
                for bucket in (self.owners, self.leases, self.board):
                    await bucket.open()
                return
            except Exception as exc:
                not_ready = isinstance(exc, TimeoutError) or \
                    getattr(exc, "err_code", None) == JETSTREAM_UNAVAILABLE
                if not not_ready or time.monotonic() > deadline:
                    raise
                log.info("waiting for JetStream at %s: %s", self._urls(),
                         exc or type(exc).__name__)
                await asyncio.sleep(0.5)

    def _urls(self) -> str:
        return ", ".join(self.config.nats_url)

    async def _connect(self) -> Client:
        cfg = self.config
        options: dict[str, Any] = {
            "servers": list(cfg.nats_url),
            "name": f"audio-gateway {self.node}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 3,
            "ping_interval": 2,
            "max_outstanding_pings": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "allow_reconnect": True,
        }
        if cfg.user:
            options["user"], options["password"] = cfg.user, cfg.password
        if cfg.token:
            options["token"] = cfg.token
        if cfg.creds_file:
            options["user_credentials"] = cfg.creds_file
        if cfg.tls_ca or any(u.startswith("tls://") for u in cfg.nats_url):
            context = ssl.create_default_context(cafile=cfg.tls_ca or None)
            if cfg.tls_cert:
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
            options["tls"] = context
        try:
            # The first connection must succeed (or fail with its reason): no endless retry.
            return await asyncio.wait_for(self._first_connect(options), 15.0)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if self._auth_error:  # later attempts may end otherwise (connection reset)
                raise ClusterError(f"cannot join the cluster: NATS at {self._urls()} refused "
                                   f"this node's credentials: {self._auth_error}") from None
            reason = self._last_error or str(exc) or type(exc).__name__
            raise ClusterError(f"cannot join the cluster: NATS at {self._urls()}: {reason}"
                               ) from None

    async def _first_connect(self, options: dict[str, Any]) -> Client:
        nc = Client()
        # Each server is tried twice at start; once connected, reconnect for ever (nats-py
        # reads its options dict on every reconnect).
        await nc.connect(**dict(options, max_reconnect_attempts=2))
        nc.options["max_reconnect_attempts"] = -1
        return nc

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = str(exc) or type(exc).__name__
        if "authorization" in self._last_error.lower():
            self._auth_error = self._last_error
            log.error("NATS refused this node's credentials: %s", self._last_error)
        else:
            log.debug("NATS: %s", self._last_error)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            self.disconnects += 1
            log.warning("node %s lost NATS: streams from other nodes go silent until it is "
                        "back; local streams and listeners go on", self.node)

    async def _on_reconnected(self) -> None:
        log.info("node %s reconnected to NATS", self.node)
        self._spawn(self._beat_once())

    async def stop(self) -> None:
        self._closing = True
        if self._beat is not None:
            self._beat.cancel()
        for task in list(self._tasks):
            task.cancel()
        for publication in list(self.publications.values()):
            publication.stop()
        self.publications.clear()
        for source in list(self.remote.values()):
            await source.close("node stopping")
        self.remote.clear()
        for name in list(self.running_jobs):
            with contextlib.suppress(Exception):
                await self.jobs[name][1]()
        if self.nc is not None and self.nc.is_connected:
            for leases in (self.owners, self.leases):
                for name in list(leases.held if leases is not None else ()):
                    with contextlib.suppress(Exception):
                        await leases.release(name)  # type: ignore[union-attr]
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):
                await self.nc.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- ownership -----------------------------------------------------------------
    async def claim(self, stream: Stream, source: Any) -> dict[str, Any] | None:
        """Own ``stream`` for a local sender: None when granted, else the owner's entry."""
        assert self.owners is not None
        value = self._owner_value(source)
        try:
            return await self.owners.acquire(stream.name, value, self._lost)
        except Exception as exc:
            raise ClusterError(f"stream directory unavailable: {exc}") from None

    def _owner_value(self, source: Any) -> dict[str, Any]:
        last = getattr(source, "last_packet", None)
        started = getattr(source, "started_monotonic", time.monotonic())
        return {"node": self.node, "kind": source.kind, "session": source.id,
                "idle_s": round(time.monotonic() - (last if last is not None else started), 1)}

    async def release(self, stream: Stream) -> None:
        if self.owners is not None:
            with contextlib.suppress(Exception):
                await self.owners.release(stream.name)

    async def _release_if_unused(self, stream: Stream) -> None:
        """The local sender left: give the stream up unless a new one took its place."""
        await asyncio.sleep(0)
        source = stream.source
        if source is None or isinstance(source, RemoteSource):
            await self.release(stream)

    def _lost(self, name: str, holder: dict[str, Any]) -> None:
        """Another node took a stream this node published (after a partition)."""
        stream = self.registry.streams.get(name)
        if stream is not None and stream.source is not None and stream.source.kind != "cluster":
            log.warning("stream %s now belongs to node %s: ending the local sender", name,
                        holder.get("node"))
            self._spawn(stream.source.close(f"stream taken over by node {holder.get('node')}"))

    def owns(self, stream: Stream) -> bool:
        return self.owners is not None and stream.name in self.owners.held

    # -- media ---------------------------------------------------------------------
    def _watch(self, stream: Stream) -> None:
        stream.on_change = self._demand

    def _demand(self, stream: Stream) -> None:
        """Subscribe to another node's stream while there are readers and no local sender."""
        if self._closing or self.nc is None:
            return
        readers = stream.ring.readers > 0 or len(stream.outputs) > 0
        source = stream.source
        if (source is None or isinstance(source, RemoteSource)) and self.owns(stream):
            self._spawn(self._release_if_unused(stream))
        if source is None and readers:
            remote = RemoteSource(stream, self.nc, self.subjects, self.node,
                                  self.jitter_max_packets, self.feed_silences)
            self.remote[stream.name] = remote
            stream.attach(remote)  # type: ignore[arg-type]
            self._spawn(remote.start())
        elif isinstance(source, RemoteSource) and not readers:
            self.remote.pop(stream.name, None)
            self._spawn(source.close("no reader on this node"))
        elif source is not None and not isinstance(source, RemoteSource):
            if stream.name in self.remote and self.remote[stream.name] is not source:
                self.remote.pop(stream.name, None)

    def make_room(self, stream: Stream) -> None:
        """A local sender is about to attach: end the feed from another node."""
        source = stream.source
        if isinstance(source, RemoteSource):
            self.remote.pop(stream.name, None)
            stream.on_change = None  # the detach must not re-subscribe
            try:
                stream.detach(source)  # type: ignore[arg-type]
            finally:
                stream.on_change = self._demand
            self._spawn(source.close("a local sender took over"))

    async def _on_want(self, msg: Msg) -> None:
        name = self.subjects.stream_of_want(msg.subject)
        stream = self.registry.streams.get(name)
        if stream is None or stream.source is None or isinstance(stream.source, RemoteSource):
            return
        publication = self.publications.get(name)
        if publication is None:
            publication = self.publications[name] = Publication(
                stream, self.nc, self.subjects, self.opus_bitrate)  # type: ignore[arg-type]
            log.info("stream %s: publishing to the cluster", name)
        publication.want(msg.data.decode(errors="replace"))

    def _prune_publications(self) -> None:
        for name, publication in list(self.publications.items()):
            stream = self.registry.streams.get(name)
            local = stream is not None and stream.source is not None and \
                not isinstance(stream.source, RemoteSource)
            if not publication.wanted or not local:
                publication.stop()
                del self.publications[name]
                log.info("stream %s: no longer published to the cluster", name)

    # -- beat ----------------------------------------------------------------------
    async def _run_beat(self) -> None:
        every = max(0.2, self.config.lease_ttl_s / 3)
        while True:
            try:
                await self._beat_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: local streams go on; retry next beat
                log.debug("cluster beat failed: %s", exc)
            await asyncio.sleep(every)

    async def _beat_once(self) -> None:
        self._prune_publications()
        if self.nc is None or not self.nc.is_connected:
            return
        assert self.owners is not None and self.board is not None and self.leases is not None
        for name, lease in self.owners.held.items():
            stream = self.registry.streams.get(name)
            if stream is not None and stream.source is not None:
                lease.value = self._owner_value(stream.source)
        await self.owners.renew()
        await self.leases.renew()
        if len(self.running_jobs) < len(self.jobs):
            await self._take_jobs()
        await self.board.post(self.node, {"node": self.node, "at": time.time(),
                                          **self.load()})
        self.live_nodes = sorted(set(await self.board.nodes()) | {self.node})

    # -- once per cluster ----------------------------------------------------------
    def once(self, name: str, start: Callable[[], Awaitable[Any]],
             stop: Callable[[], Awaitable[Any]]) -> None:
        """Run ``start`` on exactly one node of the cluster (whichever takes the job's
        lease first); when that node dies, another takes the lease and starts it there.
        ``stop`` runs if this node loses the lease. Every node declares the same jobs
        (they come from the same configuration)."""
        self.jobs[name] = (start, stop)
        self._spawn(self._take_jobs())

    def forget(self, name: str) -> None:
        """Drop a job (its stream is gone): stopped here if it ran here, lease released."""
        job = self.jobs.pop(name, None)
        if job is not None and name in self.running_jobs:
            self.running_jobs.discard(name)
            self._spawn(job[1]())
            if self.leases is not None:
                self._spawn(self.leases.release(name))

    def runs(self, name: str) -> bool:
        return name in self.running_jobs

    @property
    def first_node(self) -> bool:
        """This node's name sorts first among the live nodes (a lease-free tie-break)."""
        return self.live_nodes[0] == self.node

    async def _take_jobs(self) -> None:
        async with self._jobs_lock:  # once() and the beat both call this
            await self._take_free_jobs()

    async def _take_free_jobs(self) -> None:
        assert self.leases is not None
        for name, (start, _stop) in list(self.jobs.items()):
            if name in self.running_jobs or name not in self.jobs:
                continue
            holder = await self.leases.acquire(name, {"node": self.node},
                                               on_lost=self._job_lost)
            if holder is None:
                self.running_jobs.add(name)
                log.info("node %s runs %s for the cluster", self.node, name)
                try:
                    await start()
                except Exception:
                    log.exception("job %s failed to start", name)

    def _job_lost(self, name: str, holder: dict[str, Any]) -> None:
        if name in self.running_jobs:
            self.running_jobs.discard(name)
            log.warning("job %s moved to node %s", name, holder.get("node"))
            self._spawn(self.jobs[name][1]())

    # -- requests between nodes ----------------------------------------------------
    def handle(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    async def request(self, node: str, op: str, timeout: float = 3.0,
                      **args: Any) -> dict[str, Any]:
        assert self.nc is not None
        if node == self.node:
            return await self.handlers[op](args)
        try:
            msg = await self.nc.request(self.subjects.node(node),
                                        json.dumps({"op": op, **args}).encode(), timeout=timeout)
        except (NoRespondersError, NatsTimeout) as exc:
            raise NodeUnreachable(f"node {node} did not answer ({type(exc).__name__})") from None
        return json.loads(msg.data)

    async def _on_request(self, msg: Msg) -> None:
        try:
            args = json.loads(msg.data)
            handler = self.handlers[args.pop("op")]
            reply = await handler(args)
        except Exception as exc:
            log.exception("cluster request to %s failed", self.node)
            reply = {"status": 500, "detail": f"{type(exc).__name__}: {exc}"}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    async def nodes(self) -> dict[str, dict[str, Any]]:
        assert self.board is not None
        return await self._view("nodes", self.board.nodes)

    async def owners_all(self) -> dict[str, dict[str, Any]]:
        """Every stream's owner; this node's own leases as it holds them."""
        assert self.owners is not None
        view = await self._view("owners", self.owners.read_all)
        view.update((stream_of_key(k), lease.value) for k, lease in self.owners.held.items())
        return view

    async def _view(self, name: str, read: Callable[[], Awaitable[dict[str, dict[str, Any]]]]
                    ) -> dict[str, dict[str, Any]]:
        """A directory read, or the last one when the directory is out of reach."""
        connected = self.nc is not None and self.nc.is_connected
        if connected and time.monotonic() >= self._retry_directory_at:
            try:
                self._views[name] = await asyncio.wait_for(read(), DIRECTORY_READ_S)
                self.directory_stale = False
                return dict(self._views[name])
            except Exception as exc:  # TimeoutError, or nats-py's errors
                log.debug("directory read %s failed: %s", name, exc or type(exc).__name__)
                self._retry_directory_at = time.monotonic() + DIRECTORY_RETRY_S
        self.directory_stale = True
        return dict(self._views.get(name, {}))

    def info(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "connected": bool(self.nc and self.nc.is_connected),
            "disconnects": self.disconnects,
            "directory_stale": self.directory_stale,
            "owned_streams": sorted(self.owners.held) if self.owners else [],
            "publishing": {n: p.info() for n, p in self.publications.items()},
            "subscribed": sorted(self.remote),
            "jobs": sorted(self.running_jobs),
        }
