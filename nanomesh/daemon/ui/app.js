// The nanomesh dashboard: reads this peer's API (same origin), follows its
// event stream, and with the management token calls the write endpoints.
// Everything a peer sent is rendered with textContent, never as markup.
"use strict";

const TOKEN_KEY = "nanomesh.token";
const REFRESH_MS = 5000;      // full re-read of the tables while nothing happens
const DEBOUNCE_MS = 300;      // an event burst (a plan with many moves) -> one re-read
const POLL_MS = 2000;         // events polled when the stream is refused or fails
const RETRY_STREAM_MS = 30000; // while polling, try the stream again this often
const MAX_EVENTS = 300;       // events kept on the page

const state = { events: [], lastSeq: 0, life: null, source: null, pollTimer: null,
                refreshTimer: null, members: [], raftNames: {} };

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function badge(value) {
  const safe = String(value).replace(/[^a-z]/g, "");
  return el("span", value, "badge state-" + safe);
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, { method, headers, cache: "no-store",
                                    body: body === undefined ? undefined : JSON.stringify(body) });
  let doc = null;
  try { doc = await reply.json(); } catch (_) { doc = null; }
  if (!reply.ok) {
    const why = doc && typeof doc.error === "string" ? doc.error : reply.statusText;
    throw new Error(why + " (HTTP " + reply.status + ")");
  }
  return doc;
}

function notice(text) { $("notice").textContent = text || ""; }

// ------------------------------------------------------------------ tables

function renderMembers(members) {
  state.members = members;
  state.raftNames = {};
  for (const m of members) {
    const raft = (m.profile || {}).raft;
    if (raft && typeof raft.addr === "string") state.raftNames[raft.addr] = m.name;
  }
  const body = $("members").tBodies[0];
  body.replaceChildren();
  for (const m of members) {
    const p = m.profile || {};
    const row = el("tr");
    row.dataset.member = m.name;
    row.dataset.state = m.state;
    const cpu = p.cpu || {}, mem = p.memory || {}, power = p.power || {};
    const devices = Array.isArray(p.devices) ? p.devices.map((d) => d && d.type).join(", ") : "";
    const labels = p.labels && typeof p.labels === "object"
      ? Object.entries(p.labels).map(([k, v]) => k + "=" + v).join(", ") : "";
    let powerText = power.source || "-";
    if (typeof power.battery_percent === "number") powerText += " " + Math.round(power.battery_percent) + "%";
    const role = p.raft && p.raft.role ? p.raft.role : "-";
    const cells = [el("td", m.name), el("td"), el("td", m.address), el("td", role),
                   el("td", cpu.cores ? cpu.cores + "x " + (cpu.arch || "?") : "-"),
                   el("td", mem.total_mb ? (mem.available_mb + "/" + mem.total_mb) : "-"),
                   el("td", powerText), el("td", devices || "-"), el("td", labels || "-")];
    cells[1].appendChild(badge(m.state));
    if (Array.isArray(p.degraded) && p.degraded.length) {
      cells[1].appendChild(el("div", "degraded: " + p.degraded.join("; "), "warn"));
    }
    row.append(...cells);
    body.appendChild(row);
  }
  const alive = members.filter((m) => m.state === "alive").length;
  $("member-count").textContent = "(" + alive + " of " + members.length + " alive)";
}

function raftName(addr) { return addr ? (state.raftNames[addr] || addr) : "none"; }

function renderStatus(s) {
  $("leader").textContent = s.leader ? raftName(s.leader) : "none (no leader heard)";
  $("leader").dataset.leader = s.leader ? raftName(s.leader) : "";
  $("term").textContent = s.term;
  $("voters").textContent = (s.voters || []).map(raftName).join(", ") || "-";
  $("epoch").textContent = s.epoch === null ? "-" : s.epoch;
}

function actionButton(label, handler) {
  const b = el("button", label);
  b.type = "button";
  b.disabled = !token();
  b.title = token() ? "" : "enter the management token first";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await handler(); notice(label + ": done"); } catch (err) { notice(label + ": " + err.message); }
    b.disabled = !token();
    scheduleRefresh();
  });
  return b;
}

function renderServices(services, placement) {
  const body = $("services").tBodies[0];
  body.replaceChildren();
  const byService = {};
  for (const inst of placement.instances || []) {
    (byService[inst.service] = byService[inst.service] || []).push(inst);
  }
  const deployments = placement.deployments || {};
  for (const svc of services) {
    const row = el("tr");
    row.dataset.service = svc.name;
    const spec = svc.spec || {};
    const dep = deployments[svc.name] || {};
    const instances = el("td");
    for (const inst of byService[svc.name] || []) {
      const line = el("div", null, "instance");
      line.dataset.instance = inst.instance;
      line.dataset.peer = inst.peer;
      line.dataset.state = inst.state;
      line.append(el("span", inst.instance + " on " + inst.peer + " "), badge(inst.state));
      if (inst.health && inst.health !== "none") line.append(" ", badge(inst.health));
      if (inst.current === false) line.append(el("span", " (older version)", "muted"));
      instances.appendChild(line);
    }
    for (const iid of (placement.unplaced || []).filter((i) => i.split("/")[0] === svc.name)) {
      const line = el("div", iid + " unplaced", "instance warn");
      line.dataset.instance = iid;
      instances.appendChild(line);
    }
    const actions = el("td");
    const name = encodeURIComponent(svc.name);
    actions.append(
      actionButton("idle", () => api("POST", "/v1/services/" + name + "/idle")),
      actionButton("activate", () => api("POST", "/v1/services/" + name + "/activate")),
      actionButton("undeploy", () => {
        if (!window.confirm("Undeploy " + svc.name + "?")) return Promise.resolve();
        return api("DELETE", "/v1/services/" + name);
      }));
    row.append(el("td", svc.name), el("td", svc.version || "-"), el("td", svc.mode || "active"),
               el("td", spec.replicas === undefined ? "-" : spec.replicas),
               el("td", dep.status ? dep.status + (dep.reason ? ": " + dep.reason : "") : "-"),
               instances, actions);
    body.appendChild(row);
  }
  const unplaceable = placement.unplaceable || {};
  const lines = Object.entries(unplaceable).map(([svc, reasons]) =>
    svc + ": " + Object.entries(reasons).map(([peer, why]) => peer + " " + why).join("; "));
  $("unplaced").textContent = lines.length ? "cannot place: " + lines.join(" | ") : "";
}

