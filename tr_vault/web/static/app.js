// tr_vault's web page: the journal summary, the latest calls, one call's history, a player.
// Talks to the read API only (README "Web page"). No HTML is ever built from strings: every
// value goes in as text (the page's CSP enforces Trusted Types with no policy).
"use strict";

const KEY_STORE = "tr_vault.read_key";
const REFRESH_MS = 5000;
const DEFAULT_LIMIT = 50;

const $ = (id) => document.getElementById(id);

// -- the API ---------------------------------------------------------------------------------

class NeedKey extends Error {}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let key = localStorage.getItem(KEY_STORE);

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, {
    ...options,
    headers,
    cache: "no-store",
    credentials: "omit",
  });
  if (response.status === 401) throw new NeedKey();
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `HTTP ${response.status}`);
  }
  return body;
}

// -- small DOM helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

// -- formatting -------------------------------------------------------------------------------

const pad = (n, width = 2) => String(n).padStart(width, "0");

function parseDb(text) {
  // The journal's UTC text `2025-11-24 16:20:34.000`.
  return text ? new Date(`${text.replace(" ", "T")}Z`) : null;
}

function localTime(text) {
  const d = parseDb(text);
  if (!d || Number.isNaN(d.getTime())) return text || "—";
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

function ago(text) {
  const d = parseDb(text);
  if (!d) return "";
  const s = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = n / 1024;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
}

function duration(call) {
  let s = call.duration;
  if (s === null || s === undefined) {
    const start = parseDb(call.start_time);
    const stop = parseDb(call.stop_time);
    if (!start || !stop) return "—";
    s = (stop - start) / 1000;
  }
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}:${pad(Math.round(s % 60))}`;
}

function systemName(call) {
  return call.system_label && call.system_label !== call.system
    ? `${call.system_label} (${call.system})`
    : call.system;
}

// A call's state as a listener thinks of it: where its audio is.
function callState(call) {
  const inS3 = call.uploaded_at !== null || call.object_key !== null;
  switch (call.state) {
    case "done":
      if (!inS3) return { label: "stored", css: "stored", title: "kept in the local archive" };
      return call.cached
        ? { label: "in S3, cached", css: "cached", title: "in S3 and in the local cache" }
        : { label: "in S3", css: "s3", title: "pruned from the cache: plays from S3" };
    case "pending":
      return { label: "pending", css: "pending", title: "cached, waiting for its upload" };
    case "failed":
      return { label: "failed", css: "failed", title: call.last_error || "upload failed" };
    case "lost":
      return { label: "lost", css: "lost", title: "neither cached nor found in S3" };
    default:
      return { label: call.state, css: "", title: "" };
  }
}

function playable(call) {
  return Boolean(call.cached) || callState(call).css === "s3";
}

// -- the key prompt ---------------------------------------------------------------------------

function askForKey(message) {
  show($("main"), false);
  show($("forget-key"), false);
  show($("key-prompt"), true);
  show($("key-error"), Boolean(message));
  $("key-error").textContent = message || "";
  $("key-input").value = "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault(); // the key goes into local storage and a header, never a URL
  const value = $("key-input").value.trim();
  if (!value) return;
  key = value;
  localStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  show($("key-prompt"), false);
  render();
});

$("forget-key").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORE);
  key = null;
  stopPlayer();
  render();
});

function handle(error, where) {
  if (error instanceof NeedKey) {
    const rejected = Boolean(key);
    if (rejected) {
      localStorage.removeItem(KEY_STORE);
      key = null;
    }
    askForKey(rejected ? "That key was not accepted." : "");
    return;
  }
  where.textContent = error instanceof ApiError ? error.message : `Cannot reach the server (${error.message})`;
  show(where, true);
}

// -- the summary ------------------------------------------------------------------------------

function card(title, value, detail, css) {
  return el(
    "div",
    { class: `card ${css || ""}` },
    el("div", { class: "card-title", text: title }),
    el("div", { class: "card-value", text: value }),
    detail ? el("div", { class: "card-detail", text: detail }) : null,
  );
}

function renderSummary(s) {
  const st = s.states;
  const cards = [
    card("Pending", String(st.pending.calls), pendingDetail(s), st.pending.calls ? "warn" : ""),
    // `done` is "verified in S3" with a bucket, "stored" in local-only mode
    card(s.store ? "In S3" : "Stored", String(st.done.calls), bytes(st.done.bytes)),
    card("Cached", bytes(s.cached.bytes), `${s.cached.calls} calls in the local cache`),
    card(
      "Failed",
      String(st.failed.calls),
      `${s.failed_last_hour} in the last hour`,
      st.failed.calls ? "bad" : "",
    ),
    card("Lost", String(st.lost.calls), "not cached, not in S3", st.lost.calls ? "bad" : ""),
    storeCard(s.store),
  ];
  const error = s.last_error;
  const last = el(
    "div",
    { class: "last-error" },
    el("span", { class: "card-title", text: "Last error" }),
    " ",
    error
      ? el(
          "span",
          {},
          el("a", { href: `#call/${error.id}`, text: `call ${error.id}` }),
          `, ${localTime(error.at)} (${ago(error.at)}): `,
          el("span", { class: "error-text", text: error.error || "" }),
        )
      : el("span", { class: "muted", text: "none" }),
  );
  $("summary").replaceChildren(el("div", { class: "cards" }, ...cards), last);
  renderForward(s.forward || []);

  const pill = $("store-pill");
  if (s.store) {
    pill.textContent = `S3 ${s.store.state}`;
    pill.className = `pill ${s.store.state}`;
    pill.title = s.store.last_error || `since ${localTime(s.store.since)}`;
  } else {
    pill.textContent = "local only";
    pill.className = "pill unknown";
    pill.title = "no S3 bucket is configured: the cache is the archive";
  }
  show(pill, true);
}

