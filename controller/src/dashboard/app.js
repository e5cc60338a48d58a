// Understudy dashboard: follows the leader's event stream
// (`/api/v1/events?status=1`: a `status` event at least every second and after
// every committed history line, and the `history` lines themselves). No
// framework, no build step: served from the controller binary.
"use strict";

const STALE_STREAM_MS = 3000; // no status for this long: the page says so and greys out
const state = {
  bases: [location.origin], // HTTP addresses of the controllers, learnt from status
  baseIndex: 0,
  es: null,
  lastStatusAt: 0, // client clock
  skewMs: 0, // server clock - client clock
  status: null,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "style") e.setAttribute("style", v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function addTo(parent, ...xs) {
  for (const x of xs) if (x) parent.append(x);
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1000) return `${Math.round(v)} ms`;
  if (v < 60000) return `${(v / 1000).toFixed(1)} s`;
  const m = Math.floor(v / 60000);
  return `${m} min ${Math.round((v % 60000) / 1000)} s`;
}

function clock(unixMs) {
  return new Date(unixMs).toLocaleTimeString([], { hour12: false });
}

function connect() {
  if (state.es) state.es.close();
  const base = state.bases[state.baseIndex % state.bases.length];
  const es = new EventSource(`${base}/api/v1/events?status=1`);
  state.es = es;
  es.addEventListener("status", (e) => {
    const msg = JSON.parse(e.data);
    state.lastStatusAt = Date.now();
    state.skewMs = msg.now_unix_ms - Date.now();
    learnMembers(msg.status);
    render(msg.status);
    setLive(true, `live from controller ${msg.status.cluster?.answered_by ?? "?"}`);
  });
  es.addEventListener("history", (e) => addEvent(JSON.parse(e.data)));
  es.onerror = () => {
    // The node died or lost leadership: try the next controller (a follower
    // redirects to the leader).
    es.close();
    state.es = null;
    setLive(false, "reconnecting…");
    state.baseIndex += 1;
    setTimeout(connect, 700);
  };
}

function learnMembers(st) {
  const http = st?.cluster?.http || {};
  const bases = Object.values(http).map((a) => `http://${a}`);
  if (!bases.includes(location.origin)) bases.unshift(location.origin);
  const current = state.bases[state.baseIndex % state.bases.length];
  state.bases = bases;
  state.baseIndex = Math.max(0, bases.indexOf(current));
}

function setLive(live, text) {
  const c = document.getElementById("conn");
  c.dataset.live = String(live);
  c.textContent = text;
  document.body.classList.toggle("disconnected", !live);
}

// The stream went quiet: never show old data as current.
setInterval(() => {
  if (!state.lastStatusAt) return;
  const age = Date.now() - state.lastStatusAt;
  if (age > STALE_STREAM_MS) setLive(false, `no update for ${ms(age)}: data as of ${clock(state.lastStatusAt)}`);
}, 500);

function addEvent(ev) {
  const ol = document.getElementById("events");
  ol.prepend(el("li", {}, `${clock(ev.at_unix_ms)} ${ev.pair_id}${ev.state ? ` [${ev.state}]` : ""} e${ev.epoch}: ${ev.event}`));
  while (ol.children.length > 200) ol.lastChild.remove();
}

function render(st) {
  if (!state.status) {
    // The first status: the recent history of every pair, oldest first, so
    // the event list starts with what happened before the page was opened.
    const lines = (st.pairs || []).flatMap((p) => (p.history || []).map((h) => ({ ...h, pair_id: p.id, state: "" })));
    lines.sort((a, b) => a.at_unix_ms - b.at_unix_ms);
    for (const l of lines.slice(-100)) addEvent(l);
  }
  state.status = st;
  renderCluster(st.cluster);
  const main = document.getElementById("pairs");
  const seen = new Set();
  for (const p of st.pairs || []) {
    seen.add(p.id);
    const row = pairRow(p);
    const old = main.querySelector(`.pair[data-pair="${CSS.escape(p.id)}"]`);
    if (old) old.replaceWith(row);
    else main.append(row);
  }
  for (const row of [...main.children]) if (!seen.has(row.dataset.pair)) row.remove();
}

