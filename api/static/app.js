"use strict";
// Conversation Volume: reads /api/aggregations/usage (and /movers) and draws the chart, the
// movers and the table. chart.js draws the chart.

const KEY_STORAGE = "usage.apiKey";
const API = "/api/aggregations/usage";
const MOVERS_API = "/api/aggregations/movers";
const $ = (id) => document.getElementById(id);
const PAGE = 50;
const MAX_ROWS = 1000;
const TOP = 5;
const PALETTE = ["#3559e0", "#e07b35", "#2a9d8f", "#b5489a", "#8a6d1f"];
const OTHER_COLOR = "#aab2c0";
// Users are a union of sketches and avg_depth a ratio: neither adds up, so neither stacks.
const ADDITIVE = new Set(["conversations", "messages", "handoffs"]);
const METRIC_NAMES = {
  conversations: "conversations", messages: "messages", handoffs: "handoffs", users: "users",
  avg_depth: "average depth",
};
// limit: rows asked for (grows by PAGE with "Load more").
// seq / moversSeq: the latest request of each kind; an answer to an older one is dropped, so a
// slow response never redraws over a newer view.
// open: range key -> ids of the organizations expanded in that range, kept across ranges.
// agents: range key + compare + organization id -> its fetched agent report (or its promise).
const state = {
  report: null, metric: "conversations", chartMode: "stacked", compare: false, limit: PAGE,
  seq: 0, moversSeq: 0, open: new Map(), agents: new Map(),
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
// "May 1 – 31, 2026", "Apr 28 – May 4, 2026", "Dec 29, 2025 – Jan 4, 2026", "May 3, 2026".
function dateRange(start, end) {
  if (start === end) return longDate(start);
  const a = parseIso(start), b = parseIso(end);
  const md = (d) => d.toLocaleDateString("en-US", { month: "short", day: "numeric" });
  if (a.getFullYear() !== b.getFullYear()) return longDate(start) + " – " + longDate(end);
  const tail = a.getMonth() === b.getMonth() ? b.getDate() : md(b);
  return md(a) + " – " + tail + ", " + b.getFullYear();
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
  if (state.compare) params.compare = "previous";
  return Object.assign(params, extra || {});
}

function rangeKey(report) { return [report.start, report.end, report.granularity].join("|"); }
function openSet(report) {
  const key = rangeKey(report);
  if (!state.open.has(key)) state.open.set(key, new Set());
  return state.open.get(key);
}
function agentKey(report, orgId) { return rangeKey(report) + "|" + Boolean(report.previous) + "|" + orgId; }

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
    state.report = report;
    render();
    loadMovers();
  } catch (err) {
    if (seq === state.seq) handleError(err);
  } finally {
    if (seq === state.seq) $("loading").hidden = true;
  }
}

// The movers panel needs the API that compares periods; a report says it has one by
// carrying a `previous` key (null unless asked for).
async function loadMovers() {
  const report = state.report;
  const seq = ++state.moversSeq;
  const panel = $("movers");
  if (!report || report.scope !== "platform" || !("previous" in report)) {
    panel.hidden = true;
    return;
  }
  const params = { scope: "platform", start: report.start, end: report.end,
    granularity: report.granularity, metric: state.metric, n: TOP };
  try {
    const movers = await (await request(MOVERS_API, params)).json();
    if (seq !== state.moversSeq || state.report !== report) return;
    renderMovers(movers);
  } catch (err) {
    if (seq !== state.moversSeq) return;
    if (err.status === 401) { handleError(err); return; }
    panel.hidden = false;
    $("movers-body").replaceChildren(cell("p", err.message, "error"));
  }
}

// Values -----------------------------------------------------------------------------------
function value(c, metric) {
  const v = c ? c[metric] : undefined;
  return v === undefined ? null : v;
}

function fmt(n) { return n.toLocaleString("en-US"); }

function fmtValue(v, metric) {
  if (v === null || v === undefined) return "—";
  if (metric === "avg_depth") return v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  return fmt(v);
}

