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


# -- lost: never negative, exactly the sequence numbers that never arrived ----------------
def test_duplicate_of_a_played_packet_is_not_lost_late_or_a_reason_to_wait():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    assert feed_and_play(jb, range(3)) == [0, 1, 2]
    assert jb.push(1, 1) is Push.DUPLICATE  # e.g. a retransmission after a NACK
    assert (jb.stats.lost, jb.stats.late, jb.stats.duplicate) == (0, 0, 1)
    assert jb.target == 1


def test_packets_reordered_before_the_first_one_played_are_not_negative_loss():
    jb = JitterBuffer(min_depth=2, max_depth=3)
    jb.push(5, 5)
    jb.push(3, 3)  # reordered, nothing counted as a gap yet
    assert jb.stats.lost == 0
    assert [jb.pop(), jb.pop()] == [3, Pop.LOST]
    jb.push(6, 6)
    assert jb.pop() == 5
    assert jb.stats.lost == 1  # 4 never came


def test_reordering_across_a_new_ssrc_is_not_negative_loss():
    jb = JitterBuffer()
    jb.push(100, "a", ssrc=1)
    assert jb.pop() == "a"
    assert jb.push(7, "c", ssrc=2) is Push.RESET  # republished: a new sender
    jb.push(5, "b", ssrc=2)
    assert jb.stats.lost == 0
    assert [jb.pop(), jb.pop(), jb.pop()] == ["b", Pop.LOST, "c"]
    assert jb.stats.lost == 1


def test_a_packet_older_than_the_last_played_is_never_played_after_a_pause():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    assert feed_and_play(jb, [0, 1, 3]) == [0, 1, Pop.LOST]
    assert jb.pop() == 3
    assert [jb.pop() for _ in range(4)] == [Pop.LOST] * 3 + [Pop.EMPTY]  # sender paused
    assert jb.push(2, 2) is Push.LATE  # 2 turns up: it must not play after 3
    assert jb.stats.lost == 0 and jb.stats.late == 1
    jb.push(4, 4)
    jb.push(5, 5)
    assert [got for got in (jb.pop() for _ in range(4)) if got is not Pop.LOST] == [4, 5]


PACKET = st.tuples(st.sampled_from([0, 1, 1, 1, 1, 2]),  # copies sent: lost, once, twice
                   st.one_of(st.integers(0, 12), st.integers(0, 80)))  # ticks in flight
SEGMENT = st.tuples(st.one_of(st.integers(0, 65535), st.integers(65450, 65535)),  # base
                    st.integers(0, 40_000),  # how far a sequence reset jumps
                    st.integers(1, 60).flatmap(lambda n: st.lists(PACKET, min_size=n, max_size=n)),
                    st.integers(0, 10),  # silent ticks before the next segment
                    st.tuples(st.integers(0, 30), st.integers(0, 30)))  # a stall: start, ticks


