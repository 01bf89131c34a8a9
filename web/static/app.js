// PicoGrid dashboard: draws each page's charts with uPlot from the JSON API and keeps the
// page live from the SSE stream (/api/stream) without reloading. The server-rendered HTML is
// the starting state; every value set here comes from the same API documented in openapi.yaml.
"use strict";

const page = document.getElementById("page");
const API = page.dataset.api;
const PAGE = page.dataset.page;
const RUN = page.dataset.run ? Number(page.dataset.run) : null;
const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const POLICY_COLOURS = { mpc: "#1565c0", naive: "#ef6c00", perfect_foresight: "#2e7d32",
  mpc_perfect_forecast: "#00838f" };
const POLICY_NAMES = { mpc: "MPC", naive: "naive rule", perfect_foresight: "perfect foresight",
  mpc_perfect_forecast: "MPC with perfect forecasts (bench)" };
const LOADS = ["load1", "load2", "load3"];
const LOAD_COLOURS = { load1: "#c62828", load2: "#ad1457", load3: "#6d4c41" };
const DISPATCH_SERIES = [
  // [column, legend, colour]; powers into the DC bus [W], loads negative.
  ["pv_w", "PV", "#f9a825"],
  ["storage_w", "storage", "#6a1b9a"],
  ["grid_w", "grid", "#455a64"],
  ["load1_w", "load 1", LOAD_COLOURS.load1],
  ["load2_w", "load 2", LOAD_COLOURS.load2],
  ["load3_w", "load 3", LOAD_COLOURS.load3],
];
const CHART_HEIGHT = 300;
const charts = {};

function fmt(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
}
// Bench watts to the centiwatt: readable from the back of the room, steady width.
function fmtW(v) {
  if (v === null || v === undefined) return "—";
  return (Math.abs(v) < 0.005 ? 0 : v).toFixed(2);   // no "-0.00"
}
// A power role's setpoint is telemetry setpoint_w [W] (pv: a power cap, -1 on the wire meaning
// none, firmware/PROTOCOL.md), the grid board's its bus-voltage reference setpoint_v [V] (the
// other is null); both shown to two decimals.
function setpointText(board, t) {
  if (t.setpoint_v !== null && t.setpoint_v !== undefined) return "setpoint " + fmtW(t.setpoint_v) + " V";
  const v = t.setpoint_w;
  if (board === "pv" && v !== null && v !== undefined && v < 0) return "setpoint: no cap";
  return "setpoint " + fmtW(v) + " W";
}
function fmtFlags(v) {
  return v === null || v === undefined ? "—" : "0x" + v.toString(16).toUpperCase().padStart(2, "0");
}
function fmtClock(unixS) {
  return unixS === null || unixS === undefined ? "—" : new Date(unixS * 1000).toTimeString().slice(0, 8);
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

// Rows are built with textContent, never innerHTML: names, reasons and results come from the store.
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
        if (cell.cls) td.className = cell.cls;
      } else {
        td.textContent = cell;
      }
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

// --- charts ---------------------------------------------------------------------------------

function chartWidth(el) {
  return Math.max(320, el.clientWidth || 800);
}

// One chart per element, created on first data and updated in place after; every axis has a unit.
function plot(id, opts, data) {
  const el = document.getElementById(id);
  if (!el || typeof uPlot === "undefined") return null;
  if (charts[id]) {
    charts[id].setData(data);
    return charts[id];
  }
  opts.series.slice(1).forEach((s) => { if (!s.value) s.value = (u, v) => fmt(v); });
  opts.scales = Object.assign({ x: { time: false } }, opts.scales || {});
  const axisFont = { font: "15px system-ui, sans-serif", labelFont: "bold 15px system-ui, sans-serif" };
  opts.axes = opts.axes.map((a) => Object.assign({}, axisFont, a));
  charts[id] = new uPlot(Object.assign({ width: chartWidth(el), height: CHART_HEIGHT }, opts), data, el);
  return charts[id];
}