// A cell's figure as text; users that are an estimate get "≈" (and bounds when asked).
function fmtCell(c, metric, bounds) {
  const v = value(c, metric);
  const text = fmtValue(v, metric);
  // A union small enough to hold every user is exact: its bounds are the figure itself.
  const exact = !c.users_estimate || (c.users_low === v && c.users_high === v);
  if (metric !== "users" || v === null || exact) return text;
  let out = "≈ " + text;
  if (bounds && c.users_low !== null && c.users_low !== undefined) {
    out += " (" + fmt(c.users_low) + "–" + fmt(c.users_high) + ")";
  }
  return out;
}

function pctText(pct) {
  const sign = pct > 0 ? "+" : pct < 0 ? "−" : "";
  return sign + Math.abs(pct).toFixed(1) + "%";
}

// "▲ 12 (+8.0%)", "▼ 3 (−2.1%)", "▲ 4 (new)" when there was nothing before; never colour alone.
function changeText(change, metric) {
  if (!change || change.abs === null || change.abs === undefined) return { text: "—", cls: "flat" };
  const amount = fmtValue(Math.abs(change.abs), metric);
  if (change.abs === 0) return { text: "0" + (change.pct === null ? "" : " (0.0%)"), cls: "flat" };
  const arrow = change.abs > 0 ? "▲ " : "▼ ";
  const pct = change.pct === null || change.pct === undefined ? "new" : pctText(change.pct);
  return { text: arrow + amount + " (" + pct + ")", cls: change.abs > 0 ? "up" : "down" };
}

// The change between two figures, by the API's rule (for a bucket, which has none of its own).
function changeOf(current, previous, metric) {
  if (current === null || previous === null) return { abs: null, pct: null };
  let abs = current - previous;
  abs = metric === "avg_depth" ? Math.round(abs * 100) / 100 : abs;
  const pct = previous ? Math.round((abs / previous) * 1000) / 10 : null;
  return { abs, pct };
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

// The compared period's buckets that were never counted, and whether that is all of them.
function previousNoData(report, i) {
  return Boolean(report.previous) && isBeforeData(report.previous.buckets[i], report);
}
function previousAllNoData(report) {
  return Boolean(report.previous) && report.previous.buckets.every((b) => isBeforeData(b, report));
}
function previousSomeNoData(report) {
  return Boolean(report.previous) && report.previous.buckets.some((b) => isBeforeData(b, report));
}

function bucketClass(bucket, report) {
  const classes = [];
  if (isBeforeData(bucket, report)) classes.push("nodata");
  if (bucket.partial) classes.push("partial");
  if (!report.data_through || isStale(bucket, report)) classes.push("stale");
  return classes.join(" ");
}

function bucketMarks(bucket, report) {
  return (bucket.partial ? " *" : "") + (isStale(bucket, report) ? " †" : "");
}

function cell(tag, text, className) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

function sparkline(row, report) {
  const td = cell("td", "", "spark");
  const values = row.buckets.map((b, i) => (isBeforeData(report.buckets[i], report) ? null : value(b, state.metric)));
  const known = values.filter((v) => v !== null);
  if (known.length < 2) return td;
  const w = 72, h = 20, pad = 2;
  const max = Math.max(...known), min = Math.min(0, ...known);
  const x = (i) => pad + ((w - 2 * pad) * i) / Math.max(values.length - 1, 1);
  const y = (v) => h - pad - ((h - 2 * pad) * (v - min)) / (max - min || 1);
  const points = values.map((v, i) => (v === null ? null : x(i).toFixed(1) + "," + y(v).toFixed(1))).filter(Boolean);
  const svg = svgEl("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "sparkline", role: "img",
    "aria-label": "Trend of " + METRIC_NAMES[state.metric] + ": " + known.map((v) => fmtValue(v, state.metric)).join(", ") });
  svgEl("polyline", { points: points.join(" ") }, svg);
  const last = values.length - 1;
  if (values[last] !== null) svgEl("circle", { cx: x(last), cy: y(values[last]), r: 2 }, svg);
  td.appendChild(svg);
  return td;
}

