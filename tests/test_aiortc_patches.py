"""The aiortc/aioice internals the gateway relies on (gateway/webrtc/aiortc_patches.py), one
test each: after an aiortc upgrade that moves one, these fail first, with AiortcChanged
naming the aiortc version and the attribute."""

from __future__ import annotations

import asyncio
import socket

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from OpenSSL import SSL

from gateway.ingress.webrtc import PacketTap
from gateway.webrtc import aiortc_patches
from gateway.webrtc.aiortc_patches import (
    AIORTC,
    AiortcChanged,
    depayloaded,
    jitter_buffer,
    negotiated_codecs,
    nominated_pairs,
    pair_route,
    replace_jitter_buffer,
    sender_report_counts,
    sender_ssrc,
    set_negotiated_codecs,
    srtp_protector,
    srtp_tx,
)
from gateway.webrtc.client import Publisher, ToneTrack


@pytest.fixture
def loopback_candidates():
    """Gather ICE candidates on loopback only (and put the module state back after)."""
    before = list(aiortc_patches._host_addresses)
    aiortc_patches.set_host_addresses(["127.0.0.1"])
    yield
    aiortc_patches.set_host_addresses(before)


async def answered(offer_codecs: list[str]) -> RTCPeerConnection:
    """A peer connection that has set a remote offer of ``offer_codecs`` (no media)."""
    client = RTCPeerConnection()
    transceiver = client.addTransceiver("audio", direction="sendonly")
    caps = RTCRtpSender.getCapabilities("audio").codecs
    transceiver.setCodecPreferences(
        [c for name in offer_codecs for c in caps if c.mimeType.lower() == name.lower()])
    await client.setLocalDescription(await client.createOffer())
    server = RTCPeerConnection()
    await server.setRemoteDescription(RTCSessionDescription(client.localDescription.sdp, "offer"))
    await client.close()
    return server


async def test_host_candidates_are_gathered_on_the_configured_addresses(loopback_candidates):
    connection = aioice.ice.Connection(ice_controlling=True)
    await connection.gather_candidates()
    hosts = {c.host for c in connection.local_candidates if c.type == "host"}
    assert hosts == {"127.0.0.1"}, f"{AIORTC}: aioice.ice.get_host_addresses not used: {hosts}"
    await connection.close()


def test_dtls_context_accepts_rsa_peers():
    """aiortc alone offers only ECDSA suites; GStreamer's RSA certificate needs these."""
    from aiortc.rtcdtlstransport import (
        SRTP_AEAD_AES_128_GCM,
        SRTP_AES128_CM_SHA1_80,
        RTCCertificate,
    )

    profiles = [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80]
    cert = RTCCertificate.generateCertificate()
    original = aiortc_patches._original_create_ssl_context(cert, profiles)
    assert not any("RSA" in c for c in SSL.Connection(original).get_cipher_list())

    aiortc_patches.allow_rsa_dtls_peers()
    ciphers = SSL.Connection(cert._create_ssl_context(profiles)).get_cipher_list()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in ciphers
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in ciphers


async def test_negotiated_codecs_are_the_common_ones_in_the_offers_order(loopback_candidates):
    for offer in (["audio/PCMA", "audio/opus"], ["audio/opus", "audio/G722", "audio/PCMU"]):
        server = await answered(offer)
        [transceiver] = server.getTransceivers()
        assert [c.mimeType for c in negotiated_codecs(transceiver)] == offer
        await server.close()