// Ticks are whole numbers: never label 2.5.
const TICK_AXIS = { label: "tick", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] };
const noPath = () => null;

function cumulative(values) {
  let total = 0;
  return values.map((v) => (total += v || 0));
}

// --- Live -----------------------------------------------------------------------------------

let dispatch = null;   // 'mpc' columns, as /api/run/<id>/dispatch returns them

function renderLatest(state) {
  const run = state.run;
  setText("run-ticks-done", run.ticks_done);
  setText("run-n-ticks", run.n_ticks);
  const status = document.getElementById("run-status");
  if (status) {
    status.textContent = run.status;
    status.className = "big status-" + run.status;
  }
  setText("bus-voltage", fmt(state.bus_voltage_v));
  const cards = document.getElementById("board-cards");
  if (cards) {
    cards.replaceChildren();
    for (const b of state.boards) {
      const t = b.telemetry || {};
      const card = document.createElement("div");
      const ok = b.health.length === 1 && b.health[0] === "ok";
      card.className = "card health-" + (ok ? "ok" : "warn");
      card.dataset.board = b.board;
      const parts = [["card-name", b.board], ["card-power", null], ["card-sub", null], ["card-health", b.health.join(", ")]];
      for (const [cls, text] of parts) {
        const div = document.createElement("div");
        div.className = cls;
        if (cls === "card-power") {
          const span = document.createElement("span");
          span.className = "p-bus";
          span.textContent = fmtW(t.p_bus_w);
          const unit = document.createElement("small");
          unit.textContent = " W";
          div.append(span, unit);
        } else if (cls === "card-sub") {
          div.textContent = setpointText(b.board, t);
        } else {
          div.textContent = text;
        }
        card.appendChild(div);
      }
      cards.appendChild(card);
    }
  }
  const d = state.decision;
  if (d) {
    setText("decision-reason", d.reason || "—");
    setText("decision-tick", d.tick);
    setText("decision-status", d.status);
    setText("decision-solve-ms", d.solve_time_s === null ? "—" : fmt(d.solve_time_s * 1000));
    setText("decision-forecast", d.forecast_source || "—");
    const approve = document.querySelector("#form-approve input[name=value]");
    if (approve) approve.value = d.tick;
    document.querySelectorAll(".approve-tick").forEach((el) => { el.textContent = d.tick; });
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
}

function drawDispatch() {
  plot("chart-dispatch", {
    axes: [TICK_AXIS, { label: "power into the bus [W]", size: 70 }],
    series: [{ label: "tick" }].concat(
      DISPATCH_SERIES.map(([, label, colour]) => ({ label: label + " [W]", stroke: colour, width: 3 }))),
  }, [dispatch.tick].concat(DISPATCH_SERIES.map(([col]) => dispatch[col])));
}

function commandText(c) {
  return [c.kind, c.board, c.mode, c.value === null || c.value === undefined ? null : fmt(c.value)]
    .filter((x) => x !== null && x !== undefined).join(" ");
}

async function refreshControl() {
  const control = await getJSON("/control");
  setText("mode", control.mode);
  setText("mode-now", control.mode);
  if (document.getElementById("commands-body")) {
    const { commands } = await getJSON("/commands?limit=10");
    fillTable("commands-body", commands.map((c) => [c.id, fmtClock(c.created_at), c.user, commandText(c),
      { text: c.status, cls: "cmd-" + c.status }, c.result || ""]), "no commands yet", 6);
  }
}

async function sendCommand(body) {
  const out = document.getElementById("command-result");
  const response = await fetch(API + "/commands", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF, Accept: "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const answer = await response.json();
  if (out) {
    out.textContent = response.ok
      ? "command " + answer.command.id + " queued: " + commandText(answer.command) + " (waiting for the edge)"
      : "refused: " + answer.error;
    out.className = "result " + (response.ok ? "ok" : "error");
  }
  await refreshControl();
}

function wireOperatorForms() {
  for (const form of document.querySelectorAll("form.op")) {
    const send = (kind) => {
      const body = { kind: kind };
      for (const el of form.elements) if (el.name) body[el.name] = el.value;
      if (kind === "clear_override" || kind === "restore") delete body.value;
      sendCommand(body).catch((err) => console.error("command failed", err));
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); send(form.dataset.kind); });
    const clear = form.querySelector(".clear-override");
    if (clear) clear.addEventListener("click", () => send("clear_override"));
    const restore = form.querySelector(".restore");
    if (restore) restore.addEventListener("click", () => send("restore"));
  }
  const board = document.querySelector("#form-override select[name=board]");
  if (board) {
    getJSON("/control").then((control) => {
      const hint = () => {
        const lim = control.limits[board.value];
        setText("override-hint", lim.unit + ", " + fmt(lim.min) + " … " + fmt(lim.max));
      };
      board.addEventListener("change", hint);
      hint();
    }).catch((err) => console.error(err));
  }
}

