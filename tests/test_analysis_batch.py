"""Analysis at scale (issue 16): the batch of many streams reads exactly what each stream
analysed alone reads; an idle stream's silence added at once leaves exactly the state of
frame-by-frame silence; in a gateway, idle streams are caught up when asked, a stream that
gains a sender is analysed from its first frame, and the silence alarm of a stream whose
sender left is raised on the frame it always was."""

from __future__ import annotations

import math

import numpy as np
import pytest
from speech import recorded
from stepping import send_tone
from test_rtp_output import api

from gateway.core.audio import FRAME_SAMPLES, SILENCE
from gateway.processing.analyzer import (
    SETTLE_FRAMES,
    AnalyzerConfig,
    StreamAnalyzer,
    _voice_event,
    analyse_batch,
    bank_for,
)
from gateway.processing.levels import mean_square, peak_of, power_db

RATE = 48000


def reference_process(analyzer: StreamAnalyzer, index: int, frame: np.ndarray) -> list[dict]:
    """The per-stream analysis as it was before batching (each stream's own numpy calls,
    the loudness meter's own filter, the voice detector's own FFT)."""
    x = frame.astype(np.float64)
    peak = peak_of(frame) / 32768.0
    analyzer.peak_dbfs = peak_db = power_db(peak * peak)
    analyzer.rms_dbfs = rms_db = power_db(mean_square(x))
    analyzer.meter.update(index, peak_db)
    if analyzer.loudness is not None:
        analyzer.loudness.process(x)
    events = []
    event = analyzer.silence.update(index, rms_db)
    if event is not None:
        events.append(event)
    vad = analyzer.vad
    if vad is not None:
        was = vad.active
        if vad.update(index, x, rms_db) != was:
            events.append(_voice_event(vad.active, index))
    analyzer.frames += 1
    analyzer.last_index = index
    return events


def tone(freq: float, dbfs: float, frames: int, phase: int = 0) -> np.ndarray:
    t = (np.arange(frames * FRAME_SAMPLES) + phase) / RATE
    amplitude = 32768 * 10 ** (dbfs / 20) * math.sqrt(2)
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def noise(dbfs: float, frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 32768 * 10 ** (dbfs / 20), frames * FRAME_SAMPLES)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def gaps(signal: np.ndarray, every: int, off: int) -> np.ndarray:
    """``signal`` with ``off`` frames of digital silence every ``every`` frames."""
    out = signal.copy().reshape(-1, FRAME_SAMPLES)
    for start in range(every - off, len(out), every):
        out[start:start + off] = 0
    return out.reshape(-1)


