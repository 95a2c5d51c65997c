// The operator's dashboard: every stream with its sender, listeners, meters and actions.
//
// How it stays live, and why it scales to ~50 streams:
// * One GET /api/v1/streams every 500 ms carries every stream's sender, listener counts
//   and meters (`analysis`): one request per tick whatever the number of streams.
// * GET /api/v1/sessions (every WebRTC session, one request) and GET .../outputs (RTP,
//   SIP calls, recordings) are fetched every 2 s, outputs only for streams on screen
//   that have such listeners, and at once when a stream's listener counts change, when
//   an event arrives, or after an action.
// * GET /api/v1/stats every 2 s for the admission line: refusing or admitting, CPU,
//   the media clock's lateness, refusals per kind (the same numbers as /metrics).
// * One EventSource on /api/v1/events (recordings, silence alarms, plug-ins).
// Not one EventSource per stream: a browser opens at most 6 HTTP/1.1 connections to a
// host and every feed holds one for good, so a dozen level feeds would already starve
// the page's own requests. Polling the stream list costs one short request per tick.
// In a background tab the page polls every 5 s only.
"use strict";

const FAST_MS = 500;
const SLOW_MS = 2000;
const ENDED_MS = 60000; // how long an ended call stays listed
const HIDDEN_MS = 5000;
const EVENT_TYPES = [
  "silence", "voice", "recording_started", "recording_stopped", "recording_failed",
  "plugin_result", "plugin_failed",
];
const KIND_NAMES = { webrtc: "WebRTC", rtp: "RTP", sip: "SIP", recording: "recording" };
const REFUSAL_NAMES = {
  webrtc_publish: "WebRTC publish", webrtc_listen: "WebRTC listen", rtp_output: "RTP output",
  recording: "recording", dial_out: "dial-out", sip: "SIP call",
};

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

/** A failed API call: status and the RFC 9457 problem (title, detail, errors[]). */
class ApiError extends Error {
  constructor(status, title, detail, errors) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.errors = errors;
  }
}

/** fetch() with the page's token; JSON in and out; problem details thrown as ApiError. */
async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers = authHeaders({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "Gateway unreachable", err.message, []);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    // not JSON: keep the text for the error message
  }
  if (!resp.ok) {
    const p = data && typeof data === "object" ? data : {};
    const title = p.title || resp.statusText || "Error";
    const detail = p.detail || (data ? "" : text.trim().slice(0, 300));
    const errors = Array.isArray(p.errors) ? p.errors : [];
    throw new ApiError(resp.status, `${title} (${resp.status})`, detail, errors);
  }
  return data;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function setText(node, text) {
  text = String(text);
  if (node.textContent !== text) node.textContent = text;
}

function num(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en");
}

function age(since) {
  if (!since) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - since));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Show an error (ApiError or any Error) in `out`; mark the form fields it names. */
function showError(out, err, form) {
  out.replaceChildren();
  out.hidden = false;
  const detail = err.detail !== undefined ? err.detail : err.message;
  out.append(el("strong", { textContent: err.title || "Error" }));
  if (detail) out.append(`: ${detail}`);
  const extra = (err.errors || []).filter((e) => !detail || !detail.includes(e.message));
  if (extra.length) {
    out.append(el("ul", {}, ...extra.map((e) => el("li", {
      textContent: e.field ? `${e.field}: ${e.message}` : e.message,
    }))));
  }
  if (form) {
    for (const e of err.errors || []) {
      const input = form.elements.namedItem(e.field);
      if (input) input.setAttribute("aria-invalid", "true");
    }
  }
}

function clearError(out, form) {
  out.replaceChildren();
  if (out.tagName !== "OUTPUT") out.hidden = true;
  if (form) for (const input of form.elements) input.removeAttribute("aria-invalid");
}

// --- state --------------------------------------------------------------------------------

const cards = new Map(); // stream name -> Card
let sessions = []; // the last GET /api/v1/sessions
let sessionsDirty = true;
let lastSlow = 0;
let timer = 0;
let running = false;
let again = false;