async function livePage(event) {
  if (event === null) {
    dispatch = await getJSON("/run/" + RUN + "/dispatch?policy=mpc");
    drawDispatch();
    wireOperatorForms();
    return;
  }
  if (event.reset) dispatch = event.dispatch;
  else appendDispatch(event.dispatch);
  renderLatest(event.latest);
  drawDispatch();
  const summary = await getJSON("/run/" + RUN + "/summary");
  setText("savings-capture", fmt(summary.costs.savings_capture));
}

// --- Consumption ----------------------------------------------------------------------------

async function consumptionPage() {
  const c = await getJSON("/run/" + RUN + "/consumption");
  const loadSeries = (suffix, dash) => LOADS.map((l) => ({
    label: l + " " + suffix + " [J]", stroke: LOAD_COLOURS[l], width: 3, dash: dash }));
  plot("chart-loads-total", {
    title: "Cumulative energy per load",
    axes: [TICK_AXIS, { label: "energy [J]", size: 60 }],
    series: [{ label: "tick" }].concat(loadSeries("served", undefined), loadSeries("shed", [8, 6])),
  }, [c.tick].concat(LOADS.map((l) => cumulative(c[l + "_served_j"])),
    LOADS.map((l) => cumulative(c[l + "_shed_j"]))));
  plot("chart-served", {
    title: "Served and shed per tick",
    axes: [TICK_AXIS, { label: "energy per tick [J]", size: 60 }],
    series: [{ label: "tick" }].concat(loadSeries("served", undefined), loadSeries("shed", [8, 6])),
  }, [c.tick].concat(LOADS.map((l) => c[l + "_served_j"]), LOADS.map((l) => c[l + "_shed_j"])));
  plot("chart-pv", {
    title: "PV used and curtailed per tick",
    axes: [TICK_AXIS, { label: "energy per tick [J]", size: 60 }],
    series: [{ label: "tick" },
      { label: "PV used [J]", stroke: "#f9a825", fill: "rgba(249,168,37,0.25)", width: 3 },
      { label: "PV curtailed [J]", stroke: "#8d6e63", width: 3, dash: [8, 6] }],
  }, [c.tick, c.pv_used_j, c.pv_curtailed_j]);
  plot("chart-storage", {
    title: "Storage",
    scales: { J: {}, Jt: {} },
    axes: [TICK_AXIS, { label: "stored energy [J]", scale: "J", size: 60 },
      { label: "charge / discharge per tick [J]", scale: "Jt", side: 1, grid: { show: false }, size: 60 }],
    series: [{ label: "tick" },
      { label: "stored [J]", scale: "J", stroke: "#6a1b9a", width: 3 },
      { label: "charged [J]", scale: "Jt", stroke: "#2e7d32", width: 2, dash: [6, 4] },
      { label: "discharged [J]", scale: "Jt", stroke: "#c62828", width: 2, dash: [6, 4] }],
  }, [c.tick, c.storage_energy_j, c.storage_charge_j, c.storage_discharge_j]);
}