function pendingDetail(s) {
  const oldest = s.oldest_pending;
  if (!oldest) return "none waiting";
  return `oldest: call ${oldest.id}, received ${ago(oldest.received_at)}`;
}

function storeCard(store) {
  if (!store) return card("Store", "local only", "no S3 bucket configured", "");
  const css = store.state === "up" ? "good" : store.state === "down" ? "bad" : "";
  const detail = [
    `${store.name} since ${localTime(store.since)}`,
    store.code ? store.code : null,
    store.last_error && store.state !== "up" ? store.last_error : null,
  ]
    .filter(Boolean)
    .join(" · ");
  return card("Store", store.state, detail, css);
}

// The relay's destinations (README "Forwarding"): hidden when forwarding is off.
function renderForward(destinations) {
  const panel = $("forward");
  if (!destinations.length) {
    panel.replaceChildren();
    show(panel, false);
    return;
  }
  const rows = destinations.map((d) => {
    const n = d.deliveries || {};
    const state = ["up", "down", "misconfigured"].includes(d.state) ? d.state : "unknown";
    return el(
      "tr",
      { "data-name": d.name },
      el("td", { class: "name", text: d.name }),
      el("td", { class: "kind", text: d.kind || "" }),
      el(
        "td",
        {},
        el("span", {
          class: `state dest-${state}`,
          text: d.state || "unknown",
          title: d.since ? `since ${localTime(d.since)}` : null,
        }),
      ),
      ...["pending", "done", "failed", "skipped"].map((k) =>
        el("td", { class: `num ${k}`, text: String(n[k] || 0) }),
      ),
      el("td", { class: "num lag", text: n.pending ? lag(d.lag_seconds) : "—" }),
      el("td", { class: "last-error error-text", text: d.last_error || "" }),
    );
  });
  const head = ["Destination", "Kind", "State", "Pending", "Done", "Failed", "Skipped", "Lag"];
  panel.replaceChildren(
    el("h2", { text: "Forwarding" }),
    el(
      "table",
      { class: "forward" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...head.map((h, i) => el("th", { class: i >= 3 ? "num" : null, text: h })),
          el("th", { text: "Last error" }),
        ),
      ),
      el("tbody", {}, ...rows),
    ),
  );
  show(panel, true);
}

