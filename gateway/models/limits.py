"""Every numeric limit and set of choices that requests and the configuration share,
declared once as an ``Annotated`` type: pydantic enforces it, and the OpenAPI document
and the error messages both state it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``above``: ``value > above``); a value outside is refused
    with a message that gives the whole range ("must be 1-65534"), not just one bound."""

    lo: float | None = None
    hi: float | None = None
    above: float | None = None
    why: str = ""

    def message(self) -> str:
        if self.above is not None:
            return "must be positive" if self.above == 0 else f"must be above {_num(self.above)}"
        if self.lo is not None and self.hi is not None:
            return f"must be {_num(self.lo)}-{_num(self.hi)}{self.why}"
        if self.lo is not None:
            return f"must be at least {_num(self.lo)}{self.why}"
        return f"must be at most {_num(self.hi)}{self.why}"  # type: ignore[arg-type]

    def check(self, value: float) -> float:
        if ((self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi)
                or (self.above is not None and value <= self.above)):
            raise ValueError(self.message())
        return value

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        for key, value in (("minimum", self.lo), ("maximum", self.hi),
                           ("exclusiveMinimum", self.above)):
            if value is not None:
                out[key] = value
        return out


#: An HTTP port.
Port = Annotated[int, Range(1, 65535)]
#: A port to listen on; 0 takes any free one.
ListenPort = Annotated[int, Range(0, 65535)]
#: Where an RTP output sends: RTCP goes to the port above.
RtpPort = Annotated[int, Range(1, 65534, why=" (RTCP goes to port + 1)")]
#: Opus bit rate, b/s: beyond it libopus refuses, or PyAV overflows.
OpusBitrate = Annotated[int, Range(6000, 510000)]
#: Multicast time to live.
Ttl = Annotated[int, Range(1, 255)]
PayloadType = Annotated[int, Range(0, 127)]
#: How long a dial-out rings before it is given up, seconds.
DialTimeout = Annotated[float, Range(1, 600)]
PositiveFloat = Annotated[float, Range(above=0)]

RecordingFormat = Literal["wav", "opus"]
RECORDING_FORMATS: tuple[str, ...] = get_args(RecordingFormat)
#: WAV sample rates (resampled from 48 kHz); Opus is always 48 kHz.
RecordingSampleRate = Literal[8000, 16000, 24000, 48000]
