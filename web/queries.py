"""What the dashboard reads from the edge's store: plain functions of a read-only connection.

Every function returns JSON-ready dicts and lists (no ``sqlite3.Row``), so the pages, the
JSON API and the SSE stream share one source of truth. The schema they read is
``picogrid.edge.store.SCHEMA``; powers are into the DC bus [W] (loads negative), energies [J],
prices per joule in the tariff's unit, costs in that same unit.

"A tick is done" means its ``dispatch`` row for policy ``'mpc'`` exists: the edge writes a
tick's telemetry, decision and dispatch in one transaction, and the baselines ('naive',
'oracle') may be computed for the whole day ahead of time, so they cannot mark progress.
"""

import json
import logging

from picogrid.edge.store import DISPATCH_COLUMNS

from .units import split_unit

log = logging.getLogger(__name__)

POLICIES = ("mpc", "naive", "oracle")
LIVE_POLICY = "mpc"
# Display order of the bench's boards (DESIGN.md §2); any other board follows by name.
BOARD_ORDER = ("pv", "storage", "grid", "load1", "load2", "load3")
TELEMETRY_COLUMNS = (
    "tick", "t_s", "seq", "v_bus_v", "v_port_v", "i_port_a", "p_bus_w", "p_port_w",
    "energy_bus_j", "setpoint_w", "flags",
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
        failsafe_events, and ``telemetry`` (dict of ``TELEMETRY_COLUMNS`` or None).
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
    """The optimiser's last decision of a run (setpoints parsed to ``{board: value_w}``)."""
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
    return {
        "run": header,
        "bus_voltage_v": bus_voltage_v,
        "boards": boards(conn, run_id),
        "decision": latest_decision(conn, run_id),
    }


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
    policy : {'mpc', 'naive', 'oracle'}
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
        (naive - mpc) / (naive - oracle) of ``to_latest`` (DESIGN.md §4), None when any
        policy is missing or naive equals oracle.
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
    return {
        "tick": ticks,
        "cumulative": cumulative,
        "totals": totals,
        "savings_capture": _savings_capture(totals),
    }


def _savings_capture(totals):
    mpc, naive, oracle = (totals[p]["to_latest"] for p in ("mpc", "naive", "oracle"))
    if mpc is None or naive is None or oracle is None or abs(naive - oracle) < 1e-12:
        return None
    return (naive - mpc) / (naive - oracle)


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

    New run, new live tick, new decision, status change or summary written.
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
    return (run_id, ticks_done, latest_tick, decision_tick, run[0], run[1])
