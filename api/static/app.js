"use strict";
// Conversation Volume: reads /api/aggregations/usage and draws the chart and the table.

const KEY_STORAGE = "usage.apiKey";
const API = "/api/aggregations/usage";
const $ = (id) => document.getElementById(id);
// expanded: organization id -> the agent rows shown under it (or its loading row);
// agents: organization id -> its fetched agent report, kept while the range stays the same.
// limit: rows asked for (grows by PAGE with "Load more"); seq: the latest request, so that a
// slow answer to an older one never redraws over a newer view.
const PAGE = 50;
const MAX_ROWS = 1000;
const state = {
  report: null, metric: "conversations", expanded: new Map(), agents: new Map(), limit: PAGE, seq: 0,
};

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }

async function request(path, params) {
  const url = path + "?" + new URLSearchParams(params).toString();
  let response;
  try {
    response = await fetch(url, { headers: { Authorization: "Bearer " + apiKey() } });
  } catch (err) {
    throw new HttpError(0, "The server cannot be reached. Check your connection and try again.");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (err) { /* not JSON */ }
    const messages = {
      401: "Your API key was not accepted.",
      403: "This key may not see that: " + detail,
      503: "The usage database is unavailable right now; try again in a minute.",
    };
    throw new HttpError(response.status, messages[response.status] || "Request failed: " + detail);
  }
  return response;
}

// Dates ------------------------------------------------------------------------------------
function iso(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
}
function addDays(d, n) { const c = new Date(d); c.setDate(c.getDate() + n); return c; }
function parseIso(s) { const [y, m, d] = s.split("-").map(Number); return new Date(y, m - 1, d); }
function longDate(s) {
  return parseIso(s).toLocaleDateString("en-US", { month: "short", day: "numeric", year: "numeric" });
}

function presetRange(preset, today) {
  if (preset === "6m") {
    const first = new Date(today.getFullYear(), today.getMonth() - 6, 1);
    const last = addDays(new Date(today.getFullYear(), today.getMonth(), 1), -1);
    return [iso(first), iso(last)];
  }
  const days = Number(preset);
  return [iso(addDays(today, 1 - days)), iso(today)];
}

function currentParams(extra) {
  const preset = $("preset").value;
  const [start, end] = preset === "custom" ? [$("start").value, $("end").value]
    : presetRange(preset, new Date());
  const params = { scope: "platform", start, end, granularity: $("granularity").value,
    limit: state.limit };
  const q = $("search").value.trim();
  if (q) params.q = q;
  return Object.assign(params, extra || {});
}

// Loading ----------------------------------------------------------------------------------
function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function handleError(err) {
  if (err.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    showKeyForm(err.message);
    return;
  }
  showMessage(err.message);
}

async function load(keepLimit) {
  if (!keepLimit) state.limit = PAGE;
  const seq = ++state.seq;
  showMessage("");
  $("loading").hidden = false;
  try {
    const response = await request(API, currentParams());
    const report = await response.json();
    if (seq !== state.seq) return;  // a newer view was asked for meanwhile
    state.expanded.clear();
    state.agents.clear();
    state.report = report;
    render();
  } catch (err) {
    if (seq === state.seq) handleError(err);
  } finally {
    if (seq === state.seq) $("loading").hidden = true;
  }
}

// Rendering --------------------------------------------------------------------------------
function subtitle(report) {
  if (report.scope === "platform") {
    return "Billable web chat conversations by organization. Excludes test mode and internal organizations.";
  }
  return "Billable web chat conversations by agent for your organization. Excludes test mode.";
}

function freshness(report) {
  if (!report.data_through) return "No completed rollup yet.";
  let text = "Data through " + longDate(report.data_through);
  if (report.data_from) text = "Data from " + longDate(report.data_from) + " through " + longDate(report.data_through);
  if (report.last_run_finished_at) {
    text += " · last run finished " + new Date(report.last_run_finished_at).toLocaleString("en-US");
  }
  return text;
}

function isStale(bucket, report) {
  return report.data_through !== null && bucket.end > report.data_through;
}

// Buckets that end before the first computed day, or lie within a run of days never
// computed, were never counted: no data, not zero.
function isBeforeData(bucket, report) {
  if (report.data_from && bucket.end < report.data_from) return true;
  return (report.data_gaps || []).some(([first, last]) => first <= bucket.start && bucket.end <= last);
}

