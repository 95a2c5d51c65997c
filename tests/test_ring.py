"""Ring buffer: late join, overrun accounting, many readers, a writer never blocked."""

import asyncio

import pytest

from gateway.core.ring import Ring, RingClosed


def test_late_joiner_starts_at_live_head():
    ring: Ring[int] = Ring(8)
    for i in range(5):
        ring.write(i)
    reader = ring.reader()
    assert reader.read_nowait() is None
    ring.write(5)
    assert reader.read_nowait() == (5, 5)


def test_overrun_reader_jumps_to_head_and_counts_skips():
    ring: Ring[int] = Ring(4)
    reader = ring.reader()
    for i in range(10):  # reader consumed nothing: 10 behind, capacity 4
        ring.write(i)
    assert reader.read_nowait() is None
    assert reader.skipped == 10
    assert reader.cursor == ring.head
    ring.write(10)
    assert reader.read_nowait() == (10, 10)


def test_reader_exactly_capacity_behind_loses_nothing():
    ring: Ring[int] = Ring(4)
    reader = ring.reader()
    for i in range(4):
        ring.write(i)
    assert [reader.read_nowait()[1] for _ in range(4)] == [0, 1, 2, 3]
    assert reader.skipped == 0


async def test_many_readers_each_get_every_item_in_order():
    ring: Ring[int] = Ring(16)
    readers = [ring.reader() for _ in range(50)]

    async def consume(r):
        return [(await r.read())[1] for _ in range(100)]

    tasks = [asyncio.create_task(consume(r)) for r in readers]
    for i in range(100):
        ring.write(i)
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks)
    assert all(result == list(range(100)) for result in results)
    assert all(r.skipped == 0 for r in readers)


async def test_stalled_reader_never_blocks_writer_or_others():
    ring: Ring[int] = Ring(8)
    stalled = ring.reader()  # never reads
    live = ring.reader()
    got = []

    async def consume():
        while len(got) < 1000:
            got.append((await live.read())[1])

    task = asyncio.create_task(consume())
    for i in range(1000):
        index = ring.write(i)  # synchronous: returns immediately whatever readers do
        assert index == i
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 1)
    assert got == list(range(1000))
    assert stalled.read_nowait() is None
    assert stalled.skipped == 1000
    assert live.skipped == 0


async def test_readers_wake_on_write_without_polling():
    ring: Ring[str] = Ring(4)
    reader = ring.reader()
    task = asyncio.create_task(reader.read())
    await asyncio.sleep(0.01)
    assert not task.done()
    ring.write("x")
    assert await asyncio.wait_for(task, 0.1) == (0, "x")


async def test_cancelled_reader_does_not_disturb_other_waiters():
    ring: Ring[int] = Ring(4)
    a, b = ring.reader(), ring.reader()
    ta = asyncio.create_task(a.read())
    tb = asyncio.create_task(b.read())
    await asyncio.sleep(0)
    ta.cancel()
    await asyncio.sleep(0)
    ring.write(7)
    assert await asyncio.wait_for(tb, 0.1) == (0, 7)


async def test_close_ends_waiting_readers():
    ring: Ring[int] = Ring(4)
    reader = ring.reader()
    task = asyncio.create_task(reader.read())
    await asyncio.sleep(0)
    ring.close()
    with pytest.raises(RingClosed):
        await asyncio.wait_for(task, 0.1)
    with pytest.raises(RingClosed):
        ring.write(1)


def test_reader_count_tracks_open_readers():
    ring: Ring[int] = Ring(4)
    r = ring.reader()
    assert ring.readers == 1
    r.close()
    r.close()
    assert ring.readers == 0


def test_skips_are_summed_by_reader_kind_and_kept_when_a_reader_closes():
    ring: Ring[int] = Ring(4)
    slow, other = ring.reader(kind="webrtc"), ring.reader(kind="webrtc")
    encoder = ring.reader(kind="encoder")
    for i in range(10):
        ring.write(i)
    assert slow.read_nowait() is None and encoder.read_nowait() is None  # 10 skipped each
    assert ring.skipped_by_kind() == {"webrtc": 10, "encoder": 10}
    slow.close()
    slow.close()  # twice: counted once
    other.close()  # it never read, so it never noticed its overrun: 0
    assert ring.skipped_by_kind() == {"webrtc": 10, "encoder": 10}


def test_advance_moves_readers_at_the_head_along_and_keeps_the_lag_of_the_others():
    ring: Ring[int] = Ring(8)
    current, behind = ring.reader(), ring.reader()
    for i in range(3):
        ring.write(i)
    for _ in range(3):
        current.read_nowait()
    behind.read_nowait()  # 2 behind
    ring.advance(5, -1)
    assert ring.head == 8 and current.lag == 0 and behind.lag == 7
    assert current.skipped == behind.skipped == 0
    assert [behind.read_nowait()[1] for _ in range(7)] == [1, 2, -1, -1, -1, -1, -1]
    ring.advance(100, -1)  # longer than the ring: every slot is the filler
    assert ring.head == 108 and current.lag == 0
    assert ring.write(7) == 108 and current.read_nowait() == (108, 7)


def test_a_driven_reader_reads_each_item_in_the_writers_call_and_sees_the_end():
    ring: Ring[int] = Ring(4)
    reader = ring.reader()
    got: list[int] = []
    ended = []

    def pump() -> None:
        try:
            while (item := reader.read_nowait()) is not None:
                got.append(item[1])
        except RingClosed:
            ended.append(True)

    ring.drive(pump)
    for i in range(10):
        ring.write(i)
        assert got == list(range(i + 1))  # no loop turn: read before write() returned
    assert reader.skipped == 0 and ring.behind() == 0
    ring.close()
    assert ended == [True]
    ring.undrive(pump)
    reader = ring.reader()  # a consumer driven after the end hears of it at once
    ring.drive(pump)
    assert ended == [True, True]


def test_a_failing_driven_reader_costs_the_writer_and_the_others_nothing(caplog):
    ring: Ring[int] = Ring(4)
    good = ring.reader()
    got: list[int] = []

    def broken() -> None:
        raise ValueError("consumer bug")

    def pump() -> None:
        while (item := good.read_nowait()) is not None:
            got.append(item[1])

    ring.drive(broken)
    ring.drive(pump)
    assert ring.write(0) == 0 and ring.write(1) == 1
    assert got == [0, 1]
    assert "consumer bug" in caplog.text
    ring.undrive(broken)
    ring.undrive(pump)
    ring.write(2)
    assert got == [0, 1]  # undriven: no longer called
    assert good.lag == 1
