"""A small ctypes layer over libopus for what PyAV does not expose: in-band FEC and PLC.

FFmpeg's Opus decoder has no way to decode a lost packet from its successor's in-band
FEC (LBRR) or to ask libopus for its own concealment, so Opus ingress decodes with
libopus directly. The library is looked up where a plain ``pip install`` puts one: the
copy inside PyAV's wheel (``av.libs/`` on Linux, ``av/.dylibs`` on macOS, ``av.libs``
DLLs on Windows) first, the same build everywhere and new enough to have
``opus_packet_has_lbrr``; then the system's (``ctypes.util.find_library``).
``GATEWAY_LIBOPUS`` names a file to use instead.

The encoder is here too: PyAV cannot switch in-band FEC or the expected loss
(``OPUS_SET_INBAND_FEC``, ``OPUS_SET_PACKET_LOSS_PERC``) between packets, which the shared
encoder needs to follow its listeners' receiver reports. This module is the one place
that loads libopus and declares its functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import cache
from pathlib import Path

import numpy as np

RATE = 48000
#: Largest Opus packet: 120 ms (six 20 ms frames) at 48 kHz.
MAX_SAMPLES = RATE * 120 // 1000

APPLICATION_VOIP = 2048
APPLICATION_AUDIO = 2049
_SET_BITRATE = 4002
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_COMPLEXITY = 4010
_SET_VBR_CONSTRAINT = 4020
#: Largest packet libopus makes for one frame at 510 kbit/s is 1275 bytes (RFC 6716 §3.4).
MAX_PACKET = 1500

_u8p = ctypes.POINTER(ctypes.c_ubyte)
_i16p = ctypes.POINTER(ctypes.c_int16)


class LibOpusError(RuntimeError):
    pass


def _candidates() -> list[str]:
    """Where libopus may be, best first."""
    found: list[str] = []
    override = os.environ.get("GATEWAY_LIBOPUS")
    if override:
        found.append(override)
    try:
        import av  # the wheel's bundled libraries sit next to the package
    except ImportError:  # pragma: no cover - av is a dependency
        av = None
    if av is not None and av.__file__:
        pkg = Path(av.__file__).parent
        for folder in (pkg.parent / "av.libs", pkg / ".libs", pkg / ".dylibs", pkg):
            for pattern in ("libopus*.so*", "libopus*.dylib", "opus*.dll", "libopus*.dll"):
                found.extend(sorted(glob.glob(str(folder / pattern))))
    system = ctypes.util.find_library("opus")
    if system:
        found.append(system)
    return found


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, _i16p,
                                ctypes.c_int, ctypes.c_int]
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int)]
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encode.restype = ctypes.c_int32
    # the samples by address (ndarray.ctypes.data): ndarray.ctypes.data_as goes through
    # ctypes.cast, whose source keeps itself in its _objects: a reference cycle per packet
    lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                ctypes.c_int32]
    # opus_encoder_ctl is variadic: every request used here takes one opus_int32, which
    # the C calling conventions pass as they pass an int
    lib.opus_encoder_ctl.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_packet_parse.restype = ctypes.c_int
    lib.opus_packet_parse.argtypes = [ctypes.c_char_p, ctypes.c_int32, _u8p,
                                      ctypes.POINTER(ctypes.c_void_p),
                                      ctypes.POINTER(ctypes.c_int16),
                                      ctypes.POINTER(ctypes.c_int)]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    if hasattr(lib, "opus_packet_has_lbrr"):
        lib.opus_packet_has_lbrr.restype = ctypes.c_int
        lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    return lib


@cache
def library() -> ctypes.CDLL:
    """The loaded libopus (LibOpusError, with the places tried, when there is none)."""
    tried = []
    for path in _candidates():
        try:
            return _bind(ctypes.CDLL(path))
        except (OSError, AttributeError) as exc:
            tried.append(f"{path}: {exc}")
    raise LibOpusError("libopus not found (tried: " + ("; ".join(tried) or "nothing") + ")")


def available() -> bool:
    try:
        library()
    except LibOpusError:
        return False
    return True


def version() -> str:
    return library().opus_get_version_string().decode()


def _check(code: int) -> int:
    if code < 0:
        raise LibOpusError(library().opus_strerror(code).decode())
    return code


def packet_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz in ``packet`` (LibOpusError if it is not Opus)."""
    return _check(library().opus_packet_get_nb_samples(packet, len(packet), RATE))


def has_lbrr(packet: bytes) -> bool:
    """Whether ``packet`` carries in-band FEC (LBRR) for the packet before it."""
    if not packet:
        return False
    native = _native_has_lbrr()
    if native is not None:
        return native(packet, len(packet)) > 0
    return _has_lbrr(library(), packet)


@cache
def _native_has_lbrr():  # type: ignore[no-untyped-def]
    """libopus's own opus_packet_has_lbrr (1.5 and later), or None."""
    return getattr(library(), "opus_packet_has_lbrr", None)


#: opus_packet_parse's outputs: made once (a ctypes array type made per call is a class
#: the cycle collector must free).
_FRAMES = ctypes.c_void_p * 48
_SIZES = ctypes.c_int16 * 48