// Tables are rebuilt only when what they show changed: a rebuild replaces the
// buttons under the operator's pointer and the text they may be selecting.
const shown = {};
function changed(key, ...docs) {
  const text = JSON.stringify(docs);
  if (shown[key] === text) return false;
  shown[key] = text;
  return true;
}

async function refresh() {
  state.refreshTimer = null;
  try {
    const [self, members, status] = await Promise.all(
      [api("GET", "/v1/self"), api("GET", "/v1/members"), api("GET", "/v1/status")]);
    $("peer-name").textContent = "@ " + self.name;
    if (changed("members", members)) renderMembers(members);
    if (changed("status", status, state.raftNames)) renderStatus(status);
  } catch (err) {
    setMode("offline");
    notice("cannot read this peer: " + err.message);
    return;
  }
  try {
    const [services, placement] = await Promise.all(
      [api("GET", "/v1/services"), api("GET", "/v1/placement")]);
    if (changed("services", services, placement, token() !== "")) {
      renderServices(services, placement);
    }
    if ($("notice").textContent.startsWith("cannot read")) notice("");
  } catch (err) {
    // 503 while this peer has no consensus node yet (it just started).
    notice("services: " + err.message);
  }
}

function scheduleRefresh() {
  if (state.refreshTimer === null) state.refreshTimer = setTimeout(refresh, DEBOUNCE_MS);
}

// ------------------------------------------------------------------ events

function addEvent(ev, life) {
  if (life !== undefined && life !== state.life) {
    if (state.life !== null) addNote("peer restarted: event numbers start again");
    state.life = life;
    state.lastSeq = 0;
  }
  if (ev.seq <= state.lastSeq) return;
  state.lastSeq = ev.seq;
  const item = el("li");
  item.value = ev.seq;
  item.dataset.type = ev.type;
  const when = new Date(ev.time * 1000).toLocaleTimeString();
  item.append(el("span", when + " "), el("span", ev.type, "type"),
              el("span", " " + ev.subject + ": " + ev.message));
  const list = $("events");
  list.insertBefore(item, list.firstChild);
  while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
  scheduleRefresh();
}

function addNote(text) {
  const item = el("li", text, "muted");
  $("events").insertBefore(item, $("events").firstChild);
}

function setMode(mode) {
  $("live").dataset.mode = mode;
  $("live").textContent = { live: "live", polling: "polling", offline: "offline",
                            connecting: "connecting" }[mode];
}

function follow() {
  if (!window.EventSource) { startPolling(); return; }
  const since = state.lastSeq;
  const source = new EventSource("/v1/events?follow=1&since=" + since);
  state.source = source;
  source.onopen = () => { setMode("live"); stopPolling(); };
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch (_) { return; }
    if (!ev || typeof ev.seq !== "number") return;
    addEvent(ev, String(msg.lastEventId).split(":")[0]);
  };
  source.onerror = () => {
    // EventSource reconnects by itself after a dropped connection; it gives up
    // (CLOSED) when the answer is not a stream (503: too many followers).
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      state.source = null;
      startPolling();
      setTimeout(() => { if (state.source === null) follow(); }, RETRY_STREAM_MS);
    } else {
      setMode("connecting");
    }
  };
}

async function pollOnce() {
  try {
    const events = await api("GET", "/v1/events?since=" + state.lastSeq);
    if (events.length && events[0].seq <= state.lastSeq) {
      addNote("peer restarted: event numbers start again");
      state.lastSeq = 0;
    }
    for (const ev of events) addEvent(ev);
    setMode("polling");
  } catch (err) {
    setMode("offline");
  }
}

function startPolling() {
  if (state.pollTimer !== null) return;
  pollOnce();
  state.pollTimer = setInterval(pollOnce, POLL_MS);
}

function stopPolling() {
  if (state.pollTimer !== null) clearInterval(state.pollTimer);
  state.pollTimer = null;
}

// ------------------------------------------------------------------ token and deploy

function showAccess() {
  $("access").textContent = token() ? "token set: writes enabled" : "read-only";
  $("deploy").disabled = !token();
  for (const b of document.querySelectorAll("#services button")) b.disabled = !token();
}

function setup() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    showAccess();
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showAccess();
    refresh();
  });
  $("deploy").addEventListener("click", async () => {
    let manifest;
    try { manifest = JSON.parse($("manifest").value); } catch (err) {
      notice("the manifest is not JSON: " + err.message); return;
    }
    try {
      const reply = await api("POST", "/v1/services", manifest);
      notice("deployed " + reply.name + " (revision " + reply.revision + ")");
    } catch (err) { notice("deploy: " + err.message); }
    scheduleRefresh();
  });
  showAccess();
  refresh();
  setInterval(refresh, REFRESH_MS);
  follow();
}

document.addEventListener("DOMContentLoaded", setup);
