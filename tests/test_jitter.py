"""Sans-IO jitter buffer: order, loss, bounded depth, adaptation, restarts."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rtp.jitter import JitterBuffer, Pop, Push


def feed_and_play(jb, seqs):
    out = []
    for seq in seqs:
        jb.push(seq % 65536, seq)
        out.append(jb.pop())
    return out


def test_in_order_packets_play_in_order_with_one_packet_prefetch():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    assert jb.pop() is Pop.EMPTY
    assert feed_and_play(jb, range(10)) == list(range(10))
    assert jb.depth == 0


def test_reordered_packet_within_depth_is_put_back_in_order():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    for seq in (0, 2, 1, 3):
        jb.push(seq, seq)
    assert [jb.pop() for _ in range(4)] == [0, 1, 2, 3]


def test_lost_packet_is_concealed_and_delay_does_not_grow():
    """Real timing: each tick pops after that tick's packet would have arrived."""
    jb = JitterBuffer(min_depth=1, max_depth=3)
    out = []
    for seq in range(200):
        if seq != 20:  # packet 20 is lost on the network
            jb.push(seq, seq)
        out.append(jb.pop())
    assert out[20] is Pop.LOST
    assert out[21:] == list(range(21, 200))  # no extra tick of delay after the loss
    assert jb.stats.lost == 1 and jb.stats.concealed == 1
    assert jb.depth == 0 and jb.target == 1


def test_lost_packet_found_when_successor_is_already_buffered():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    for seq in (0, 1, 3, 4):
        jb.push(seq, seq)
    assert [jb.pop() for _ in range(4)] == [0, 1, Pop.LOST, 3]
    assert jb.stats.lost == 1


def test_late_packet_is_dropped_and_raises_target():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    jb.push(0, 0)
    assert jb.pop() == 0
    assert jb.pop() is Pop.LOST  # 1 is not there at its tick: concealed
    assert jb.push(1, 1) is Push.LATE
    assert jb.stats.late == 1 and jb.stats.lost == 0
    assert jb.target == 2
    jb.push(2, 2)
    assert jb.pop() is Pop.LOST  # one stretched tick: the delay grows by one packet
    assert jb.pop() == 2


def test_duplicates_are_ignored():
    jb = JitterBuffer()
    assert jb.push(5, "a") is Push.ACCEPTED
    assert jb.push(5, "b") is Push.DUPLICATE
    assert jb.pop() == "a"


def test_paused_sender_stops_playout_then_restarts_cleanly():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    jb.push(0, 0)
    assert jb.pop() == 0
    # a few ticks are concealed (could be loss), then playout stops
    assert [jb.pop() for _ in range(4)] == [Pop.LOST] * 3 + [Pop.EMPTY]
    assert jb.pop() is Pop.EMPTY
    assert jb.stats.underruns == 1
    jb.push(1, 1)  # the sender resumes where it left off
    assert jb.pop() == 1
    jb.push(2, 2)
    assert jb.pop() == 2
    assert jb.stats.lost == 0


def test_sequence_wraparound():
    jb = JitterBuffer()
    out = feed_and_play(jb, range(65530, 65545))
    assert out == list(range(65530, 65545))
    assert jb.stats.lost == 0


def test_new_ssrc_restarts():
    jb = JitterBuffer()
    jb.push(100, "a", ssrc=1)
    assert jb.pop() == "a"
    assert jb.push(9000, "b", ssrc=2) is Push.RESET
    assert jb.pop() == "b"


def test_burst_is_bounded():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    for seq in range(100):  # a burst of 100 packets, nothing played
        jb.push(seq, seq)
    assert jb.depth <= 6
    assert jb.stats.trimmed >= 94


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.booleans()), max_size=300))
def test_any_arrival_pattern_keeps_depth_bounded(events):
    jb = JitterBuffer(min_depth=1, max_depth=3)
    for seq, pop in events:
        jb.push(seq, seq)
        if pop:
            jb.pop()
        assert jb.depth <= 2 * jb.max_depth
        assert jb.min_depth <= jb.target <= jb.max_depth


def simulate(ppm: float, seconds: float, jitter_ms: float = 0.0, seed: int = 1):
    """Sender clock off by ``ppm`` against the 20 ms tick; returns (buffer, max depth)."""
    import random

    rng = random.Random(seed)
    jb = JitterBuffer(min_depth=1, max_depth=3)
    period = 0.020 * (1 - ppm * 1e-6)  # a fast sender (+ppm) sends more often
    arrivals = []
    t, seq = 0.003, 0
    while t < seconds:
        arrivals.append((t + abs(rng.gauss(0, jitter_ms / 1000)), seq))
        t += period
        seq += 1
    arrivals.sort()
    max_depth, i, tick = 0, 0, 0.0
    while tick < seconds:
        while i < len(arrivals) and arrivals[i][0] <= tick:
            jb.push(arrivals[i][1] % 65536, arrivals[i][1])
            i += 1
        jb.pop()
        max_depth = max(max_depth, jb.depth)
        tick += 0.020
    return jb, max_depth


def test_sender_clock_drift_over_an_hour_neither_grows_nor_starves():
    for ppm in (+200, -200):
        jb, max_depth = simulate(ppm, 3600, jitter_ms=2)
        s = jb.stats
        assert max_depth <= 2 * jb.max_depth
        assert s.played / s.received > 0.998, (ppm, s)
        assert s.underruns == 0, (ppm, s)
        # drift is absorbed by trimming (fast sender) or concealment (slow sender):
        # ~0.72 s per hour = ~36 packets, not more than a few times that
        assert s.trimmed + s.concealed < 150, (ppm, s)