// --- Finance --------------------------------------------------------------------------------

async function financePage() {
  const f = await getJSON("/run/" + RUN + "/finance");
  // the charts keep every policy's series (plot() builds a chart once, then only sets its
  // data; the perfect-foresight rows come at the day's end); the table lists the policies with rows
  const policies = Object.keys(POLICY_COLOURS);
  const policySeries = (unit) => policies.map((p) => ({
    label: POLICY_NAMES[p] + " " + unit, stroke: POLICY_COLOURS[p], width: 3 }));
  plot("chart-cumulative", {
    title: "Cumulative cost per policy",
    axes: [TICK_AXIS, { label: "cumulative cost [cents]", size: 70 }],
    series: [{ label: "tick" }].concat(policySeries("[cents]")),
  }, [f.tick].concat(policies.map((p) => f.cumulative[p])));
  plot("chart-cost", {
    title: "Cost per tick (import cost − export revenue)",
    axes: [TICK_AXIS, { label: "cost per tick [cents]", size: 70 }],
    series: [{ label: "tick" }].concat(policySeries("[cents]")),
  }, [f.tick].concat(policies.map((p) => f.cost[p])));
  plot("chart-prices", {
    title: "Grid prices",
    axes: [TICK_AXIS, { label: "price [cents/J]", size: 70 }],
    series: [{ label: "tick" },
      { label: "import [cents/J]", stroke: "#c62828", width: 3 },
      { label: "export [cents/J]", stroke: "#2e7d32", width: 3 }],
  }, [f.tick, f.import_price_per_j, f.export_price_per_j]);
  fillTable("costs-body", policies.filter((p) => f.totals[p].ticks > 0).map((p) => {
    const t = f.totals[p];
    return [p, t.ticks, fmt(t.to_latest), fmt(t.total), fmt(f.import_j[p]), fmt(f.export_j[p])];
  }));
  setText("savings-capture", fmt(f.savings_capture));
  // the third bench's rows may start after the page loaded (a page opened before tick 0)
  const perfectForecast = f.totals.mpc_perfect_forecast;
  document.getElementById("vs-mpc-perfect-forecast").hidden = !(perfectForecast && perfectForecast.ticks > 0);
  setText("savings-capture-vs-mpc-perfect-forecast", fmt(f.savings_capture_vs_mpc_perfect_forecast));
  const s = await getJSON("/run/" + RUN + "/summary");
  document.getElementById("summary-section").hidden = s.rows.length === 0;
  fillTable("summary-body", s.rows.map((r) => [{ text: r.label, title: r.name }, fmt(r.value), r.unit]));
}

// --- Forecasts ------------------------------------------------------------------------------

function fanChart(id, title, data, label, unit) {
  plot(id, {
    title: title,
    axes: [TICK_AXIS, { label: label + " [" + unit + "]", size: 80 }],
    series: [{ label: "tick" },
      { label: "P10", stroke: "rgba(21,101,192,0.6)", width: 1 },
      { label: "P50", stroke: "#1565c0", width: 3 },
      { label: "P90", stroke: "rgba(21,101,192,0.6)", width: 1 },
      { label: "actual", stroke: "#c62828", width: 0, paths: noPath,
        points: { show: true, size: 9, fill: "#c62828" } }],
    bands: [{ series: [3, 1], fill: "rgba(21,101,192,0.18)" }],
  }, [data.tick, data.p10, data.p50, data.p90, data.actual]);
}

