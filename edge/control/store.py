"""The edge's SQLite store: one file holds every run's telemetry, forecasts and decisions.

The dashboard (``picogrid.web``) reads the same file; the schema below is the contract
between them. Sign convention everywhere: power into the DC bus is positive, so PV and
grid import are positive, loads are negative, storage is positive when discharging.

Writes come from the edge's tick thread only; each tick is one transaction, so a reader
never sees half a tick. WAL mode lets the dashboard read while the edge writes.

The store never stops the tick (issue 27): an SQLite error while writing (disk full, I/O
error, a corrupt file, a lock held too long) rolls the tick's transaction back and keeps its
rows, with every row written after it, in a bounded buffer (:attr:`Store.max_buffered` rows;
beyond it the oldest are dropped and counted); :attr:`Store.alarm` then says why. Each later
:meth:`Store.commit` tries again (a corrupt file is reopened first) and, once one succeeds,
writes the buffered rows in order in one transaction followed by a ``store_outage`` event
saying how long, how many rows were buffered and how many dropped.
"""

import collections
import json
import logging
import sqlite3
import time

from picogrid.edge.boards.fleet import VOLTAGE_SETPOINT_ROLES, setpoint_by_unit

log = logging.getLogger(__name__)

#: sent setpoints; ``value_w`` [W] for the power roles, ``value_v`` [V] for the grid board's
#: bus-voltage reference, the other NULL (the wire's one ``value`` field carries either)
_SETPOINT_TABLE = """CREATE TABLE IF NOT EXISTS setpoint (
    run_id INTEGER NOT NULL, tick INTEGER NOT NULL, board TEXT NOT NULL,
    seq INTEGER NOT NULL, mode INTEGER NOT NULL,
    value_w REAL,                      -- power setpoint [W] (pv cap, -1 = none; storage; loads)
    acked INTEGER NOT NULL DEFAULT 0, ack_latency_s REAL,
    ack_status INTEGER,                -- protocol ACK_OK 0 / ACK_REJECTED 1 / ACK_LIMITED 2
    value_v REAL                       -- the grid board's bus-voltage reference [V]
);"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,          -- unix time [s]
    profile TEXT NOT NULL,             -- 'lab' or 'site'
    scenario TEXT NOT NULL,            -- which real day, e.g. '2010-06-14'
    n_ticks INTEGER NOT NULL,
    tick_s REAL NOT NULL,              -- tick duration [s]
    status TEXT NOT NULL DEFAULT 'running',  -- running | finished | failed | stopped
    config_json TEXT NOT NULL DEFAULT '{}',
    summary_json TEXT                  -- filled at the end of the day
);
CREATE TABLE IF NOT EXISTS telemetry (
    run_id INTEGER NOT NULL,
    t_s REAL NOT NULL,                 -- seconds since the run's tick 0
    tick INTEGER NOT NULL,
    board TEXT NOT NULL, role TEXT NOT NULL, seq INTEGER NOT NULL,
    v_bus_v REAL, v_port_v REAL, i_port_a REAL, p_bus_w REAL, p_port_w REAL,
    energy_bus_j REAL,
    setpoint_w REAL,                   -- applied setpoint of a power role (pv cap, -1 = none; storage; loads) [W]
    flags INTEGER,
    setpoint_v REAL                    -- applied setpoint of the grid board: its bus-voltage reference [V]
);
CREATE INDEX IF NOT EXISTS telemetry_run_tick ON telemetry(run_id, tick);
-- One row per tick and policy, mean powers over the tick [W]: 'mpc', 'naive' and
-- 'mpc_perfect_forecast' (the MPC with perfect forecasts: fed the day's true future) are measured
-- on their benches; 'perfect_foresight' is the model's perfect-foresight optimum of the whole day
-- (the bound) on the same day's true data.
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
    setpoints_json TEXT NOT NULL,      -- {board: value}, [W] (grid: bus-voltage reference [V])
    plan_json TEXT,                    -- first horizon steps of the plan
    reason TEXT,                       -- the decision in plain words
    operator_mode TEXT,                -- automatic | approve | manual (edge/control/operator.py)
    details_json TEXT,                 -- objective terms, binding constraints, iterations, CPU time
    PRIMARY KEY (run_id, tick)
);
%(setpoint_table)s
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
    bad_data INTEGER DEFAULT 0,          -- telemetry outside physical bounds, not used (edge/boards/plausibility.py)
    PRIMARY KEY (run_id, board)
);
""" % {"setpoint_table": _SETPOINT_TABLE}

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
                  ("board", "replay_errors", "INTEGER DEFAULT 0"),
                  ("board", "bad_data", "INTEGER DEFAULT 0"))
