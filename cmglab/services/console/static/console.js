// The lab console page: services, devices, traces (live over server-sent events) and a sequence
// diagram of a device's journey or of one trace. Plain DOM + SVG: the lab has no internet.
"use strict";

const LANES = [
  ["client", "client"], ["entra", "Entra ID"], ["pki", "CRL host"], ["cmg", "CMG"],
  ["cmg-connection-point", "connection point"], ["management-point", "management point"],
];
const LANE_GAP = 175, ROW = 36, TOP = 56, SECTION = 26, SVGNS = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);
const state = { device: "", step: "", traceId: null, traces: new Map(), source: null, view: null };

function el(tag, attrs = {}, text) {  // an SVG element
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function html(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const clip = (s, n) => (s && s.length > n ? s.slice(0, n - 1) + "…" : s || "");
const clipStart = (s, n) => (s && s.length > n ? "…" + s.slice(s.length - n + 1) : s || "");  // URLs: the end says most
const time = (iso) => (iso || "").slice(11, 19);
const bytes = (n) => (n >= 1024 ? (n / 1024).toFixed(1) + " KB" : (n || 0) + " B");
const failed = (hop) => !hop.status || hop.status >= 400;
function pathOf(url) { try { const u = new URL(url); return u.pathname + u.search; } catch { return url || ""; } }

async function api(path, options = {}) {
  const token = sessionStorage.getItem("cmglab-admin");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const reply = await fetch(path, { ...options, headers });
  if (!reply.ok) throw new Error(path + ": HTTP " + reply.status);
  return reply.json();
}

// -- services and devices -------------------------------------------------------------------------
function renderServices(list) {
  const body = $("#services tbody");
  body.replaceChildren(...list.map((s) => {
    const tr = html("tr", { "data-service": s.name });
    const name = html("td"); name.append(html("span", { class: "dot " + s.health }), s.name);
    tr.append(name, html("td", {}, s.health), html("td", {}, s.url));
    if (sessionStorage.getItem("cmglab-admin")) {
      const td = html("td"), button = html("button", {}, "reset");
      button.onclick = () => api(`/api/services/${s.name}/reset`, { method: "POST" }).then(refreshAll);
      td.append(button); tr.append(td);
    }
    return tr;
  }));
}

function yesNo(v) { return html("td", { class: v ? "yes" : "no" }, v ? "yes" : "no"); }

async function refreshDevices() {
  const { devices, conflicts } = await api("/api/devices");
  // registrations that proposed another client's SMSID: `cmglab clients resolve ID new|merge|block`
  $("#conflicts tbody").replaceChildren(...(conflicts || []).map((c) => {
    const tr = html("tr", { "data-conflict": String(c.id), class: c.status === "pending" ? "fail" : "" });
    tr.append(...[c.sms_id, c.netbios_name, c.kind, c.status, c.new_sms_id || ""].map((v) => html("td", {}, v)));
    return tr;
  }));
  $("#devices tbody").replaceChildren(...devices.map((d) => {
    const tr = html("tr", { "data-device": d.name });
    const name = html("td"); const a = html("a", { href: "#" }, d.name);
    a.onclick = (e) => { e.preventDefault(); setFilter(d.name, state.step); };
    name.append(a);
    tr.append(name, yesNo(d.joined), yesNo(d.installed), yesNo(d.registered),
      html("td", {}, d.ccm_token_expires ? d.ccm_token_expires.replace("T", " ").slice(0, 19) : ""));
    return tr;
  }));
  const select = $("#filter-device"), known = new Set([...select.options].map((o) => o.value));
  for (const d of devices) if (!known.has(d.name)) select.append(html("option", { value: d.name }, d.name));
}

// -- trace list -----------------------------------------------------------------------------------
function renderTraceList() {
  const items = [...state.traces.values()].sort((a, b) => (a.start < b.start ? 1 : -1)).slice(0, 300);
  $("#traces").replaceChildren(...items.map((t) => {
    const li = html("li", { "data-trace": t.trace_id, class: (t.failed ? "failed " : "") +
      (t.trace_id === state.traceId ? "selected" : "") });
    li.append(html("span", {}, time(t.start)), html("span", { class: "step" }, t.step || "—"),
      html("span", {}, t.device || "(untagged)"), html("span", { title: t.title }, t.title),
      html("span", {}, String(t.status || "…")));
    li.onclick = () => openTrace(t.trace_id);
    return li;
  }));
  for (const t of items) if (t.step) addOption($("#filter-step"), t.step);
}
function addOption(select, value) {
  if (![...select.options].some((o) => o.value === value)) select.append(html("option", { value }, value));
}

// -- the sequence diagram -------------------------------------------------------------------------
function lanesFor(traces) {
  const used = new Set(["client"]);
  for (const t of traces) for (const h of t.hop_list) { used.add(h.service); used.add(h.caller); }
  return LANES.filter(([id]) => used.has(id));
}

function drawDiagram(traces, device) {
  const lanes = lanesFor(traces), x = {};
  lanes.forEach(([id], i) => { x[id] = 84 + i * LANE_GAP; });
  const rows = traces.reduce((n, t) => n + t.events.length + (traces.length > 1 ? 1 : 0), 0);
  const width = 168 + (lanes.length - 1) * LANE_GAP, height = TOP + rows * ROW + traces.length * 6;
  // the lane names stay in view (sticky) while the journey scrolls under them
  const head = el("svg", { width, height: TOP - 10, id: "lanes" });
  const svg = el("svg", { width, height, viewBox: `0 ${TOP - 10} ${width} ${height}`, id: "sequence" });
  for (const [id, label] of lanes) {
    svg.append(el("line", { class: "lifeline", x1: x[id], y1: TOP - 10, x2: x[id], y2: height + TOP }));
    const g = el("g", { class: "lane", "data-lane": id });
    g.append(el("rect", { class: "lane-box", x: x[id] - 78, y: 8, width: 156, height: 30, rx: 5 }));
    g.append(el("text", { class: "lane-name", x: x[id], y: 28, "text-anchor": "middle" },
      id === "client" && device ? `client (${clip(device, 12)})` : label));
    head.append(g);
  }
  let y = TOP;
  for (const trace of traces) {
    if (traces.length > 1) {
      const g = el("g", { class: "section", "data-trace": trace.trace_id });
      g.append(el("rect", { x: 4, y: y - 2, width: width - 8, height: SECTION - 6, rx: 3 }));
      const link = el("a", { href: "/trace/" + trace.trace_id });
      link.append(el("text", { x: 12, y: y + 15 }, `${trace.step || "untagged"} · ${time(trace.start)} · ` +
        `${trace.device || ""} · trace ${trace.trace_id.slice(0, 8)}…`));
      link.addEventListener("click", (e) => { e.preventDefault(); openTrace(trace.trace_id); });
      g.append(link); svg.append(g); y += SECTION + 6;
    }
    for (const ev of trace.events) { svg.append(drawEvent(trace, ev, x, y)); y += ROW; }
  }
  $("#diagram").replaceChildren(head, svg);
}

function arrow(x1, x2, y) {
  const dir = x2 > x1 ? 1 : -1;
  return [el("line", { x1, y1: y, x2: x2 - dir * 2, y2: y }),
    el("polygon", { points: `${x2},${y} ${x2 - dir * 9},${y - 4} ${x2 - dir * 9},${y + 4}`,
      fill: "currentColor" })];
}

function drawEvent(trace, ev, x, y) {
  const hop = trace.hop_list[ev.hop], request = ev.kind === "request";
  const from = request ? hop.caller : hop.service, to = request ? hop.service : hop.caller;
  const fail = !request && failed(hop);
  const g = el("g", { class: `hop ${ev.kind}${fail ? " fail" : ""}`, "data-service": hop.service,
    "data-caller": hop.caller, "data-index": hop.index, "data-status": hop.status, "data-step": trace.step });
  g.style.color = request ? "var(--accent)" : fail ? "var(--fail)" : "var(--ok)";
  const mid = (x[from] + x[to]) / 2, room = Math.abs(x[to] - x[from]) / 6.6;
  g.append(...arrow(x[from], x[to], y + 14));
  if (request) {
    g.append(el("text", { x: mid, y: y + 8, "text-anchor": "middle" },
      `${hop.method} ${clipStart(pathOf(hop.url), room - hop.method.length - 1)}`));
    if (hop.rewritten_url && showRewrite(trace, hop)) {
      g.append(el("text", { class: "rewrite", x: mid, y: y + 28, "text-anchor": "middle" },
        "rewritten → " + clipStart(hop.rewritten_url.replace(/^https?:\/\//, ""), room - 8)));
    }
  } else {
    g.append(el("text", { x: mid, y: y + 8, "text-anchor": "middle" },
      `${hop.status || "no reply"} · ${hop.elapsed_ms.toFixed(1)} ms · ${bytes(hop.response_bytes)}`));
    if (fail && hop.reason && (trace.failure_origin === hop.index || hop.depth === 0)) {
      // the reason may run left across the lanes: nothing else is drawn on this row
      const right = Math.max(x[from], x[to]) - 6;
      g.append(el("text", { class: "reason", x: right, y: y + 28, "text-anchor": "end" }, clip(hop.reason, right / 6.6)));
    }
  }
  g.append(el("title", {}, `${hop.service}: ${hop.method} ${hop.url}` +
    (hop.rewritten_url ? `\nrewritten: ${hop.rewritten_url}` : "") + `\nstatus ${hop.status}` +
    (hop.reason ? `\n${hop.reason}` : "")));
  g.addEventListener("click", () => pickHop(trace.trace_id, hop.index));
  return g;
}

// the connection point does the rewrite; without its hop in the trace the CMG's record says it
function showRewrite(trace, hop) {
  return hop.service === "cmg-connection-point" ||
    !trace.hop_list.some((h) => h.service === "cmg-connection-point");
}

function renderHops(traces) {
  const rows = [];
  for (const t of traces) for (const h of t.hop_list) {
    const tr = html("tr", { class: failed(h) ? "fail" : "", "data-trace": t.trace_id, "data-index": h.index });
    const auth = [h.auth_kind, h.auth_subject].filter(Boolean).join(": ");
    for (const v of [h.index + 1, h.service, h.method, h.url, h.rewritten_url || "", h.status,
      `${bytes(h.request_bytes)} / ${bytes(h.response_bytes)}`, `${h.elapsed_ms.toFixed(1)} ms`, auth,
      h.client_cert_subject || "", h.reason || ""]) tr.append(html("td", {}, String(v ?? "")));
    rows.push(tr);
  }
  $("#hops tbody").replaceChildren(...rows);
}

function pickHop(traceId, index) {
  for (const tr of document.querySelectorAll("#hops tr.picked")) tr.classList.remove("picked");
  const row = document.querySelector(`#hops tr[data-trace="${traceId}"][data-index="${index}"]`);
  if (row) { row.classList.add("picked"); row.scrollIntoView({ block: "nearest" }); }
}

// -- views ----------------------------------------------------------------------------------------
let viewReads = 0;
async function showView() {
  const read = ++viewReads;
  let traces, title, note;
  if (state.traceId) {
    try { traces = [await api("/api/traces/" + state.traceId)]; } catch { traces = []; }
    const t = traces[0];
    title = t ? `${t.step || "trace"} · ${t.device || "untagged"}` : "Trace not found";
    note = t ? `trace ${t.trace_id} · ${t.hops} hops · started ${t.start.replace("T", " ")}` :
      `The console has no trace ${state.traceId} (yet).`;
  } else {
    traces = (await api(`/api/journey?device=${enc(state.device)}&step=${enc(state.step)}&limit=100`)).traces;
  }
  if (read !== viewReads) return;  // a newer read started while this one waited: never draw an older view
  if (state.traceId) {
    $("#permalink").href = "/trace/" + state.traceId; $("#permalink").hidden = false; $("#back").hidden = false;
  } else {
    title = state.device ? `Journey of ${state.device}` : "Journey (all devices)";
    if (state.step) title += ` · ${state.step}`;
    note = traces.length ? `${traces.length} traces, oldest first; live.` : "No traces yet: waiting for requests.";
    $("#permalink").hidden = true; $("#back").hidden = true;
  }
  $("#view-title").textContent = title; $("#view-note").textContent = note;
  state.view = traces;
  drawDiagram(traces, state.device || (traces[0] && traces[0].device));
  renderHops(traces);
  renderTraceList();
}
const enc = encodeURIComponent;

function openTrace(id) {
  state.traceId = id;
  history.pushState({}, "", "/trace/" + id);
  showView();
}

function setFilter(device, step) {
  state.device = device; state.step = step; state.traceId = null;
  addOption($("#filter-device"), device); $("#filter-device").value = device; $("#filter-step").value = step;
  const q = new URLSearchParams(); if (device) q.set("device", device); if (step) q.set("step", step);
  history.pushState({}, "", "/" + (q.toString() ? "?" + q : ""));
  refreshAll();
}

async function refreshTraces() {
  const { traces } = await api(`/api/traces?device=${enc(state.device)}&step=${enc(state.step)}`);
  state.traces = new Map(traces.map((t) => [t.trace_id, t]));
}

async function refreshAll() {
  listen();  // subscribe before reading: a trace that lands while the view loads still redraws it
  const { services, steps } = await api("/api/services");
  renderServices(services);
  for (const s of steps) addOption($("#filter-step"), s);
  await Promise.all([refreshTraces(), refreshDevices()]);
  await showView();
}

// -- live updates ---------------------------------------------------------------------------------
let redraw = null;
function scheduleRedraw(traceId) {
  clearTimeout(redraw);  // a burst of hops redraws once
  redraw = setTimeout(() => {
    if (!state.traceId || state.traceId === traceId) showView(); else renderTraceList();
    refreshDevices();
  }, 250);
}
function listen() {
  if (state.source) state.source.close();
  const source = new EventSource(`/api/events?device=${enc(state.device)}&step=${enc(state.step)}`);
  state.source = source;
  source.onopen = () => {
    $("#live").textContent = "live"; $("#live").className = "badge on";
    scheduleRedraw(state.traceId);  // (re)connected: what was published before the stream opened is read now
  };
  source.onerror = () => { $("#live").textContent = "reconnecting…"; $("#live").className = "badge off"; };
  source.addEventListener("services", (e) => renderServices(JSON.parse(e.data)));
  source.addEventListener("trace", (e) => {
    const t = JSON.parse(e.data);
    state.traces.set(t.trace_id, t);
    scheduleRedraw(t.trace_id);
  });
}

function fromLocation() {
  const m = location.pathname.match(/^\/trace\/([0-9a-f]{32})$/);
  const q = new URLSearchParams(location.search);
  state.traceId = m ? m[1] : null;
  state.device = q.get("device") || ""; state.step = q.get("step") || "";
  addOption($("#filter-device"), state.device); addOption($("#filter-step"), state.step);
  $("#filter-device").value = state.device; $("#filter-step").value = state.step;
}

function adminMode() {
  const on = !!sessionStorage.getItem("cmglab-admin");
  $("#mode").textContent = on ? "admin" : "read-only";
  $("#mode").className = "badge" + (on ? " on" : "");
}

window.addEventListener("popstate", () => { fromLocation(); refreshAll(); });
$("#filter-device").onchange = (e) => setFilter(e.target.value, state.step);
$("#filter-step").onchange = (e) => setFilter(state.device, e.target.value);
$("#admin-token").onchange = (e) => {
  if (e.target.value) sessionStorage.setItem("cmglab-admin", e.target.value);
  else sessionStorage.removeItem("cmglab-admin");
  adminMode(); refreshAll();
};
api("/api/session").then((s) => { $("#site").textContent = `site ${s.site_code} · ${s.lab}`; });
fromLocation(); adminMode(); refreshAll();
