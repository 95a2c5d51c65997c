"""Media clocks: the stepped clock ticks every stream once per step and lets every consumer
read the frame before the next; the real-time clock skips a stall instead of bursting."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from audio_checks import step_tone
from stepping import GeneratedSender

from gateway.codecs.spec import PCMU
from gateway.core.clock import Phase, RealTimeClock, SteppedClock
from gateway.core.registry import StreamRegistry
from gateway.egress.encoders import shared_encoder


async def stepped_registry() -> tuple[StreamRegistry, SteppedClock]:
    clock = SteppedClock(settle_timeout=0.3)
    registry = StreamRegistry(clock=clock)
    registry.start()
    await asyncio.sleep(0)  # the clock task starts
    return registry, clock


async def test_each_step_writes_one_frame_per_stream_and_consumers_read_it_before_the_next():
    registry, clock = await stepped_registry()
    a, b = registry.get_or_create("a"), registry.get_or_create("b")
    sender = GeneratedSender(step_tone([440.0]))
    a.attach(sender)  # type: ignore[arg-type]
    encoder = shared_encoder(a, PCMU)
    packets = encoder.subscribe()
    got: list[tuple[int, int]] = []

    async def consume() -> None:  # a listener: may only see packets in order, none skipped
        while True:
            index, packet = await packets.read()
            got.append((index, packet.timestamp))
            # between two ticks it always had time to catch up
            assert encoder.packets.head == index + 1

    task = asyncio.create_task(consume())
    await clock.step(120)  # more than the rings hold (50): nothing may be overrun
    assert a.ring.head == b.ring.head == 120 == registry.ticks
    assert sender.index == 120 and a.frames_from_sender == 120 and b.frames_silence == 120
    assert [i for i, _ in got] == list(range(120))
    assert [ts for _, ts in got] == [160 * i for i in range(120)]  # 8 kHz, 20 ms apart
    assert packets.skipped == 0 and encoder.frames_encoded == 120
    task.cancel()
    await registry.stop()


async def test_a_reader_that_never_reads_fails_the_step_naming_its_stream():
    registry, clock = await stepped_registry()
    registry.get_or_create("quiet")
    stuck = registry.get_or_create("stuck").ring.reader()
    with pytest.raises(TimeoutError, match=r"tick 1: a reader of stream\(s\) stuck "):
        await clock.step(1)
    await clock.step(60, stalled=[stuck])  # a reader stalled on purpose is not waited for
    assert stuck.lag == 61 and registry.get("quiet").ring.head == 61
    await registry.stop()


async def test_step_before_start_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not running"):
        await SteppedClock().step(1)


class Recorded:
    """A clock's target that notes when each period's local tick ran, and the skips."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.skips: list[int] = []

    def tick(self, phase=Phase.ALL) -> None:
        if phase is not Phase.REMOTE:
            self.ticks.append(asyncio.get_running_loop().time())

    def skip(self, frames: int) -> None:
        self.skips.append(frames)

    def behind(self, ignore=()) -> list[str]:
        return []


async def test_real_time_clock_ticks_every_20_ms_and_skips_a_stall():
    target = Recorded()
    ticks, skips = target.ticks, target.skips
    clock = RealTimeClock()
    task = asyncio.create_task(clock.run(target))
    await asyncio.sleep(0.3)
    before, late = len(ticks), clock.late_ticks
    assert before + late >= 12
    assert abs(float(np.median(np.diff(ticks))) - 0.020) < 0.002
    time.sleep(0.3)  # the loop is held: 15 ticks fall due at once
    await asyncio.sleep(0.1)
    assert clock.late_ticks - late >= 14
    assert sum(skips) == clock.late_ticks  # the streams' timelines jump with the clock
    after = ticks[before:]
    burst = sum(1 for t in after if t - after[0] < 0.005)
    assert burst <= 2, f"{burst} ticks at once after the stall: it was played out, not skipped"
    task.cancel()