#: policy keys renamed since: old key -> new key (issue 28 point 7)
RENAMED_POLICIES = {"mpc_perfect": "mpc_perfect_forecast"}
_GRID = ", ".join("'%s'" % r for r in VOLTAGE_SETPOINT_ROLES)
#: issue 28 point 7, for files written before it: the grid board's voltage setpoint [V] moves out
#: of the power columns (``telemetry.setpoint_w``, ``setpoint.value_w``, which was NOT NULL, so
#: that table is copied), and dispatch rows take the renamed policy keys; one transaction
_UNIT_SPLIT = (
    ["ALTER TABLE telemetry ADD COLUMN setpoint_v REAL",
     "UPDATE telemetry SET setpoint_v = setpoint_w, setpoint_w = NULL WHERE role IN (%s)" % _GRID,
     "ALTER TABLE setpoint RENAME TO setpoint_before_units",
     _SETPOINT_TABLE,
     "INSERT INTO setpoint (run_id, tick, board, seq, mode, value_w, value_v, acked, ack_latency_s, ack_status)"
     " SELECT run_id, tick, board, seq, mode, CASE WHEN board IN ({g}) THEN NULL ELSE value_w END,"
     " CASE WHEN board IN ({g}) THEN value_w END, acked, ack_latency_s, ack_status"
     " FROM setpoint_before_units ORDER BY rowid".format(g=_GRID),
     "DROP TABLE setpoint_before_units"]
    + ["UPDATE dispatch SET policy = '%s' WHERE policy = '%s'" % (new, old) for old, new in RENAMED_POLICIES.items()])


def _columns(conn, table):
    return {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}


def connect(path):
    """Open (and create if needed) the store at ``path``; returns a ``sqlite3.Connection``.

    A file of an older schema is brought up to this one: the columns added since
    (:data:`_ADDED_COLUMNS`) and the setpoints split by unit (:data:`_UNIT_SPLIT`)."""
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    for table, column, kind in _ADDED_COLUMNS:
        if column not in _columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    if "setpoint_v" not in _columns(conn, "telemetry"):
        conn.commit()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if "setpoint_v" not in _columns(conn, "telemetry"):    # not done meanwhile by another opener
                for sql in _UNIT_SPLIT:
                    conn.execute(sql)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return conn


#: errors of one row, not of the file: that row is dropped, the others are written
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError)


def _row_error(exc):
    """Whether ``exc`` is about the row (a constraint, a value SQLite cannot bind), not the file."""
    return isinstance(exc, _ROW_ERRORS) or (isinstance(exc, sqlite3.ProgrammingError) and "binding" in str(exc))


def _file_broken(exc):
    """Whether ``exc`` says the connection or the file is unusable (reopen before retrying)."""
    return (not isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc)
            or "not a database" in str(exc) or "closed" in str(exc))


