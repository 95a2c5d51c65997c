"""Cluster-wide leases in a JetStream key-value bucket: one holder per key, lapsing with it.

A lease is a key created atomically (``create`` refuses an existing key) and renewed by
its holder every ``ttl / 3`` seconds; the bucket's max age removes a key its holder
stopped renewing, so a node that dies loses its leases within ``ttl`` seconds and
another node may take them. Stream ownership (one publisher per stream, cluster-wide)
and once-per-cluster work (automatic recordings, declared outputs, upstream
registrations) are leases in two buckets.

The bucket lives in memory on the NATS servers: it is soft state that holders rebuild.
After a NATS restart that lost it, each holder re-creates its keys at its next renewal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from .wire import stream_key, stream_of_key

log = logging.getLogger(__name__)

#: What nats-py raises when the bucket's stream is gone (a NATS restart without storage).
BUCKET_GONE = (BucketNotFoundError, NotFoundError, NoStreamResponseError)


@dataclass
class Lease:
    key: str
    value: dict[str, Any]
    revision: int = 0
    #: Called once if another holder took the key (after a partition or a lost bucket).
    on_lost: Callable[[str, dict[str, Any]], None] | None = field(default=None, repr=False)


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _decode(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Leases:
    """The leases this node holds in one bucket, and reads of everyone's."""

    def __init__(self, js: JetStreamContext, bucket: str, ttl: float, replicas: int = 1) -> None:
        self.js = js
        self.bucket = bucket
        self.ttl = ttl
        self.replicas = replicas
        self.held: dict[str, Lease] = {}
        self._kv: KeyValue | None = None

    async def open(self) -> KeyValue:
        """The bucket, created if it is missing (first node, or NATS lost it)."""
        config = KeyValueConfig(bucket=self.bucket, history=1, ttl=self.ttl,
                                storage=StorageType.MEMORY, replicas=self.replicas)
        try:
            self._kv = await self.js.create_key_value(config)
        except BadRequestError:  # exists with another config (an older ttl): use it as it is
            self._kv = await self.js.key_value(self.bucket)
        return self._kv

    async def _bucket(self) -> KeyValue:
        return self._kv if self._kv is not None else await self.open()

    async def acquire(self, name: str, value: dict[str, Any],
                      on_lost: Callable[[str, dict[str, Any]], None] | None = None
                      ) -> dict[str, Any] | None:
        """Take the lease: None if this node now holds it, else the holder's value."""
        key = stream_key(name)
        if key in self.held:
            self.held[key].value = value
            return None
        kv = await self._bucket()
        for _ in range(3):
            try:
                revision = await kv.create(key, _encode(value))
                break
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue  # lapsed between the two calls: create again
            holder = _decode(entry.value) or {}
            if holder.get("node") != value.get("node") or entry.revision is None:
                return holder
            try:  # this node's own entry, left by a release still under way: keep it
                revision = await kv.update(key, _encode(value), last=entry.revision)
                break
            except KeyWrongLastSequenceError:
                continue
        else:
            return await self.read(name) or {"node": "?"}
        self.held[key] = Lease(key, value, revision, on_lost)
        return None

    async def release(self, name: str) -> None:
        lease = self.held.pop(stream_key(name), None)
        if lease is None:
            return
        try:
            kv = await self._bucket()
            await kv.delete(lease.key, last=lease.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError, *BUCKET_GONE):
            pass  # already someone else's, or gone

    async def read(self, name: str) -> dict[str, Any] | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(stream_key(name))
        except (KeyNotFoundError, NotFoundError):
            return None
        return _decode(entry.value)

    async def read_all(self) -> dict[str, dict[str, Any]]:
        """Every holder's value. The keys come from the bucket's stream info (one request;
        ``kv.keys()`` would create and delete a consumer on every read)."""
        kv = await self._bucket()
        prefix = f"$KV.{self.bucket}."
        info = await self.js.stream_info(f"KV_{self.bucket}", subjects_filter=prefix + ">")
        out: dict[str, dict[str, Any]] = {}
        for subject in info.state.subjects or {}:
            key = subject[len(prefix):]
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, NotFoundError):
                continue
            value = _decode(entry.value)
            if value is not None:
                out[stream_of_key(key)] = value
        return out

    async def renew(self) -> list[str]:
        """Renew every held lease; the names of those another holder took."""
        lost: list[str] = []
        for lease in list(self.held.values()):
            kv = await self._bucket()
            try:
                lease.revision = await kv.update(lease.key, _encode(lease.value),
                                                 last=lease.revision)
                continue
            except KeyWrongLastSequenceError:
                pass
            except BUCKET_GONE:
                self._kv = None  # NATS lost the bucket: make it again below
                kv = await self._bucket()
            try:  # expired (we were cut off longer than ttl) or the bucket is new
                lease.revision = await kv.create(lease.key, _encode(lease.value))
                log.info("lease %s/%s re-created", self.bucket, lease.key)
                continue
            except KeyWrongLastSequenceError:
                holder = await self.read(stream_of_key(lease.key)) or {}
            del self.held[lease.key]
            name = stream_of_key(lease.key)
            lost.append(name)
            log.warning("lease %s/%s lost to %s", self.bucket, name, holder.get("node", "?"))
            if lease.on_lost is not None:
                lease.on_lost(name, holder)
        return lost


class NodeBoard:
    """Each node's load and reachability, written every beat, lapsing with the node."""

    def __init__(self, js: JetStreamContext, bucket: str, ttl: float, replicas: int = 1) -> None:
        self.board = Leases(js, bucket, ttl, replicas)

    async def open(self) -> None:
        await self.board.open()

    async def post(self, node: str, value: dict[str, Any]) -> None:
        kv = await self.board._bucket()
        try:
            await kv.put(stream_key(node), _encode(value))
        except BUCKET_GONE:
            self.board._kv = None
            kv = await self.board._bucket()
            await kv.put(stream_key(node), _encode(value))

    async def nodes(self) -> dict[str, dict[str, Any]]:
        return await self.board.read_all()