function bucketClass(bucket, report) {
  const classes = [];
  if (isBeforeData(bucket, report)) classes.push("nodata");
  if (bucket.partial) classes.push("partial");
  if (!report.data_through || isStale(bucket, report)) classes.push("stale");
  return classes.join(" ");
}

function fmt(n) { return n.toLocaleString("en-US"); }

function cell(tag, text, className) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

function rowCells(tr, row, report) {
  row.buckets.forEach((b, i) => {
    const bucket = report.buckets[i];
    const text = isBeforeData(bucket, report) ? "no data" : fmt(b[state.metric]);
    tr.appendChild(cell("td", text, bucketClass(bucket, report)));
  });
  tr.appendChild(cell("td", fmt(row.totals[state.metric]), "total"));
}

function render() {
  const report = state.report;
  // An expansion still loading when the view redraws is dropped, not left half open.
  [...state.expanded.keys()].forEach((id) => { if (!state.agents.has(id)) state.expanded.delete(id); });
  $("subtitle").textContent = subtitle(report);
  $("freshness").textContent = freshness(report);
  renderChart(report);
  const table = $("table");
  const head = document.createElement("tr");
  head.appendChild(cell("th", report.scope === "platform" ? "Organization" : "Agent"));
  report.buckets.forEach((b) => {
    let label = b.label;
    if (b.partial) label += " *";
    if (isStale(b, report)) label += " †";
    const th = cell("th", label, bucketClass(b, report));
    th.scope = "col";
    th.title = b.start + " to " + b.end;
    head.appendChild(th);
  });
  head.appendChild(cell("th", "Total"));
  table.tHead.replaceChildren(head);

  const body = table.tBodies[0];
  body.replaceChildren();
  if (report.rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("td", "No billable conversations in this range.");
    td.colSpan = report.buckets.length + 2;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  report.rows.forEach((row) => body.appendChild(renderRow(row, report)));
  if (report.other) {
    const tr = document.createElement("tr");
    tr.className = "other";
    tr.appendChild(cell("td", "Other (" + fmt(report.total_rows - report.rows.length) + ")"));
    rowCells(tr, report.other, report);
    body.appendChild(tr);
  }
  const noun = report.scope === "platform" ? "organizations" : "agents";
  $("shown").textContent = "Showing " + fmt(report.rows.length) + " of " + fmt(report.total_rows)
    + " " + noun + (report.other ? "; the rest are summed as Other." : ".");
  $("more").hidden = !report.other || state.limit >= MAX_ROWS;
  restoreExpanded(report);
  const total = document.createElement("tr");
  total.appendChild(cell("td", "Total"));
  rowCells(total, report.total, report);
  table.tFoot.replaceChildren(total);
}

function renderRow(row, report) {
  const tr = document.createElement("tr");
  tr.className = "org";
  tr.dataset.id = row.id;
  const first = document.createElement("td");
  if (report.scope === "platform") {
    const button = cell("button", row.name, "expand");
    button.type = "button";
    button.setAttribute("aria-expanded", String(state.expanded.has(row.id)));
    button.addEventListener("click", () => toggle(row, tr, button));
    first.appendChild(button);
  } else {
    first.textContent = row.name;
  }
  tr.appendChild(first);
  rowCells(tr, row, report);
  return tr;
}

function agentRows(orgId, agents, report) {
  return agents.rows.map((agent) => {
    const tr = document.createElement("tr");
    tr.className = "agent";
    tr.dataset.parent = orgId;
    tr.appendChild(cell("td", agent.name));
    rowCells(tr, agent, report);
    return tr;
  });
}

// After a redraw (another metric), put back the agent rows of expanded organizations.
function restoreExpanded(report) {
  state.expanded.forEach((_, orgId) => {
    const tr = document.querySelector(`#table tbody tr.org[data-id="${orgId}"]`);
    if (!tr) { state.expanded.delete(orgId); return; }
    const rows = agentRows(orgId, state.agents.get(orgId), report);
    tr.after(...rows);
    state.expanded.set(orgId, rows);
  });
}

async function toggle(row, tr, button) {
  const shown = state.expanded.get(row.id);
  if (shown) {
    shown.forEach((el) => el.remove());
    state.expanded.delete(row.id);
    button.setAttribute("aria-expanded", "false");
    return;
  }
  button.setAttribute("aria-expanded", "true");
  const report = state.report;
  const loading = document.createElement("tr");
  loading.className = "agent loading-row";
  const td = cell("td", "Loading agents…");
  td.colSpan = report.buckets.length + 2;
  loading.appendChild(td);
  tr.after(loading);
  state.expanded.set(row.id, [loading]);
  try {
    let agents = state.agents.get(row.id);
    if (!agents) {
      const params = { scope: "org", org_id: row.id, start: report.start, end: report.end,
        granularity: report.granularity, limit: MAX_ROWS };
      agents = await (await request(API, params)).json();
    }
    if (state.report !== report || state.expanded.get(row.id)?.[0] !== loading) return;
    state.agents.set(row.id, agents);
    const rows = agentRows(row.id, agents, report);
    loading.replaceWith(...rows);
    state.expanded.set(row.id, rows);
  } catch (err) {
    td.textContent = err.message;
    if (err.status === 401) handleError(err);
  }
}

function renderChart(report) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const width = svg.clientWidth || 800;
  const height = 220, top = 14, bottom = 36, left = 12;
  const values = report.total.buckets.map((b) => b[state.metric]);
  const max = Math.max(1, ...values);
  const slot = (width - left * 2) / Math.max(values.length, 1);
  const barWidth = Math.max(2, slot * 0.7);
  report.buckets.forEach((bucket, i) => {
    const h = ((height - top - bottom) * values[i]) / max;
    const x = left + i * slot + (slot - barWidth) / 2;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("class", "bar" + (bucket.partial || isStale(bucket, report) ? " partial" : ""));
    rect.setAttribute("x", x);
    rect.setAttribute("y", height - bottom - h);
    rect.setAttribute("width", barWidth);
    rect.setAttribute("height", Math.max(h, 0));
    rect.dataset.key = bucket.key;
    rect.dataset.value = values[i];
    const title = document.createElementNS(ns, "title");
    title.textContent = bucket.label + ": " + fmt(values[i]) + " " + state.metric;
    rect.appendChild(title);
    svg.appendChild(rect);
    const every = Math.ceil(values.length / 12);
    if (i % every === 0) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", x + barWidth / 2);
      label.setAttribute("y", height - bottom + 16);
      label.setAttribute("text-anchor", "middle");
      label.textContent = bucket.label;
      svg.appendChild(label);
    }
  });
}

