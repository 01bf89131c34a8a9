"""What the dashboard reads from the edge's store: plain functions of a read-only connection.

Every function returns JSON-ready dicts and lists (no ``sqlite3.Row``), so the pages, the
JSON API and the SSE stream share one source of truth. The schema they read is
``picogrid.edge.control.store.SCHEMA``; powers are into the DC bus [W] (loads negative), energies [J],
prices per joule in the tariff's unit, costs in that same unit.

"A tick is done" means its ``dispatch`` row for policy ``'mpc'`` exists: the edge writes a
tick's telemetry, decision and dispatch in one transaction, and the baselines ('naive',
'perfect_foresight') may be computed for the whole day ahead of time, so they cannot mark progress.
"""

import json
import logging
import sqlite3

from picogrid.edge.control.store import DISPATCH_COLUMNS, SCHEMA
from picogrid.edge.optimizer.economics import savings_capture

from .units import split_unit

log = logging.getLogger(__name__)

#: ``mpc_perfect_forecast``: the MPC with perfect forecasts (the day's true future), measured on a
#: third bench (a demo day has one); ``perfect_foresight``: the whole day's optimum, the bound
POLICIES = ("mpc", "naive", "perfect_foresight", "mpc_perfect_forecast")
LIVE_POLICY = "mpc"


def _schema_columns(schema):
    """{table: {column, ...}} of a schema script, read back from SQLite itself."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema)
        return {t: {c for (c,) in conn.execute("SELECT name FROM pragma_table_info(?)", (t,))}
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


#: the edge schema's tables and columns: what ``picogrid.web.db.check_readable`` expects
EDGE_COLUMNS = _schema_columns(SCHEMA)

# Display order of the bench's boards (docs/design.md §2); any other board follows by name.
BOARD_ORDER = ("pv", "storage", "grid", "load1", "load2", "load3")
TELEMETRY_COLUMNS = (
    "tick", "t_s", "seq", "v_bus_v", "v_port_v", "i_port_a", "p_bus_w", "p_port_w",
    "energy_bus_j", "setpoint_w", "setpoint_v", "flags",
)


def has_schema(conn):
    """True when the edge has created its tables (the file can exist before that)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name IN ('run', 'dispatch')"
    ).fetchone()
    return row[0] == 2


def latest_run_id(conn):
    """Id of the most recent run, or None when there is none yet."""
    if not has_schema(conn):
        return None
    row = conn.execute("SELECT MAX(id) FROM run").fetchone()
    return row[0]


def _progress(conn, run_id):
    """(ticks_done, latest_tick) of the live policy; latest_tick is None before the first."""
    row = conn.execute(
        "SELECT COUNT(*), MAX(tick) FROM dispatch WHERE run_id=? AND policy=?",
        (run_id, LIVE_POLICY),
    ).fetchone()
    return row[0], row[1]


def _header(conn, row):
    ticks_done, latest_tick = _progress(conn, row["id"])
    return {
        "id": row["id"],
        "started_at": row["started_at"],
        "profile": row["profile"],
        "scenario": row["scenario"],
        "n_ticks": row["n_ticks"],
        "tick_s": row["tick_s"],
        "status": row["status"],
        "ticks_done": ticks_done,
        "latest_tick": latest_tick,
        "has_summary": row["summary_json"] is not None,
    }


def run_header(conn, run_id):
    """Header of one run (scenario day, profile, progress, status), or None if unknown."""
    if not has_schema(conn):
        return None
    row = conn.execute("SELECT * FROM run WHERE id=?", (run_id,)).fetchone()
    return None if row is None else _header(conn, row)


def list_runs(conn):
    """Headers of all runs, newest first."""
    if not has_schema(conn):
        return []
    rows = conn.execute("SELECT * FROM run ORDER BY id DESC").fetchall()
    return [_header(conn, row) for row in rows]


def _board_sort_key(name):
    if name in BOARD_ORDER:
        return (0, BOARD_ORDER.index(name), name)
    return (1, 0, name)


