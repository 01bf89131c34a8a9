// PicoGrid dashboard: draws the day's charts with uPlot and keeps the page live from the
// SSE stream (/api/stream) without reloading. Server-rendered HTML is the starting state.
"use strict";

const page = document.getElementById("page");
const API = page.dataset.api;
const POLICY_COLOURS = { mpc: "#1565c0", naive: "#ef6c00", oracle: "#2e7d32" };
const DISPATCH_SERIES = [
  // [column, legend, colour]; powers into the DC bus [W], loads negative.
  ["pv_w", "PV", "#f9a825"],
  ["storage_w", "storage", "#6a1b9a"],
  ["grid_w", "grid", "#455a64"],
  ["load1_w", "load 1", "#c62828"],
  ["load2_w", "load 2", "#ad1457"],
  ["load3_w", "load 3", "#ef6c00"],
];

let runId = null;
let dispatch = null;   // columns of the 'mpc' policy, as /api/run/<id>/dispatch returns them
const charts = {};

function fmt(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
}

function fmtFlags(v) {
  return v === null || v === undefined ? "—" : "0x" + v.toString(16).toUpperCase().padStart(2, "0");
}

async function getJSON(path) {
  const response = await fetch(API + path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function setText(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value;
}

// Rows are built with textContent, never innerHTML: board names and reasons come from the store.
function fillTable(tbodyId, rows, emptyText, colspan) {
  const body = document.getElementById(tbodyId);
  if (!body) return;
  body.replaceChildren();
  if (rows.length === 0 && emptyText) rows = [[{ text: emptyText, colspan: colspan }]];
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell !== null && typeof cell === "object") {
        td.textContent = cell.text;
        if (cell.colspan) td.colSpan = cell.colspan;
        if (cell.title) td.title = cell.title;
      } else {
        td.textContent = cell;
      }
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function renderLatest(state) {
  const run = state.run;
  setText("run-id", run.id);
  setText("run-scenario", run.scenario);
  setText("run-profile", run.profile);
  setText("run-ticks-done", run.ticks_done);
  setText("run-n-ticks", run.n_ticks);
  setText("run-tick-s", fmt(run.tick_s));
  const status = document.getElementById("run-status");
  status.textContent = run.status;
  status.className = "status-" + run.status;
  setText("bus-voltage", fmt(state.bus_voltage_v));

  fillTable("boards-body", state.boards.map((b) => {
    const t = b.telemetry || {};
    return [b.board, b.role || "—", fmt(t.p_bus_w), fmt(t.p_port_w), fmt(t.setpoint_w),
      fmt(t.v_bus_v), fmtFlags(t.flags), fmt(b.last_seen_s), fmt(b.frames_ok),
      fmt(b.crc_errors), fmt(b.failsafe_events)];
  }), "no board has reported yet", 11);

  renderDecision(state.decision);
}

function renderDecision(d) {
  const box = document.getElementById("decision");
  box.replaceChildren();
  if (!d) {
    const p = document.createElement("p");
    p.textContent = "no decision yet";
    box.appendChild(p);
    return;
  }
  const facts = document.createElement("dl");
  facts.className = "facts";
  const items = [["tick", d.tick], ["status", d.status],
    ["solve time", d.solve_time_s === null ? "— ms" : fmt(d.solve_time_s * 1000) + " ms"],
    ["forecast", d.forecast_source || "—"]];
  if (d.reason) items.push(["reason", d.reason]);
  for (const [name, value] of items) {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    div.append(dt, dd);
    facts.appendChild(div);
  }
  const table = document.createElement("table");
  table.className = "data";
  table.innerHTML = "<thead><tr><th>board</th><th>setpoint [W]</th></tr></thead><tbody id=\"setpoints-body\"></tbody>";
  box.append(facts, table);
  fillTable("setpoints-body", Object.entries(d.setpoints).map(([k, v]) => [k, fmt(v)]));
}

function chartWidth(el) {
  return Math.max(320, el.clientWidth || 800);
}

function makeChart(id, opts, data) {
  const el = document.getElementById(id);
  if (!el || typeof uPlot === "undefined") return null;
  const legendValue = (u, v) => fmt(v);
  opts.series.slice(1).forEach((s) => { s.value = legendValue; });
  const chart = new uPlot(Object.assign({ width: chartWidth(el), height: 260 }, opts), data, el);
  charts[id] = chart;
  return chart;
}

function dispatchData() {
  return [dispatch.tick].concat(DISPATCH_SERIES.map(([col]) => dispatch[col]));
}

function storageData() {
  return [dispatch.tick, dispatch.storage_energy_j, dispatch.import_price_per_j];
}

function drawDispatchCharts() {
  if (!charts["chart-dispatch"]) {
    makeChart("chart-dispatch", {
      title: "Power into the DC bus",
      scales: { x: { time: false } },
      axes: [{ label: "tick" }, { label: "power [W]" }],
      series: [{ label: "tick" }].concat(
        DISPATCH_SERIES.map(([, label, colour]) => ({ label: label + " [W]", stroke: colour, width: 2 }))),
    }, dispatchData());
    makeChart("chart-storage", {
      title: "Storage energy and import price",
      scales: { x: { time: false }, J: {}, price: {} },
      axes: [{ label: "tick" },
        { label: "storage energy [J]", scale: "J" },
        { label: "import price [price unit/J]", scale: "price", side: 1, grid: { show: false } }],
      series: [{ label: "tick" },
        { label: "storage energy [J]", scale: "J", stroke: "#6a1b9a", width: 2 },
        { label: "import price [/J]", scale: "price", stroke: "#455a64", width: 1, dash: [4, 4] }],
    }, storageData());
  } else {
    charts["chart-dispatch"].setData(dispatchData());
    charts["chart-storage"].setData(storageData());
  }
}

function appendDispatch(news) {
  const last = dispatch.tick.length ? dispatch.tick[dispatch.tick.length - 1] : -Infinity;
  news.tick.forEach((tick, i) => {
    if (tick <= last) return;  // already have it (page load raced the stream)
    for (const col of Object.keys(dispatch)) {
      if (Array.isArray(dispatch[col]) && Array.isArray(news[col])) dispatch[col].push(news[col][i]);
    }
  });
  // The running cost sum restarts in each news batch; recompute it over the whole day.
  let total = 0;
  dispatch.cumulative_cost = dispatch.cost.map((c) => (total += c || 0));
}

function renderSummary(s) {
  const costs = s.costs;
  fillTable("costs-body", Object.entries(costs.totals).map(([policy, c]) =>
    [policy, c.ticks, fmt(c.to_latest), fmt(c.total)]));
  setText("savings-capture", fmt(costs.savings_capture));
  const data = [costs.tick].concat(Object.keys(POLICY_COLOURS).map((p) => costs.cumulative[p]));
  if (!charts["chart-cost"]) {
    makeChart("chart-cost", {
      title: "Cumulative cost per policy",
      scales: { x: { time: false } },
      axes: [{ label: "tick" }, { label: "cumulative cost [price unit]" }],
      series: [{ label: "tick" }].concat(Object.entries(POLICY_COLOURS).map(([p, colour]) =>
        ({ label: p, stroke: colour, width: 2 }))),
    }, data);
  } else {
    charts["chart-cost"].setData(data);
  }
  const section = document.getElementById("summary-section");
  section.hidden = s.rows.length === 0;
  fillTable("summary-body", s.rows.map((r) => [{ text: r.label, title: r.name }, fmt(r.value), r.unit]));
}

async function refreshSummary() {
  renderSummary(await getJSON("/run/" + runId + "/summary"));
}

async function refreshRuns() {
  const { runs } = await getJSON("/runs");
  fillTable("runs-body", runs.map((r) => [r.id, r.scenario, r.profile,
    r.ticks_done + " / " + r.n_ticks, r.status]));
}

function setLive(live) {
  const badge = document.getElementById("live-status");
  badge.textContent = live ? "live" : "reconnecting";
  badge.classList.toggle("live", live);
}

async function onTick(event) {
  const run = event.latest.run;
  if (runId === null) {           // waiting page: the first run has started
    if (run) location.reload();
    return;
  }
  if (!run) return;                // store gone for a moment: keep what is shown
  if (run.id !== runId) {          // a new run: its page starts from scratch
    location.reload();
    return;
  }
  if (event.reset) dispatch = event.dispatch;
  else appendDispatch(event.dispatch);
  renderLatest(event.latest);
  drawDispatchCharts();
  await Promise.all([refreshSummary(), refreshRuns()]);
}

function connect(since) {
  const source = new EventSource(API + "/stream" + (since ? "?since=" + encodeURIComponent(since) : ""));
  source.addEventListener("tick", (e) => {
    onTick(JSON.parse(e.data)).catch((err) => console.error("update failed", err));
  });
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
}

async function main() {
  if (page.dataset.run) {
    runId = Number(page.dataset.run);
    dispatch = await getJSON("/run/" + runId + "/dispatch?policy=mpc");
    drawDispatchCharts();
    await Promise.all([refreshSummary(), refreshRuns()]);
    const ticks = dispatch.tick;
    connect(runId + ":" + (ticks.length ? ticks[ticks.length - 1] : ""));
  } else {
    connect("");
  }
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    chart.setSize({ width: chartWidth(document.getElementById(id)), height: 260 });
  }
});

main().catch((err) => console.error("dashboard start failed", err));
