"""Codecs: G.711 bit-exact with FFmpeg, clean stateful resampling, every codec round-trips."""

from __future__ import annotations

import av
import numpy as np
import pytest
from audio_checks import dominant_frequency

from gateway.codecs import g711
from gateway.codecs.resample import Resampler
from gateway.codecs.spec import G722, L16, OPUS, PCMA, PCMU, PTIMES, codec_by_name
from gateway.codecs.transcode import Packetizer, make_decoder, make_encoder

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def ffmpeg_encode(name: str, pcm: np.ndarray) -> bytes:
    ctx = av.CodecContext.create(name, "w")
    ctx.sample_rate, ctx.layout, ctx.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in ctx.encode(frame))


def ffmpeg_decode(name: str, data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create(name, "r")
    ctx.sample_rate, ctx.layout = 8000, "mono"
    return np.concatenate([f.to_ndarray().ravel() for f in ctx.decode(av.Packet(data))])


@pytest.mark.parametrize(
    ("name", "encode", "decode"),
    [
        ("pcm_mulaw", g711.ulaw_encode, g711.ulaw_decode),
        ("pcm_alaw", g711.alaw_encode, g711.alaw_decode),
    ],
)
def test_g711_is_bit_exact_with_ffmpeg(name, encode, decode):
    assert encode(ALL_SAMPLES) == ffmpeg_encode(name, ALL_SAMPLES)  # all 65,536 inputs
    codes = bytes(range(256))
    assert np.array_equal(decode(codes), ffmpeg_decode(name, codes))  # all 256 codes


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = test.astype(float) - reference.astype(float)
    return 10 * np.log10(np.sum(reference.astype(float) ** 2) / (np.sum(noise**2) + 1e-9))


def best_alignment_snr(reference: np.ndarray, test: np.ndarray, max_lag: int = 600) -> float:
    return max(
        snr_db(reference[: len(reference) - max_lag], test[lag : lag + len(reference) - max_lag])
        for lag in range(max_lag)
    )


def sine(freq: float, seconds: float, rate: int = 48000, amp: float = 0.5) -> np.ndarray:
    """A sine whose phase is not zero at 20 ms frame edges (1 kHz fits 20 whole cycles)."""
    n = np.arange(int(rate * seconds))
    return (np.sin(2 * np.pi * freq * n / rate + 0.7) * amp * 32767).astype(np.int16)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_resampler_round_trip_is_clean_and_seamless(rate):
    x = sine(1000, 2.0)
    down, up = Resampler(48000, rate), Resampler(rate, 48000)
    chunks = [down.process(x[i : i + 960]) for i in range(0, len(x), 960)]
    assert {len(c) for c in chunks} == {rate // 50}  # exact 20 ms frames, the first one too
    y = np.concatenate([up.process(c) for c in chunks])
    assert len(y) == len(x)
    assert best_alignment_snr(x[4800:], y[4800:]) > 40
    # no discontinuity at frame edges: the sample-to-sample step there is no larger
    # than anywhere else in a clean sine
    steps = np.abs(np.diff(y[4800:].astype(int)))
    edges = np.arange(960 - 1, len(steps), 960)
    assert steps[edges].max() <= steps.max()
    expected_step = 2 * np.pi * 1000 / 48000 * 0.5 * 32767
    assert steps[edges].max() < expected_step * 1.05


def reference_resampler(rate_in: int, rate_out: int):
    """The resampler as numpy computed it before its compiled kernel: every output's
    window gathered, one einsum."""
    from numpy.lib.stride_tricks import sliding_window_view

    from gateway.codecs.resample import _design, _plan

    r = Resampler(rate_in, rate_out)
    bank = _design(r.up, r.down)
    history = np.zeros(bank.shape[1] - 1)

    def process(pcm: np.ndarray) -> np.ndarray:
        nonlocal history
        x = np.concatenate((history, pcm.astype(np.float32)))
        history = x[len(pcm):]
        index, phase = _plan(r.up, r.down, len(pcm))
        y = np.einsum("ij,ij->i", sliding_window_view(x, bank.shape[1])[index], bank[phase])
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    return process


@pytest.mark.parametrize("rates", [(8000, 48000), (48000, 8000), (16000, 48000),
                                   (48000, 16000), (44100, 48000), (48000, 44100)])
def test_the_compiled_resampler_gives_the_reference_samples_exactly(rates):
    rng = np.random.default_rng(11)
    fast, reference = Resampler(*rates), reference_resampler(*rates)
    n = rates[0] // 50
    for k in range(60):  # full-scale noise (clipping) and sines, state carried across
        x = (rng.integers(-32768, 32768, n) if k % 2 else
             np.sin(np.arange(n) * 0.2 + k) * 32767).astype(np.int16)
        assert np.array_equal(fast.process(x), reference(x)), k


def test_per_frame_stateless_resampling_would_click():
    """Proves the edge check above can fail: restart the filter every frame and it clicks."""
    x = sine(1000, 0.5)
    y = np.concatenate(
        [
            Resampler(8000, 48000).process(Resampler(48000, 8000).process(x[i : i + 960]))
            for i in range(0, len(x), 960)
        ]
    )
    steps = np.abs(np.diff(y.astype(int)))
    expected_step = 2 * np.pi * 1000 / 48000 * 0.5 * 32767
    assert steps[np.arange(959, len(steps), 960)].max() > expected_step * 1.5


MIN_SNR = {"PCMU": 30, "PCMA": 30, "G722": 20, "opus": 15, "L16": 60}


@pytest.mark.parametrize(
    "spec", [PCMU, PCMA, G722, OPUS, *L16.values()], ids=lambda s: f"{s.name}-{s.clock_rate}"
)
def test_every_codec_round_trips_a_tone(spec):
    x = sine(440, 2.0, amp=0.3)
    enc, dec = make_encoder(spec, 64000), make_decoder(spec)
    out = []
    for i in range(0, len(x), 960):
        payload = enc.encode(x[i : i + 960])
        if payload:
            out.append(dec.decode(payload))
    y = np.concatenate(out)
    assert abs(dominant_frequency(y[4800:]) - 440) < 440 * 0.01
    snr = best_alignment_snr(x[9600:], y[9600:], max_lag=1200)
    assert snr > MIN_SNR[spec.name], f"{spec.name}: {snr:.1f} dB"


@pytest.mark.parametrize("spec", [PCMU, G722, OPUS, L16[16000]], ids=lambda s: s.name)
def test_packetizer_honours_packet_time(spec):
    for ptime in PTIMES[spec.name.lower()]:
        p = Packetizer(spec, ptime)
        packets = [pkt for _ in range(30) for pkt in p.encode(sine(440, 0.02))]
        assert len(packets) in (30 * 20 // ptime, 30 * 20 // ptime - 1), (spec.name, ptime)
        if spec is not OPUS:
            assert {len(pkt) for pkt in packets} == {len(packets[0])}


def test_codec_lookup_errors_name_the_choices():
    assert codec_by_name("pcmu") is PCMU
    assert codec_by_name("L16", 16000).clock_rate == 16000
    with pytest.raises(ValueError, match="known: opus, PCMU, PCMA, G722, L16"):
        codec_by_name("GSM")
    with pytest.raises(ValueError, match="L16 rate"):
        codec_by_name("L16", 44100)