def boards(conn, run_id):
    """Each board of a run with its ``board`` row and its last telemetry row.

    Returns
    -------
    list of dict
        Keys: board, role, firmware_version, link, last_seen_s, frames_ok, crc_errors,
        failsafe_events, replays_dropped (replayed HELLOs + telemetry whose uptime went back,
        PROTOCOL.md section 6), and ``telemetry`` (dict of ``TELEMETRY_COLUMNS`` or None).
        Boards that sent telemetry without a ``board`` row are listed too.
    """
    listed = {
        row["board"]: dict(row)
        for row in conn.execute("SELECT * FROM board WHERE run_id=?", (run_id,))
    }
    # MAX(rowid) = the row inserted last, i.e. the last frame the edge received; board
    # sequence numbers may wrap, so they cannot order frames.
    last = conn.execute(
        "SELECT * FROM telemetry WHERE rowid IN"
        " (SELECT MAX(rowid) FROM telemetry WHERE run_id=? GROUP BY board)",
        (run_id,),
    ).fetchall()
    telemetry = {row["board"]: row for row in last}
    result = []
    for name in sorted(set(listed) | set(telemetry), key=_board_sort_key):
        info = listed.get(name, {})
        tele = telemetry.get(name)
        result.append({
            "board": name,
            "role": info.get("role") or (tele["role"] if tele is not None else None),
            "firmware_version": info.get("firmware_version"),
            "link": info.get("link"),
            "last_seen_s": info.get("last_seen_s"),
            "frames_ok": info.get("frames_ok"),
            "crc_errors": info.get("crc_errors"),
            "failsafe_events": info.get("failsafe_events"),
            "auth_errors": info.get("auth_errors"),
            # the codec's replays and the edge's session checks (PROTOCOL.md section 6)
            "replays_dropped": (None if info.get("replayed_hellos") is None
                                else info["replayed_hellos"] + (info.get("t_ms_regressions") or 0)
                                + (info.get("replay_errors") or 0)),
            "telemetry": None if tele is None else {c: tele[c] for c in TELEMETRY_COLUMNS},
        })
    return result


def _load_json(text, what):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        log.warning("unreadable %s JSON in the store: %.80r", what, text)
        return None


def latest_decision(conn, run_id):
    """The optimiser's last decision of a run (setpoints parsed to ``{board: value}``, [W]; the
    grid board's bus-voltage reference [V])."""
    row = conn.execute(
        "SELECT * FROM decision WHERE run_id=? ORDER BY tick DESC LIMIT 1", (run_id,)
    ).fetchone()
    if row is None:
        return None
    return {
        "tick": row["tick"],
        "t_s": row["t_s"],
        "status": row["status"],
        "solve_time_s": row["solve_time_s"],
        "objective": row["objective"],
        "forecast_source": row["forecast_source"],
        "setpoints": _load_json(row["setpoints_json"], "setpoints") or {},
        "reason": row["reason"],
    }


def latest_state(conn, run_id=None):
    """Everything the Live panel shows: run header, bus voltage, boards, last decision.

    Parameters
    ----------
    conn : sqlite3.Connection
    run_id : int, optional
        Defaults to the latest run.

    Returns
    -------
    dict
        ``{"run": header or None, "bus_voltage_v": float or None, "boards": [...],
        "decision": dict or None}``; ``run`` is None while the edge has not started a run.
        Each board also carries ``health``: plain words (see :func:`health`).
    """
    if run_id is None:
        run_id = latest_run_id(conn)
    header = None if run_id is None else run_header(conn, run_id)
    if header is None:
        return {"run": None, "bus_voltage_v": None, "boards": [], "decision": None}
    bus_voltage_v = None
    if header["latest_tick"] is not None:
        row = conn.execute(
            "SELECT bus_voltage_v FROM dispatch WHERE run_id=? AND policy=? AND tick=?",
            (run_id, LIVE_POLICY, header["latest_tick"]),
        ).fetchone()
        bus_voltage_v = row["bus_voltage_v"]
    return add_health({
        "run": header,
        "bus_voltage_v": bus_voltage_v,
        "boards": boards(conn, run_id),
        "decision": latest_decision(conn, run_id),
    })


def check_policy(policy):
    """Raise ValueError unless ``policy`` is one of ``POLICIES``."""
    if policy not in POLICIES:
        raise ValueError("unknown policy %r; expected one of %s" % (policy, ", ".join(POLICIES)))
    return policy