async def test_codecs_set_before_the_answer_are_the_answers(loopback_candidates):
    """aiortc drops the offer's audio/red (it knows no RED); put back, first, it is in
    the answer with its fmtp, and the receiver is started with its payload type."""
    from aiortc import RTCRtpCodecParameters

    server = await answered(["audio/opus", "audio/PCMU"])
    [transceiver] = server.getTransceivers()
    opus, pcmu = negotiated_codecs(transceiver)
    red = RTCRtpCodecParameters(mimeType="audio/red", clockRate=48000, channels=2,
                                payloadType=63, parameters={f"{opus.payloadType}/"
                                                            f"{opus.payloadType}": None})
    set_negotiated_codecs(transceiver, [red, opus, pcmu])
    assert negotiated_codecs(transceiver) == [red, opus, pcmu]
    await server.setLocalDescription(await server.createAnswer())
    sdp = server.localDescription.sdp
    assert f"RTP/SAVPF 63 {opus.payloadType} 0\r\n" in sdp
    assert f"a=fmtp:63 {opus.payloadType}/{opus.payloadType}\r\n" in sdp
    await server.close()
    with pytest.raises(AiortcChanged, match=r"RTCRtpTransceiver\._codecs"):
        set_negotiated_codecs(object(), [])  # type: ignore[arg-type]


async def test_the_receivers_jitter_buffer_is_replaced(loopback_candidates):
    server = await answered(["audio/opus"])
    receiver = server.getTransceivers()[0].receiver
    assert isinstance(jitter_buffer(receiver), JitterBuffer), (
        f"{AIORTC}: RTCRtpReceiver.__jitter_buffer is no longer aiortc's JitterBuffer")
    tap = PacketTap(None)  # type: ignore[arg-type]
    replace_jitter_buffer(receiver, tap)
    assert jitter_buffer(receiver) is tap
    await server.close()


async def test_a_whip_publishers_packets_reach_the_tap_depayloaded(gateway, monkeypatch):
    """The whole contract, on a real connection: aiortc's receiver sets RtpPacket._data
    and then calls the tap's add(packet) for every packet."""
    seen: list[tuple[bytes, bytes]] = []
    changed: list[AiortcChanged] = []
    add = PacketTap.add

    def spy(self, packet):  # type: ignore[no-untyped-def]
        try:
            seen.append((packet.payload, depayloaded(packet)))
        except AiortcChanged as exc:
            changed.append(exc)
        return add(self, packet)

    monkeypatch.setattr(PacketTap, "add", spy)
    pub = Publisher(gateway.url, "tap", ToneTrack(440))
    await pub.negotiate()
    await pub.connected()
    async with asyncio.timeout(5):
        while len(seen) < 10 and not changed:
            await asyncio.sleep(0.02)
    await pub.delete()
    if changed:
        raise changed[0]
    assert seen, f"{AIORTC}: RTCRtpReceiver no longer calls __jitter_buffer.add(packet)"
    # Opus is depayloaded as is: what the tap gets is the packet's payload
    assert all(data == payload and data for payload, data in seen)
    assert gateway.gateway.registry.get("tap").frames_from_sender > 0


def test_a_moved_attribute_is_named_with_the_aiortc_version():
    with pytest.raises(AiortcChanged, match=r"^aiortc \d+\.\d+\S* \(aioice \S+\) has no "
                                            r"RTCRtpTransceiver\._codecs: gateway/webrtc/"):
        negotiated_codecs(object())  # type: ignore[arg-type]
    with pytest.raises(AiortcChanged, match=r"has no RTCRtpReceiver\.__jitter_buffer"):
        replace_jitter_buffer(object(), PacketTap(None))  # type: ignore[arg-type]
    with pytest.raises(AiortcChanged, match=r"has no RtpPacket\._data"):
        depayloaded(object())  # type: ignore[arg-type]


async def test_sender_report_counts_are_what_aiortcs_sender_reports(loopback_candidates):
    """The counts written for packets sent past aiortc are the ones its getStats() (and
    its RTCP loop, which reads the same attributes) report."""
    pc = RTCPeerConnection()
    sender = pc.addTransceiver("audio", direction="sendonly").sender
    await pc.setLocalDescription(await pc.createOffer())
    assert f"a=ssrc:{sender_ssrc(sender)} " in pc.localDescription.sdp
    sender_report_counts(sender)(1 << 40, 12345, 6789, 42)
    stats = await sender.getStats()
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    assert (outbound.packetsSent, outbound.bytesSent) == (42, 6789)
    await pc.close()


