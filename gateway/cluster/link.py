"""A stream's packets between nodes: the owner publishes, nodes with readers subscribe.

The owner node publishes its shared Opus encoder's packets on the stream's media subject
only while another node wants them (a want beat every second, forgotten after three), so
a stream nobody else reads costs the cluster nothing and a node with no reader for a
stream receives none of its packets. A node with readers (a WebRTC listener, a call, an
RTP output, a recording) and no local sender subscribes and feeds the packets through
the same playout as every RTP ingress (jitter buffer, Opus decoder, concealment) into its
own ring; its egress adapters work as they do for a local sender.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.core.ids import new_id

from ..codecs.spec import OPUS
from ..core.counters import SenderStats
from ..core.ring import RingClosed
from ..core.stream import Stream
from ..egress.encoders import SharedEncoder, shared_encoder
from ..ingress.playout import Playout
from ..models.info import ClusterSenderInfo
from .wire import Subjects, WireError, pack_media, unpack_media

log = logging.getLogger(__name__)

#: Seconds between want beats; the owner stops publishing after WANT_TIMEOUT_S without one.
WANT_EVERY_S = 1.0
WANT_TIMEOUT_S = 3.0


class RemoteSource:
    """A stream's sender that is another node: packets from NATS into the local playout."""

    kind = "cluster"

    def __init__(self, stream: Stream, nc: Client, subjects: Subjects, node: str,
                 max_depth: int = 3, silences: dict[str, int] | None = None) -> None:
        self.id = f"cluster-{new_id(6)}"
        self.stream = stream
        self.nc = nc
        self.subjects = subjects
        self.node = node
        self.playout = Playout({OPUS.payload_type: OPUS}, min_depth=1, max_depth=max_depth)
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.malformed = 0
        self.epochs = 0
        self.silences = 0  # times the packets stopped for more than a second (NATS down...)
        #: The node's count per stream, which outlives this feed (for /metrics).
        self._node_silences = silences if silences is not None else {}
        self._epoch: int | None = None
        self._silent = True
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def last_packet(self) -> float | None:
        return self.playout.last_packet

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.media(self.stream.name),
                                            cb=self._on_packet)
        self._task = asyncio.create_task(self._want(), name=f"want-{self.stream.name}")

    async def _want(self) -> None:
        subject = self.subjects.want(self.stream.name)
        payload = self.node.encode()
        while True:
            if self.nc.is_connected:
                try:
                    await self.nc.publish(subject, payload)
                except Exception as exc:  # reconnecting: the next beat tries again
                    log.debug("want %s: %s", subject, exc)
            await asyncio.sleep(WANT_EVERY_S)
            last = self.playout.last_packet
            if not self._silent and (last is None or time.monotonic() - last > 1.0):
                self._silent = True
                self.silences += 1
                name = self.stream.name
                self._node_silences[name] = self._node_silences.get(name, 0) + 1

    async def _on_packet(self, msg: Msg) -> None:
        try:
            packet = unpack_media(msg.data)
        except WireError as exc:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("stream %s: unreadable cluster packet: %s", self.stream.name, exc)
            return
        if packet.epoch != self._epoch:
            self._epoch = packet.epoch
            self.epochs += 1
        self._silent = False
        self.playout.push(packet.seq, OPUS.payload_type, packet.payload, packet.epoch)

    # -- FrameSource ---------------------------------------------------------------
    def pull(self) -> np.ndarray | None:
        return self.playout.pull()

    def stats(self) -> SenderStats:
        return self.playout.stats()

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.detach(self)  # type: ignore[arg-type]
        if self._task is not None:
            self._task.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # connection closed: the server dropped it already
                pass
        log.info("stream %s: cluster feed ended: %s", self.stream.name, reason)

    def info(self) -> ClusterSenderInfo:
        return ClusterSenderInfo(
            id=self.id, kind="cluster", malformed=self.malformed, publishers_seen=self.epochs,
            silences=self.silences, since=self.started, **vars(self.playout.info()))


class Publication:
    """The owner's side: one stream's shared Opus packets onto its media subject."""

    def __init__(self, stream: Stream, nc: Client, subjects: Subjects, bitrate: int) -> None:
        self.stream = stream
        self.nc = nc
        self.subject = subjects.media(stream.name)
        self.epoch = secrets.randbits(32)
        self.encoder: SharedEncoder = shared_encoder(stream, OPUS, bitrate)
        self._reader = self.encoder.subscribe()
        self.wanted_at = time.monotonic()
        self.wanted_by: dict[str, float] = {}
        self.packets = 0
        self.bytes = 0
        self.errors = 0
        self._task = asyncio.create_task(self._run(), name=f"publish-{stream.name}")

    def want(self, node: str) -> None:
        now = time.monotonic()
        self.wanted_at = now
        self.wanted_by[node] = now

    @property
    def wanted(self) -> bool:
        return time.monotonic() - self.wanted_at < WANT_TIMEOUT_S

    async def _run(self) -> None:
        seq = 0
        self._reader.seek_head()
        try:
            while True:
                _, packet = await self._reader.read()
                data = pack_media(seq, packet.timestamp, self.epoch, packet.payload)  # Opus: 48 kHz
                seq = (seq + 1) & 0xFFFF
                try:
                    await self.nc.publish(self.subject, data)
                except Exception:  # disconnected: nats-py buffers, or refuses when full
                    self.errors += 1
                    continue
                self.packets += 1
                self.bytes += len(data)
        except RingClosed:
            pass

    def stop(self) -> None:
        self._task.cancel()
        self.encoder.unsubscribe(self._reader)

    def info(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "nodes": sorted(n for n, t in self.wanted_by.items() if now - t < WANT_TIMEOUT_S),
            "packets": self.packets,
            "bytes": self.bytes,
        }