def dispatch_series(conn, run_id, policy=LIVE_POLICY, after_tick=None):
    """One policy's dispatch of a run as columns (the layout uPlot draws).

    Parameters
    ----------
    conn : sqlite3.Connection
    run_id : int
    policy : one of ``POLICIES``
    after_tick : int, optional
        Only ticks strictly after this one (what the SSE stream sends as news).

    Returns
    -------
    dict
        ``"tick"`` and every ``DISPATCH_COLUMNS`` name -> list, all of one length, ordered
        by tick; NULLs are None. ``"cumulative_cost"``: running sum of ``cost`` (a NULL
        cost adds nothing).

    Raises
    ------
    ValueError
        For an unknown policy.
    """
    check_policy(policy)
    sql = "SELECT tick, %s FROM dispatch WHERE run_id=? AND policy=?" % ", ".join(DISPATCH_COLUMNS)
    args = [run_id, policy]
    if after_tick is not None:
        sql += " AND tick>?"
        args.append(after_tick)
    rows = conn.execute(sql + " ORDER BY tick", args).fetchall()
    series = {name: [row[name] for row in rows] for name in ("tick",) + DISPATCH_COLUMNS}
    series["cumulative_cost"] = _cumulative(series["cost"])
    return series


def _cumulative(values):
    total, out = 0.0, []
    for value in values:
        total += value or 0.0
        out.append(total)
    return out


def cost_comparison(conn, run_id):
    """Cumulative cost of each policy over the day so far, on the same ticks.

    Returns
    -------
    dict
        ``"tick"``: the union of ticks of all policies; ``"cumulative"``: policy -> list
        aligned on ``tick`` (None where the policy has no row); ``"totals"``: policy ->
        ``{"ticks", "total", "to_latest"}`` where ``to_latest`` sums the ticks up to the live
        policy's latest one (the fair comparison while a day runs); ``"savings_capture"``:
        (naive - mpc) / (naive - perfect_foresight) of ``to_latest`` (docs/design.md §4), None when any
        policy is missing or naive equals perfect_foresight;
        ``"savings_capture_vs_mpc_perfect_forecast"``: the same with the measured
        ``mpc_perfect_forecast`` bench (the MPC with perfect forecasts) in place of the model's
        perfect-foresight optimum (None without it, or when a tick of that bench was decided
        otherwise, without the true future or by the solver's fallback: its
        ``reference_fallback`` events, counted in ``"mpc_perfect_forecast_fallback_ticks"``).
    """
    rows = conn.execute(
        "SELECT policy, tick, cost FROM dispatch WHERE run_id=? AND policy IN (%s) ORDER BY tick"
        % ", ".join("?" * len(POLICIES)),
        (run_id,) + POLICIES,
    ).fetchall()
    by_policy = {policy: {} for policy in POLICIES}
    for row in rows:
        by_policy[row["policy"]][row["tick"]] = row["cost"]
    ticks = sorted({row["tick"] for row in rows})
    live = by_policy[LIVE_POLICY]
    latest = max(live) if live else None
    cumulative, totals = {}, {}
    for policy, costs in by_policy.items():
        running, series = 0.0, []
        for tick in ticks:
            if tick in costs:
                running += costs[tick] or 0.0
                series.append(running)
            else:
                series.append(None)
        cumulative[policy] = series
        totals[policy] = {
            "ticks": len(costs),
            "total": sum(c or 0.0 for c in costs.values()) if costs else None,
            "to_latest": (
                sum(c or 0.0 for t, c in costs.items() if t <= latest)
                if costs and latest is not None else None
            ),
        }
    untrue = conn.execute("SELECT COUNT(*) FROM event WHERE run_id=? AND kind='reference_fallback'",
                          (run_id,)).fetchone()[0]
    return {
        "tick": ticks,
        "cumulative": cumulative,
        "totals": totals,
        "savings_capture": _savings_capture(totals),
        "savings_capture_vs_mpc_perfect_forecast": None if untrue else _savings_capture(totals, "mpc_perfect_forecast"),
        "mpc_perfect_forecast_fallback_ticks": untrue,
    }


def _savings_capture(totals, reference="perfect_foresight"):
    """The MPC's savings capture against ``reference`` up to the latest tick, None when unknown."""
    value = savings_capture(*(totals[p]["to_latest"] for p in ("naive", "mpc", reference)))
    return None if value != value else value       # NaN (missing, or nothing to save) -> JSON null


def run_summary(conn, run_id):
    """The end-of-day summary of a run with units read off the names, plus the cost comparison.

    Returns
    -------
    dict or None
        None for an unknown run, else ``{"run": header, "summary": {name: value} or None,
        "rows": [{"name", "label", "unit", "value"}], "costs": cost_comparison(...)}``.
    """
    row = conn.execute("SELECT * FROM run WHERE id=?", (run_id,)).fetchone() if has_schema(conn) else None
    if row is None:
        return None
    summary = _load_json(row["summary_json"], "summary")
    if summary is not None and not isinstance(summary, dict):
        log.warning("run %s summary is a %s, not an object; not shown", run_id, type(summary).__name__)
        summary = None
    rows = []
    for name, value in (summary or {}).items():
        label, unit = split_unit(name)
        rows.append({"name": name, "label": label, "unit": unit, "value": value})
    return {
        "run": _header(conn, row),
        "summary": summary,
        "rows": rows,
        "costs": cost_comparison(conn, run_id),
    }


