// The lambda-pipeline dashboard: polls the query API every 5 s and draws
// each view with uPlot (vendored from npm). Behind every time chart, buckets
// answered by the batch layer and by the speed layer are shaded in their own
// colour, and a line marks the boundary B. Alerts arrive over Server-Sent
// Events. After each render every chart's element carries what it drew in
// data attributes (points, boundary, batch and speed buckets), which the
// browser test reads.
"use strict";

const STEP = "1m";
const STEP_MS = 60_000;
const WINDOW_MS = 60 * STEP_MS;
const REFRESH_MS = 5_000;
const SHADE = {
  batch: "rgba(52, 120, 198, 0.13)",
  speed: "rgba(230, 140, 30, 0.16)",
  mixed: "rgba(150, 80, 190, 0.16)",
};
const charts = new Map();
// `/?live=0`: render once, without the refresh loop or the alert stream
// (a still page, for screenshots and headless browsers' virtual time).
const LIVE = new URLSearchParams(location.search).get("live") !== "0";

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function clock(ms) {
  return ms == null ? "—" : new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function duration(ms) {
  if (ms == null) return "—";
  if (Math.abs(ms) < 1000) return `${Math.round(ms)} ms`;
  if (Math.abs(ms) < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

// Shades each bucket by the layer that answered it and draws B.
function layerPlugin(meta) {
  return {
    hooks: {
      drawClear: [
        (u) => {
          const { top, height } = u.bbox;
          const ctx = u.ctx;
          ctx.save();
          meta.starts.forEach((start, i) => {
            const x0 = u.valToPos(start / 1000, "x", true);
            const x1 = u.valToPos((start + STEP_MS) / 1000, "x", true);
            ctx.fillStyle = SHADE[meta.layers[i]] || "transparent";
            ctx.fillRect(x0, top, x1 - x0, height);
          });
          ctx.restore();
        },
      ],
      draw: [
        (u) => {
          meta.el.dataset.boundaryDrawn = "0";
          if (meta.boundary == null) return;
          const x = u.valToPos(meta.boundary / 1000, "x", true);
          const { left, top, width, height } = u.bbox;
          if (x < left || x > left + width) return;
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#b42318";
          ctx.lineWidth = 2 * devicePixelRatio;
          ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          ctx.fillStyle = "#b42318";
          ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
          ctx.fillText("B", x + 4 * devicePixelRatio, top + 14 * devicePixelRatio);
          ctx.restore();
          meta.el.dataset.boundaryDrawn = "1";
        },
      ],
    },
  };
}

// Draws (or updates) the chart in element `id`: `series` are [label, colour],
// `columns` the values per series, one per bucket of `answer`.
function plot(id, answer, series, columns, options = {}) {
  const el = document.getElementById(id);
  const buckets = answer.buckets;
  const xs = buckets.map((b) => b.start / 1000);
  const data = [xs, ...columns];
  let chart = charts.get(id);
  if (!chart) {
    const meta = { el, starts: [], layers: [], boundary: null };
    const opts = {
      title: options.title,
      width: Math.max(el.clientWidth, 300),
      height: options.height || 200,
      // The x range follows the newest answer held by the chart below.
      scales: { x: { time: true, range: () => [chart.answer.from / 1000, chart.answer.to / 1000] } },
      series: [{}, ...series.map(([label, stroke, fill]) => ({ label, stroke, fill, width: 1.5, spanGaps: false }))],
      bands: options.bands,
      legend: { live: false },
      plugins: [layerPlugin(meta)],
    };
    chart = { uplot: null, meta, answer };
    chart.uplot = new uPlot(opts, data, el);
    charts.set(id, chart);
  }
  chart.answer = answer;
  chart.meta.starts = buckets.map((b) => b.start);
  chart.meta.layers = buckets.map((b) => b.layer);
  chart.meta.boundary = answer.boundary;
  chart.uplot.setData(data);
  const points = columns.reduce((n, col) => n + col.filter((v) => v != null).length, 0);
  el.dataset.points = String(points);
  el.dataset.boundary = answer.boundary == null ? "" : String(answer.boundary);
  el.dataset.batchBuckets = String(buckets.filter((b) => b.layer === "batch").length);
  el.dataset.speedBuckets = String(buckets.filter((b) => b.layer === "speed").length);
}

function view(path, range, filters = {}) {
  const query = new URLSearchParams({ from: range.from, to: range.to, step: STEP, ...filters });
  return getJson(`${path}?${query}`);
}

function figure(label, value) {
  return `<div class="figure"><div class="label">${label}</div><div class="value">${value}</div></div>`;
}

function bytes(n) {
  if (n == null) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// Lambda vs kappa: GET /api/v1/compare over the hour shown (it replays the
// log, so it runs on load and on the button, not on every refresh).
async function compareViews(range) {
  const state = document.getElementById("compare-state");
  const panel = document.getElementById("compare");
  state.textContent = "replaying the log and recomputing the batch views…";
  const response = await fetch(`/api/v1/compare?from=${range.from}&to=${range.to}`);
  const answer = await response.json();
  if (!response.ok) {
    state.textContent = answer.error || `${response.status}`;
    panel.dataset.compared = "0";
    return;
  }
  const views = Object.entries(answer.summary);
  const total = (k) => views.reduce((n, [, s]) => n + s[k], 0);
  state.textContent = `batch manifest ${answer.manifest_version}, ${answer.log_records} log records, lateness ${duration(answer.allowed_lateness_ms)}`;
  const lambda = answer.cost.lambda;
  const kappa = answer.cost.kappa;
  document.getElementById("compare-figures").innerHTML = [
    figure("lambda: wall time", duration(lambda.wall_ms)),
    figure("lambda: bytes read", bytes(lambda.bytes_read)),
    figure("lambda: events", lambda.events_processed),
    figure("kappa: wall time", duration(kappa.wall_ms)),
    figure("kappa: bytes read", bytes(kappa.bytes_read)),
    figure("kappa: events", kappa.events_processed),
  ].join("");
  document.getElementById("compare-views").innerHTML =
    "<tr><th>view</th><th>buckets</th><th>equal</th><th>explained</th><th>unexplained</th>" +
    "<th>lambda events</th><th>kappa events</th><th>late</th><th>past retention</th></tr>" +
    views.map(([name, s]) => `<tr><td>${name}</td><td>${s.buckets}</td><td>${s.equal}</td>` +
      `<td>${s.explained}</td><td>${s.unexplained}</td><td>${s.lambda_events}</td>` +
      `<td>${s.kappa_events}</td><td>${s.late_events}</td><td>${s.lost_events}</td></tr>`).join("");
  const list = document.getElementById("compare-differences");
  list.innerHTML = "";
  for (const d of answer.differences.slice(0, 12)) {
    const item = document.createElement("li");
    const why = d.reasons.map((r) => `${r.events} ${r.reason}`).join(", ") || "no reason found";
    item.textContent = `${d.view} ${clock(d.bucket_ms)}: lambda ${d.lambda_events}, kappa ${d.kappa_events} — ${why}`;
    if (!d.explained) item.className = "unexplained";
    list.append(item);
  }
  if (answer.differences.length > 12) {
    const more = document.createElement("li");
    more.textContent = `… ${answer.differences.length - 12} more (lambda compare lists them all)`;
    list.append(more);
  }
  panel.dataset.compared = "1";
  panel.dataset.buckets = String(total("buckets"));
  panel.dataset.explained = String(total("explained"));
  panel.dataset.unexplained = String(total("unexplained"));
}

function renderLayers(status) {
  const speed = status.speed || {};
  const batch = status.batch || {};
  const lag = (speed.partitions || []).reduce((n, p) => n + (p.lag || 0), 0);
  const batchLag = (batch.partitions || []).reduce((n, p) => n + (p.lag || 0), 0);
  const late = Object.entries(speed.late_ledger || {}).map(([t, n]) => `${t} ${n}`).join(", ") || "none";
  const last = batch.last_run;
  document.getElementById("layer-figures").innerHTML = [
    figure("boundary B", clock(batch.boundary)),
    figure("speed watermark", clock(speed.watermark)),
    figure("speed lag (records)", lag),
    figure("batch lag (records)", batchLag),
    figure("late ledger", late),
    figure("checkpoint age", duration(speed.checkpoint_age_ms)),
    figure("last batch run", last ? `${clock(last.started_ms)} (${duration(last.duration_ms)}, ${last.ok ? "ok" : "failed"})` : "—"),
    figure("next batch run", clock(batch.next_run_ms)),
    figure("manifest version", batch.manifest_version ?? "—"),
    figure("active alerts", status.alerts ? status.alerts.active : "—"),
    figure("architecture", status.kappa
      ? `kappa, version ${status.kappa.version}${status.kappa.replay && status.kappa.replay.state !== "switched" ? ` (replay to ${status.kappa.replay.version}: ${status.kappa.replay.state})` : ""}`
      : (status.architecture || "lambda")),
  ].join("");
}

// The hour up to the newest event seen (the demo's clock may differ from the data's).
function rangeOf(status) {
  const newest = status.speed?.max_event_ts ?? status.batch?.max_event_ts ?? Date.now();
  const to = Math.floor(newest / STEP_MS) * STEP_MS + STEP_MS;
  return { from: to - WINDOW_MS, to };
}

async function refresh() {
  const status = await getJson("/api/v1/status");
  renderLayers(status);
  const range = rangeOf(status);
  document.getElementById("range").textContent = `Showing ${clock(range.from)} to ${clock(range.to)}.`;

  const funnel = await view("/api/v1/funnel", range);
  const b = funnel.buckets;
  plot("chart-funnel", funnel, [
    ["impressions", "#3478c6"],
    ["clicks", "#e68c1e"],
    ["add to cart", "#9650be"],
    ["purchases", "#1a9850"],
  ], [b.map((x) => x.impressions), b.map((x) => x.clicks), b.map((x) => x.add_to_carts), b.map((x) => x.purchases)],
  { height: 240 });
  const sum = (k) => b.reduce((n, x) => n + (x[k] || 0), 0);
  const pct = (a, c) => (c ? `${((100 * a) / c).toFixed(1)}%` : "—");
  document.getElementById("funnel-summary").textContent =
    `${sum("impressions")} impressions → ${sum("clicks")} clicks (${pct(sum("clicks"), sum("impressions"))}) → ` +
    `${sum("add_to_carts")} carts → ${sum("purchases")} purchases (${pct(sum("purchases"), sum("clicks"))} of clicks)`;

  for (const device of ["desktop", "mobile", "tablet"]) {
    const pages = await view("/api/v1/pages", range, { device });
    const p = pages.buckets;
    plot(`chart-pages-${device}`, pages, [
      ["p50", "#3478c6"],
      ["p95", "#e68c1e"],
      ["p99", "#b42318"],
    ], [p.map((x) => x.render_ms_p50), p.map((x) => x.render_ms_p95), p.map((x) => x.render_ms_p99)],
    { title: device, height: 150 });
  }

  for (const sensor of ["temperature", "humidity", "pressure"]) {
    const iot = await view("/api/v1/iot", range, { sensor });
    const stat = (k) => iot.buckets.map((x) => {
      const s = x.sensors.find((s) => s.sensor === sensor);
      return s ? s[k] : null;
    });
    plot(`chart-iot-${sensor}`, iot, [
      ["min", "#7aa6d8"],
      ["avg", "#1d2330"],
      ["max", "#7aa6d8"],
    ], [stat("min"), stat("avg"), stat("max")],
    { title: sensor, height: 150, bands: [{ series: [3, 1], fill: "rgba(52, 120, 198, 0.18)" }] });
  }
  lastRange = range;
  if (!compared) {
    compared = true;
    await compareViews(range).catch((error) => {
      document.getElementById("compare-state").textContent = `unavailable: ${error.message}`;
    });
  }
  document.body.dataset.ready = "1";
}

let compared = false;
let lastRange = null;
document.getElementById("compare-run").addEventListener("click", () => {
  if (lastRange) compareViews(lastRange).catch((error) => {
    document.getElementById("compare-state").textContent = `unavailable: ${error.message}`;
  });
});

function showAlert(alert) {
  const list = document.getElementById("alerts");
  const item = document.createElement("li");
  item.className = alert.state;
  item.textContent = `${clock(alert.ts)} ${alert.state} ${alert.rule} ${alert.key}: ${alert.message}`;
  list.prepend(item);
  while (list.children.length > 50) list.lastElementChild.remove();
}

async function followAlerts() {
  const head = await getJson("/api/v1/alerts?limit=1");
  // The newest 20 (ids are dense in one serving process, but for
  // transitions that never reached it).
  const since = Math.max(0, head.last - 20);
  const recent = await getJson(`/api/v1/alerts?since=${since}&limit=20`);
  recent.alerts.forEach(showAlert);
  const state = document.getElementById("alerts-state");
  const active = recent.active_count ?? recent.active.length;
  if (!LIVE) {
    state.textContent = `${active} active (not live: ?live=0)`;
    return;
  }
  const source = new EventSource(`/api/v1/alerts/stream?since=${head.last}`);
  source.onopen = () => { state.textContent = `live (${active} active)`; };
  source.onerror = () => { state.textContent = "reconnecting…"; };
  source.addEventListener("alert", (e) => showAlert(JSON.parse(e.data)));
  // Transitions this page will not get (fell behind, or serving restarted).
  source.addEventListener("gap", (e) => {
    const gap = JSON.parse(e.data);
    const what = gap.restarted ? "serving restarted" : `${gap.missed} missed`;
    state.textContent = `live (${what})`;
  });
}

async function loop() {
  try {
    await refresh();
  } catch (error) {
    document.getElementById("range").textContent = `Refresh failed: ${error.message}`;
  }
  if (LIVE) setTimeout(loop, REFRESH_MS);
}

followAlerts().catch((error) => {
  document.getElementById("alerts-state").textContent = `unavailable: ${error.message}`;
});
loop();
