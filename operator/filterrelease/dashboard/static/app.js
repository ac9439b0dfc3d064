// The filterrelease dashboard: plain DOM, no framework, nothing fetched from elsewhere.
// Releases arrive by Server-Sent Events (/api/stream); a release page fetches its details when
// opened and again when that release changes, and its Events every few seconds while open.
// Every text from the cluster goes in through textContent, never as HTML.
"use strict";

const TOKEN = document.querySelector('meta[name="filterrelease-token"]').content;
const READ_ONLY = document.querySelector('meta[name="filterrelease-read-only"]').content === "true";
const PHASES = ["Pending", "Progressing", "Paused", "Healthy", "Degraded"];
const EVENTS_EVERY_MS = 5000;
const LABELS = {
  "promote": "Promote", "promote-full": "Promote fully", "abort": "Abort",
  "pause": "Pause", "resume": "Resume", "retry": "Retry", "undo": "Undo",
};
const CONFIRM = {
  "abort": "Abort the rollout? The canary pods go back to the stable version.",
  "undo": "Undo? The release goes back to the newest good version before this one.",
};

const state = {
  rows: new Map(),      // "ns/name" → row
  current: null,        // the open release's "ns/name", or null on the list
  detail: null,
  loading: false,
  again: false,
  eventsTimer: null,
  resultPhase: null,    // the phase the shown request was sent in; its answer goes with it
};

const $ = (id) => document.getElementById(id);
const keyOf = (ns, name) => `${ns}/${name}`;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function badge(phase) {
  const known = PHASES.includes(phase) ? phase : "other";
  return el("span", { class: `badge phase-${known}`, text: phase || "Pending" });
}

function number(value) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString();
}

function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 120) return `${Math.floor(s)}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString([], { hour12: false });
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : `${d.toLocaleString([], { hour12: false })} (${age(iso)} ago)`;
}

// -- the live list -------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/stream");
  source.onmessage = (e) => receive(JSON.parse(e.data));
  source.onerror = () => setConnection({ ok: false, message: "connection lost: reconnecting" });
}

function receive(message) {
  switch (message.type) {
    case "snapshot":
      state.rows = new Map(message.rows.map((r) => [keyOf(r.namespace, r.name), r]));
      setConnection(message.connection);
      renderList();
      if (state.current) refreshDetail();
      break;
    case "release": {
      const row = message.row;
      const key = keyOf(row.namespace, row.name);
      state.rows.set(key, row);
      renderList();
      if (key === state.current) refreshDetail();
      break;
    }
    case "deleted": {
      const key = keyOf(message.namespace, message.name);
      state.rows.delete(key);
      renderList();
      if (key === state.current) $("release-message").textContent = "This release was deleted.";
      break;
    }
    case "connection":
      setConnection(message);
      break;
    default:
      break;
  }
}

function setConnection(connection) {
  const node = $("connection");
  const text = connection.ok ? "● live" : connection.message;
  if (node.textContent !== text) node.textContent = text;
  node.classList.toggle("down", !connection.ok);
}

function renderList() {
  const nsSelect = $("filter-namespace");
  const phaseSelect = $("filter-phase");
  const rows = [...state.rows.values()];
  fillOptions(nsSelect, [...new Set(rows.map((r) => r.namespace))].sort(), "All namespaces");
  const phases = [...PHASES, ...[...new Set(rows.map((r) => r.phase))].filter((p) => !PHASES.includes(p))];
  fillOptions(phaseSelect, phases, "All phases");
  const inNamespace = rows.filter((r) => !nsSelect.value || r.namespace === nsSelect.value);
  const counts = $("counts");
  counts.replaceChildren(...phases.map((phase) => {
    const n = inNamespace.filter((r) => r.phase === phase).length;
    return el("li", { "data-phase": phase }, badge(phase), ` ${n}`);
  }));
  const shown = inNamespace.filter((r) => !phaseSelect.value || r.phase === phaseSelect.value);
  const body = $("releases").tBodies[0];
  body.replaceChildren(...shown.map(listRow));
  $("empty").hidden = shown.length > 0;
}

function fillOptions(select, values, allLabel) {
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join("\n") === values.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: allLabel }),
    ...values.map((v) => el("option", { value: v, text: v })));
  select.value = values.includes(chosen) ? chosen : "";
}

function listRow(row) {
  const href = `#/${encodeURIComponent(row.namespace)}/${encodeURIComponent(row.name)}`;
  const a = row.analysis;
  const analysis = a ? `${a.metric}: ${a.phase} ${number(a.value)}` : "";
  return el("tr", { "data-key": keyOf(row.namespace, row.name), "data-phase": row.phase },
    el("td", { text: row.namespace }),
    el("td", {}, el("a", { href, text: row.name })),
    el("td", { title: row.message }, badge(row.phase)),
    el("td", { text: row.stable }),
    el("td", { text: row.canary }),
    el("td", { class: "num", text: row.step }),
    el("td", { class: "num", text: row.weight === null || row.weight === undefined ? "" : `${row.weight}%` }),
    el("td", { class: "num", text: row.proxies }),
    el("td", { text: analysis }),
    el("td", { class: "num", "data-created": row.created, text: age(row.created) }));
}