def change_key(conn):
    """A value that changes whenever the dashboard has something new to show.

    New run, new live tick, new decision, status change, summary written, or an operator
    command queued or answered.
    """
    run_id = latest_run_id(conn)
    if run_id is None:
        return None
    run = conn.execute(
        "SELECT status, summary_json IS NOT NULL FROM run WHERE id=?", (run_id,)
    ).fetchone()
    ticks_done, latest_tick = _progress(conn, run_id)
    decision_tick = conn.execute(
        "SELECT MAX(tick) FROM decision WHERE run_id=?", (run_id,)
    ).fetchone()[0]
    control = None
    if _has_table(conn, "command"):   # a queued or answered operator command is news too
        control = tuple(conn.execute(
            "SELECT MAX(id), SUM(status != 'pending') FROM command").fetchone())
    return (run_id, ticks_done, latest_tick, decision_tick, run[0], run[1], control)


# --- operator control: commands, mode, audit ------------------------------------------------

def _has_table(conn, name):
    return conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def commands(conn, limit=50):
    """The most recent operator commands, newest first (``command`` table rows as dicts)."""
    if not _has_table(conn, "command"):
        return []
    rows = conn.execute("SELECT * FROM command ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
    return [dict(row) for row in rows]


def audit_log(conn, limit=50):
    """The most recent audit rows (who, when [unix s], what, from where), newest first."""
    if not _has_table(conn, "audit"):
        return []
    rows = conn.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
    return [dict(row) for row in rows]


def control_state(conn):
    """The operating mode and the per-board overrides as the edge has applied them.

    Returns
    -------
    dict
        Of the latest run (commands queued since it started): ``mode``: the last applied
        mode ('automatic' before any); ``pending``: commands not yet taken by the edge, oldest
        first; ``boards``: {board: {"override": value or None, "shed": bool}} from the last
        applied override/clear_override and shed/restore.
    """
    state = {"mode": "automatic", "pending": [], "boards": {}}
    if conn is None or not _has_table(conn, "command"):
        return state
    # the latest run's commands only: each run's edge starts in automatic mode, no overrides
    run = conn.execute("SELECT started_at FROM run ORDER BY id DESC LIMIT 1").fetchone() \
        if _has_table(conn, "run") else None
    since = run["started_at"] if run is not None else 0.0
    row = conn.execute("SELECT mode FROM command WHERE kind='mode' AND status='applied' AND created_at >= ?"
                       " ORDER BY id DESC LIMIT 1", (since,)).fetchone()
    if row is not None:
        state["mode"] = row["mode"]
    state["pending"] = [dict(r) for r in conn.execute(
        "SELECT * FROM command WHERE status='pending' AND created_at >= ? ORDER BY id", (since,))]
    for r in conn.execute("SELECT kind, board, value FROM command WHERE status='applied' AND board"
                          " IS NOT NULL AND kind IN ('override', 'clear_override', 'shed', 'restore')"
                          " AND created_at >= ? ORDER BY id", (since,)):
        b = state["boards"].setdefault(r["board"], {"override": None, "shed": False})
        if r["kind"] == "override":
            b["override"] = r["value"]
        elif r["kind"] == "clear_override":
            b["override"] = None
        else:
            b["shed"] = r["kind"] == "shed"
    return state


# --- health, consumption, finance, forecasts, events ---------------------------------------

# Status flag bits of the telemetry frame (firmware/PROTOCOL.md), in plain words.
FLAG_WORDS = ((1, "failsafe"), (2, "limited"), (4, "fault"), (8, "islanded"), (16, "shed"))
STALE_TICKS = 2     # a board silent for longer than this many ticks is shown as stale
FORECAST_SERIES = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w",
                   "import_price_per_j")


