"""The ctypes layer over libopus: found on a fresh install, round-trips audio, and its
in-band FEC rebuilds a lost packet better than libopus's own concealment does."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import av
import numpy as np
import pytest
from audio_checks import dominant_frequency
from speech import align

from gateway.codecs import libopus

FRAME = 960


def voiced(seconds: float, f0: float = 140.0) -> np.ndarray:
    """A voice-like signal: a glottal pulse train whose pitch glides, through two formant
    resonances, syllables of 200 ms: libopus codes it in SILK or hybrid mode, as speech."""
    from scipy.signal import lfilter

    n = int(48000 * seconds)
    t = np.arange(n) / 48000
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t))
    phase = np.cumsum(pitch / 48000)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    x = pulses
    for formant, bw in ((700, 90), (1200, 110), (2600, 160)):
        r = np.exp(-np.pi * bw / 48000)
        theta = 2 * np.pi * formant / 48000
        x = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 2.5 * t)
    x = x * envelope
    return (x / np.abs(x).max() * 0.5 * 32767).astype(np.int16)


def test_libopus_is_found_in_pyav_wheel_without_a_system_library(monkeypatch):
    """A fresh ``pip install`` has no system libopus (python:3.12-slim): PyAV's wheel
    ships one, and that is what is loaded."""
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv("GATEWAY_LIBOPUS", raising=False)
    candidates = libopus._candidates()
    assert candidates, "no libopus next to PyAV"
    wheel_dirs = {Path(av.__file__).parent.parent / "av.libs", Path(av.__file__).parent / ".libs",
                  Path(av.__file__).parent / ".dylibs"}
    assert Path(candidates[0]).parent in wheel_dirs
    libopus.library.cache_clear()
    try:
        assert libopus.version().startswith("libopus ")
    finally:
        libopus.library.cache_clear()


def test_a_missing_override_falls_back_and_nothing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GATEWAY_LIBOPUS", "/nonexistent/libopus.so")
    libopus.library.cache_clear()
    try:
        assert libopus.available()  # the next candidate
        monkeypatch.setattr(libopus, "_candidates", lambda: ["/nonexistent/libopus.so"])
        libopus.library.cache_clear()
        with pytest.raises(libopus.LibOpusError, match="/nonexistent/libopus.so"):
            libopus.library()
    finally:
        libopus.library.cache_clear()


def test_without_libopus_opus_still_encodes_and_decodes_through_pyav(monkeypatch):
    from gateway.codecs.spec import OPUS
    from gateway.codecs.transcode import Packetizer, PyAVDecoder, make_decoder

    monkeypatch.setattr(libopus, "_candidates", lambda: [])
    libopus.library.cache_clear()
    try:
        packetizer = Packetizer(OPUS, 20, 32000)
        packets = [p for i in range(10) for p in packetizer.encode(np.zeros(960, np.int16))]
        packetizer.set_expected_loss(10)  # nothing to turn on: no error either
        assert len(packets) >= 9 and packetizer.expected_loss == 0
        assert isinstance(make_decoder(OPUS), PyAVDecoder)
    finally:
        libopus.library.cache_clear()


def test_encode_decode_round_trip():
    t = np.arange(48000 * 2)
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t / 48000)).astype(np.int16)
    enc, dec = libopus.OpusEncoder(bitrate=48000, fec=False), libopus.OpusDecoder()
    packets = [enc.encode(tone[i : i + FRAME]) for i in range(0, len(tone), FRAME)]
    assert all(libopus.packet_samples(p) == FRAME for p in packets)
    out = np.concatenate([dec.decode(p) for p in packets])
    assert len(out) == len(tone)
    assert abs(dominant_frequency(out[4800:]) - 440) < 2
    aligned = align(tone, out)
    assert np.corrcoef(tone[4800:], aligned[4800:])[0, 1] > 0.98


def test_fec_flag_and_lbrr_detection_agree_with_libopus():
    pcm = voiced(3.0)
    fec_encoder = libopus.OpusEncoder(fec=True, loss_percent=10)
    plain_encoder = libopus.OpusEncoder(fec=False)
    with_fec = [fec_encoder.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    without = [plain_encoder.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    assert sum(map(libopus.has_lbrr, with_fec)) > 0.6 * len(with_fec)
    assert not any(map(libopus.has_lbrr, without))
    # the pure-Python reading (for libopus < 1.5) matches libopus's own, where it has one
    lib = libopus.library()
    for packet in with_fec + without:
        assert libopus._has_lbrr(lib, packet) == libopus.has_lbrr(packet)


def test_a_packet_leaves_nothing_for_the_cycle_collector():
    """Encoding, decoding and reading the FEC flag run per packet of every stream: a
    reference cycle each (ndarray.ctypes.data_as and ctypes.cast make one) kept the
    collector busy and grew what gateway/heap.py's steps must walk."""
    import gc

    pcm = voiced(1.0)
    encoder, decoder, lib = libopus.OpusEncoder(), libopus.OpusDecoder(), libopus.library()
    gc.collect()
    gc.disable()
    try:
        for i in range(0, len(pcm), FRAME):
            packet = encoder.encode(pcm[i : i + FRAME])
            decoder.decode(packet)
            libopus.has_lbrr(packet)
            libopus._has_lbrr(lib, packet)
        assert gc.collect() == 0
    finally:
        gc.enable()


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = test.astype(np.float64) - ref
    return 10 * np.log10(np.sum(ref**2) / (np.sum(noise**2) + 1e-9))


def test_fec_rebuilds_a_dropped_packet_better_than_plc():
    """Each 7th packet is dropped: rebuilt from the next packet's FEC it is close to what
    decoding it would have given; concealed by PLC it is a guess."""
    pcm = voiced(4.0)
    enc = libopus.OpusEncoder(bitrate=32000, fec=True, loss_percent=15)
    packets = [enc.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    clean = libopus.OpusDecoder()
    reference = [clean.decode(p) for p in packets]
    fec_dec, plc_dec = libopus.OpusDecoder(), libopus.OpusDecoder()
    fec_snr, plc_snr = [], []
    for i, packet in enumerate(packets):
        if i % 7 == 3 and i + 1 < len(packets) and libopus.has_lbrr(packets[i + 1]):
            recovered = fec_dec.recover(packets[i + 1])
            assert recovered is not None and len(recovered) == FRAME
            fec_snr.append(snr_db(reference[i], recovered))
            plc_snr.append(snr_db(reference[i], plc_dec.conceal()))
        else:
            fec_dec.decode(packet)
            plc_dec.decode(packet)
    assert len(fec_snr) >= 15
    fec, plc = float(np.mean(fec_snr)), float(np.mean(plc_snr))
    print(f"FEC {fec:.1f} dB, PLC {plc:.1f} dB over {len(fec_snr)} dropped packets")
    assert fec > 6 and fec > plc + 5, (fec, plc)


def test_recover_without_fec_is_none_and_plc_fades_a_long_loss():
    pcm = voiced(1.0)
    enc = libopus.OpusEncoder(fec=False)
    packets = [enc.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    dec = libopus.OpusDecoder()
    for p in packets[:20]:
        dec.decode(p)
    assert dec.recover(packets[21]) is None  # no LBRR: the caller conceals instead
    level = [np.abs(dec.conceal()).mean() for _ in range(10)]
    assert level[0] > 100 and level[-1] < level[0] / 10  # PLC goes quiet, it does not buzz


def test_invalid_packet_raises():
    with pytest.raises(libopus.LibOpusError):
        libopus.OpusDecoder().decode(b"\xff\xff\xff")
