"""gateway/heap.py's Keeper: long-lived objects leave the full collections' walk, and what
ends while frozen is freed at the next thaw (the leak stays bounded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run(script: str) -> dict:
    """``script``'s last line of output, JSON, from a process of its own (freezing would
    freeze the test runner's heap too)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return json.loads(out.splitlines()[-1])


SCRIPT = """
import gc, json, weakref
from gateway import heap

heap.settle()
now = [0.0]
keeper = heap.Keeper(thaw_after_sessions=3, thaw_after_share=0.25, thaw_every_s=1e9,
                     clock=lambda: now[0])

class Session:  # a session's objects: a reference cycle, a few containers
    def __init__(self):
        self.me = self
        self.state = [{"n": i} for i in range(50)]

def walked():
    return sum(isinstance(o, Session) for o in gc.get_objects())

out = {}
live = [Session() for _ in range(10)]
started = now[0]
out["walked before"] = walked()
now[0] += 1
keeper.step(len(live))
out["walked after a step"] = walked()
refs = [weakref.ref(s) for s in live[:3]]
del live[:2]
keeper.ended(started)
keeper.ended(started)
now[0] += 1
keeper.step(len(live))
out["2 ended, alive"] = sum(r() is not None for r in refs[:2])
del live[0]
keeper.ended(started)
now[0] += 1
keeper.step(len(live))
out["3 ended, alive"] = sum(r() is not None for r in refs)
out["walked at the end"] = walked()
out["alive"] = len(live)
fresh = Session()  # made after the last step: walked until the next one
out["walked with a new one"] = walked()
out["thaws"] = keeper.thaws
out["new one ended before a freeze"] = keeper.ended(now[0]) or keeper.ended_frozen
print(json.dumps(out))
"""


def test_keeper_freezes_sessions_and_frees_the_ended_ones_at_a_thaw():
    got = run(SCRIPT)
    assert got["walked before"] == 10
    assert got["walked after a step"] == 0  # frozen: no full collection walks them
    assert got["2 ended, alive"] == 2  # frozen garbage, below the thaw threshold
    assert got["3 ended, alive"] == 0  # the third ended one made the thaw due
    assert got["thaws"] == 1
    assert got["alive"] == 7 and got["walked at the end"] == 0  # refrozen
    assert got["walked with a new one"] == 1
    assert got["new one ended before a freeze"] == 0  # not frozen: not counted


#: A served gateway's collector: allocation bursts start no full collection; the
#: Keeper's step, run just after a media tick, frees what is left in reference cycles.
POLICY_SCRIPT = """
import asyncio, gc, json, time, weakref
from aiortc import RTCPeerConnection
from gateway import heap

heap.settle()

class Cycle:
    def __init__(self):
        self.me = self

async def main():
    out = {}
    keeper = heap.Keeper(freeze_every_s=0.05)
    pcs = [RTCPeerConnection() for _ in range(6)]
    for pc in pcs:
        pc.addTransceiver("audio")
    gc.collect(1)  # they are old now (as any session of more than a few seconds)
    for pc in pcs:
        await pc.close()
    refs = [weakref.ref(pc) for pc in pcs]
    del pcs, pc
    full = gc.get_stats()[2]["collections"]
    garbage = [Cycle() for _ in range(200_000)]  # a burst: ~1,000 young collections
    del garbage
    out["full collections during the burst"] = gc.get_stats()[2]["collections"] - full
    out["closed, alive before a step"] = sum(r() is not None for r in refs)
    hook = keeper.tick_hook(lambda: 0)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.06)
    ticked = loop.time()
    hook([])
    hook([])  # a second tick before the step ran: one step only
    while keeper.freezes == 0 and loop.time() - ticked < 1:
        await asyncio.sleep(0.001)
    out["step after the tick, s"] = loop.time() - ticked
    out["steps"] = keeper.freezes
    out["closed, alive after a step"] = sum(r() is not None for r in refs)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_full_collections_only_at_the_keepers_step_after_a_tick():
    """CPython would start a full collection at whatever moment allocations reach its
    threshold (during a burst of SIP or API work: 10-60 ms with the loop held); a served
    gateway collects only at the Keeper's steps, right after a media tick, and
    those free what closed peer connections leave in cycles."""
    got = run(POLICY_SCRIPT)
    assert got["full collections during the burst"] == 0
    assert got["closed, alive before a step"] == 6  # cycles: reference counting can't
    assert got["steps"] == 1
    assert got["step after the tick, s"] < 0.5
    assert got["closed, alive after a step"] == 0


#: A due step waits for ``has_room`` (no burst waiting; under a quota, room for the
#: step's CPU), and runs anyway once MAX_DELAY_S overdue.
DEFER_SCRIPT = """
import asyncio, json
from gateway import heap