def health(board, now_s, tick_s):
    """Plain words for a board's state: flag bits set, 'stale', 'no data' or 'ok'.

    Parameters
    ----------
    board : dict, an item of :func:`boards`
    now_s : float or None, the newest telemetry time of the run [s since tick 0]
    tick_s : float, tick length [s]
    """
    tele = board.get("telemetry")
    if tele is None:
        return ["no data"]
    words = [word for bit, word in FLAG_WORDS if (tele["flags"] or 0) & bit]
    seen = board.get("last_seen_s")
    if seen is None:
        seen = tele["t_s"]
    if now_s is not None and seen is not None and now_s - seen > STALE_TICKS * tick_s:
        words.append("stale")
    return words or ["ok"]


def add_health(state):
    """Add ``health`` (list of words) to each board of a :func:`latest_state` result."""
    run = state["run"]
    if run is None:
        return state
    times = [b["telemetry"]["t_s"] for b in state["boards"] if b["telemetry"]]
    now_s = max(times) if times else None
    for b in state["boards"]:
        b["health"] = health(b, now_s, run["tick_s"])
    return state


def _run_config(conn, run_id):
    """The settings the edge kept with the run (``run.config_json``), {} if unreadable."""
    cfg = _load_json(conn.execute("SELECT config_json FROM run WHERE id=?", (run_id,)).fetchone()["config_json"],
                     "run config")
    return cfg if isinstance(cfg, dict) else {}


def _tick_s(conn, run_id):
    return conn.execute("SELECT tick_s FROM run WHERE id=?", (run_id,)).fetchone()["tick_s"]


def _pos(v):
    return None if v is None else max(v, 0.0)


def consumption(conn, run_id, policy=LIVE_POLICY):
    """Per-tick and day energies of one policy: loads served vs shed, PV used vs curtailed, storage.

    Returns
    -------
    dict
        Columns aligned on ``tick`` (energies of the tick [J], None where unmeasured):
        ``<load>_served_j``, ``<load>_shed_j`` (demand not served, >= 0), ``pv_used_j``,
        ``pv_curtailed_j`` (available not taken, >= 0), ``storage_charge_j``,
        ``storage_discharge_j`` (bus side), ``storage_energy_j`` (stored, end of tick);
        ``totals``: name -> day sum [J]; ``tick_s``.
    """
    check_policy(policy)
    dt = _tick_s(conn, run_id)
    d = dispatch_series(conn, run_id, policy)
    out = {"tick": d["tick"], "tick_s": dt, "storage_energy_j": d["storage_energy_j"]}

    def col(fn, *names):
        return [None if any(v is None for v in vs) else fn(*vs) for vs in zip(*(d[n] for n in names))]

    # the deferrable board draws its jobs on top of its own demand: served and shed are of that
    # demand, the jobs' energy apart (as the edge's summary, edge/control/report.py)
    jobs_board = _run_config(conn, run_id).get("deferrable_board")
    jobs_w = [v or 0.0 for v in d.get("deferrable_w") or [None] * len(d["tick"])]
    for load in ("load1", "load2", "load3"):
        drawn_w = d[load + "_w"]
        if load == jobs_board:
            drawn_w = [None if p is None else p + j for p, j in zip(drawn_w, jobs_w)]   # bus side: < 0
        d[load + "_own_w"] = drawn_w
        out[load + "_served_j"] = col(lambda p: -p * dt, load + "_own_w")
        out[load + "_shed_j"] = col(lambda p, dem: max(dem + p, 0.0) * dt, load + "_own_w", load + "_demand_w")
    out["pv_used_j"] = col(lambda p: p * dt, "pv_w")
    out["pv_curtailed_j"] = col(lambda p, av: max(av - p, 0.0) * dt, "pv_w", "pv_available_w")
    out["storage_discharge_j"] = col(lambda p: max(p, 0.0) * dt, "storage_w")
    out["storage_charge_j"] = col(lambda p: max(-p, 0.0) * dt, "storage_w")
    out["totals"] = {k: sum(v for v in out[k] if v is not None) for k in out
                     if k.endswith("_j") and k != "storage_energy_j"}
    return out