// A lag in seconds as a person says it: "40 s", "3 min", "5 h", "2 days".
function lag(seconds) {
  const s = Math.max(0, Math.round(seconds || 0));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 129600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

async function loadSummary() {
  renderSummary(await api("/api/journal/summary"));
}

// -- the list ---------------------------------------------------------------------------------

const list = {
  filters: new URLSearchParams(),
  cursors: [], // cursors of the pages before this one; empty on the first page
  cursor: null, // this page's cursor (null: the newest page)
  next: null,
  systems: new Set(),
};

function toUnix(localValue) {
  if (!localValue) return "";
  const ms = new Date(localValue).getTime();
  return Number.isNaN(ms) ? "" : String(Math.floor(ms / 1000));
}

function listQuery() {
  const q = new URLSearchParams();
  const f = list.filters;
  const limit = Number(f.get("limit")) || DEFAULT_LIMIT;
  q.set("limit", String(limit));
  if (f.get("system")) q.set("system", f.get("system"));
  if (f.get("talkgroup")) q.set("talkgroup", f.get("talkgroup"));
  if (f.get("since")) q.set("since", toUnix(f.get("since")));
  if (f.get("until")) q.set("until", toUnix(f.get("until")));
  if (list.cursor) q.set("cursor", list.cursor);
  return q;
}

function callRow(call) {
  const state = callState(call);
  const play = el("button", {
    type: "button",
    class: "play",
    text: "▶ Play",
    title: playable(call) ? "play" : "nothing to play: not cached and not in S3",
    disabled: !playable(call),
    onclick: () => playCall(call),
  });
  return el(
    "tr",
    { "data-id": call.id, class: nowPlaying === call.id ? "playing" : null },
    el("td", { class: "time" }, el("a", { href: `#call/${call.id}`, text: localTime(call.start_time) })),
    el("td", { class: "system", text: systemName(call) }),
    el(
      "td",
      { class: "talkgroup" },
      el("span", { class: "tg-label", text: call.talkgroup_label || "" }),
      " ",
      el("span", { class: "tg-number", text: String(call.talkgroup) }),
    ),
    el("td", { class: "num duration", text: duration(call) }),
    el("td", { class: "unit", text: call.source === null ? "—" : String(call.source) }),
    el("td", {}, el("span", { class: `state ${state.css}`, title: state.title, text: state.label })),
    el("td", { class: "actions" }, play),
  );
}

let listLoads = 0; // the latest loadList() call: an older answer arriving late is dropped

async function loadList() {
  const query = listQuery();
  const load = ++listLoads;
  const body = await api(`/api/calls?${query}`);
  if (load !== listLoads) return; // a refresh with the old filter must not overwrite a new one
  list.next = body.next_cursor;
  const rows = body.calls.map(callRow);
  $("calls").tBodies[0].replaceChildren(...rows);
  $("calls").dataset.query = query; // what the rows show (tests wait on it)
  show($("empty"), rows.length === 0);
  show($("list-error"), false);
  for (const call of body.calls) {
    for (const name of [call.system, call.system_label]) {
      if (name && !list.systems.has(name)) {
        list.systems.add(name);
        $("systems").append(el("option", { value: name }));
      }
    }
  }
  const first = list.cursors.length === 0 && !list.cursor;
  $("older").disabled = !list.next;
  $("newer").disabled = first;
  $("newest").disabled = first;
  $("page-note").textContent = first ? "newest calls" : `page ${list.cursors.length + 1}`;
  $("refresh-note").textContent = first ? "refreshing every 5 s" : "paused on an older page";
}

function fillFilters() {
  for (const name of ["system", "talkgroup", "since", "until"]) {
    $(`f-${name}`).value = list.filters.get(name) || "";
  }
}

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = new URLSearchParams();
  for (const name of ["system", "talkgroup", "since", "until"]) {
    const value = $(`f-${name}`).value.trim();
    if (value) q.set(name, value);
  }
  if (list.filters.get("limit")) q.set("limit", list.filters.get("limit"));
  location.hash = `calls?${q}`;
});