async def test_a_tick_that_falls_due_runs_ahead_of_the_callbacks_already_queued():
    """asyncio runs every callback queued when its turn began before a timer that fell
    due meanwhile: forty 1 ms callbacks queued at once would hold a tick ~40 ms. The
    clock's tick waits only for the callback that is running."""
    loop = asyncio.get_running_loop()
    target = Recorded()
    ticked = target.ticks

    def busy() -> None:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass

    clock = RealTimeClock()
    task = asyncio.create_task(clock.run(target))
    lateness: list[float] = []
    for _ in range(5):
        await asyncio.sleep(0.001)
        while clock.until_tick() > 0.005:  # 5 ms before a tick ...
            await asyncio.sleep(0.001)
        due = loop.time() + clock.until_tick()
        for _ in range(40):  # ... a queue of 40 ms of callbacks, all ready at once
            loop.call_soon(busy)
        seen = len(ticked)
        while len(ticked) == seen:
            await asyncio.sleep(0.001)
        lateness.append(ticked[seen] - due)
    task.cancel()
    assert max(lateness) < 0.010, lateness  # a 1 ms callback, not the 40 ms queue


async def test_periods_start_on_the_wall_clock_grid_and_remote_streams_are_written_later():
    """Two nodes' clocks tick at the same wall-clock moments, and a stream fed by another
    node is written REMOTE_PHASE_S into the period: the other node's frame of the same
    period has crossed NATS by then (docs/cluster.md, the remote hop)."""
    calls: list[tuple[Phase, float]] = []

    class Target:
        def tick(self, phase=Phase.ALL) -> None:
            calls.append((phase, time.time()))

        def skip(self, frames: int) -> None:
            pass

        def behind(self, ignore=()) -> list[str]:
            return []

    # a wall clock 7.3 ms past the grid when the loop's clock starts, like another node's
    skew = 0.0073 - (time.time() % 0.02)
    clock = RealTimeClock(wall=lambda: time.time() + skew)
    task = asyncio.create_task(clock.run(Target()))
    await asyncio.sleep(0.5)
    task.cancel()
    local = [t + skew for p, t in calls if p is Phase.LOCAL]
    remote = [t + skew for p, t in calls if p is Phase.REMOTE]
    assert len(local) >= 20 and abs(len(local) - len(remote)) <= 1
    phases = [((t + 0.01) % 0.02) - 0.01 for t in local]  # wall-clock phase, -10..10 ms
    assert float(np.median(np.abs(phases))) < 0.002, phases
    gaps = [r - t for t, r in zip(local, remote, strict=False)]
    assert 0.009 < float(np.median(gaps)) < 0.013, gaps


async def test_a_remote_fed_stream_is_written_at_the_remote_phase_once_a_period():
    registry = StreamRegistry(clock=SteppedClock())
    local, remote = registry.get_or_create("local"), registry.get_or_create("remote")

    class Source:
        def __init__(self, kind: str) -> None:
            self.kind, self.id = kind, kind

        def pull(self):
            return None

        def stats(self):
            return None

    remote.attach(Source("cluster"))
    registry.tick(Phase.LOCAL)
    assert (local.ring.head, remote.ring.head) == (1, 0)
    registry.tick(Phase.REMOTE)
    assert (local.ring.head, remote.ring.head) == (1, 1)
    # its sender changes between the phases: still one frame in each period
    registry.tick(Phase.LOCAL)
    remote.detach(remote.source)
    registry.tick(Phase.REMOTE)
    assert (local.ring.head, remote.ring.head) == (2, 2)
    registry.tick(Phase.LOCAL)
    remote.attach(Source("cluster"))
    registry.tick(Phase.REMOTE)
    assert (local.ring.head, remote.ring.head) == (3, 3)
    registry.tick()  # a stepped clock writes both phases at once
    assert (local.ring.head, remote.ring.head) == (4, 4) and registry.ticks == 4


async def test_after_a_clock_jump_timestamps_follow_real_time_and_nobody_counts_a_skip():
    """A stall the clock jumps over must move every stream's timeline with it: if RTP
    timestamps went on from where they were, every listener would hear the stream that
    much later for good (its jitter buffer places packets by timestamp)."""
    registry, clock = await stepped_registry()
    stream = registry.get_or_create("a")
    stream.attach(GeneratedSender(step_tone([440.0])))  # type: ignore[arg-type]
    encoder = shared_encoder(stream, PCMU)
    packets = encoder.subscribe()
    got: list[int] = []

    async def consume() -> None:
        while True:
            _, packet = await packets.read()
            got.append(packet.timestamp)

    task = asyncio.create_task(consume())
    await clock.step(3)
    registry.skip(12)  # what RealTimeClock does after a 240 ms stall
    await clock.step(2)
    assert got == [0, 160, 320, 15 * 160, 16 * 160]
    assert stream.ring.head == 17 and packets.skipped == 0 and encoder.frames_encoded == 5
    task.cancel()
    await registry.stop()