function rowCells(tr, row, report) {
  tr.appendChild(sparkline(row, report));
  row.buckets.forEach((b, i) => {
    const bucket = report.buckets[i];
    const text = isBeforeData(bucket, report) ? "no data" : fmtCell(b, state.metric);
    const td = cell("td", text, bucketClass(bucket, report));
    if (state.metric === "users" && b.users_estimate) td.title = fmtCell(b, "users", true);
    tr.appendChild(td);
  });
  tr.appendChild(cell("td", fmtCell(row.totals, state.metric), "total"));
  if (report.previous) {
    if (previousAllNoData(report)) {
      const td = cell("td", "no data", "change flat nodata");
      td.title = "No data for the previous period: it lies before the first computed day";
      tr.appendChild(td);
      return;
    }
    const change = changeText(row.change ? row.change[state.metric] : null, state.metric);
    const td = cell("td", change.text, "change " + change.cls);
    const prev = row.previous ? value(row.previous.totals, state.metric) : null;
    td.title = "Previous period: " + fmtValue(prev, state.metric)
      + (previousSomeNoData(report) ? " (partly before the first computed day: not counted there)" : "");
    tr.appendChild(td);
  }
}

function render() {
  const report = state.report;
  $("subtitle").textContent = subtitle(report);
  $("search").placeholder = report.scope === "platform" ? "Organization name" : "Agent name";
  $("freshness").textContent = freshness(report);
  renderChart(report);
  const table = $("table");
  const head = document.createElement("tr");
  head.appendChild(cell("th", report.scope === "platform" ? "Organization" : "Agent"));
  head.appendChild(cell("th", "Trend", "spark"));
  report.buckets.forEach((b) => {
    const th = cell("th", b.label + bucketMarks(b, report), bucketClass(b, report));
    th.scope = "col";
    th.title = dateRange(b.start, b.end);
    head.appendChild(th);
  });
  head.appendChild(cell("th", "Total", "total"));
  if (report.previous) {
    const th = cell("th", "Change", "change");
    th.title = "Against " + dateRange(report.previous.start, report.previous.end);
    head.appendChild(th);
  }
  [...head.children].forEach((th) => { th.scope = "col"; });
  table.tHead.replaceChildren(head);

  const body = table.tBodies[0];
  body.replaceChildren();
  if (report.rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("td", "No billable conversations in this range.");
    td.colSpan = columnCount(report);
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
  if (report.scope === "platform") openSet(report).forEach((orgId) => showAgents(orgId, report));
  const total = document.createElement("tr");
  total.appendChild(cell("td", "Total"));
  rowCells(total, report.total, report);
  table.tFoot.replaceChildren(total);
}

function columnCount(report) { return report.buckets.length + 3 + (report.previous ? 1 : 0); }

function renderRow(row, report) {
  const tr = document.createElement("tr");
  tr.className = "org";
  tr.dataset.id = row.id;
  const first = document.createElement("td");
  if (report.scope === "platform") {
    const button = cell("button", row.name, "expand");
    button.type = "button";
    button.setAttribute("aria-expanded", String(openSet(report).has(row.id)));
    button.addEventListener("click", () => toggle(row.id, button));
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

function toggle(orgId, button) {
  const report = state.report;
  const open = openSet(report);
  if (open.has(orgId)) {
    open.delete(orgId);
    document.querySelectorAll(`#table tr.agent[data-parent="${orgId}"]`).forEach((el) => el.remove());
    button.setAttribute("aria-expanded", "false");
    return;
  }
  open.add(orgId);
  button.setAttribute("aria-expanded", "true");
  showAgents(orgId, report);
}

// Put an expanded organization's agent rows under it: from the cache, or a loading row until
// its report arrives (ignored if by then another view or a collapse came first).
async function showAgents(orgId, report) {
  const tr = document.querySelector(`#table tbody tr.org[data-id="${orgId}"]`);
  if (!tr) return;  // not on this page (a search, fewer rows): stays remembered
  document.querySelectorAll(`#table tr.agent[data-parent="${orgId}"]`).forEach((el) => el.remove());
  const key = agentKey(report, orgId);
  const cached = state.agents.get(key);
  if (cached && !(cached instanceof Promise)) {
    tr.after(...agentRows(orgId, cached, report));
    return;
  }
  const loading = document.createElement("tr");
  loading.className = "agent loading-row";
  loading.dataset.parent = orgId;
  const td = cell("td", "Loading agents…");
  td.colSpan = columnCount(report);
  loading.appendChild(td);
  tr.after(loading);
  try {
    let pending = cached;
    if (!pending) {
      const params = { scope: "org", org_id: orgId, start: report.start, end: report.end,
        granularity: report.granularity, limit: MAX_ROWS };
      if (report.previous) params.compare = "previous";
      pending = request(API, params).then((r) => r.json());
      state.agents.set(key, pending);
      pending.then((agents) => state.agents.set(key, agents), () => state.agents.delete(key));
    }
    const agents = await pending;
    if (state.report !== report || !loading.isConnected) return;
    loading.replaceWith(...agentRows(orgId, agents, report));
  } catch (err) {
    td.textContent = err.message;
    if (err.status === 401) handleError(err);
  }
}

// Chart ------------------------------------------------------------------------------------
function chartModel(report) {
  const metric = state.metric;
  const totals = report.total.buckets.map((b) => value(b, metric));
  const stacked = ADDITIVE.has(metric) && state.chartMode === "stacked" && report.rows.length > 1;
  let series = [{ name: "Total", color: PALETTE[0], values: totals.map((v) => v || 0) }];
  if (stacked) {
    const top = report.rows
      .map((row, i) => [row, i])
      .sort(([a, i], [b, j]) => (value(b.totals, metric) || 0) - (value(a.totals, metric) || 0) || i - j)
      .slice(0, TOP)
      .map(([row]) => row);
    series = top.map((row, i) => ({ name: row.name, color: PALETTE[i], values: row.buckets.map((b) => value(b, metric) || 0) }));
    const rest = totals.map((t, i) => (t || 0) - series.reduce((s, se) => s + se.values[i], 0));
    if (report.total_rows > top.length && rest.some((v) => v !== 0)) {
      series.push({ name: "Other", color: OTHER_COLOR, values: rest });
    }
  }
  const prevTotal = report.previous && report.total.previous ? report.total.previous.buckets : null;
  const previous = prevTotal
    ? prevTotal.map((b, i) => (previousNoData(report, i) ? null : value(b, metric))) : null;
  const name = METRIC_NAMES[metric];
  const buckets = report.buckets.map((b) => ({
    key: b.key, label: b.label, start: b.start, end: b.end, marks: bucketMarks(b, report).replace(/ /g, ""),
    faded: b.partial || !report.data_through || isStale(b, report) || isBeforeData(b, report),
  }));

  function describe(i) {
    const bucket = report.buckets[i];
    const totalCell = report.total.buckets[i];
    const lines = [];
    if (series.length > 1) {
      [...series].reverse().forEach((se) => lines.push([se.name, fmtValue(se.values[i], metric), se.color]));
    }
    lines.push(["Total " + name, fmtCell(totalCell, metric, true), series.length > 1 ? null : series[0].color, "tip-total"]);
    if (previous) {
      const pb = report.previous.buckets[i];
      const pc = prevTotal[i];
      const noData = previousNoData(report, i);
      lines.push(["Previous (" + dateRange(pb.start, pb.end) + ")", noData ? "no data" : fmtCell(pc, metric, true), null, "tip-previous"]);
      const change = noData ? { text: "—", cls: "flat" } : changeText(changeOf(totals[i], previous[i], metric), metric);
      lines.push(["Change", change.text, null, "tip-change " + change.cls]);
    }
    const notes = [];
    if (isBeforeData(bucket, report)) notes.push("No data: before the first computed day.");
    if (bucket.partial) notes.push("* Partial bucket (clipped to the range).");
    if (isStale(bucket, report) || !report.data_through) notes.push("† After the last complete day, still filling in.");
    const summary = bucket.label + ", " + dateRange(bucket.start, bucket.end) + ": " + name + " "
      + fmtCell(totalCell, metric, true);
    const dates = dateRange(bucket.start, bucket.end);
    const title = dates.startsWith(bucket.label) ? dates : bucket.label + " · " + dates;
    return { title, lines, notes, summary };
  }

  const label = name[0].toUpperCase() + name.slice(1) + " per " + report.granularity
    + (stacked ? ", stacked by the top rows" : "");
  return { buckets, series, totals, previous, describe, integer: metric !== "avg_depth", label };
}

function renderChart(report) {
  const model = chartModel(report);
  drawChart($("chart"), $("chart-tip"), model);
  const stackable = ADDITIVE.has(state.metric);
  $("chart-mode").disabled = !stackable;
  const notes = [];
  if (!stackable) notes.push("Users and average depth do not add up across rows, so the chart shows the total.");
  if (previousSomeNoData(report) && report.data_from) {
    notes.push("No data for the previous period before " + longDate(report.data_from) + ", the first computed day.");
  }
  $("chart-note").textContent = notes.join(" ");
  const items = model.series.map((se) => legendItem(se.name, se.color));
  if (model.previous && model.previous.some((v) => v !== null)) items.push(legendItem("Previous period", null, "previous"));
  if (model.buckets.some((b) => b.faded)) items.push(legendItem("Partial, still filling in or no data", null, "hatched"));
  $("chart-legend").replaceChildren(...items);
}

function legendItem(name, color, cls) {
  const li = document.createElement("li");
  const swatch = cell("span", "", "swatch" + (cls ? " " + cls : ""));
  if (color) swatch.style.background = color;
  li.append(swatch, document.createTextNode(name));
  return li;
}

// Movers -----------------------------------------------------------------------------------
function renderMovers(movers) {
  const metric = movers.metric;
  const from = state.report ? state.report.data_from : null;
  $("movers").hidden = false;
  $("movers-title").textContent = "Biggest changes in " + METRIC_NAMES[metric] + " against "
    + dateRange(movers.previous_start, movers.previous_end);
  if (from && movers.previous_end < from) {
    $("movers-body").replaceChildren(cell("p", "No data to compare with: the previous period lies before "
      + longDate(from) + ", the first computed day.", "muted movers-note"));
    return;
  }
  const list = (title, items, cls) => {
    const box = document.createElement("div");
    box.className = "movers-list " + cls;
    box.appendChild(cell("h3", title));
    if (items.length === 0) { box.appendChild(cell("p", "None.", "muted")); return box; }
    const ol = document.createElement("ol");
    items.forEach((m) => {
      const li = document.createElement("li");
      li.dataset.id = m.id;
      const change = changeText({ abs: m.change, pct: m.pct }, metric);
      li.append(cell("span", m.name, "mover-name"), cell("span", change.text, "change " + change.cls),
        cell("span", (m.estimate ? "≈ " : "") + fmtValue(m.previous, metric) + " → "
          + fmtValue(m.current, metric), "mover-values"));
      ol.appendChild(li);
    });
    box.appendChild(ol);
    return box;
  };
  const parts = [list("Up", movers.up, "up"), list("Down", movers.down, "down")];
  if (from && movers.previous_start < from) {
    parts.push(cell("p", "The previous period starts before " + longDate(from)
      + ", the first computed day: its figures are counted from then on only.", "muted movers-note"));
  }
  $("movers-body").replaceChildren(...parts);
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
    if (report.previous) params.compare = "previous";
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
  if (!state.report) return;
  render();
  loadMovers();
});
$("chart-mode").addEventListener("change", (event) => {
  state.chartMode = event.target.value;
  if (state.report) renderChart(state.report);
});
$("compare").addEventListener("change", (event) => {
  state.compare = event.target.checked;
  load(true);
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
watchChartSize($("chart"));

if (apiKey()) start(); else showKeyForm("");