$("f-clear").addEventListener("click", () => {
  const limit = list.filters.get("limit");
  location.hash = limit ? `calls?limit=${limit}` : "calls";
});

function page(move) {
  if (move === "older" && list.next) {
    list.cursors.push(list.cursor);
    list.cursor = list.next;
  } else if (move === "newer" && list.cursors.length) {
    list.cursor = list.cursors.pop();
  } else if (move === "newest") {
    list.cursors = [];
    list.cursor = null;
  }
  loadList().catch((e) => handle(e, $("list-error")));
}

$("older").addEventListener("click", () => page("older"));
$("newer").addEventListener("click", () => page("newer"));
$("newest").addEventListener("click", () => page("newest"));

// -- one call ---------------------------------------------------------------------------------

function field(name, value) {
  if (value === null || value === undefined || value === "") return null;
  return [el("dt", { text: name }), el("dd", {}, value)];
}

function eventDetail(detail) {
  if (!detail) return "";
  try {
    const parsed = JSON.parse(detail);
    if (parsed && typeof parsed === "object") {
      return Object.entries(parsed)
        .map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`)
        .join(" · ");
    }
  } catch {
    // plain text
  }
  return detail;
}

async function loadCall(id) {
  const { call, events } = await api(`/api/calls/${id}`);
  const state = callState(call);
  const tg = [call.talkgroup_label, call.talkgroup_tag, call.talkgroup_group]
    .filter(Boolean)
    .join(" · ");
  const fields = [
    field("System", systemName(call)),
    field("Talkgroup", `${call.talkgroup}${tg ? ` — ${tg}` : ""}`),
    field("Start", `${localTime(call.start_time)} (${call.start_time} UTC)`),
    field("Duration", duration(call)),
    field("Unit", call.source === null ? null : String(call.source)),
    field("Frequency", call.frequency ? `${(call.frequency / 1e6).toFixed(4)} MHz` : null),
    field("Emergency", call.emergency ? "yes" : null),
    field("State", el("span", { class: `state ${state.css}`, title: state.title, text: state.label })),
    field("Attempts", call.attempts ? String(call.attempts) : null),
    field("Last error", call.last_error),
    field("Audio", `${call.audio_name} · ${call.content_type} · ${bytes(call.size)}`),
    field("SHA-256", el("code", { text: call.sha256 })),
    field("Key", el("code", { text: call.key })),
    field("Object", call.object_key ? el("code", { text: `${call.bucket}/${call.object_key}` }) : null),
    field("Received", localTime(call.received_at)),
    field("Uploaded", call.uploaded_at ? localTime(call.uploaded_at) : null),
    field("Pruned", call.pruned_at ? localTime(call.pruned_at) : null),
    field("Protocol", `${call.protocol}${call.site ? ` at site ${call.site}` : ""}`),
  ]
    .filter(Boolean)
    .flat();
  const rows = events.map((e) =>
    el(
      "tr",
      {},
      el("td", { class: "time", text: localTime(e.at) }),
      el("td", {}, el("span", { class: `kind ${e.kind}`, text: e.kind })),
      el("td", { class: "detail", text: eventDetail(e.detail) }),
    ),
  );
  $("call-view").replaceChildren(
    el(
      "div",
      { class: "call-head" },
      el("a", { href: "#", class: "back", text: "← Calls" }),
      el("h2", { text: `Call ${call.id}` }),
      el("button", {
        type: "button",
        class: "play",
        text: "▶ Play",
        disabled: !playable(call),
        onclick: () => playCall(call),
      }),
    ),
    el("dl", { class: "fields" }, ...fields),
    el("h3", { text: `History (${events.length} events)` }),
    el(
      "table",
      { class: "events" },
      el("thead", {}, el("tr", {}, el("th", { text: "At" }), el("th", { text: "Event" }), el("th", { text: "Detail" }))),
      el("tbody", {}, ...rows),
    ),
  );
}

// -- the player -------------------------------------------------------------------------------

let nowPlaying = null; // the id of the call in the player
let playingCall = null;
let retried = false;

async function playbackUrl(call) {
  // With read keys the link carries a short-lived token for this one call (an <audio> cannot
  // send the Authorization header); without, it is the plain audio route.
  const { url } = await api(`/api/calls/${call.id}/playback`, { method: "POST" });
  return url;
}

async function playCall(call, { at = 0, retry = false } = {}) {
  const audio = $("audio");
  show($("player"), true);
  show($("player-error"), false);
  nowPlaying = call.id;
  playingCall = call;
  retried = retry;
  $("now-title").textContent = `${systemName(call)} · ${call.talkgroup_label || call.talkgroup}`;
  $("now-title").href = `#call/${call.id}`;
  $("now-detail").textContent = `${localTime(call.start_time)} · call ${call.id}`;
  audio.dataset.callId = String(call.id);
  delete audio.dataset.canplay;
  for (const row of document.querySelectorAll("#calls tr[data-id]")) {
    row.classList.toggle("playing", row.dataset.id === String(call.id));
  }
  try {
    audio.src = await playbackUrl(call);
    if (at) audio.currentTime = at;
    await audio.play();
  } catch (error) {
    if (error instanceof NeedKey || error instanceof ApiError) {
      handle(error, $("player-error"));
    } else if (error.name !== "AbortError") {
      // NotAllowedError (no user gesture) and the like: the controls still work
      $("player-error").textContent = error.message;
      show($("player-error"), true);
    }
  }
}

// Which call the player could start (for the eye: the row stays marked; for tests: a hook).
$("audio").addEventListener("canplay", () => {
  $("audio").dataset.canplay = $("audio").dataset.callId || "";
});

$("audio").addEventListener("error", () => {
  const audio = $("audio");
  if (!playingCall || !audio.getAttribute("src")) return;
  if (!retried) {
    // A link's token expires after minutes: ask for a fresh one once, and resume.
    playCall(playingCall, { at: audio.currentTime || 0, retry: true });
    return;
  }
  $("player-error").textContent = "This call cannot be played (see its history).";
  show($("player-error"), true);
});

function stopPlayer() {
  const audio = $("audio");
  audio.pause();
  audio.removeAttribute("src");
  audio.load();
  nowPlaying = null;
  playingCall = null;
  show($("player"), false);
}

$("player-close").addEventListener("click", stopPlayer);

// -- views and refresh ------------------------------------------------------------------------

let view = null;

function currentRoute() {
  const hash = location.hash.slice(1);
  const one = /^call\/([0-9]+)$/.exec(hash);
  if (one) return { view: "call", id: one[1] };
  const query = hash.startsWith("calls?") ? hash.slice("calls?".length) : "";
  return { view: "list", filters: new URLSearchParams(query) };
}

async function render() {
  show($("forget-key"), Boolean(key));
  const route = currentRoute();
  view = route.view;
  show($("list-view"), view === "list");
  show($("call-view"), view === "call");
  try {
    if (view === "call") {
      $("call-view").replaceChildren(el("p", { class: "muted", text: "Loading…" }));
      await Promise.all([loadSummary(), loadCall(route.id)]);
      $("refresh-note").textContent = "";
    } else {
      if (route.filters.toString() !== list.filters.toString()) {
        list.filters = route.filters;
        list.cursors = [];
        list.cursor = null;
      }
      fillFilters();
      await Promise.all([loadSummary(), loadList()]);
    }
    show($("key-prompt"), false);
    show($("main"), true);
  } catch (error) {
    show($("main"), !(error instanceof NeedKey));
    handle(error, view === "call" ? $("call-view") : $("list-error"));
  }
}

async function refresh() {
  const first = list.cursors.length === 0 && !list.cursor;
  if (view !== "list" || !first || document.hidden || !$("key-prompt").hidden) return;
  try {
    await Promise.all([loadSummary(), loadList()]);
  } catch (error) {
    handle(error, $("list-error"));
  }
}

window.addEventListener("hashchange", render);
setInterval(refresh, REFRESH_MS);
render();