class Store:
    """Writer for one run. All methods take SI values; see the schema for units.

    Parameters
    ----------
    path : str or path
    max_buffered : int
        Rows kept while the file cannot be written; beyond it the oldest are dropped.
    busy_timeout_s : float
        How long a write waits on another writer's lock before it counts as failed [s]
        (the rows are buffered; a tick must not wait the default 10 s).
    clock : callable
        Unix time [s] (the outage event's time).

    Attributes
    ----------
    alarm : str or None
        Why rows are being buffered instead of written (None while the store writes).
    rows_dropped : int
        Buffered rows dropped because the buffer was full, over the store's life.
    t0 : float or None
        The run's tick 0 [unix s] for the ``t_s`` of the outage event (default the run's start).
    """

    def __init__(self, path, max_buffered=10_000, busy_timeout_s=1.0, clock=time.time):
        self.path = str(path)
        self.max_buffered = int(max_buffered)
        self.busy_timeout_s = float(busy_timeout_s)
        self.clock = clock
        self.conn = self._open()
        self.run_id = None
        self.started_at = None   # set by start_run
        self.t0 = None
        self._run_row = None     # the run's row, put back into a file that lost it
        self.alarm = None
        self.rows_dropped = 0
        self.rows_rejected = 0   # rows SQLite refused for themselves (constraint, binding), dropped
        self._tx = []            # (sql, params) executed since the last commit (replayed if it fails)
        self._buffer = collections.deque()   # (sql, params) not yet written, oldest first
        self._outage = None      # {'since', 'reason', 'buffered', 'dropped'} while buffering
        self._broken = False     # the connection is to be reopened before the next try

    def _open(self):
        conn = connect(self.path)
        conn.execute("PRAGMA busy_timeout=%d" % int(self.busy_timeout_s * 1000))
        return conn

    # -- writing, come what may ------------------------------------------------------
    def _write(self, sql, params):
        """Execute one row's statement in the tick's transaction, or buffer it while the file
        cannot be written; never raises an SQLite error."""
        if self._outage is not None:
            self._keep((sql, params))
            return
        try:
            self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            if _row_error(exc):
                self._reject(sql, exc)
                return
            self._tx.append((sql, params))
            self._fail(exc)
            return
        self._tx.append((sql, params))

    def _reject(self, sql, exc):
        """A row SQLite refuses whatever the file's state (a constraint, a value it cannot
        bind): dropped, counted and logged, so it cannot hold the other rows back."""
        self.rows_rejected += 1
        log.error("store: row refused and dropped (%s: %s): %s", type(exc).__name__, exc, sql[:60])

    def _keep(self, op):
        if len(self._buffer) >= self.max_buffered:
            self._buffer.popleft()
            self.rows_dropped += 1
            self._outage["dropped"] += 1
        self._buffer.append(op)
        self._outage["buffered"] += 1

    def _fail(self, exc):
        """A write or commit failed: roll the transaction back, keep its rows, raise the alarm."""
        try:
            self.conn.rollback()
        except sqlite3.Error:
            pass
        reason = "%s: %s" % (type(exc).__name__, str(exc)[:120])
        if _file_broken(exc):
            self._broken = True      # corrupt or closed: reopen before the next try
        if self._outage is None:
            self._outage = {"since": self.clock(), "reason": reason, "buffered": 0, "dropped": 0}
            log.error("store %s cannot be written (%s): rows are buffered (at most %d) until it can",
                      self.path, reason, self.max_buffered)
        tx, self._tx = self._tx, []
        # rows of the failed transaction go first: they came before anything buffered after it
        for op in tx:
            self._keep(op)
        self.alarm = "store not writable (%s); %d rows buffered, %d dropped" % (
            reason, len(self._buffer), self._outage["dropped"])

    def _reopen(self):
        try:
            self.conn.close()
        except sqlite3.Error:
            pass
        try:
            self.conn = self._open()
            if self._run_row is not None:
                # a file replaced by a fresh one (the corrupt one moved away) lacks this run
                self.conn.execute("INSERT OR IGNORE INTO run (id, started_at, profile, scenario, n_ticks, tick_s,"
                                  " config_json) VALUES (?, ?, ?, ?, ?, ?, ?)", self._run_row)
            self._broken = False
            log.warning("store %s reopened", self.path)
        except sqlite3.Error as exc:
            self.alarm = "store cannot be reopened (%s: %s); %d rows buffered, %d dropped" % (
                type(exc).__name__, str(exc)[:120], len(self._buffer), self._outage["dropped"])
            raise

    def _flush(self):
        """Write the buffered rows and the outage event in one transaction (raises on failure)."""
        if self._broken:
            self._reopen()
        out = self._outage
        for sql, params in self._buffer:
            try:
                self.conn.execute(sql, params)
            except sqlite3.Error as exc:
                if not _row_error(exc):
                    raise
                self._reject(sql, exc)
        t_rel = self.clock() - (self.t0 if self.t0 is not None else (self.started_at or out["since"]))
        detail = "store not writable for %.1f s (%s): %d rows buffered, %d of them dropped (buffer of %d)" % (
            self.clock() - out["since"], out["reason"], out["buffered"], out["dropped"], self.max_buffered)
        self.conn.execute("INSERT INTO event VALUES (?,?,?,?,?)",
                          (self.run_id, t_rel, None, "store_outage", detail))
        self.conn.commit()
        log.warning("store %s written again: %s", self.path, detail)
        self._buffer.clear()
        self._outage, self.alarm = None, None

    def commit(self):
        """End the tick's transaction; while rows are buffered, try to write them first.
        Never raises an SQLite error: a failure keeps the rows buffered (:attr:`alarm`)."""
        if self._outage is None:
            try:
                self.conn.commit()
                self._tx = []
                return
            except sqlite3.Error as exc:
                self._fail(exc)
                return      # tried and failed this tick: the next commit tries again
        try:
            self._flush()
        except sqlite3.Error as exc:
            try:
                self.conn.rollback()
            except sqlite3.Error:
                pass
            if _file_broken(exc):
                self._broken = True
            if self.alarm is None or not self.alarm.startswith("store cannot be reopened"):
                self.alarm = "store not writable (%s: %s); %d rows buffered, %d dropped" % (
                    type(exc).__name__, str(exc)[:120], len(self._buffer), self._outage["dropped"])

    @property
    def rows_buffered(self):
        """Rows waiting to be written."""
        return len(self._buffer)

    # -- the run ---------------------------------------------------------------------
    def start_run(self, profile, scenario, n_ticks, tick_s, config):
        """Insert a run (status ``running``) and make it the one the writers below fill.

        ``scenario``: the day (ISO date) or feed day; ``tick_s`` [s]; ``config``: JSON-able
        settings kept with the run. Returns the run id.

        Raises
        ------
        sqlite3.Error
            The run cannot be recorded (before the first tick: the edge does not start blind).
        """
        self.started_at = time.time()    # unix time [s]: commands queued before it are another run's
        cur = self.conn.execute(
            "INSERT INTO run (started_at, profile, scenario, n_ticks, tick_s, config_json)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self.started_at, profile, scenario, n_ticks, tick_s, json.dumps(config)),
        )
        self.conn.commit()
        self.run_id = cur.lastrowid
        self._run_row = (self.run_id, self.started_at, profile, scenario, n_ticks, tick_s, json.dumps(config))
        return self.run_id

    def resume_run(self, run_id):
        """Make the ``running`` run ``run_id`` the one the writers fill again (the edge
        restarted: :mod:`picogrid.edge.control.resume`). Raises KeyError if there is no such run."""
        row = self.conn.execute("SELECT id, started_at, profile, scenario, n_ticks, tick_s, config_json"
                                " FROM run WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise KeyError("no run %r in the store" % (run_id,))
        self.run_id, self.started_at = int(row[0]), float(row[1])
        self._run_row = tuple(row)
        return self.run_id

    def finish_run(self, summary, status="finished"):
        """End the run: ``status`` (``finished`` or ``failed``) and the summary dict (JSON);
        buffered like any row when the file cannot be written."""
        self._write("UPDATE run SET status=?, summary_json=? WHERE id=?",
                    (status, json.dumps(summary), self.run_id))
        self.commit()

    def telemetry(self, t_s, tick, board, role, seq, values):
        """``values``: mapping with the telemetry columns (v_bus_v … flags) and the applied
        setpoint as the fleet splits it, ``setpoint_w`` [W] or ``setpoint_v`` [V] (a missing
        one is NULL); a wire-named ``setpoint`` is split here by ``role``."""
        if "setpoint" in values:
            sp_w, sp_v = setpoint_by_unit(role, values["setpoint"])
        else:
            sp_w, sp_v = values.get("setpoint_w"), values.get("setpoint_v")
        self._write(
            "INSERT INTO telemetry (run_id, t_s, tick, board, role, seq, v_bus_v, v_port_v, i_port_a,"
            " p_bus_w, p_port_w, energy_bus_j, setpoint_w, setpoint_v, flags)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, t_s, tick, board, role, seq, values["v_bus_v"], values["v_port_v"],
             values["i_port_a"], values["p_bus_w"], values["p_port_w"], values["energy_bus_j"],
             sp_w, sp_v, values["flags"]),
        )

    def dispatch(self, policy, tick, row):
        """One tick's measured (or simulated) dispatch of ``policy``: ``row`` maps the
        :data:`DISPATCH_COLUMNS` (powers [W], bus side, + into the bus; energies [J]; prices
        [c/J]; cost [c]) to values, ``None`` where unmeasured; missing ones are NULL."""
        cols = [c for c in DISPATCH_COLUMNS if c in row]
        self._write(
            "INSERT OR REPLACE INTO dispatch (run_id, policy, tick, %s) VALUES (?,?,?,%s)"
            % (", ".join(cols), ", ".join("?" * len(cols))),
            [self.run_id, policy, tick] + [row[c] for c in cols],
        )

    def forecast(self, tick, series, quantile, values):
        """The forecast of ``series`` at ``quantile`` issued at ``tick``: ``values`` [N] in the
        series' unit (W, c/J), step 0 = the tick itself."""
        self._write(
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
        self._write(
            "INSERT OR REPLACE INTO decision VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, tick, t_s, status, solve_time_s, objective, forecast_source,
             json.dumps(setpoints), json.dumps(plan) if plan is not None else None, reason,
             operator_mode, json.dumps(details) if details is not None else None),
        )

    def setpoint(self, tick, board, seq, mode, value, acked, ack_latency_s, ack_status=None):
        """A setpoint sent at ``tick``: frame ``seq``, protocol ``mode``, ``value`` (stored as
        ``value_w`` [W], or ``value_v`` [V] for the grid board's bus-voltage reference), whether
        it was acked, after ``ack_latency_s`` [s], and the board's ack status (PROTOCOL.md
        ``ACK_*``)."""
        value_w, value_v = setpoint_by_unit(board, value)
        self._write(
            "INSERT INTO setpoint (run_id, tick, board, seq, mode, value_w, value_v, acked, ack_latency_s,"
            " ack_status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, tick, board, seq, mode, value_w, value_v, int(acked), ack_latency_s, ack_status),
        )

    def event(self, t_s, board, kind, detail=""):
        """An event at ``t_s`` [s from tick 0] of ``board`` (``None``: the edge), e.g.
        ``no_ack``, ``setpoint_rejected``, ``no_telemetry``, or a health
        change (edge/boards/health.py), with a human-readable ``detail``."""
        self._write("INSERT INTO event VALUES (?,?,?,?,?)", (self.run_id, t_s, board, kind, detail))

    def board(self, name, **fields):
        """Upsert the board row; ``fields`` are columns of the ``board`` table."""
        self._write("INSERT OR IGNORE INTO board (run_id, board) VALUES (?, ?)", (self.run_id, name))
        if fields:
            sets = ", ".join("%s=?" % k for k in fields)
            self._write("UPDATE board SET %s WHERE run_id=? AND board=?" % sets,
                        list(fields.values()) + [self.run_id, name])

    def close(self):
        """Close the file (a last try at writing buffered rows first; what cannot be written
        is logged as lost)."""
        if self._outage is not None:
            self.commit()
            if self._outage is not None:
                log.error("store %s closed with %d rows never written (%s)", self.path, len(self._buffer), self.alarm)
        try:
            self.conn.close()
        except sqlite3.Error:
            pass