async def test_a_whep_listeners_srtp_session_and_ice_socket(gateway):
    """What the fan-out sends with: the DTLS transport's outbound SRTP session and the
    nominated ICE pair's socket, pointing at the listener's own candidate."""
    from pylibsrtp import Session

    from gateway.egress.webrtc import WebRTCEgress
    from gateway.webrtc.client import Listener

    lis = Listener(gateway.url, "paths")
    await lis.negotiate()
    await lis.connected()
    [session] = [s for s in gateway.gateway.sessions.values() if isinstance(s, WebRTCEgress)]
    dtls = session.transceiver.sender.transport
    assert isinstance(srtp_tx(dtls), Session)
    sendto, address = pair_route(nominated_pairs(dtls)[1])
    sock = sendto.__self__  # asyncio's loop: the datagram socket itself
    assert isinstance(sock, socket.socket) and not sock.getblocking()
    assert sock.getsockname()[0] == "127.0.0.1"
    client_dtls = lis.pc.getTransceivers()[0].receiver.transport
    client_send, _ = pair_route(nominated_pairs(client_dtls)[1])
    assert client_send.__self__.getsockname()[:2] == tuple(address)
    await lis.delete()


def test_consent_timing_is_read_by_aioices_consent_loop():
    names = aioice.ice.Connection.query_consent.__code__.co_names
    assert {"CONSENT_INTERVAL", "CONSENT_FAILURES"} <= set(names), (
        f"{AIORTC}: Connection.query_consent no longer reads aioice.ice.CONSENT_*")
    try:
        aiortc_patches.set_consent_timing(0.2, 2)
        assert (aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES) == (0.2, 2)
    finally:
        aiortc_patches.set_consent_timing(*aiortc_patches.CONSENT_DEFAULTS)
    assert aiortc_patches.CONSENT_DEFAULTS == (5, 6)


def test_sending_past_aiortc_names_what_moved():
    with pytest.raises(AiortcChanged, match=r"has no RTCRtpSender\._ssrc"):
        sender_ssrc(object())  # type: ignore[arg-type]
    with pytest.raises(AiortcChanged, match=r"has no RTCRtpSender\.__ntp_timestamp"):
        sender_report_counts(object())  # type: ignore[arg-type]
    with pytest.raises(AiortcChanged, match=r"has no RTCDtlsTransport\._tx_srtp"):
        srtp_tx(object())  # type: ignore[arg-type]
    with pytest.raises(AiortcChanged, match=r"has no aioice CandidatePair\.protocol"):
        pair_route(object())


def test_the_fast_srtp_protect_is_pylibsrtps():
    """Same key, same packets: the protector the fan-out uses and pylibsrtp's own
    Session.protect write the same SRTP bytes (and the receiver decrypts them)."""
    from pylibsrtp import Policy, Session

    key = bytes(range(30))

    def session(kind: int) -> Session:
        policy = Policy(key=key, ssrc_type=kind)
        policy.allow_repeat_tx = True
        return Session(policy)

    fast = srtp_protector(session(Policy.SSRC_ANY_OUTBOUND))
    reference = session(Policy.SSRC_ANY_OUTBOUND)
    receiver = session(Policy.SSRC_ANY_INBOUND)
    for seq in range(5):
        packet = bytes([0x80, 111]) + seq.to_bytes(2, "big") + bytes(8) + bytes([seq]) * 120
        protected = fast(packet)
        assert protected == reference.protect(packet) and len(protected) == len(packet) + 10
        assert receiver.unprotect(protected) == packet
    with pytest.raises(AiortcChanged, match=r"has no pylibsrtp Session\._srtp"):
        srtp_protector(object())  # type: ignore[arg-type]


