"""Requests for a stream's inputs and outputs: one model each, validated into the
arguments that open them.

The HTTP API (``web/outputs.py``) and the config file's ``rtp.inputs`` / ``rtp.outputs``
and ``recording.auto`` (``config.py``) use the same models, so both accept and refuse
exactly the same things, and the OpenAPI document is generated from them. A bad field is
a :class:`FieldError` that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .codecs.spec import CODECS, L16, PTIMES, CodecSpec, check_ptime, codec_by_name
from .models.limits import (
    DialTimeout,
    ListenPort,
    OpusBitrate,
    PayloadType,
    RecordingFormat,
    RecordingSampleRate,
    RtpPort,
    Ttl,
)
from .models.validation import KeyProblem, invalid
from .sdp import SdpError, parse_audio


class FieldError(ValueError):
    """A request refused: ``field`` names the first field at fault; ``errors`` lists
    every one as (field, message)."""

    def __init__(self, field: str, message: str,
                 errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.errors = errors or [(field, message)]


class Request(BaseModel):
    """JSON as sent: no unknown field, no type coerced ("5004" is not a port), no nan."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


CODEC_NAMES = [*(c.name for c in CODECS.values()), "L16"]
Codec = Annotated[str, Field(json_schema_extra={"enum": CODEC_NAMES},
                             description="codec name, any case; L16 takes `rate`")]
L16Rate = Annotated[int | None, Field(description=f"L16 sample rate: one of {sorted(L16)}, "
                                                  "default 48000 (other codecs ignore it)")]
Ptime = Annotated[int, Field(json_schema_extra={
    "enum": sorted({p for ptimes in PTIMES.values() for p in ptimes})},
    description="packet time, ms; Opus has no 30")]
#: Only the rate of L16 is checked; other codecs accept any integer and ignore it.
L16_RATES = {"if": {"required": ["codec"], "properties": {"codec": {"const": "L16"}}},
             "then": {"properties": {"rate": {"enum": sorted(L16)}}}}
IGNORED = "ignored (the config-file form names the stream)"


class CodecChoice(Request):
    """A codec by name (and rate, for L16), checked against what the gateway speaks."""

    codec: Codec = "PCMU"
    rate: L16Rate = None

    @field_validator("codec")
    @classmethod
    def _known(cls, name: str) -> str:
        codec_by_name(name, 48000)  # ValueError: unknown codec; known: ...
        return name

    @field_validator("rate")
    @classmethod
    def _l16_rate(cls, rate: int | None, info: ValidationInfo) -> int | None:
        name = info.data.get("codec")
        if rate is not None and name is not None and name.lower() == "l16" and rate not in L16:
            raise ValueError(f"L16 rate must be one of {sorted(L16)}, got {rate}")
        return rate

    @property
    def spec(self) -> CodecSpec:
        return codec_by_name(self.codec, self.rate)


class RtpOutputRequest(CodecChoice):
    """Send the stream as RTP to host:port."""

    model_config = ConfigDict(json_schema_extra=L16_RATES)

    type: Literal["rtp"]
    host: str = Field(min_length=1, examples=["239.1.1.1", "127.0.0.1"],
                      description="destination: unicast or multicast address, or a name")
    port: RtpPort = Field(examples=[5004], description="RTP port; RTCP goes to port + 1")
    ptime: Ptime = 20
    ttl: Ttl = 16
    bitrate: OpusBitrate | None = Field(
        None, description="Opus bit rate, b/s (default `webrtc.opus_bitrate`)")
    stream: Any = Field(None, description=IGNORED)

    @model_validator(mode="after")
    def _ptime_of_codec(self) -> RtpOutputRequest:
        try:
            check_ptime(self.spec, self.ptime)
        except ValueError as exc:
            raise KeyProblem("ptime", str(exc)) from None
        return self

    def arguments(self, default_bitrate: int) -> dict[str, Any]:
        """RtpOutputs.create() arguments."""
        return {"spec": self.spec, "host": self.host, "port": self.port, "ptime": self.ptime,
                "ttl": self.ttl, "bitrate": self.bitrate or default_bitrate}


class RtpInputRequest(CodecChoice):
    """Receive RTP on a port and make it the stream's sender."""

    model_config = ConfigDict(json_schema_extra=L16_RATES)

    type: Literal["rtp"] = "rtp"
    port: ListenPort = Field(description="UDP port to listen on (`rtp.bind_host`); 0: any free")
    payload_type: PayloadType | None = Field(
        None, description="default: the codec's usual one")
    rtcp_port: bool = Field(False, description=(
        "also listen on port + 1 for the sender's RTCP (RTP/AVP without rtcp-mux); "
        "a sender's RTCP on the RTP port itself is always answered"))
    stream: Any = Field(None, description=IGNORED)

    def arguments(self) -> dict[str, Any]:
        """Gateway.open_rtp_input() arguments."""
        spec = self.spec
        pt = spec.payload_type if self.payload_type is None else self.payload_type
        return {"port": self.port, "codecs": {pt: spec}, "rtcp_port": self.rtcp_port}


class SipOutputRequest(Request):
    """Call a phone that plays the stream (SIP dial-out)."""

    type: Literal["sip"]
    uri: str = Field(json_schema_extra={"pattern": r"\S"}, examples=["sip:alice@pbx.example.org"],
                     description="the phone to call; a bare user calls a registered user")
    timeout_s: DialTimeout | None = Field(
        None, description="give up ringing after this (default `sip.dial_timeout_s`)")
    stream: Any = Field(None, description="ignored")

    @field_validator("uri")
    @classmethod
    def _not_blank(cls, uri: str) -> str:
        if not uri.strip():
            raise ValueError("must not be empty")
        return uri


class RecordingOutputRequest(Request):
    """Record the stream to a file."""

    type: Literal["recording"]
    format: RecordingFormat | None = Field(None, description="default `recording.format`")
    sample_rate: RecordingSampleRate | None = Field(
        None, description="WAV only (Opus is 48 kHz)")
    stream: Any = Field(None, description="ignored")

    @model_validator(mode="after")
    def _wav_only(self) -> RecordingOutputRequest:
        if self.sample_rate is not None and self.format == "opus":
            raise KeyProblem("sample_rate", "applies to WAV only (Opus is 48 kHz)")
        return self


OutputRequest = Annotated[RtpOutputRequest | SipOutputRequest | RecordingOutputRequest,
                          Field(discriminator="type")]
_OUTPUT = TypeAdapter(OutputRequest)


def refused(exc: ValidationError, tagged: bool = False) -> FieldError:
    errors = [(e.path or "body", e.message) for e in invalid(exc, tagged)]
    return FieldError(*errors[0], errors=errors)


def parse_output(body: dict[str, Any]) -> RtpOutputRequest | SipOutputRequest \
        | RecordingOutputRequest:
    """Validate a POST .../outputs body: its ``type`` says which request it is."""
    try:
        return _OUTPUT.validate_python(body)
    except ValidationError as exc:
        raise refused(exc, tagged=True) from None


def parse_input(body: dict[str, Any]) -> dict[str, Any]:
    """Validate an RTP input request into open_rtp_input() arguments."""
    try:
        return RtpInputRequest.model_validate(body).arguments()
    except ValidationError as exc:
        raise refused(exc) from None


def parse_input_sdp(sdp: str) -> dict[str, Any]:
    """An input described by the SDP of the sender: port from m=audio, codecs from rtpmap."""
    try:
        desc = parse_audio(sdp)
    except SdpError as exc:
        raise FieldError("sdp", str(exc)) from None
    return {"port": desc.port, "codecs": desc.codecs}