def _has_lbrr(lib: ctypes.CDLL, packet: bytes) -> bool:
    """opus_packet_has_lbrr of libopus 1.5 for older libraries: SILK's first frame header
    starts with one VAD bit per 20 ms SILK frame, then the LBRR flag, as plain bits."""
    toc = packet[0]
    if toc & 0x80:  # CELT only: no LBRR
        return False
    per_frame = _frame_samples(toc)
    silk_frames = per_frame // 960 if per_frame > 960 else 1
    frames = _FRAMES()
    sizes = _SIZES()
    if lib.opus_packet_parse(packet, len(packet), None, frames, sizes, None) <= 0 or sizes[0] < 1:
        return False
    first = ctypes.string_at(frames[0], 1)[0]  # not ctypes.cast: it leaves a reference cycle
    lbrr = (first >> (7 - silk_frames)) & 1
    if toc & 0x04:  # stereo: the side channel's flag follows its VAD bits
        lbrr |= (first >> (6 - 2 * silk_frames)) & 1
    return bool(lbrr)


def _frame_samples(toc: int) -> int:
    """Samples per Opus frame at 48 kHz from the TOC byte (RFC 6716 §3.1)."""
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT


class OpusDecoder:
    """Mono 48 kHz libopus decoder (stereo packets are down-mixed by libopus itself).

    ``decode`` a packet; ``conceal`` a lost one with libopus's PLC; ``recover`` a lost one
    from the in-band FEC of the packet after it. Each returns a fresh int16 array.
    """

    def __init__(self) -> None:
        lib = self._lib = library()
        err = ctypes.c_int()
        self._st = lib.opus_decoder_create(RATE, 1, ctypes.byref(err))
        if not self._st:
            raise LibOpusError(f"opus_decoder_create: {lib.opus_strerror(err.value).decode()}")
        self._buf = np.zeros(MAX_SAMPLES, dtype=np.int16)
        self._out = self._buf.ctypes.data_as(_i16p)
        #: Samples of the last packet decoded: a lost packet is concealed for as long.
        self.last_samples = 960

    def __del__(self) -> None:
        st, self._st = getattr(self, "_st", None), None
        if st:
            self._lib.opus_decoder_destroy(st)

    def _run(self, data: bytes | None, samples: int, fec: int) -> np.ndarray:
        n = self._lib.opus_decode(self._st, data, len(data) if data else 0, self._out,
                                  samples, fec)
        return self._buf[: _check(n)].copy()

    def decode(self, packet: bytes) -> np.ndarray:
        pcm = self._run(packet, MAX_SAMPLES, 0)
        if len(pcm):
            self.last_samples = len(pcm)
        return pcm

    def conceal(self, samples: int | None = None) -> np.ndarray:
        """libopus's packet loss concealment for one lost packet (``samples`` long)."""
        return self._run(None, samples or self.last_samples, 0)

    def recover(self, following: bytes, samples: int | None = None) -> np.ndarray | None:
        """The lost packet decoded from ``following``'s in-band FEC; None if it has none
        (then conceal instead). libopus needs exactly the lost duration asked for."""
        if not has_lbrr(following):
            return None
        return self._run(following, samples or self.last_samples, 1)


class OpusEncoder:
    """Mono 48 kHz libopus encoder whose FEC and expected loss change between packets.

    FFmpeg's ``libopus`` encoder takes ``fec`` and ``packet_loss`` only when it is opened
    (a new encoder restarts the look-ahead and shifts the audio by 6.5 ms), so the
    gateway's shared Opus encoder (``opus_encoder.py``) and the tests' and benchmarks'
    FEC senders all encode through this one.
    """

    def __init__(self, bitrate: int = 32000, fec: bool = True, loss_percent: int = 10,
                 application: int = APPLICATION_VOIP, complexity: int = 10,
                 constrained_vbr: bool = False) -> None:
        lib = self._lib = library()
        err = ctypes.c_int()
        st = lib.opus_encoder_create(RATE, 1, application, ctypes.byref(err))
        if not st:
            raise LibOpusError(f"opus_encoder_create: {lib.opus_strerror(err.value).decode()}")
        self._st = ctypes.c_void_p(st)
        self.set(_SET_BITRATE, bitrate)
        if constrained_vbr:
            self.set(_SET_VBR_CONSTRAINT, 1)
        self.set(_SET_COMPLEXITY, complexity)
        self.set_fec(fec)
        self.set_loss_percent(loss_percent)
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def __del__(self) -> None:
        st, self._st = getattr(self, "_st", None), None
        if st:
            self._lib.opus_encoder_destroy(st)

    def set(self, request: int, value: int) -> None:
        """An ``opus_encoder_ctl`` that takes one opus_int32."""
        _check(self._lib.opus_encoder_ctl(self._st, ctypes.c_int(request),
                                          ctypes.c_int32(value)))

    def set_fec(self, on: bool) -> None:
        self.set(_SET_INBAND_FEC, int(on))

    def set_loss_percent(self, percent: int) -> None:
        self.set(_SET_PACKET_LOSS_PERC, percent)

    def encode(self, pcm: np.ndarray) -> bytes:
        """One packet from 2.5–60 ms of int16 samples."""
        pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        n = self._lib.opus_encode(self._st, pcm.ctypes.data, len(pcm), self._out,
                                  MAX_PACKET)
        return ctypes.string_at(self._out, _check(n))