def signals(frames: int) -> dict[str, np.ndarray]:
    speech = recorded()
    speech = np.tile(speech, -(-frames * FRAME_SAMPLES // len(speech)))[: frames * FRAME_SAMPLES]
    return {
        "speech": speech,
        "speech with pauses": gaps(speech, 150, 60),  # alarms and voice stops
        "tone -20 dBFS": tone(440, -20, frames),
        "quiet tone -65 dBFS": tone(1000, -65, frames, 17),
        "noise": noise(-30, frames, 1),
        "silence": np.zeros(frames * FRAME_SAMPLES, np.int16),
        "full scale": np.full(frames * FRAME_SAMPLES, -32768, np.int16),
    }


def snapshots_close(a: dict, b: dict, tolerance: float = 0.011) -> bool:
    for key, value in a.items():
        other = b[key]
        if isinstance(value, float) and isinstance(other, float):
            if abs(value - other) > tolerance:
                return False
        elif value != other:
            return False
    return True


CONFIG = AnalyzerConfig(silence_after_s=1.0)


@pytest.mark.parametrize("kept", [False, True], ids=["state moved each frame", "state kept"])
def test_the_batch_reads_what_each_stream_alone_reads(kept):
    """Through ``analyse_batch`` (each stream's state loaded into a bank row and stored
    back every frame) and through a long-lived bank (the state stays in its rows; a
    snapshot reads it out), every value and event is the per-stream reference's."""
    frames = 700
    analyse = bank_for(CONFIG).analyse if kept else analyse_batch
    streams = signals(frames)
    batched = {name: StreamAnalyzer(CONFIG) for name in streams}
    alone = {name: StreamAnalyzer(CONFIG) for name in streams}
    got_events: dict[str, list] = {name: [] for name in streams}
    want_events: dict[str, list] = {name: [] for name in streams}
    start = {name: 3 * i for i, name in enumerate(streams)}  # streams of different ages
    for n in range(frames):
        items = []
        for name, pcm in streams.items():
            frame = pcm[n * FRAME_SAMPLES:(n + 1) * FRAME_SAMPLES]
            items.append((batched[name], start[name] + n, frame))
            want_events[name] += reference_process(alone[name], start[name] + n, frame)
        for (name, _), events in zip(streams.items(), analyse(items), strict=True):
            got_events[name] += events
        for name in streams:
            got, want = batched[name].snapshot(), alone[name].snapshot()
            assert snapshots_close(got, want), (name, n, got, want)
    assert got_events == want_events
    # the signals exercised what they are for
    assert any(e["type"] == "silence" for e in want_events["speech with pauses"])
    assert any(e["type"] == "voice" for e in want_events["speech"])
    assert alone["tone -20 dBFS"].snapshot()["short_term_lufs"] is not None


@pytest.mark.parametrize("history", ["speech", "speech with pauses", "tone -20 dBFS", "noise"])
@pytest.mark.parametrize("silent_frames", [1, 2, 7, 24, 25, 49, 60, 149, 150, 151, 333, 5000])
def test_idle_silence_added_at_once_is_frame_by_frame_silence(history, silent_frames):
    """After a sender's last frame and SETTLE_FRAMES of silence, ``add_silence`` leaves
    the state (snapshot, events at their frames, and everything that decides the frames
    that follow) of analysing the silence frame by frame."""
    pcm = signals(400)[history]
    one_by_one, at_once = StreamAnalyzer(CONFIG), StreamAnalyzer(CONFIG)
    index = 0
    for n in range(400 + SETTLE_FRAMES):
        frame = pcm[n * FRAME_SAMPLES:(n + 1) * FRAME_SAMPLES] if n < 400 else SILENCE
        assert reference_process(one_by_one, index, frame) == at_once.process(index, frame)
        index += 1
    want = []
    for i in range(index, index + silent_frames):
        want += reference_process(one_by_one, i, SILENCE)
    got = at_once.add_silence(index, index + silent_frames - 1)
    assert got == want
    assert snapshots_close(at_once.snapshot(), one_by_one.snapshot(), 1e-9)
    index += silent_frames
    for n in range(300):  # the sender is back: both go on alike
        frame = pcm[n * FRAME_SAMPLES:(n + 1) * FRAME_SAMPLES]
        assert reference_process(one_by_one, index, frame) == at_once.process(index, frame)
        assert snapshots_close(at_once.snapshot(), one_by_one.snapshot()), n
        index += 1


async def test_an_idle_stream_costs_nothing_until_asked_and_is_then_exact(gateway_factory):
    gw = await gateway_factory(stepped=True, processing={"silence_after_s": 1.0},
                               streams={"declared": ["idle", "busy"]})
    processing = gw.gateway.processing
    idle = processing.streams["idle"]
    tone_sender = send_tone(gw, "busy", 440)
    await gw.step(120)
    # not analysed frame by frame: caught up once, when its alarm fell due (1 s)
    assert idle.idle and idle.analyzer.frames == 50
    assert idle not in processing._awake
    status, body = await api(gw, "GET", "/api/v1/streams/idle")
    assert status == 200
    analysis = body["analysis"]
    head = gw.gateway.registry.get("idle").ring.head
    assert head == 120 and analysis["frames"] == head  # every frame written, when asked
    assert analysis["rms_dbfs"] == -120.0 and analysis["silent"] is True
    assert analysis["silence_alarm"] is True  # 1 s of silence passed long ago
    busy = (await api(gw, "GET", "/api/v1/streams/busy"))[1]["analysis"]
    assert busy["frames"] == head and busy["rms_dbfs"] > -20
    gw.gateway.registry.get("busy").detach(tone_sender)


async def test_a_stream_that_gains_a_sender_is_analysed_from_its_first_frame(gateway_factory):
    gw = await gateway_factory(stepped=True, streams={"declared": ["late"]})
    await gw.step(300)
    stream = gw.gateway.registry.get("late")
    sender = send_tone(gw, "late", 1000)
    await gw.step(1)
    analysis = gw.gateway.processing.streams["late"].analyzer
    analysis.sync()  # its state lives in the bank while it is analysed frame by frame
    assert analysis.frames == stream.ring.head  # the idle silence, then the tone
    assert analysis.last_index == stream.ring.head - 1
    assert analysis.rms_dbfs > -20  # the tone's level, on the very first tick
    stream.detach(sender)


async def test_the_alarm_of_a_stream_whose_sender_left_is_raised_on_its_frame(gateway_factory):
    gw = await gateway_factory(stepped=True, processing={"silence_after_s": 1.0},
                               streams={"declared": ["gone"]})
    events = gw.gateway.events.subscribe("gone")
    stream = gw.gateway.registry.get("gone")
    sender = send_tone(gw, "gone", 440)
    await gw.step(100)
    stream.detach(sender)
    first_silent = stream.ring.head
    await gw.step(49)
    assert all(e["type"] != "silence" for e in drain(events))
    await gw.step(1)  # the 50th silent frame: 1 s
    alarms = [e for e in drain(events) if e["type"] == "silence"]
    assert [(e["state"], e["frame"]) for e in alarms] == [("raised", first_silent + 49)]
    processing = gw.gateway.processing.streams["gone"]
    assert processing.idle  # raised from the idle stream's due time, not frame by frame


def drain(subscription) -> list[dict]:
    got = []
    while not subscription.queue.empty():
        got.append(subscription.queue.get_nowait())
    return got


async def test_a_thousand_declared_streams_start_list_and_stop(gateway_factory):
    names = [f"ch{i:04d}" for i in range(1000)]
    gw = await gateway_factory(stepped=True, streams={"declared": names})
    await gw.step(60)
    status, body = await api(gw, "GET", "/api/v1/streams")
    assert status == 200
    listed = body["streams"] if isinstance(body, dict) else body
    assert sorted(s["name"] for s in listed) == names
    assert all(s["analysis"]["frames"] == 60 and s["analysis"]["rms_dbfs"] == -120.0
               for s in listed)
    assert not gw.gateway.processing._awake  # none analysed frame by frame
    await gw.runner.cleanup()
    assert not gw.gateway.processing.streams


async def test_a_failing_analyser_is_switched_off_and_the_batch_goes_on(gateway_factory,
                                                                       caplog):
    gw = await gateway_factory(stepped=True, streams={"declared": ["good", "bad"]})
    processing = gw.gateway.processing.streams
    processing["bad"].analyzer.loudness._ring = [0.0] * 3  # state the bank cannot load
    senders = {name: send_tone(gw, name, 440) for name in ("good", "bad")}
    await gw.step(15)
    assert processing["bad"].analyzer is None
    assert "stream bad: analysers failed; switched off" in caplog.text
    good = processing["good"].analyzer
    good.sync()
    assert good.frames == 15 and good.rms_dbfs > -20  # not one frame lost to the other
    assert good.loudness.frames == 15  # nor analysed twice
    for name, sender in senders.items():
        gw.gateway.registry.get(name).detach(sender)


async def test_after_a_clock_jump_idle_alarms_keep_their_frame_and_settling_goes_on(
        gateway_factory):
    gw = await gateway_factory(stepped=True, processing={"silence_after_s": 1.0},
                               streams={"declared": ["idle", "left"]})
    registry = gw.gateway.registry
    events = gw.gateway.events.subscribe("idle")
    left = registry.get("left")
    sender = send_tone(gw, "left", 440)
    await gw.step(10)
    left.detach(sender)
    await gw.step(3)
    registry.skip(30)  # the loop stalled 0.6 s: every stream jumps 30 frames
    await gw.step(1)
    settling = gw.gateway.processing.streams["left"]
    # 4 silent frames analysed of the 25 it needs before its silence is added at once
    assert not settling.idle and settling.skipped == 30
    await gw.step(5)
    assert registry.get("idle").ring.head == 49
    assert not [e for e in drain(events) if e["type"] == "silence"]
    await gw.step(1)  # the idle stream's frame 49 (1 s of silence) is written now
    alarms = [e for e in drain(events) if e["type"] == "silence"]
    assert [(e["state"], e["frame"]) for e in alarms] == [("raised", 49)]
    await gw.step(SETTLE_FRAMES)
    assert settling.idle