const visibility = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const card = entry.target.card;
    if (!card) continue;
    card.visible = entry.isIntersecting;
    if (card.visible && card.wantsOutputs(true)) card.outputsDirty = true;
  }
});

/** One stream's card; built once, then updated in place (forms keep what is typed). */
class Card {
  constructor(name) {
    this.name = name;
    this.root = $("stream-card").content.firstElementChild.cloneNode(true);
    this.root.card = this;
    this.root.dataset.stream = name;
    this.q = (sel) => this.root.querySelector(sel);
    setText(this.q(".name"), name);
    this.q(".listen").href = pageLink("listen", name);
    this.outputs = [];
    this.outputsDirty = true;
    this.calls = new Set(); // ids of SIP calls in the list or dialed here
    this.ended = new Map(); // call id -> {info, until}: ended calls, kept on view a while
    this.kinds = "";
    this.otherListeners = 0;
    this.visible = true;
    this.rows = new Map(); // key -> <tr>
    this.sender = null;
    this.wire();
    visibility.observe(this.root);
  }

  path(rest = "") {
    return `/api/v1/streams/${enc(this.name)}${rest}`;
  }

  wire() {
    this.q(".sender-stop").onclick = () => this.act(this.q(".sender-stop"), () => {
      const s = this.sender;
      if (s.kind === "rtp") return api("DELETE", this.path(`/inputs/${enc(s.id)}`));
      sessionsDirty = true;
      return api("DELETE", `/api/v1/sessions/${enc(s.id)}`);
    });
    this.form("record", (f) => ({ type: "recording", format: f.elements.format.value }));
    this.form("rtp", (f) => {
      const body = { type: "rtp", codec: f.elements.codec.value };
      const host = f.elements.host.value.trim();
      const port = f.elements.port.value.trim();
      if (host) body.host = host;
      // the gateway validates: a port that is not a number is sent as typed
      if (port) body.port = /^\d+$/.test(port) ? Number(port) : port;
      return body;
    }, (f) => { f.elements.port.value = ""; });
    this.form("dial", (f) => {
      const uri = f.elements.uri.value.trim();
      return uri ? { type: "sip", uri } : { type: "sip" };
    }, (f) => { f.elements.uri.value = ""; });
  }