def arrivals(segments):
    """(tick, ssrc, 16-bit seq, payload) in arrival order. A segment is one sender (an
    SSRC) sending a packet per tick from its base sequence number; every second segment
    restarts the previous sender's sequence far away (a reset without a new SSRC).
    Packets are lost, duplicated, delayed and so reordered; some arrive very late, after
    the next sender started; a stall holds packets back to arrive in one burst. Payloads
    carry the unwrapped sequence number."""
    out, tick, base = [], 0, 0
    for i, (start, far, packets, pause, (stall, stalled)) in enumerate(segments):
        base = (base + 10_000 + far) % 65536 if i % 2 else start
        for k, (copies, delay) in enumerate(packets):
            if stall <= k < stall + stalled:
                delay = stall + stalled - k
            for c in range(copies):
                out.append((tick + k + delay + c, i // 2, (base + k) % 65536, (i, base + k)))
        tick += len(packets) + pause
    return sorted(out, key=lambda a: a[0])


def never_arrived(played: list[int], arrived: set[int]) -> int:
    if not played:
        return 0
    return played[-1] - played[0] + 1 - sum(1 for s in arrived if played[0] <= s <= played[-1])


@settings(max_examples=300, deadline=None)
@given(segments=st.lists(SEGMENT, min_size=1, max_size=4), depth=st.integers(1, 3),
       extra=st.integers(0, 3), window=st.integers(5, 100), keep=st.booleans())
def test_lost_is_never_negative_and_counts_what_never_arrived(segments, depth, extra, window,
                                                              keep):
    """``lost`` is, after every push and pop, the number of sequence numbers between the
    first and the last packet played since the buffer last restarted (summed over
    restarts) that never arrived; nothing plays twice or out of order."""
    jb = JitterBuffer(min_depth=depth, max_depth=depth + extra, window=window,
                      relax_after=5 * window, keep_successor=keep)
    queue = arrivals(segments)
    closed = 0  # lost before the last restart
    arrived: set[int] = set()  # unwrapped sequence numbers since the last restart
    played: list[int] = []
    i, tick = 0, 0
    while i < len(queue):
        while i < len(queue) and queue[i][0] <= tick:
            _, ssrc, seq, payload = queue[i]
            i += 1
            if jb.push(seq, payload, ssrc) is Push.RESET:
                closed += never_arrived(played, arrived)
                arrived, played = set(), []
            arrived.add(payload[1])
            assert jb.stats.lost == closed + never_arrived(played, arrived) >= 0
        got = jb.pop()
        if got not in (Pop.LOST, Pop.EMPTY):
            assert not played or got[1] > played[-1], (got, played)
            played.append(got[1])
        assert jb.stats.lost == closed + never_arrived(played, arrived) >= 0
        tick += 1


# -- keep_successor: a missing packet's successor in reach, for Opus in-band FEC ----------
def play_with_losses(jb, count, lost, late=None):
    """Tick by tick: packet ``seq`` arrives just before tick ``seq`` (after tick
    ``late[seq]`` for the late ones); what each pop gave, and what peek() held then."""
    late = late or {}
    out = []
    for tick in range(count):
        for seq, when in late.items():
            if when == tick:
                jb.push(seq, seq)
        if tick not in lost and tick not in late:
            jb.push(tick, tick)
        got = jb.pop()
        out.append((got, jb.peek() if got is Pop.LOST else None))
    return out


def test_without_fec_a_loss_costs_no_delay_and_no_successor_is_there():
    jb = JitterBuffer(min_depth=1, max_depth=3)
    out = play_with_losses(jb, 50, {20})
    assert out[20] == (Pop.LOST, None)  # 21 has not arrived: nothing to recover from
    assert [got for got, _ in out[21:]] == list(range(21, 50))


def test_a_missing_packet_waits_one_tick_for_its_successor_then_fec_is_possible():
    jb = JitterBuffer(min_depth=1, max_depth=3, keep_successor=True)
    out = play_with_losses(jb, 60, {20, 40})
    # tick 20: neither 20 nor 21 is there: conceal this tick, without moving on
    assert out[20] == (Pop.LOST, None)
    # tick 21: 20 is lost for good, 21 (its FEC) is there
    assert out[21] == (Pop.LOST, 21)
    assert [got for got, _ in out[22:40]] == list(range(21, 39))  # one packet later
    # the second loss finds its successor at once: no further delay
    assert out[41] == (Pop.LOST, 41)
    assert [got for got, _ in out[42:]] == list(range(41, 59))
    assert jb.stats.successor_waits == 1 and jb.stats.lost == 2
    # the delay it reports is the one it keeps: the target and the successor's packet
    assert jb.target == 1 and jb.kept_depth == 2


def test_a_packet_arriving_during_the_wait_is_played_not_dropped():
    jb = JitterBuffer(min_depth=1, max_depth=3, keep_successor=True)
    out = play_with_losses(jb, 40, set(), late={20: 21})  # 20 comes one tick late
    assert out[20] == (Pop.LOST, None)
    assert [got for got, _ in out[21:]] == list(range(20, 39))
    assert (jb.stats.late, jb.stats.lost, jb.target) == (0, 0, 1)


def test_the_extra_packet_is_kept_while_losses_go_on_and_given_back_after():
    jb = JitterBuffer(min_depth=1, max_depth=3, window=50, relax_after=200,
                      keep_successor=True)
    lost = {20, *range(60, 400, 30)}  # a loss every 600 ms, then none
    out = play_with_losses(jb, 1000, lost)
    assert jb.stats.successor_waits == 1
    recovered = [i for i in range(60, 400, 30) if out[i + 1] == (Pop.LOST, i + 1)]
    assert len(recovered) == len(range(60, 400, 30))  # every later loss had its successor
    # 200 ticks after the last loss the packet is trimmed: playing on time again
    assert jb.stats.trimmed == 1
    assert out[-1][0] == 999


def test_a_deferred_trim_waits_for_the_caller_and_takes_the_next_packet():
    jb = JitterBuffer(min_depth=1, max_depth=3, window=10, defer_trim=True)
    jb.push(0, 0)
    played = []
    for seq in range(1, 30):  # one packet early all along: a packet of excess depth
        jb.push(seq, seq)
        played.append(jb.pop())
    assert jb.trim_due and jb.stats.trimmed == 0 and played == list(range(29))
    assert jb.trim() == 29  # taken one tick early, in place of the one just played
    assert not jb.trim_due and jb.stats.trimmed == 1
    assert jb.trim() is None  # nothing in excess any more
    jb.push(30, 30)
    assert jb.pop() == 30 and jb.stats.lost == 0