def finance(conn, run_id):
    """Cost per tick and cumulative per policy, import/export energy and prices.

    Returns
    -------
    dict
        ``tick`` (union of all policies' ticks); ``cost``: policy -> cost per tick [price
        unit] aligned on ``tick`` (None where missing); ``cumulative``, ``totals`` and
        ``savings_capture`` as :func:`cost_comparison`; ``import_j`` / ``export_j``: policy ->
        day energy [J]; ``import_price_per_j`` / ``export_price_per_j`` aligned on ``tick``.
    """
    dt = _tick_s(conn, run_id)
    comp = cost_comparison(conn, run_id)
    ticks = comp["tick"]
    out = dict(comp, cost={}, import_j={}, export_j={}, tick_s=dt)
    prices = {}
    for policy in POLICIES:
        rows = {r["tick"]: r for r in conn.execute(
            "SELECT tick, cost, grid_w, import_price_per_j, export_price_per_j FROM dispatch"
            " WHERE run_id=? AND policy=?", (run_id, policy))}
        out["cost"][policy] = [rows[t]["cost"] if t in rows else None for t in ticks]
        grid = [r["grid_w"] for r in rows.values() if r["grid_w"] is not None]
        out["import_j"][policy] = sum(max(g, 0.0) for g in grid) * dt if rows else None
        out["export_j"][policy] = sum(max(-g, 0.0) for g in grid) * dt if rows else None
        for t, r in rows.items():
            if r["import_price_per_j"] is not None:
                prices.setdefault(t, (r["import_price_per_j"], r["export_price_per_j"]))
    out["import_price_per_j"] = [prices.get(t, (None, None))[0] for t in ticks]
    out["export_price_per_j"] = [prices.get(t, (None, None))[1] for t in ticks]
    return out


def forecast_fan(conn, run_id, series, tick=None, step=1):
    """Forecast quantiles against what happened, two ways.

    Parameters
    ----------
    series : one of ``FORECAST_SERIES``
    tick : int, optional
        The tick whose horizon-long forecast is shown (default: the latest forecast).
    step : int
        Lead of the day view [ticks]: the value forecast ``step`` ticks before each tick.

    Returns
    -------
    dict
        ``horizon``: {"issued_tick", "tick": [...], "p10", "p50", "p90", "actual"} for the
        forecast issued at ``tick``; ``day``: {"tick", "p10", "p50", "p90", "actual"} with the
        ``step``-ahead forecast of each tick; ``label`` and ``unit`` of the series;
        ``forecast_ticks``: ticks with a forecast.
        Actuals are the live policy's dispatch column of the same name (None where unknown).

    Raises
    ------
    ValueError
        For an unknown series or a negative step.
    """
    if series not in FORECAST_SERIES:
        raise ValueError("unknown series %r; expected one of %s" % (series, ", ".join(FORECAST_SERIES)))
    if step < 0:
        raise ValueError("step must be >= 0, got %d" % step)
    rows = conn.execute("SELECT tick, quantile, values_json FROM forecast WHERE run_id=? AND series=?"
                        " ORDER BY tick", (run_id, series)).fetchall()
    by_tick = {}
    for r in rows:
        values = _load_json(r["values_json"], "forecast") or []
        by_tick.setdefault(r["tick"], {})[round(r["quantile"], 3)] = values
    actual = {r["tick"]: r[series] for r in conn.execute(
        "SELECT tick, %s FROM dispatch WHERE run_id=? AND policy=?" % series, (run_id, LIVE_POLICY))}
    label, unit = split_unit(series)
    ticks = sorted(by_tick)
    if tick is None and ticks:
        tick = ticks[-1]
    horizon = {"issued_tick": tick, "tick": [], "p10": [], "p50": [], "p90": [], "actual": []}
    fc = by_tick.get(tick, {})
    n = max((len(v) for v in fc.values()), default=0)
    for i in range(n):
        horizon["tick"].append(tick + i)
        for q, key in ((0.1, "p10"), (0.5, "p50"), (0.9, "p90")):
            v = fc.get(q, [])
            horizon[key].append(v[i] if i < len(v) else None)
        horizon["actual"].append(actual.get(tick + i))
    day = {"tick": [], "p10": [], "p50": [], "p90": [], "actual": []}
    for t in sorted(set(actual) | {k + step for k in ticks}):
        day["tick"].append(t)
        fc = by_tick.get(t - step, {})
        for q, key in ((0.1, "p10"), (0.5, "p50"), (0.9, "p90")):
            v = fc.get(q, [])
            day[key].append(v[step] if step < len(v) else None)
        day["actual"].append(actual.get(t))
    return {"series": series, "label": label, "unit": unit, "step": step, "horizon": horizon, "day": day,
            "forecast_ticks": ticks}


def events(conn, run_id, limit=100):
    """The run's most recent board events (failsafe, fault, no_ack, ...), newest first."""
    rows = conn.execute("SELECT rowid AS id, t_s, board, kind, detail FROM event WHERE run_id=?"
                        " ORDER BY rowid DESC LIMIT ?", (run_id, int(limit))).fetchall()
    return [dict(r) for r in rows]
