"""The edge's SQLite store: one file holds every run's telemetry, forecasts and decisions.

The dashboard (``picogrid.web``) reads the same file; the schema below is the contract
between them. Sign convention everywhere: power into the DC bus is positive, so PV and
grid import are positive, loads are negative, storage is positive when discharging.

Writes come from the edge's tick thread only; each tick is one transaction, so a reader
never sees half a tick. WAL mode lets the dashboard read while the edge writes.
"""

import json
import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,          -- unix time [s]
    profile TEXT NOT NULL,             -- 'lab' or 'site'
    scenario TEXT NOT NULL,            -- which real day, e.g. '2010-06-14'
    n_ticks INTEGER NOT NULL,
    tick_s REAL NOT NULL,              -- tick duration [s]
    status TEXT NOT NULL DEFAULT 'running',  -- running | finished | failed
    config_json TEXT NOT NULL DEFAULT '{}',
    summary_json TEXT                  -- filled at the end of the day
);
CREATE TABLE IF NOT EXISTS telemetry (
    run_id INTEGER NOT NULL,
    t_s REAL NOT NULL,                 -- seconds since the run's tick 0
    tick INTEGER NOT NULL,
    board TEXT NOT NULL, role TEXT NOT NULL, seq INTEGER NOT NULL,
    v_bus_v REAL, v_port_v REAL, i_port_a REAL, p_bus_w REAL, p_port_w REAL,
    energy_bus_j REAL, setpoint_w REAL, flags INTEGER
);
CREATE INDEX IF NOT EXISTS telemetry_run_tick ON telemetry(run_id, tick);
-- One row per tick and policy, mean powers over the tick [W]: 'mpc', 'naive' and 'mpc_perfect'
-- (the MPC on the day's true future) are measured on their benches; 'perfect_foresight' is the model's
-- perfect-foresight plan on the same day's true data.
CREATE TABLE IF NOT EXISTS dispatch (
    run_id INTEGER NOT NULL, policy TEXT NOT NULL, tick INTEGER NOT NULL,
    pv_w REAL, storage_w REAL, grid_w REAL,
    load1_w REAL, load2_w REAL, load3_w REAL,
    pv_available_w REAL, load1_demand_w REAL, load2_demand_w REAL, load3_demand_w REAL,
    storage_energy_j REAL, bus_voltage_v REAL,
    import_price_per_j REAL, export_price_per_j REAL,
    cost REAL,                         -- import cost - export revenue of the tick [price unit]
    balance_residual_j REAL,           -- sum of bus-side energies minus bus-capacitor change [J]
    deferrable_w REAL,                 -- of the deferrable load's power, what went to jobs [W]
    PRIMARY KEY (run_id, policy, tick)
);
CREATE TABLE IF NOT EXISTS forecast (
    run_id INTEGER NOT NULL, tick INTEGER NOT NULL, series TEXT NOT NULL,
    quantile REAL NOT NULL, values_json TEXT NOT NULL   -- horizon-long list
);
CREATE TABLE IF NOT EXISTS decision (
    run_id INTEGER NOT NULL, tick INTEGER NOT NULL, t_s REAL NOT NULL,
    status TEXT NOT NULL,              -- solver status, or 'fallback:<reason>'
    solve_time_s REAL, objective REAL, forecast_source TEXT,
    setpoints_json TEXT NOT NULL,      -- {board: value_w}
    plan_json TEXT,                    -- first horizon steps of the plan
    reason TEXT,                       -- the decision in plain words
    operator_mode TEXT,                -- automatic | approve | manual (edge/control/operator.py)
    details_json TEXT,                 -- objective terms, binding constraints, iterations, CPU time
    PRIMARY KEY (run_id, tick)
);
CREATE TABLE IF NOT EXISTS setpoint (
    run_id INTEGER NOT NULL, tick INTEGER NOT NULL, board TEXT NOT NULL,
    seq INTEGER NOT NULL, mode INTEGER NOT NULL, value_w REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0, ack_latency_s REAL,
    ack_status INTEGER                 -- protocol ACK_OK 0 / ACK_REJECTED 1 / ACK_LIMITED 2
);
CREATE TABLE IF NOT EXISTS event (
    run_id INTEGER NOT NULL, t_s REAL NOT NULL, board TEXT, kind TEXT NOT NULL, detail TEXT
);
-- Operator commands from the dashboard to the running edge (human in the loop). The web
-- inserts rows as 'pending'; the edge applies them at its next tick, bounded by the same
-- limits as the optimiser, and marks them 'applied' (with the value it really used) or
-- 'rejected' (with the reason).
CREATE TABLE IF NOT EXISTS command (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,          -- unix time [s]
    user TEXT NOT NULL,
    kind TEXT NOT NULL,                -- mode | override | clear_override | shed | restore | approve
    board TEXT,                        -- target board (override, clear_override, shed, restore)
    value REAL,                        -- override setpoint [W] (grid: bus voltage [V])
    mode TEXT,                         -- kind='mode': automatic | approve | manual
    status TEXT NOT NULL DEFAULT 'pending',   -- pending | applied | rejected
    applied_at REAL,                   -- unix time [s]
    result TEXT                        -- what the edge did, or why it refused
);
-- Who did what, when, from where (written by the web for every control action).
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, t REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    detail TEXT, remote_addr TEXT
);
CREATE TABLE IF NOT EXISTS board (
    run_id INTEGER NOT NULL, board TEXT NOT NULL, role TEXT, board_id INTEGER,
    firmware_version TEXT, link TEXT,
    last_seen_s REAL,                  -- seconds since the run's tick 0 (as t_s elsewhere)
    frames_ok INTEGER DEFAULT 0, crc_errors INTEGER DEFAULT 0, failsafe_events INTEGER DEFAULT 0,
    replayed_hellos INTEGER DEFAULT 0,   -- HELLOs of superseded sessions dropped (PROTOCOL.md 6)
    t_ms_regressions INTEGER DEFAULT 0,  -- telemetry whose uptime went back, dropped
    auth_errors INTEGER DEFAULT 0,       -- frames without or with a wrong tag (the link's decoder)
    replay_errors INTEGER DEFAULT 0,     -- authenticated frames whose seq did not go up
    PRIMARY KEY (run_id, board)
);
"""

DISPATCH_COLUMNS = (
    "pv_w", "storage_w", "grid_w", "load1_w", "load2_w", "load3_w",
    "pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w",
    "storage_energy_j", "bus_voltage_v", "import_price_per_j", "export_price_per_j",
    "cost", "balance_residual_j", "deferrable_w",
)
#: columns added after a schema was first released: (table, column, type), added to older files
_ADDED_COLUMNS = (("dispatch", "deferrable_w", "REAL"),
                  ("board", "replayed_hellos", "INTEGER DEFAULT 0"),
                  ("board", "t_ms_regressions", "INTEGER DEFAULT 0"),
                  ("board", "auth_errors", "INTEGER DEFAULT 0"),
                  ("board", "replay_errors", "INTEGER DEFAULT 0"))


def connect(path):
    """Open (and create if needed) the store at ``path``; returns a ``sqlite3.Connection``."""
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    for table, column, kind in _ADDED_COLUMNS:
        if column not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    return conn


class Store:
    """Writer for one run. All methods take SI values; see the schema for units."""

    def __init__(self, path):
        self.path = str(path)
        self.conn = connect(self.path)
        self.run_id = None
        self.started_at = None   # set by start_run

    def start_run(self, profile, scenario, n_ticks, tick_s, config):
        """Insert a run (status ``running``) and make it the one the writers below fill.

        ``scenario``: the day (ISO date) or feed day; ``tick_s`` [s]; ``config``: JSON-able
        settings kept with the run. Returns the run id.
        """
        self.started_at = time.time()    # unix time [s]: commands queued before it are another run's
        cur = self.conn.execute(
            "INSERT INTO run (started_at, profile, scenario, n_ticks, tick_s, config_json)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self.started_at, profile, scenario, n_ticks, tick_s, json.dumps(config)),
        )
        self.conn.commit()
        self.run_id = cur.lastrowid
        return self.run_id

    def finish_run(self, summary, status="finished"):
        """End the run: ``status`` (``finished`` or ``failed``) and the summary dict (JSON)."""
        self.conn.execute(
            "UPDATE run SET status=?, summary_json=? WHERE id=?",
            (status, json.dumps(summary), self.run_id),
        )
        self.conn.commit()

    def telemetry(self, t_s, tick, board, role, seq, values):
        """``values``: mapping with the telemetry columns (v_bus_v … flags)."""
        self.conn.execute(
            "INSERT INTO telemetry VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, t_s, tick, board, role, seq, values["v_bus_v"], values["v_port_v"],
             values["i_port_a"], values["p_bus_w"], values["p_port_w"], values["energy_bus_j"],
             values["setpoint_w"], values["flags"]),
        )

    def dispatch(self, policy, tick, row):
        """One tick's measured (or simulated) dispatch of ``policy``: ``row`` maps the
        :data:`DISPATCH_COLUMNS` (powers [W], bus side, + into the bus; energies [J]; prices
        [c/J]; cost [c]) to values, ``None`` where unmeasured."""
        """``row``: mapping with any of ``DISPATCH_COLUMNS``; missing ones are NULL."""
        cols = [c for c in DISPATCH_COLUMNS if c in row]
        self.conn.execute(
            "INSERT OR REPLACE INTO dispatch (run_id, policy, tick, %s) VALUES (?,?,?,%s)"
            % (", ".join(cols), ", ".join("?" * len(cols))),
            [self.run_id, policy, tick] + [row[c] for c in cols],
        )

    def forecast(self, tick, series, quantile, values):
        """The forecast of ``series`` at ``quantile`` issued at ``tick``: ``values`` [N] in the
        series' unit (W, c/J), step 0 = the tick itself."""
        self.conn.execute(
            "INSERT INTO forecast VALUES (?,?,?,?,?)",
            (self.run_id, tick, series, quantile, json.dumps([round(float(v), 6) for v in values])),
        )

    def decision(self, tick, t_s, status, solve_time_s, objective, forecast_source,
                 setpoints, plan=None, reason=None, operator_mode="automatic", details=None):
        """The audit record of tick ``k``'s decision (docs/design.md section 4): solver ``status``
        (or ``fallback:<reason>``), ``solve_time_s`` [s], ``objective`` [c], the forecast source,
        the first-step ``setpoints`` ({board: value}), the ``plan``'s first steps, the reason in
        words, the operator mode and ``details`` (objective terms, binding constraints,
        iterations, CPU time). Replaces an earlier record of the same tick."""
        self.conn.execute(
            "INSERT OR REPLACE INTO decision VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, tick, t_s, status, solve_time_s, objective, forecast_source,
             json.dumps(setpoints), json.dumps(plan) if plan is not None else None, reason,
             operator_mode, json.dumps(details) if details is not None else None),
        )

    def setpoint(self, tick, board, seq, mode, value_w, acked, ack_latency_s, ack_status=None):
        """A setpoint sent at ``tick``: frame ``seq``, protocol ``mode``, ``value_w`` [W; V for
        the grid board's bus voltage], whether it was acked, after ``ack_latency_s`` [s], and
        the board's ack status (PROTOCOL.md ``ACK_*``)."""
        self.conn.execute(
            "INSERT INTO setpoint VALUES (?,?,?,?,?,?,?,?,?)",
            (self.run_id, tick, board, seq, mode, value_w, int(acked), ack_latency_s, ack_status),
        )

    def event(self, t_s, board, kind, detail=""):
        """An event at ``t_s`` [s from tick 0] of ``board`` (``None``: the edge), e.g.
        ``no_ack``, ``setpoint_rejected``, ``no_telemetry``, or a health
        change (edge/boards/health.py), with a human-readable ``detail``."""
        self.conn.execute(
            "INSERT INTO event VALUES (?,?,?,?,?)", (self.run_id, t_s, board, kind, detail)
        )

    def board(self, name, **fields):
        """Upsert the board row; ``fields`` are columns of the ``board`` table."""
        self.conn.execute(
            "INSERT OR IGNORE INTO board (run_id, board) VALUES (?, ?)", (self.run_id, name)
        )
        if fields:
            sets = ", ".join("%s=?" % k for k in fields)
            self.conn.execute(
                "UPDATE board SET %s WHERE run_id=? AND board=?" % sets,
                list(fields.values()) + [self.run_id, name],
            )

    def commit(self):
        self.conn.commit()

    def close(self):
        self.conn.close()