async def main():
    now = [0.0]
    keeper = heap.Keeper(freeze_every_s=5.0, clock=lambda: now[0])
    room = [False]
    asked = []
    def has_room(cpu_s):
        asked.append(cpu_s)
        return room[0]
    hook = keeper.tick_hook(lambda: 0, has_room)
    out = {}
    now[0] = 4.0
    hook([])
    out["not due: asked"] = len(asked)
    for t in (5.0, 6.0, 9.0):
        now[0] = t
        hook([])
        await asyncio.sleep(0.01)
    out["busy: steps"] = keeper.freezes
    room[0] = True
    hook([])
    await asyncio.sleep(0.01)
    out["room: steps"] = keeper.freezes
    out["asked for the last collection's cpu"] = (asked[-1] == 0.0
                                                  and keeper.last_collection_cpu_s > 0)
    room[0] = False
    keeper.last_garbage = heap.LITTLE_GARBAGE  # the next step collects
    now[0] = keeper.frozen_at + 5.0 + heap.MAX_DELAY_S - 0.1
    hook([])
    await asyncio.sleep(0.01)
    out["busy, not overdue: steps"] = keeper.freezes
    now[0] += 0.2
    hook([])
    await asyncio.sleep(0.01)
    out["overdue: steps"] = keeper.freezes
    keeper.last_garbage = 0  # a step that only freezes does not wait
    now[0] = keeper.frozen_at + 5.0
    hook([])
    await asyncio.sleep(0.01)
    out["freeze only, busy: steps"] = keeper.freezes
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_due_step_waits_for_a_calm_moment_but_not_forever():
    got = run(DEFER_SCRIPT)
    assert got == {"not due: asked": 0, "busy: steps": 0, "room: steps": 1,
                   "asked for the last collection's cpu": True,
                   "busy, not overdue: steps": 1, "overdue: steps": 2,
                   "freeze only, busy: steps": 3}


#: A step collects only when the last collection found garbage enough, or
#: COLLECT_EVERY_S after it; otherwise it only freezes (no walk).
SKIP_SCRIPT = """
import gc, json, weakref
from gateway import heap

heap.settle()
now = [0.0]
keeper = heap.Keeper(thaw_every_s=1e9, clock=lambda: now[0])

class Cycle:
    def __init__(self):
        self.me = self

def garbage(n):
    # n objects in cycles that outlived young collections (as a session's would)
    alive = [Cycle() for _ in range(n)]
    gc.collect(1)  # survivors: old now
    ref = weakref.ref(alive[0])
    del alive
    return ref

out = {}
keeper.step(0)  # the first step collects
out["first"] = keeper.collections
little = garbage(10)
now[0] += 5
keeper.step(0)
out["little: collections"] = keeper.collections
out["little: frozen, not freed"] = little() is not None
now[0] = heap.COLLECT_EVERY_S + 0.1
keeper.step(0)
out["after COLLECT_EVERY_S"] = keeper.collections
lots = garbage(heap.LITTLE_GARBAGE + 10)
now[0] = 2 * heap.COLLECT_EVERY_S + 1
keeper.step(0)
out["lots: collected"] = [keeper.collections, lots() is None,
                          keeper.last_garbage >= heap.LITTLE_GARBAGE]
now[0] += 5
keeper.step(0)
out["after lots: collections"] = keeper.collections
keeper.last_garbage = 0
now[0] += 1
keeper.step(0)  # freeze only
keeper.ended(now[0] + 0.5)  # a session that began after that freeze ended before the next
now[0] += 1
keeper.step(0)
out["a session ended unfrozen: collections"] = keeper.collections
print(json.dumps(out))
"""


def test_steps_only_freeze_while_collections_find_little_garbage():
    got = run(SKIP_SCRIPT)
    assert got["first"] == 1
    assert got["little: collections"] == 1  # the first found nothing: freeze only
    assert got["little: frozen, not freed"]  # waits for a thaw
    assert got["after COLLECT_EVERY_S"] == 2
    assert got["lots: collected"] == [3, True, True]
    assert got["after lots: collections"] == 4  # garbage enough: collect at every step
    assert got["a session ended unfrozen: collections"] == 5  # its cycles: collected