// -- a release -----------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  clearInterval(state.eventsTimer);
  if (parts.length === 2) {
    state.current = keyOf(parts[0], parts[1]);
    state.detail = null;
    $("list-view").hidden = true;
    $("release-view").hidden = false;
    $("release-title").textContent = state.current;
    $("action-result").textContent = "";
    state.resultPhase = null;
    for (const id of ["actions", "steps", "pods", "metrics", "plugins"]) $(id).replaceChildren();
    refreshDetail();
    state.eventsTimer = setInterval(refreshEvents, EVENTS_EVERY_MS);
    $("release-title").focus();
  } else {
    state.current = null;
    $("release-view").hidden = true;
    $("list-view").hidden = false;
    renderList();
  }
}

function apiPath(key) {
  const [ns, name] = [key.slice(0, key.indexOf("/")), key.slice(key.indexOf("/") + 1)];
  return `/api/releases/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
}

async function refreshDetail() {
  // One fetch at a time; changes that come meanwhile are fetched once more after it.
  if (state.loading) { state.again = true; return; }
  const key = state.current;
  state.loading = true;
  try {
    const response = await fetch(apiPath(key), { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (key !== state.current) return;
    if (!response.ok) {
      $("release-message").textContent = body.message || `error ${response.status}`;
      return;
    }
    state.detail = body;
    renderDetail(body);
  } catch (err) {
    if (key === state.current) $("release-message").textContent = `could not load: ${err}`;
  } finally {
    state.loading = false;
    if (state.again) { state.again = false; if (state.current) refreshDetail(); }
  }
}

async function refreshEvents() {
  const key = state.current;
  if (!key) return;
  try {
    const response = await fetch(`${apiPath(key)}/events`);
    if (response.ok && key === state.current) renderEvents((await response.json()).events);
  } catch (err) {
    // The next tick tries again; the connection indicator tells about a lost server.
  }
}

function renderDetail(view) {
  const r = view.release;
  const phase = $("release-phase");
  if (phase.textContent !== r.phase) {
    phase.textContent = r.phase;
    phase.className = `badge phase-${PHASES.includes(r.phase) ? r.phase : "other"}`;
  }
  if ($("release-message").textContent !== r.message) $("release-message").textContent = r.message;
  // A request's answer speaks of the phase it was sent in; once the release is in another one
  // the answer is history (the Events keep it), so it goes.
  if (state.resultPhase && state.resultPhase !== r.phase) {
    state.resultPhase = null;
    $("action-result").textContent = "";
  }
  const facts = [
    ["stable", "Stable", r.stable || "–"], ["canary", "Canary", r.canary || "–"],
    ["step", "Step", r.step || "–"],
    ["weight", "Canary weight", r.weight === null || r.weight === undefined ? "–" : `${r.weight}%`],
    ["proxies", "Proxies confirmed", r.proxies || "–"], ["module", "Module", view.module],
  ];
  if (view.rollout && view.rollout.aborted) facts.push(["aborted", "Rolled back because", view.rollout.aborted]);
  if (view.rollout && view.rollout.paused) facts.push(["paused", "Paused", view.rollout.paused]);
  $("release-facts").replaceChildren(...facts.map(([id, label, value]) =>
    el("div", {}, el("dt", { text: label }), el("dd", { id: `fact-${id}`, text: value }))));
  renderActions(view);
  const problems = $("problems");
  problems.hidden = !view.problems.length;
  problems.textContent = view.problems.length ? `Could not read: ${view.problems.join("; ")}` : "";
  $("steps").replaceChildren(...view.steps.map((s) => el("li",
    { class: s.state, "aria-current": s.state === "current" ? "step" : null, "data-step": s.number },
    `${s.number}. ${s.label}`, el("span", { class: "state", text: stepState(s.state) }))));
  if (!view.steps.length) $("steps").append(el("li", { text: "No canary steps: a new version goes to every pod at once." }));
  renderPods(view.pods);
  renderMetrics(view.metrics);
  renderEvents(view.events);
  renderHistory(view);
  $("plugins").replaceChildren(...view.plugins.map((p) =>
    el("li", {}, el("strong", { text: p.name }), ` ${p.url} `,
      el("span", { class: "state", text: Object.entries(p.selector).map(([k, v]) => `${k}=${v}`).join(", ") }))));
}

function stepState(s) {
  return { done: "done", current: "← now", stopped: "stopped here (rolled back)", todo: "" }[s] || "";
}

function renderActions(view) {
  const box = $("actions");
  box.replaceChildren(...view.actions.map((value) => el("button", {
    type: "button", "data-request": value, class: CONFIRM[value] ? "danger" : null,
    text: LABELS[value] || value, onclick: () => act(value),
  })));
  box.hidden = !view.actions.length;
}

function renderPods(groups) {
  const box = $("pods");
  if (!groups.length) { box.replaceChildren(el("p", { class: "empty", text: "No selected pods." })); return; }
  box.replaceChildren(...groups.map((g) => el("div", { class: "pods", "data-track": g.track },
    el("h3", { text: `${g.track}${g.version ? ` — ${g.version}` : ""} (${g.pods.length} pod${g.pods.length === 1 ? "" : "s"})` }),
    el("ul", { class: "plain" }, ...g.pods.map((p) => el("li", { "data-pod": p.name },
      `${p.name} `, el("span", { class: "state", text: `${p.phase}${p.ready ? ", ready" : ""} · runs ${p.version || "?"}` }),
      p.wants ? el("span", { class: "lag", text: ` (lagging: should run ${p.wants})` }) : null))))));
}

function renderEvents(events) {
  const body = $("events").tBodies[0];
  body.replaceChildren(...events.map((e) => el("tr", { "data-reason": e.reason },
    el("td", { class: "num", text: clock(e.at) }), el("td", { text: e.type }),
    el("td", { text: e.reason }), el("td", { text: e.count > 1 ? `${e.message} (×${e.count})` : e.message }))));
  if (!events.length) body.append(el("tr", {}, el("td", { colspan: "4", class: "empty", text: "No Events." })));
}

function renderHistory(view) {
  const body = $("history").tBodies[0];
  body.replaceChildren(...view.history.map((h) => el("tr", {},
    el("td", { class: "num", text: h.revision === null || h.revision === undefined ? "" : String(h.revision) }),
    el("td", { text: h.version }), el("td", { text: h.outcome }), el("td", { text: when(h.at) }),
    el("td", { text: h.reason }),
    el("td", {}, h.undo ? el("button", { type: "button", class: "danger", "data-request": `undo:${h.revision}`,
      text: "Undo to this", "aria-label": `Undo to revision ${h.revision} (${h.version})`,
      onclick: () => act(`undo:${h.revision}`) }) : null))));
  if (!view.history.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "empty", text: "No history yet." })));
}

// -- measurements, drawn as SVG --------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const W = 560, H = 170, LEFT = 52, RIGHT = 10, TOP = 10, BOTTOM = 24;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderMetrics(panels) {
  const box = $("metrics");
  if (!panels.length) { box.replaceChildren(el("p", { class: "empty", text: "No measurements in this rollout." })); return; }
  box.replaceChildren(...panels.map((m) => {
    const c = m.counts;
    const summary = `${c.successful} successful, ${c.failed} failed, ${c.inconclusive} inconclusive, ${c.error} errors`;
    return el("figure", { class: "metric", "data-metric": m.name },
      el("figcaption", {}, `${m.name} `, m.phase ? verdict(m.phase) : null,
        el("span", { class: "counts-text", text: summary })),
      plot(m),
      m.hasBaseline ? null : el("p", { class: "note", text: "no stable baseline" }));
  }));
}

// A metric's verdict in the colours of the release phase it leads to.
const VERDICT_COLOURS = { Successful: "Healthy", Failed: "Degraded", Running: "Progressing", Inconclusive: "Paused" };

function verdict(phase) {
  return el("span", { class: `badge phase-${VERDICT_COLOURS[phase] || "other"}`, text: phase });
}

function plot(metric) {
  const points = metric.points.filter((p) => p.value !== null || p.baseline !== null);
  const last = metric.points[metric.points.length - 1];
  const label = last
    ? `${metric.name}: ${metric.points.length} measurements; latest canary ${number(last.value)}` +
      (last.baseline !== null && last.baseline !== undefined ? `, stable ${number(last.baseline)}` : "")
    : `${metric.name}: no measurement yet`;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  root.append(svg("title", {}, label));
  if (!points.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#4a525c" }, "no values yet"));
    return root;
  }
  const times = points.map((p) => Date.parse(p.at));
  const values = points.flatMap((p) => [p.value, p.baseline]).filter((v) => v !== null && v !== undefined);
  let [t0, t1] = [Math.min(...times), Math.max(...times)];
  if (t1 === t0) { t0 -= 30000; t1 += 30000; }
  let [lo, hi] = [Math.min(...values), Math.max(...values)];
  const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
  lo -= pad; hi += pad;
  const x = (t) => LEFT + ((t - t0) / (t1 - t0)) * (W - LEFT - RIGHT);
  const y = (v) => TOP + (1 - (v - lo) / (hi - lo)) * (H - TOP - BOTTOM);
  root.append(svg("line", { x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM, stroke: "#8a929c" }));
  root.append(svg("line", { x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM, stroke: "#8a929c" }));
  for (const v of [lo + pad, hi - pad]) {
    root.append(svg("text", { x: LEFT - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#4a525c" }, number(v)));
    root.append(svg("line", { x1: LEFT, y1: y(v), x2: W - RIGHT, y2: y(v), stroke: "#e3e6ea" }));
  }
  root.append(svg("text", { x: LEFT, y: H - 6, "font-size": 11, fill: "#4a525c" }, clock(new Date(t0).toISOString())));
  root.append(svg("text", { x: W - RIGHT, y: H - 6, "text-anchor": "end", "font-size": 11, fill: "#4a525c" }, clock(new Date(t1).toISOString())));
  const line = (key, attrs) => {
    const xs = points.filter((p) => p[key] !== null && p[key] !== undefined)
      .map((p) => `${x(Date.parse(p.at)).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (xs.length > 1) root.append(svg("polyline", { points: xs.join(" "), fill: "none", ...attrs }));
  };
  line("baseline", { stroke: "#4a525c", "stroke-width": 2, "stroke-dasharray": "5 4", class: "stable-line" });
  line("value", { stroke: "#0b4fa8", "stroke-width": 2, class: "canary-line" });
  for (const p of points) {
    const px = x(Date.parse(p.at));
    if (p.baseline !== null && p.baseline !== undefined) {
      const sq = svg("rect", { x: px - 3, y: y(p.baseline) - 3, width: 6, height: 6, fill: "#4a525c", class: "stable-point" });
      sq.append(svg("title", {}, `${clock(p.at)} stable ${number(p.baseline)}`));
      root.append(sq);
    }
    if (p.value !== null && p.value !== undefined) {
      const bad = p.phase === "Failed";
      const dot = svg("circle", { cx: px, cy: y(p.value), r: bad ? 5 : 3.5, fill: bad ? "#a3190f" : "#0b4fa8", class: "canary-point" });
      dot.append(svg("title", {}, `${clock(p.at)} canary ${number(p.value)} (${p.phase})${p.message ? `: ${p.message}` : ""}`));
      root.append(dot);
    }
  }
  return root;
}