async def test_receiver_reports_both_ways_go_through_the_patched_attributes():
    """8: a receiver's per-SSRC statistics map can be swapped (its RR loop and getStats
    read it); 9: RR/SR report blocks routed to a sender reach the handler, with aiortc's
    own remote-inbound-rtp kept."""
    from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

    from gateway.rtp.packet import ReceiverStats
    from gateway.webrtc.aiortc_patches import on_receiver_reports, report_reception

    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("audio", direction="sendrecv")
    stats = ReceiverStats(48000, ssrc=77)
    stats.update(77, 10, 0, 0.0)
    report_reception(transceiver.receiver, lambda ssrc: stats if ssrc == 77 else None)
    streams = transceiver.receiver._RTCRtpReceiver__remote_streams
    streams[77] = object()
    inbound = [s for s in (await transceiver.receiver.getStats()).values()
               if s.type == "inbound-rtp"]
    assert inbound and inbound[0].packetsReceived == 1

    sender = transceiver.sender
    got = []
    on_receiver_reports(sender, lambda blocks, rtt: got.append((blocks, rtt)))
    ours = sender_ssrc(sender)
    rr = RtcpRrPacket(ssrc=1, reports=[
        RtcpReceiverInfo(ssrc=ours, fraction_lost=25, packets_lost=3, highest_sequence=70000,
                         jitter=9, lsr=0, dlsr=0),
        RtcpReceiverInfo(ssrc=ours + 1, fraction_lost=0, packets_lost=0, highest_sequence=0,
                         jitter=0, lsr=0, dlsr=0)])
    await sender._handle_rtcp_packet(rr)
    [(blocks, rtt)] = got
    assert [(b.ssrc, b.fraction_lost, b.cumulative_lost, b.highest_seq) for b in blocks] == [
        (ours, 25, 3, 70000)]
    remote = [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]
    assert remote and remote[0].packetsLost == 3
    await pc.close()
    with pytest.raises(AiortcChanged, match=r"RTCRtpReceiver\.__remote_streams"):
        report_reception(object(), lambda ssrc: None)  # type: ignore[arg-type]


async def test_marked_connections_gather_on_the_shared_port_and_others_do_not(
        loopback_candidates):
    """A gateway session's host candidate names the shared port, a client's in the same
    process binds its own; a local ufrag already on the port is replaced before it is
    announced."""
    from gateway.webrtc.udp_mux import Route, SharedUdpPort

    shared = SharedUdpPort("127.0.0.1", 0)
    await shared.open()
    try:
        taken = []
        servers = [await answered(["audio/opus"]) for _ in range(2)]
        first = servers[0].getTransceivers()[0].sender.transport.transport.iceGatherer
        taken.append(first._connection.local_username)
        # the second session's ufrag is the one a session on the port already has
        second = servers[1].getTransceivers()[0].sender.transport.transport.iceGatherer
        second._connection._local_username = taken[0]
        shared.attach(Route(taken[0], b"x" * 22, lambda d, a: None, lambda d: None),
                      lambda exc: None)
        aiortc_patches.gather_on_shared_ports(servers[1], {"127.0.0.1": shared})
        await servers[1].setLocalDescription(await servers[1].createAnswer())
        ufrag = second._connection.local_username
        assert ufrag != taken[0] and f"a=ice-ufrag:{ufrag}" in servers[1].localDescription.sdp
        assert f"127.0.0.1 {shared.port} typ host" in servers[1].localDescription.sdp
        assert shared.has(ufrag)

        await servers[0].setLocalDescription(await servers[0].createAnswer())  # unmarked
        assert f"127.0.0.1 {shared.port} typ host" not in servers[0].localDescription.sdp
        for server in servers:
            await server.close()
        assert not shared.has(ufrag)  # closing the session takes it off the port
    finally:
        shared.close()
    from types import SimpleNamespace as Fake

    moved = Fake(sender=Fake(transport=Fake(transport=Fake(iceGatherer=object()))))
    with pytest.raises(AiortcChanged, match=r"has no RTCIceGatherer\._connection"):
        aiortc_patches.gather_on_shared_ports(Fake(getTransceivers=lambda: [moved]), {})