  /** A form that POSTs .../outputs; the API's error is shown next to it. */
  form(cls, body, reset = () => {}) {
    const form = this.q(`form.${cls}`);
    const out = form.querySelector(".form-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      clearError(out, form);
      try {
        const created = await api("POST", this.path("/outputs"), body(form));
        if (created && created.type === "sip") this.calls.add(created.id);
        reset(form);
        this.outputsDirty = true;
        refreshNow();
      } catch (err) {
        showError(out, err, form);
      } finally {
        button.disabled = false;
      }
    });
  }

  /** Run an action of a button (stop, disconnect); errors go to the card's error line. */
  async act(button, action) {
    const out = this.q(".card-error");
    clearError(out);
    button.disabled = true;
    try {
      await action();
      this.outputsDirty = true;
      refreshNow();
    } catch (err) {
      button.disabled = false;
      showError(out, err);
    }
  }

  wantsOutputs(slow) {
    if (this.outputsDirty) return true;
    return slow && this.visible && (this.otherListeners > 0 || this.outputs.length > 0);
  }

  async loadOutputs() {
    this.outputsDirty = false;
    let outputs;
    try {
      outputs = (await api("GET", this.path("/outputs"))).outputs;
    } catch (err) {
      if (err.status === 404) this.outputs = [];
      else this.outputsDirty = true; // try again next tick
      return;
    }
    // An ended call leaves the list; ask for it once so that its status and reason
    // (busy, no answer, hung up) stay on view for a minute.
    const present = new Set(outputs.map((o) => o.id));
    const gone = [...this.calls].filter((id) => !present.has(id));
    for (const o of outputs) if (o.type === "sip") this.calls.add(o.id);
    await Promise.all(gone.map(async (id) => {
      this.calls.delete(id);
      try {
        const info = await api("GET", this.path(`/outputs/${enc(id)}`));
        if (info.state === "ended") this.ended.set(id, { info, until: Date.now() + ENDED_MS });
      } catch (err) {
        // forgotten already: nothing to show
      }
    }));
    this.outputs = outputs;
  }

  update(s) {
    this.info = s;
    // meters
    const a = s.analysis;
    const meter = this.q(".level");
    meter.hidden = !a;
    if (a) {
      meter.value = Math.max(-60, Math.min(0, a.meter_dbfs));
      const st = a.short_term_lufs;
      const lufs = st === null || st < -70 ? "" : ` · ${st.toFixed(1)} LUFS`;
      const level = a.meter_dbfs <= -119 ? "silence" : `${a.meter_dbfs.toFixed(1)} dBFS`;
      setText(this.q(".level-text"), level + lufs + (a.voice ? " · sound" : ""));
      const alarm = this.q(".alarm");
      setText(alarm, a.silence_alarm ? "SILENCE ALARM" : "");
      alarm.className = a.silence_alarm ? "alarm error" : "alarm";
    } else {
      setText(this.q(".level-text"), "no analysis");
    }
    // sender
    const sender = this.q(".sender");
    setText(sender, s.sender ? senderText(s.sender) : "none: listeners get silence");
    sender.className = s.sender ? "sender on" : "sender off muted";
    const stop = this.q(".sender-stop");
    if (!this.sender || !s.sender || this.sender.id !== s.sender.id) stop.disabled = false;
    // a WebRTC sender's id is shown to its creator and admins only (it ends the session)
    stop.hidden = !(s.sender && s.sender.id && (s.sender.kind === "webrtc" ||
                                                s.sender.kind === "rtp"));
    this.sender = s.sender;
    // in a cluster: the sender's node, and listeners on every node
    this.q(".cluster-line").hidden = !s.cluster;
    if (s.cluster) setText(this.q(".cluster"), clusterText(s.cluster));
    // listeners by kind; a change means fresh lists are needed now
    const byKind = s.listeners_by_kind || {};
    const kinds = JSON.stringify(byKind);
    if (kinds !== this.kinds) {
      const before = this.kinds ? JSON.parse(this.kinds) : {};
      if ((before.webrtc || 0) !== (byKind.webrtc || 0)) sessionsDirty = true;
      this.outputsDirty = true;
      this.kinds = kinds;
    }
    this.otherListeners = Object.entries(byKind)
      .filter(([k]) => k !== "webrtc")
      .reduce((n, [, v]) => n + v, 0);
    const parts = Object.entries(byKind)
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${v} ${KIND_NAMES[k] || k}`);
    setText(this.q(".by-kind"), parts.length ? parts.join(" · ") : "none");
  }

  /** The listener table: WebRTC sessions and outputs, rows updated in place by key. */
  renderListeners() {
    const entries = [
      ...sessions
        .filter((x) => x.stream === this.name && x.role === "listener")
        .map(webrtcEntry),
      ...this.outputs.map((o) => outputEntry(o, this)),
    ];
    const now = Date.now();
    for (const [id, { info, until }] of this.ended) {
      if (until < now) this.ended.delete(id);
      else if (!entries.some((e) => e.id === id)) entries.push(outputEntry(info, this));
    }
    const body = this.q(".listeners tbody");
    const seen = new Set();
    for (const [i, e] of entries.entries()) {
      seen.add(e.key);
      let tr = this.rows.get(e.key);
      if (!tr) {
        tr = this.newRow(e);
        this.rows.set(e.key, tr);
      }
      tr.entry = e;
      const cells = [e.kind, e.target, e.codec, e.state, num(e.packets), num(e.bytes),
                     num(e.drops), e.details];
      cells.forEach((text, c) => setText(tr.cells[c], text ?? "–"));
      tr.className = e.ended ? "ended muted" : "";
      const button = tr.cells[8].firstChild;
      button.hidden = !e.stop;
      setText(button, e.stopLabel || "Stop");
      if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
    }
    for (const [key, tr] of this.rows) {
      if (!seen.has(key)) {
        tr.remove();
        this.rows.delete(key);
      }
    }
    this.q(".listeners").hidden = entries.length === 0;
  }

  newRow(e) {
    const tr = el("tr");
    tr.dataset.key = e.key;
    tr.dataset.kind = e.type;
    tr.dataset.id = e.id;
    for (let c = 0; c < 9; c++) tr.insertCell();
    for (const c of [4, 5, 6]) tr.cells[c].className = "num";
    tr.cells[1].className = "target";
    tr.cells[3].className = "state";
    const button = el("button", { type: "button", className: "stop" });
    button.onclick = () => {
      const entry = tr.entry;
      if (entry.stop) this.act(button, entry.stop);
    };
    tr.cells[8].append(button);
    return tr;
  }

  remove() {
    visibility.unobserve(this.root);
    this.root.remove();
  }
}

function clusterText(c) {
  const nodes = Object.entries(c.listeners_by_node || {})
    .map(([node, n]) => `${node}: ${n}`).join(", ");
  return `sender on ${c.owner || "no node"} · ${c.listeners_total} listener(s)` +
    (nodes ? ` (${nodes})` : "");
}

function senderText(s) {
  const parts = [s.kind || "?"];
  const codec = s.codec || (s.codecs && Object.values(s.codecs).join("/"));
  if (codec) parts.push(codec);
  if (s.state) parts.push(s.state);
  if (s.source || s.peer) parts.push(`from ${s.source || s.peer}`);
  if (s.packets !== undefined) {
    const lost = s.lost || 0;
    const total = s.packets + lost;
    const loss = total ? (100 * lost) / total : 0;
    parts.push(`${num(s.packets)} packets`);
    parts.push(`loss ${loss.toFixed(1)} % (${num(lost)} lost, ${num(s.late || 0)} late, ` +
               `${num(s.concealed || 0)} concealed)`);
    if (s.fec_recovered !== undefined) {
      // what the losses became: recovered from FEC or RED, or concealed by the codec's PLC
      parts.push(`${num(s.fec_recovered)} recovered by FEC, ${num(s.red_recovered || 0)} by RED, ` +
                 `${num(s.plc_concealed || 0)} concealed by PLC`);
    }
  }
  if (s.jitter_target_ms !== undefined) parts.push(`jitter buffer ${s.jitter_target_ms} ms`);
  if (s.delay_ms_avg !== undefined) {
    parts.push(`delay ${Math.round(s.delay_ms_avg)} ms avg, ${Math.round(s.delay_ms_max)} max`);
  }
  if (s.since) parts.push(`for ${age(s.since)}`);
  return parts.join(" · ");
}

/** What a listener's RTCP receiver reports say: "reports 3.1 % loss (12 lost), jitter 2 ms". */
function receptionText(r) {
  if (!r) return "";
  const parts = [`reports ${(r.loss_smoothed * 100).toFixed(1)} % loss (${num(r.packets_lost)} lost)`,
                 `jitter ${Math.round(r.jitter_ms)} ms`];
  if (r.rtt_ms !== null && r.rtt_ms !== undefined) parts.push(`rtt ${Math.round(r.rtt_ms)} ms`);
  return parts.join(", ");
}

function webrtcEntry(x) {
  // Other principals' sessions come without an id (it is what ends them): key those by
  // their start time, and offer no Stop.
  const id = x.id || `since:${x.since}`;
  return {
    key: `webrtc:${id}`, type: "webrtc", id, kind: "WebRTC", target: x.id || "–",
    codec: x.codec, state: x.state, packets: x.packets_sent, bytes: null, drops: x.skipped,
    details: [receptionText(x.reception), `for ${age(x.since)}`].filter(Boolean).join(", "),
    ended: x.state === "closed",
    stopLabel: "Stop",
    stop: x.id && (() => {
      sessionsDirty = true;
      return api("DELETE", `/api/v1/sessions/${enc(x.id)}`);
    }),
  };
}

function outputEntry(o, card) {
  const stop = () => api("DELETE", card.path(`/outputs/${enc(o.id)}`));
  const base = { key: `${o.type}:${o.id}`, type: o.type, id: o.id, stop, stopLabel: "Stop" };
  if (o.type === "rtp") {
    const details = [`pt ${o.payload_type}`, `${o.ptime} ms`];
    if (o.multicast) details.push("multicast");
    if (o.errors) details.push(`${num(o.errors)} send errors`);
    return {
      ...base, kind: "RTP", target: `${o.host}:${o.port}`, codec: o.codec,
      state: o.errors ? "errors" : "sending", packets: o.packets, bytes: o.bytes,
      drops: o.drops, details: details.join(", "),
    };
  }
  if (o.type === "sip") {
    const ended = o.state === "ended";
    const details = [];
    if (o.status) details.push(String(o.status));
    if (o.end_reason) details.push(o.end_reason);
    if (o.publish) details.push(`publishes ${o.publish}`);
    if (o.reception && !ended) details.push(receptionText(o.reception));
    if (!ended && o.since) details.push(`for ${age(o.since)}`);
    return {
      ...base, kind: o.direction === "out" ? "SIP dial-out" : "SIP dial-in", target: o.uri,
      codec: o.codec, state: o.state + (o.on_hold ? " (on hold)" : ""), packets: o.packets,
      bytes: o.bytes, drops: o.drops, details: details.join(", "), ended,
      stop: ended ? null : stop, stopLabel: "Hang up",
    };
  }
  if (o.type === "recording") {
    const recording = o.state === "recording";
    const details = [`${Number(o.duration_s || 0).toFixed(0)} s`];
    if (o.sample_rate && o.format === "wav") details.push(`${o.sample_rate / 1000} kHz`);
    if (o.error) details.push(o.error);
    return {
      ...base, kind: "Recording", target: o.file, codec: o.format, state: o.state,
      packets: null, bytes: null, drops: o.skipped_frames, details: details.join(", "),
      ended: !recording, stop: recording ? stop : null,
    };
  }
  return { ...base, kind: o.type, target: o.id, state: o.state, details: "" };
}

// --- the refresh loop -----------------------------------------------------------------------

function syncCards(streams) {
  streams.sort((a, b) => a.name.localeCompare(b.name));
  const container = $("streams");
  const names = new Set();
  streams.forEach((s, i) => {
    names.add(s.name);
    let card = cards.get(s.name);
    if (!card) {
      card = new Card(s.name);
      cards.set(s.name, card);
    }
    card.update(s);
    if (container.children[i] !== card.root) {
      container.insertBefore(card.root, container.children[i] || null);
    }
  });
  for (const [name, card] of cards) {
    if (!names.has(name)) {
      card.remove();
      cards.delete(name);
    }
  }
  $("empty").hidden = streams.length > 0;
}

async function loadSessions() {
  sessionsDirty = false;
  try {
    sessions = (await api("GET", "/api/v1/sessions")).sessions;
  } catch (err) {
    sessionsDirty = true;
  }
}

async function loadAdmission() {
  let stats;
  try {
    stats = await api("GET", "/api/v1/stats");
  } catch (err) {
    return; // shown again at the next slow tick
  }
  showAdmission(stats.admission);
}

/** The admission line: what decides whether new listeners, calls and outputs get in. */
function showAdmission(a) {
  const line = $("admission");
  if (!a) return;
  line.hidden = false;
  const q = (sel) => line.querySelector(sel);
  const state = q(".state");
  setText(state, a.refusing ? "REFUSING new work (503)" : "admitting");
  state.className = a.refusing ? "state error" : "state on";
  setText(q(".cpu"), `CPU ${Math.round(100 * a.cpu_share)} % of ` +
          `${Number(a.cores_available.toFixed(2))} core(s)`);
  setText(q(".lateness"), `clock lateness p99 ${a.clock_lateness_p99_ms.toFixed(1)} ms`);
  const refused = q(".refused");
  const kinds = Object.entries(a.refused || {});
  const total = kinds.reduce((n, [, v]) => n + v, 0);
  refused.dataset.counts = JSON.stringify(a.refused || {});
  refused.className = total ? "refused error" : "refused muted";
  setText(refused, total
    ? `refused: ${kinds.filter(([, v]) => v > 0)
        .map(([k, v]) => `${num(v)} ${REFUSAL_NAMES[k] || k}`).join(", ")}` +
      ` (${num(a.episodes)} episode(s))`
    : "nothing refused");
}

async function tick() {
  running = true;
  again = false;
  try {
    const { streams } = await api("GET", "/api/v1/streams");
    syncCards(streams);
    const now = performance.now();
    const slow = now - lastSlow >= SLOW_MS;
    if (slow) lastSlow = now;
    const jobs = [];
    if (slow || sessionsDirty) jobs.push(loadSessions());
    if (slow) jobs.push(loadAdmission());
    for (const card of cards.values()) if (card.wantsOutputs(slow)) jobs.push(card.loadOutputs());
    await Promise.all(jobs);
    for (const card of cards.values()) card.renderListeners();
    const listeners = streams.reduce((n, s) => n + s.listeners, 0);
    const senders = streams.filter((s) => s.sender).length;
    setText($("summary"), `${streams.length} stream(s), ${senders} with a sender, ` +
            `${listeners} listener(s) · updated ${new Date().toLocaleTimeString()}`);
    $("status").hidden = true;
  } catch (err) {
    showError($("status"), err);
    $("status").prepend("Cannot update: ");
  } finally {
    running = false;
    clearTimeout(timer);
    timer = setTimeout(tick, again ? 0 : document.hidden ? HIDDEN_MS : FAST_MS);
  }
}

/** Refresh as soon as possible (after the request in flight, if any). */
function refreshNow() {
  if (running) {
    again = true;
    return;
  }
  clearTimeout(timer);
  timer = setTimeout(tick, 0);
}

// --- the events feed --------------------------------------------------------------------------

let lastEventId = 0;
let lastEventTime = 0;

function openEvents() {
  // EventSource cannot send headers: the token goes in the query (accepted for SSE only)
  const token = param("token");
  const url = token ? `/api/v1/events?token=${enc(token)}` : "/api/v1/events";
  const feed = new EventSource(url);
  const state = $("feed");
  feed.onopen = () => {
    setText(state, "events: live");
    state.className = "feed on";
    refreshNow(); // anything missed while disconnected
  };
  feed.onerror = () => {
    state.className = "feed muted";
    if (feed.readyState !== EventSource.CLOSED) {
      setText(state, "events: reconnecting"); // the browser retries by itself
      return;
    }
    // refused (an HTTP error): the browser gives up, so try again later; polling goes on
    setText(state, "events: unavailable, retrying");
    setTimeout(openEvents, 10000);
  };
  for (const type of EVENT_TYPES) feed.addEventListener(type, onEvent);
}

function onEvent(message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch (e) {
    return;
  }
  // the feed replays recent events on every (re)connect: skip the ones already seen
  if (event.id <= lastEventId && event.time <= lastEventTime) return;
  lastEventId = event.id;
  lastEventTime = Math.max(lastEventTime, event.time || 0);
  const card = event.stream && cards.get(event.stream);
  if (card && event.type !== "voice" && event.type !== "silence") card.outputsDirty = true;
  if (event.type !== "voice") {
    logEvent(event);
    refreshNow();
  }
}

function logEvent(event) {
  const log = $("events");
  if (log.firstElementChild && log.firstElementChild.classList.contains("muted")) {
    log.replaceChildren();
  }
  const when = event.time ? new Date(event.time * 1000).toLocaleTimeString() : "";
  const what = [event.type.replaceAll("_", " ")];
  if (event.state) what.push(event.state);
  if (event.plugin) what.push(event.plugin);
  if (event.reason) what.push(`(${event.reason})`);
  if (event.error) what.push(`: ${event.error}`);
  const li = el("li", {}, el("span", { className: "muted", textContent: when }), " ",
                el("strong", { textContent: event.stream || "gateway" }), " ", what.join(" "));
  if (/failed|alarm/.test(event.type) || (event.type === "silence" && event.state === "raised")) {
    li.className = "error";
  }
  log.prepend(li);
  while (log.children.length > 30) log.lastElementChild.remove();
}

// --- start ------------------------------------------------------------------------------------

$("home").href = pageLink("");
$("publish-new").href = pageLink("publish");
$("publish-first").href = pageLink("publish");
$("dashboard").href = pageLink("dashboard");
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshNow();
});
openEvents();
tick();