async function forecastsPage() {
  const series = page.dataset.series;
  const f = await getJSON("/run/" + RUN + "/forecast?series=" + encodeURIComponent(series) + "&step=1");
  const unit = f.unit || "price unit";
  fanChart("chart-horizon", "Forecast issued at tick " + fmt(f.horizon.issued_tick) + " over the horizon",
    f.horizon, f.label, unit);
  fanChart("chart-day", "One tick ahead, through the day", f.day, f.label, unit);
  let inside = 0, n = 0;
  f.day.actual.forEach((a, i) => {
    if (a === null || f.day.p10[i] === null || f.day.p90[i] === null) return;
    n += 1;
    if (f.day.p10[i] <= a && a <= f.day.p90[i]) inside += 1;
  });
  setText("coverage", n ? (100 * inside / n).toFixed(0) + " % of " + n + " ticks (nominal 80 %)" : "—");
}

// --- Boards ---------------------------------------------------------------------------------

async function boardsPage() {
  const b = await getJSON("/run/" + RUN + "/boards");
  fillTable("boards-body", b.boards.map((x) => {
    const t = x.telemetry || {};
    return [x.board, x.role || "—", x.firmware_version || "—", x.link || "—", fmt(x.last_seen_s),
      fmt(x.frames_ok), fmt(x.crc_errors), fmt(x.auth_errors), fmt(x.failsafe_events), fmt(x.replays_dropped),
      fmt(t.v_bus_v), fmt(t.v_port_v), fmt(t.i_port_a), fmt(t.p_bus_w), fmtFlags(t.flags), x.health.join(", ")];
  }), "no board has reported yet", 16);
  fillTable("events-body", b.events.slice(0, 50).map((e) => [fmt(e.t_s), e.board || "edge", e.kind, e.detail || ""]),
    "no events", 4);
  const { audit } = await getJSON("/audit?limit=20");
  fillTable("audit-body", audit.map((a) => [fmtClock(a.t), a.user, a.action, a.detail || "", a.remote_addr || ""]),
    "no control actions yet", 5);
}

// --- live stream ----------------------------------------------------------------------------

const PAGES = { live: livePage, consumption: consumptionPage, finance: financePage,
  forecasts: forecastsPage, boards: boardsPage };

function setLive(live) {
  const badge = document.getElementById("live-status");
  badge.textContent = live ? "live" : "reconnecting";
  badge.classList.toggle("live", live);
}

function setStoreError(reason) {
  // The stream stays open while the store cannot be read; the badge says why.
  const badge = document.getElementById("live-status");
  badge.classList.toggle("store-error", Boolean(reason));
  badge.title = reason ? "the store cannot be read: " + reason : "";
  if (reason) badge.textContent = "store unreadable";
  else if (badge.textContent === "store unreadable") setLive(true);
}

async function onTick(event) {
  const run = event.latest.run;
  setStoreError(event.store_error);
  if (PAGE === "unavailable") {   // the 503 page: the store can be read again
    if (!event.store_error) location.reload();
    return;
  }
  if (event.store_error) return;   // keep what is shown
  if (PAGE === "waiting") {       // the first run has started: show it
    if (run) location.reload();
    return;
  }
  if (RUN === null) {             // a page without a run (login): only the badges
    await refreshControl();
    return;
  }
  if (!run) return;                // store gone for a moment: keep what is shown
  if (run.id !== RUN) {            // a new run: its page starts from scratch
    location.reload();
    return;
  }
  const render = PAGES[PAGE];
  await Promise.all([render ? render(event) : null, refreshControl()]);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function connect() {
  // The live page asks only for what it has not drawn; the others refetch their view.
  const since = PAGE === "live" && dispatch && dispatch.tick.length
    ? RUN + ":" + dispatch.tick[dispatch.tick.length - 1] : "";
  const source = new EventSource(API + "/stream" + (since ? "?since=" + encodeURIComponent(since) : ""));
  source.addEventListener("tick", (e) => {
    onTick(JSON.parse(e.data)).catch((err) => console.error("update failed", err));
  });
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
}

async function main() {
  if (RUN !== null && PAGES[PAGE]) await PAGES[PAGE](null);
  connect();
}

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    chart.setSize({ width: chartWidth(document.getElementById(id)), height: CHART_HEIGHT });
  }
});

main().catch((err) => console.error("dashboard start failed", err));
