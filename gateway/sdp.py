"""Sans-IO SDP for plain RTP: the audio section of a sender's description."""

from __future__ import annotations

from .codecs.spec import CodecSpec, codec_by_name

STATIC = {0: "PCMU", 8: "PCMA", 9: "G722"}
MAX_SDP = 16384


def parse_audio_offer(sdp: str) -> tuple[int, dict[int, CodecSpec]]:
    """(port, {payload type: codec}) of the first audio section; ValueError says why not."""
    if len(sdp) > MAX_SDP:
        raise ValueError(f"SDP larger than {MAX_SDP} bytes")
    port: int | None = None
    formats: list[int] = []
    rtpmap: dict[int, tuple[str, int]] = {}
    in_audio = False
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port is not None:
                break  # only the first audio section
            parts = line[2:].split()
            in_audio = len(parts) >= 4 and parts[0] == "audio"
            if in_audio:
                try:
                    port = int(parts[1].split("/")[0])
                    formats = [int(f) for f in parts[3:]]
                except ValueError:
                    raise ValueError(f"bad media line: {line!r}") from None
        elif in_audio and line.startswith("a=rtpmap:"):
            try:
                pt_text, encoding = line[len("a=rtpmap:") :].split(None, 1)
                name, rate = encoding.split("/")[:2]
                rtpmap[int(pt_text)] = (name, int(rate))
            except ValueError:
                raise ValueError(f"bad rtpmap: {line!r}") from None
    if port is None:
        raise ValueError("SDP has no audio section")
    if not 0 < port < 65536:
        raise ValueError(f"audio port must be 1-65535, got {port}")
    codecs: dict[int, CodecSpec] = {}
    for pt in formats:
        name, rate = rtpmap.get(pt, (STATIC.get(pt, ""), 0))
        try:
            spec = codec_by_name(name, rate if name.lower() == "l16" else None)
        except ValueError:
            continue  # telephone-event, CN, codecs we do not decode
        codecs[pt] = spec
    if not codecs:
        raise ValueError("SDP audio section has no codec the gateway decodes")
    return port, codecs
