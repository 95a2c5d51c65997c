"""Publishers and listeners that come and go leave nothing behind in the gateway: no
session, no peer connection, no thread (issue 11: threads and memory grew with churn)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref

from aiortc import RTCPeerConnection
from audio_checks import assert_tone
from test_webrtc_relay import sound

from gateway.webrtc.client import Listener, Publisher, ToneTrack, WebRTCClient

ROUNDS = 5
LISTENERS = 5
#: Worker threads asyncio's default executor may keep (aiortc encodes the test's
#: publisher there); the only threads allowed to outlive a round.
EXECUTOR_PREFIXES = ("asyncio_", "ThreadPoolExecutor-")


def native_threads() -> int:
    """Threads of this process that Python did not start: FFmpeg's, OpenBLAS's..."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def live_peer_connections(before: weakref.WeakSet) -> list[RTCPeerConnection]:
    return [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection) and o not in before]


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_churn_leaves_no_session_peer_connection_or_thread(gateway_factory):
    """5 rounds of a publisher and 5 listeners, each heard; then no session or peer
    connection is left, no worker thread beyond the executor's, and FFmpeg never started
    its per-encoder thread pools (they stayed until a garbage collection freed the encoder,
    and a closed session stayed for connect_timeout_s)."""
    gw = await gateway_factory()
    gc.collect()
    pcs_before = weakref.WeakSet(o for o in gc.get_objects() if isinstance(o, RTCPeerConnection))
    threads_before = set(threading.enumerate())
    native_before = native_threads()
    sessions: weakref.WeakSet = weakref.WeakSet()
    seen: set[str] = set()
    native_peak = 0

    for _ in range(ROUNDS):
        pub = Publisher(gw.url, "churn", ToneTrack(440))
        await pub.negotiate()
        listeners = [Listener(gw.url, "churn") for _ in range(LISTENERS)]
        await asyncio.gather(*(lis.negotiate() for lis in listeners))
        await asyncio.gather(*(c.connected() for c in [pub, *listeners]))
        for lis in listeners:
            assert_tone(await sound(lis, 0.5), 440, min_seconds=0.5)
        sessions.update(gw.gateway.sessions.values())
        seen.update(gw.gateway.sessions)
        native_peak = max(native_peak, native_threads())
        for client in [pub, *listeners]:
            assert await client.delete() == 200
        await until(lambda: not gw.gateway.sessions)
        del pub, listeners, client, lis

    assert len(seen) == ROUNDS * (1 + LISTENERS)
    # FFmpeg started no thread pool for any encoder (it gave each one a thread per core)
    assert native_peak <= native_before, f"{native_peak - native_before} FFmpeg threads"
    gc.collect()
    survivors = [f"{s.role} {s.id}: {s.close_reason!r}" for s in sessions]
    assert not survivors, f"{len(survivors)} closed sessions still alive: {survivors[:3]}"
    pcs = live_peer_connections(pcs_before)
    assert not pcs, f"{len(pcs)} peer connections still alive"
    await asyncio.sleep(0.2)  # threads told to stop have ended
    left = [t.name for t in set(threading.enumerate()) - threads_before
            if not t.name.startswith(EXECUTOR_PREFIXES)]
    assert not left, f"threads left running: {left}"
    assert native_threads() <= native_before


async def test_session_that_never_connects_is_closed_and_released(gateway_factory):
    """The connect timeout still closes a session whose peer never answers ICE."""
    gw = await gateway_factory(webrtc={"host_addresses": ["127.0.0.1"],
                                       "connect_timeout_s": 1.0})
    client = WebRTCClient(gw.url, "whep", "quiet")
    client.pc.addTransceiver("audio", direction="recvonly")
    await client.negotiate()
    await client.pc.close()  # the client goes away before ICE: nobody answers the checks
    session = next(iter(gw.gateway.sessions.values()))
    ref = weakref.ref(session)
    await until(session.closed.is_set, timeout=3.0)
    assert session.close_reason == "not connected after 1 s"
    await until(lambda: not gw.gateway.sessions)
    del session, client
    gc.collect()
    assert ref() is None, "a closed session is still held"


async def test_closed_sessions_are_freed_without_the_cycle_collector(gateway_factory):
    """A closed WHIP or WHEP session, its peer connection and transports are freed by
    reference counting alone (gateway/heap.py freezes long-lived sessions: a frozen
    cycle is never collected). Before, each closed session left ~550 objects in cycles
    through the event handlers of aiortc's peer connection and transports."""
    gw = await gateway_factory()
    pub = Publisher(gw.url, "cycles", ToneTrack(440))
    await pub.negotiate()
    lis = Listener(gw.url, "cycles")
    await lis.negotiate()
    await asyncio.gather(pub.connected(), lis.connected())
    assert_tone(await sound(lis, 0.5), 440, min_seconds=0.5)
    refs = []
    for session in gw.gateway.sessions.values():
        dtls = session.pc.getTransceivers()[0].sender.transport
        refs += [weakref.ref(x) for x in (session, session.pc, dtls, dtls.transport)]
    assert len(refs) == 8
    del session, dtls
    gc.collect()
    gc.disable()  # from here on, only reference counting frees anything
    try:
        for client in (lis, pub):
            assert await client.delete() == 200
        await until(lambda: not gw.gateway.sessions)
        await asyncio.sleep(0.2)  # the handlers the close scheduled have run
        alive = [type(r()).__name__ for r in refs if r() is not None]
        assert not alive, f"held in reference cycles after close: {alive}"
    finally:
        gc.enable()
        await lis.pc.close()
        await pub.pc.close()