// CSV --------------------------------------------------------------------------------------
async function downloadCsv() {
  try {
    const report = state.report;
    const params = { scope: report.scope, start: report.start, end: report.end,
      granularity: report.granularity, metric: state.metric };
    if (report.org_id) params.org_id = report.org_id;
    const q = $("search").value.trim();
    if (q) params.q = q;
    const response = await request(API + ".csv", params);
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = match ? match[1] : "usage.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
  } catch (err) {
    handleError(err);
  }
}

// Key prompt -------------------------------------------------------------------------------
function showKeyForm(message) {
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-message").textContent = message || "";
  $("key-input").value = "";
  $("key-input").focus();
}

function start() {
  $("key-form").hidden = true;
  $("main").hidden = false;
  load();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
  start();
});
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  showKeyForm("");
});
$("preset").addEventListener("change", () => {
  const custom = $("preset").value === "custom";
  $("custom-range").hidden = !custom;
  if (custom && state.report) {
    $("start").value = state.report.start;
    $("end").value = state.report.end;
  }
  if (!custom) load();
});
$("apply-range").addEventListener("click", () => {
  if (!$("start").value || !$("end").value) { showMessage("Choose both dates."); return; }
  load();
});
$("granularity").addEventListener("change", () => load());
$("metric").addEventListener("change", (event) => {
  state.metric = event.target.value;
  if (state.report) render();
});
$("download").addEventListener("click", downloadCsv);
$("more").addEventListener("click", () => {
  state.limit = Math.min(MAX_ROWS, state.limit + PAGE);
  load(true);
});
let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => load(), 300);
});

if (apiKey()) start(); else showKeyForm("");