function renderCluster(c) {
  const box = document.getElementById("cluster");
  box.replaceChildren();
  if (!c) return;
  box.append(el("div", { class: "member" }, el("b", { text: "Raft " }), `term ${c.term}, leader ${c.leader_id ?? "none"}, applied ${c.last_applied_index}`, c.insecure ? " — INSECURE (no TLS)" : ""));
  for (const m of c.members || []) {
    box.append(el("div", { class: `member${m.leader ? " leader" : ""}`, "data-member": m.id },
      el("b", { text: `node ${m.id}` }), ` ${m.addr}`, m.leader ? " — leader" : "",
      m.voter ? "" : " (learner)", m.matched_index != null ? ` · matched ${m.matched_index}` : ""));
  }
}

function serverRow(p, s) {
  const d = s.drbd || {};
  const h = s.host || {};
  const stale = s.stale || !s.connected;
  const age = s.last_report_age_ms;
  const ageText = age == null ? "never reported" : s.stale ? `${ms(age)} ago (stale)` : !s.connected ? `${ms(age)} ago (disconnected)` : `${ms(age)} ago`;
  return el("tr", { class: `server${stale ? " stale" : ""}`, "data-server": s.id, "data-stale": String(stale) },
    el("td", {}, el("b", { text: s.id }), " ", s.id === p.serving ? el("span", { class: "badge serving", text: "serving" }) : null,
      h.client_ip_present ? el("span", { class: "badge ip", text: `holds ${p.client_ip}` }) : null),
    el("td", { text: s.configured_role }),
    el("td", { class: "drbd-role", text: d.role || "–" }),
    el("td", { class: "disk", text: d.disk || "–" }),
    el("td", { text: [d.connection, d.replication].filter(Boolean).join(" / ") || "–" }),
    el("td", { text: d.peer_disk || "–" }),
    el("td", { text: d.done_percent != null ? `${d.done_percent.toFixed(1)} %` : (d.out_of_sync_bytes ? `${d.out_of_sync_bytes} B out of sync` : "in sync") }),
    el("td", { text: [h.mounted ? "mounted" : null, (h.exports || []).length ? "exporting" : null].filter(Boolean).join(", ") || "–" }),
    el("td", { class: "age", text: ageText }),
  );
}

function resyncBar(p) {
  const r = p.resync;
  if (!r || r.percent == null) return null;
  const pct = Math.max(0, Math.min(100, r.percent));
  return el("div", { class: "resync" }, el("span", { text: `Resync of ${r.server_id}` }),
    el("div", { class: "bar" }, el("div", { style: `width:${pct}%` }), el("span", { text: `${pct.toFixed(1)} %` })),
    el("span", { text: [r.rate_kib_per_s != null ? `${(r.rate_kib_per_s / 1024).toFixed(1)} MiB/s` : null, r.eta_ms != null ? `ETA ${ms(r.eta_ms)}` : "ETA –"].filter(Boolean).join(" · ") }));
}

