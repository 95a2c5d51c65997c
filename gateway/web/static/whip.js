// WHIP (publish) and WHEP (listen) for the gateway's pages: one non-trickle offer/answer
// over HTTP, DELETE to hang up. Shared by publish.html and listen.html.
"use strict";

/** Query parameters of the page, e.g. param("stream"). */
function param(name, fallback = "") {
  return new URLSearchParams(location.search).get(name) || fallback;
}

/** Headers for the gateway, with `Authorization: Bearer <token>` when ?token= is given. */
function authHeaders(extra = {}) {
  const token = param("token");
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** Resolve once ICE gathering is complete (the gateway does not take trickled candidates). */
function iceGatheringComplete(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Send what we have after timeoutMs rather than hang on a slow interface.
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/** Longest Retry-After a page waits for, and how long it keeps asking in all (seconds). */
const RETRY_AFTER_MAX_S = 10;
const RETRY_FOR_S = 60;

/**
 * Negotiate one session. kind is "whip" or "whep"; the caller has already added its
 * transceivers to pc. Returns the absolute session URL (the Location) for hangUp().
 * A gateway at capacity answers 503 with Retry-After: the offer is sent again after that
 * many seconds (onWait(seconds, detail) says so), for up to RETRY_FOR_S.
 */
async function negotiate(pc, kind, stream, onWait = () => {}) {
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const url = `/${kind}/${encodeURIComponent(stream)}`;
  const giveUp = Date.now() + RETRY_FOR_S * 1000;
  for (;;) {
    const resp = await fetch(url, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/sdp" }),
      body: pc.localDescription.sdp,
    });
    const body = await resp.text();
    if (resp.status === 201) {
      const sessionUrl = new URL(resp.headers.get("Location"), location.href).href;
      await pc.setRemoteDescription({ type: "answer", sdp: body });
      return sessionUrl;
    }
    let detail = body;
    try {
      detail = JSON.parse(body).detail || body;
    } catch (e) {
      // not problem+json: show the text as it is
    }
    const wait = Number(resp.headers.get("Retry-After"));
    if (resp.status === 503 && wait > 0 && wait <= RETRY_AFTER_MAX_S &&
        Date.now() + wait * 1000 < giveUp) {
      onWait(wait, detail);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    throw new Error(`${kind.toUpperCase()} ${resp.status}: ${detail}`);
  }
}

/** End a session: DELETE its URL (errors ignored) and close the peer connection. */
async function hangUp(pc, sessionUrl) {
  if (sessionUrl) {
    try {
      // keepalive: the request survives the page being closed
      await fetch(sessionUrl, { method: "DELETE", headers: authHeaders(), keepalive: true });
    } catch (e) {
      // the gateway may be gone; the peer connection is closed anyway
    }
  }
  if (pc) pc.close();
}

/**
 * Draw the level of a MediaStream on a <meter> (0..1) using a WebAudio AnalyserNode.
 * Returns a stop() function. onLevel(peak, dominantHz) is called about 20 times a second.
 */
function levelMeter(stream, meter, onLevel) {
  const ctx = new AudioContext();
  ctx.resume(); // autoplay policies may start it suspended
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  source.connect(analyser);
  const wave = new Float32Array(analyser.fftSize);
  const spectrum = new Float32Array(analyser.frequencyBinCount);
  const draw = () => {
    analyser.getFloatTimeDomainData(wave);
    let peak = 0;
    for (const v of wave) peak = Math.max(peak, Math.abs(v));
    analyser.getFloatFrequencyData(spectrum);
    let best = 0;
    for (let i = 1; i < spectrum.length; i++) if (spectrum[i] > spectrum[best]) best = i;
    const hz = peak > 0.001 ? (best * ctx.sampleRate) / analyser.fftSize : 0;
    if (meter) meter.value = Math.min(1, peak);
    if (onLevel) onLevel(peak, hz);
  };
  // A timer, not requestAnimationFrame: background tabs still run it (throttled).
  const timer = setInterval(draw, 50);
  return () => {
    clearInterval(timer);
    source.disconnect();
    ctx.close();
    if (meter) meter.value = 0;
  };
}

/** A link to a page of the gateway ("" = the stream list) that keeps ?token=. */
function pageLink(page, stream) {
  const q = new URLSearchParams();
  if (stream !== undefined) q.set("stream", stream);
  const token = param("token");
  if (token) q.set("token", token);
  return q.size ? `/${page}?${q}` : `/${page}`;
}
