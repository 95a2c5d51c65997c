"""Chromium publishing over WHIP hears its loss in the gateway's receiver reports, and its
Opus encoder answers with in-band FEC (the loop the issue asks for, end to end)."""

from __future__ import annotations

import random

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from conftest import need_program
from opus_fec import write_wav
from speech import RECORDED, recorded
from test_browser import CHROMIUM, chromium, wait_until

from gateway.codecs.libopus import has_lbrr
from gateway.ingress.playout import Playout

pytestmark = [pytest.mark.peer("chromium"), pytest.mark.timeout(90)]

PUBLISH = """async (stream) => {
  const media = await navigator.mediaDevices.getUserMedia({audio: true});
  const pc = new RTCPeerConnection();
  pc.addTransceiver(media.getAudioTracks()[0], {direction: "sendonly"});
  window.testPc = pc;
  await negotiate(pc, "whip", stream);
}"""

REMOTE_INBOUND = """async () => {
  const stats = await window.testPc.getStats();
  for (const s of stats.values())
    if (s.type === "remote-inbound-rtp")
      return {packetsLost: s.packetsLost, fractionLost: s.fractionLost, jitter: s.jitter,
              rtt: s.roundTripTime};
  return null;
}"""


@pytest.mark.parametrize("red", [False, True])
async def test_chromium_publisher_sees_its_loss_and_sends_fec(gateway_factory, tmp_path,
                                                               monkeypatch, red):
    """Chromium's fake microphone plays recorded speech. No loss for 3 s (Chrome's Opus
    sends no LBRR), then 10 % of its RTP packets are
    dropped (seeded) as they reach the gateway: the RRs carry the loss to Chrome
    (remote-inbound-rtp), Chrome's Opus packets then carry in-band FEC, and the gateway
    plays the lost packets from it (``fec_recovered``). With RED (Chrome sends it when the
    gateway answers it) the copies recover single losses first (``red_recovered``); the
    Opus inside still turns FEC on."""
    need_program(CHROMIUM, RECORDED)
    gateway = await gateway_factory(webrtc={"red": red})
    wav = write_wav(tmp_path / "speech.wav", recorded())  # Chromium loops it
    rng = random.Random(15)
    drop = {"on": False, "dropped": 0}
    handle_rtp = RTCDtlsTransport._handle_rtp_data

    async def lossy(self, data: bytes, arrival_time_ms: int) -> None:
        if drop["on"] and rng.random() < 0.10:  # a lost packet: never reaches the receiver
            drop["dropped"] += 1
            return
        await handle_rtp(self, data, arrival_time_ms)

    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", lossy)
    payloads: list[bytes] = []  # Opus payloads (a RED packet's primary)
    push = Playout._push_media

    def tap(self, seq, payload_type, payload, ssrc, now):  # type: ignore[no-untyped-def]
        payloads.append(payload)
        push(self, seq, payload_type, payload, ssrc, now)

    monkeypatch.setattr(Playout, "_push_media", tap)
    async with chromium(tmp_path, wav) as page:
        await page.goto(f"{gateway.url}/publish?stream=chrome-rr")
        await page.evaluate(PUBLISH, "chrome-rr")
        await wait_until(lambda: len(payloads) > 150, 15, "3 s of Chromium's packets")
        clean = list(payloads[-100:])
        drop["on"] = True
        report = None
        for _ in range(100):
            report = await page.evaluate(REMOTE_INBOUND)
            if report and report["packetsLost"] > 10 and report["fractionLost"] > 0:
                break
            await page.wait_for_timeout(200)
        assert report and report["packetsLost"] > 10 and report["fractionLost"] > 0.02, report
        session = next(s for s in gateway.gateway.sessions.values() if s.role == "publisher")
        assert report["packetsLost"] <= session.playout.reception.cumulative_lost
        assert session.playout.reports_sent > 0
        assert session.playout.red_payload_types == ({session.red_payload_type} if red
                                                     else set())
        start, first = len(payloads), session.playout.info()
        await wait_until(lambda: len(payloads) > start + 250, 15, "5 s more of packets")
        last = session.playout.info()
        lossy_tail = payloads[-100:]
        before = sum(map(has_lbrr, clean)) / len(clean)
        after = sum(map(has_lbrr, lossy_tail)) / len(lossy_tail)
        lost = last.lost - first.lost
        fec = last.fec_recovered - first.fec_recovered
        copies = last.red_recovered - first.red_recovered
        print(f"chromium red={red}: remote-inbound-rtp {report}; LBRR {before:.0%} -> "
              f"{after:.0%}; over the last 5 s {lost} lost, {fec} recovered by FEC, "
              f"{copies} by RED")
        assert before < 0.1, f"LBRR in {before:.0%} of packets before any loss"
        # speech: pauses and unvoiced sounds carry no LBRR (a sung vowel made 86 %)
        assert after > 0.2, f"LBRR in only {after:.0%} of packets after 10 % loss reported"
        assert lost >= 10, lost
        if red:  # a single loss is in its successor's RED copy; FEC is left for the rest
            assert copies >= lost // 2, (lost, copies, fec)
        else:  # no copies: the successor's in-band FEC recovers many losses (10 of 15-17
            # measured; not those before a pause, whose successor carries no FEC)
            assert copies == 0 and fec >= max(3, lost // 3), (lost, fec)