// -- actions -------------------------------------------------------------------------------

function confirmed(value) {
  const text = value.startsWith("undo:")
    ? `Undo to history revision ${value.slice(5)}? That version goes back to every pod.`
    : CONFIRM[value];
  if (!text) return Promise.resolve(true);
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").onclick = null; $("confirm-no").onclick = null; dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("confirm-yes").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
    dialog.onclose = () => done(false);  // Escape
    dialog.showModal();
    $("confirm-no").focus();
  });
}

async function act(value) {
  const key = state.current;
  if (!key || !(await confirmed(value))) return;
  const result = $("action-result");
  const buttons = [...document.querySelectorAll("button[data-request]")];
  buttons.forEach((b) => { b.disabled = true; });
  result.className = "action-result";
  result.textContent = `Sending ${value}…`;
  const sentIn = state.detail ? state.detail.release.phase : null;
  state.resultPhase = sentIn;
  try {
    const response = await fetch(`${apiPath(key)}/request`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Filterrelease-Token": TOKEN },
      body: JSON.stringify({ request: value }),
    });
    const body = await response.json();
    // The release may have moved on before the answer came: then it is no news.
    if (response.ok && sentIn !== null && state.resultPhase !== sentIn) { result.textContent = ""; return; }
    result.className = `action-result ${response.ok ? "ok" : "error"}`;
    result.textContent = response.ok ? body.message : `Refused (${response.status}): ${body.message}`;
  } catch (err) {
    result.className = "action-result error";
    result.textContent = `Could not send ${value}: ${err}`;
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    refreshDetail();
    refreshEvents();
  }
}

// -- start ---------------------------------------------------------------------------------

$("mode").textContent = READ_ONLY ? "read-only" : "";
$("filter-namespace").addEventListener("change", renderList);
$("filter-phase").addEventListener("change", renderList);
window.addEventListener("hashchange", route);
// Ages move on by themselves; only their cells are redrawn, from the rows already here.
setInterval(() => {
  for (const cell of document.querySelectorAll("td[data-created]")) cell.textContent = age(cell.dataset.created);
}, 10000);
route();
connect();
