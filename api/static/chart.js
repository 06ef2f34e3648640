"use strict";
// The bar chart: y axis with round ticks, gridlines, stacked series, a faint previous-period
// overlay and a tooltip reachable by mouse and keyboard. It knows nothing of the API: app.js
// hands it a model (see drawChart) and it redraws itself when its box changes size.

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_HEIGHT = 240;

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  Object.entries(attrs || {}).forEach(([k, v]) => el.setAttribute(k, v));
  if (parent) parent.appendChild(el);
  return el;
}

// A round step (1, 2 or 5 × 10^k) cutting 0..max into about `count` intervals.
function niceStep(max, count, integer) {
  if (!(max > 0)) return 1;
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  const step = (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
  return integer ? Math.max(1, step) : step;
}

function niceTicks(max, count, integer) {
  const step = niceStep(max, count, integer);
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const n = Math.max(1, Math.ceil(max / step - 1e-9));
  return Array.from({ length: n + 1 }, (_, i) => Number((i * step).toFixed(decimals)));
}

function tickLabel(v) {
  const short = (x) => Number(x.toFixed(2)).toLocaleString("en-US");
  if (Math.abs(v) >= 1e6) return short(v / 1e6) + "M";
  if (Math.abs(v) >= 1e4) return short(v / 1e3) + "k";
  return v.toLocaleString("en-US", { maximumFractionDigits: 2 });
}

const chart = { model: null, svg: null, tip: null, focusIndex: 0, width: 0 };

// model: {
//   buckets: [{key, label, start, end, marks: "*"/"†"/"", faded: bool}],
//   series: [{name, color, values: [number]}]   stacked bottom-up,
//   totals: [number|null], previous: [number|null] | null, integer: bool,
//   label: text for screen readers, describe(i) -> {title, lines: [[name, text, color]], notes}
// }
function drawChart(svg, tip, model) {
  chart.svg = svg;
  chart.tip = tip;
  chart.model = model;
  redrawChart();
}

function redrawChart() {
  const { svg, model } = chart;
  if (!svg || !model) return;
  hideTip();
  svg.replaceChildren();
  const width = Math.max(200, Math.floor(svg.getBoundingClientRect().width) || 600);
  chart.width = width;
  svg.setAttribute("viewBox", `0 0 ${width} ${CHART_HEIGHT}`);
  svg.setAttribute("height", CHART_HEIGHT);
  const n = model.buckets.length;
  const stackTops = model.buckets.map((_, i) => model.series.reduce((s, se) => s + (se.values[i] || 0), 0));
  const max = Math.max(0, ...stackTops, ...model.totals.map((v) => v || 0),
    ...(model.previous || []).map((v) => v || 0));
  const ticks = niceTicks(max || 1, width < 500 ? 4 : 5, model.integer);
  const top = ticks[ticks.length - 1];
  const labels = ticks.map(tickLabel);
  const left = 10 + Math.max(...labels.map((t) => t.length)) * 6.5;
  const right = 8, upper = 12, lower = 34;
  const plotW = width - left - right;
  const plotH = CHART_HEIGHT - upper - lower;
  const y = (v) => upper + plotH - (plotH * v) / top;

  const grid = svgEl("g", { class: "axis", "aria-hidden": "true" }, svg);
  ticks.forEach((t, i) => {
    svgEl("line", { class: i === 0 ? "baseline" : "grid", x1: left, x2: width - right, y1: y(t), y2: y(t) }, grid);
    const text = svgEl("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, grid);
    text.textContent = labels[i];
  });

  const slot = plotW / Math.max(n, 1);
  const barW = Math.max(1, Math.min(56, slot * 0.7));
  const longest = Math.max(1, ...model.buckets.map((b) => (b.label + b.marks).length));
  const every = Math.max(1, Math.ceil((longest * 6.2 + 10) / slot));
  const bars = svgEl("g", { class: "bars" }, svg);
  chart.focusIndex = Math.min(chart.focusIndex, Math.max(n - 1, 0));
  model.buckets.forEach((bucket, i) => {
    const x0 = left + i * slot;
    const x = x0 + (slot - barW) / 2;
    const g = svgEl("g", {
      class: "bucket" + (bucket.faded ? " faded" : ""), tabindex: i === chart.focusIndex ? "0" : "-1",
      role: "img", "data-key": bucket.key, "data-index": i,
      "aria-label": model.describe(i).summary,
    }, bars);
    svgEl("rect", { class: "hit", x: x0, y: upper, width: slot, height: plotH }, g);
    const prev = model.previous ? model.previous[i] : null;
    if (prev !== null && prev !== undefined) {
      const pw = Math.min(slot * 0.92, barW + slot * 0.2);
      svgEl("rect", { class: "previous", x: x0 + (slot - pw) / 2, y: y(prev), width: pw, height: y(0) - y(prev), "data-value": prev }, g);
    }
    let base = 0;
    model.series.forEach((se) => {
      const v = se.values[i] || 0;
      if (v > 0) {
        svgEl("rect", { class: "seg", x, y: y(base + v), width: barW, height: y(base) - y(base + v),
          fill: se.color, "data-series": se.name, "data-value": v }, g);
      }
      base += v;
    });
    if (bucket.faded && base > 0) {
      svgEl("rect", { class: "hatch", x, y: y(base), width: barW, height: y(0) - y(base), fill: "url(#hatch)" }, g);
    }
    if (prev !== null && prev !== undefined) {
      svgEl("line", { class: "previous-line", x1: x0 + slot * 0.04, x2: x0 + slot * 0.96, y1: y(prev), y2: y(prev) }, g);
    }
    if (i % every === 0) {
      const text = svgEl("text", { x: x0 + slot / 2, y: CHART_HEIGHT - lower + 16, "text-anchor": "middle", class: "xlabel", "aria-hidden": "true" }, svg);
      text.textContent = bucket.label + bucket.marks;
    }
    g.addEventListener("mouseenter", () => showTip(i, g));
    g.addEventListener("mouseleave", () => { if (document.activeElement !== g) hideTip(); });
    g.addEventListener("focus", () => { chart.focusIndex = i; showTip(i, g); });
    g.addEventListener("blur", hideTip);
    g.addEventListener("keydown", (event) => moveFocus(event, i));
  });
  const defs = svgEl("defs", {}, svg);
  const pattern = svgEl("pattern", { id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
  svgEl("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#fff", "stroke-width": 2.5, "stroke-opacity": 0.7 }, pattern);
  svg.setAttribute("aria-label", model.label);
}

// Arrow keys move between bars; only one bar is in the tab order (a roving tabindex).
function moveFocus(event, i) {
  const n = chart.model.buckets.length;
  const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: n - 1 }[event.key];
  if (event.key === "Escape") { hideTip(); return; }
  if (to === undefined || to < 0 || to >= n) return;
  event.preventDefault();
  const bars = chart.svg.querySelectorAll("g.bucket");
  bars[i].setAttribute("tabindex", "-1");
  bars[to].setAttribute("tabindex", "0");
  bars[to].focus();
}

function showTip(i, g) {
  const { tip, model } = chart;
  const info = model.describe(i);
  const title = document.createElement("strong");
  title.textContent = info.title;
  const rows = info.lines.map(([name, text, color, cls]) => {
    const line = document.createElement("div");
    line.className = "tip-line" + (cls ? " " + cls : "");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    if (color) swatch.style.background = color; else swatch.hidden = true;
    const label = document.createElement("span");
    label.className = "tip-name";
    label.textContent = name;
    const value = document.createElement("span");
    value.className = "tip-value";
    value.textContent = text;
    line.append(swatch, label, value);
    return line;
  });
  const notes = info.notes.map((text) => {
    const p = document.createElement("div");
    p.className = "tip-note";
    p.textContent = text;
    return p;
  });
  tip.replaceChildren(title, ...rows, ...notes);
  tip.dataset.index = i;
  tip.hidden = false;
  // Beside the bar (on the side with more room), so it never hides the bar it describes.
  const box = tip.parentElement.getBoundingClientRect();
  const bar = g.getBoundingClientRect();
  const w = tip.offsetWidth;
  const cx = bar.left - box.left + bar.width / 2;
  const x = cx > box.width / 2 ? cx - bar.width / 2 - w - 4 : cx + bar.width / 2 + 4;
  const fits = x >= 0 && x + w <= box.width;
  tip.style.left = Math.max(0, Math.min(box.width - w, fits ? x : cx - w / 2)) + "px";
  // On a narrow screen there is no room beside the bar: below the chart instead.
  tip.style.top = (fits ? Math.max(0, bar.top - box.top) : box.height + 4) + "px";
}

function hideTip() {
  if (chart.tip) chart.tip.hidden = true;
}

function watchChartSize(svg) {
  const redraw = () => {
    if (Math.floor(svg.getBoundingClientRect().width) !== chart.width) redrawChart();
  };
  if (window.ResizeObserver) new ResizeObserver(() => requestAnimationFrame(redraw)).observe(svg);
  else window.addEventListener("resize", redraw);
}