// A plan's steps drawn to scale: one bar per step, width by duration; the
// running step grows live; time the steps do not account for (commits,
// pauses) is the grey tail.
function timeline(plan, title) {
  if (!plan || !plan.steps) return null;
  const now = Date.now() + state.skewMs;
  const durs = plan.steps.map((s) => {
    if (s.duration_ms != null) return s.duration_ms;
    if (s.status === "running" && s.started_unix_ms) return Math.max(0, now - s.started_unix_ms);
    return 0;
  });
  const wall = (plan.finished_unix_ms ?? now) - plan.started_unix_ms;
  const stepsTotal = durs.reduce((a, b) => a + b, 0);
  const total = Math.max(wall, stepsTotal, 1);
  const bar = el("div", { class: "tl" });
  const legend = el("div", { class: "legend" });
  plan.steps.forEach((s, i) => {
    if (!durs[i] && s.status !== "running") return;
    const w = (100 * durs[i]) / total;
    bar.append(el("div", { class: `seg ${s.status}`, style: `width:${w}%`, title: `${s.step}: ${ms(durs[i])} ${s.detail || ""}`, "data-step": s.step }, w > 6 ? s.step : ""));
    legend.append(el("span", {}, el("b", { text: s.step }), ` ${ms(durs[i])}${s.status === "running" ? " (running)" : s.status === "failed" ? " (failed)" : ""}${s.attempts > 1 ? ` ×${s.attempts}` : ""}`));
  });
  if (wall > stepsTotal) {
    bar.append(el("div", { class: "seg other", style: `width:${(100 * (wall - stepsTotal)) / total}%`, title: "commits and pauses between steps" }));
  }
  const what = plan.kind || "plan";
  const head = plan.finished_unix_ms
    ? `${what} ${plan.from} → ${plan.to} (epoch ${plan.epoch}) at ${clock(plan.started_unix_ms)}: ${plan.outcome} in ${ms(wall)}`
    : `${what} ${plan.from} → ${plan.to} (epoch ${plan.epoch}) running for ${ms(wall)}`;
  return el("div", { class: "timeline", "data-timeline": title },
    el("div", { class: "title" }, el("b", { text: title }), " ", head), bar, legend);
}

function pairRow(p) {
  const servers = p.servers || [];
  const allStale = servers.length > 0 && servers.every((s) => s.stale || !s.connected);
  const row = el("section", { class: `pair s-${p.state}${allStale ? " stale" : ""}`, "data-pair": p.id, "data-state": p.state });
  const ipHolder = servers.filter((s) => s.host?.client_ip_present)
    .map((s) => (s.stale || !s.connected ? `${s.id} (stale report)` : s.id));
  row.append(el("div", { class: "pair-head" },
    el("h2", { text: p.id }),
    el("span", { class: `state s-${p.state}`, text: p.state }),
    el("span", { class: "reason", text: p.state_reason })));
  row.append(el("div", { class: "facts" },
    el("span", {}, el("i", { text: "serving " }), p.serving),
    el("span", {}, el("i", { text: "epoch " }), p.epoch),
    el("span", {}, el("i", { text: "client IP " }), `${p.client_ip} on `, ipHolder.length ? ipHolder.join(" + ") : "nobody"),
    el("span", {}, el("i", { text: "resource " }), p.resource),
    p.zone ? el("span", {}, el("i", { text: "zone " }), p.zone) : null,
    p.paused ? el("span", { text: `PAUSED ${p.paused}` }) : null,
    p.maintenance ? el("span", { text: `maintenance ${p.maintenance}` }) : null,
    p.spare ? el("span", {}, el("i", { text: "spare " }), `${p.spare.server_id} (${p.spare.state})`) : null));
  const table = el("table", { class: "servers" },
    el("tr", {}, ...["server", "configured", "DRBD role", "disk", "connection", "peer disk", "sync", "NFS", "last report"].map((h) => el("th", { text: h }))));
  for (const s of servers) table.append(serverRow(p, s));
  row.append(table);
  addTo(row, resyncBar(p));
  if (p.alerts?.length) row.append(el("ul", { class: "alerts" }, p.alerts.map((a) => el("li", { text: a }))));
  if (p.findings?.length) row.append(el("ul", { class: "findings" }, p.findings.map((f) => el("li", { class: f.severity, text: `${f.severity}: ${f.subject}: ${f.problem} — fix: ${f.fix}` }))));
  if (p.provisioning_error) row.append(el("ul", { class: "alerts" }, el("li", { text: p.provisioning_error })));
  addTo(row, timeline(p.failover, "Failover in flight:") || timeline(p.last_failover, "Last failover:"));
  addTo(row, timeline(p.rebuild, "Rebuild in flight:") || timeline(p.last_rebuild, "Last rebuild:"));
  return row;
}

connect();
