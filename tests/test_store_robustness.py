"""Issue 27 point 3, the store: a full, locked or corrupt SQLite file never stops the tick.

Real SQLite files: disk full is ``PRAGMA max_page_count`` set to the pages in use, a lock is
another connection's write transaction, corruption is the file's bytes overwritten mid-run.
No exception may escape; rows wait in a bounded buffer, in order, with ``store.alarm`` set,
and land (with a ``store_outage`` event) once the condition clears.
"""

import sqlite3

import pytest
from picogrid.edge.control.store import Store

TEL = dict(v_bus_v=7.0, v_port_v=9.0, i_port_a=0.1, p_bus_w=1.0, p_port_w=1.0, energy_bus_j=3.0,
           setpoint_w=0.5, flags=0)


class Clock:
    def __init__(self, t=1_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "picogrid.sqlite", clock=Clock())
    s.start_run("lab", "test", 60, 2.5, {})
    s.t0 = s.clock.t
    yield s
    s.close()


def tick(store, k, rows=5):
    """One tick's writes, as the runner makes them, then its commit."""
    for j in range(rows):
        store.telemetry(k * 2.5, k, "storage", "storage", k * 100 + j, TEL)
    store.dispatch("mpc", k, {"pv_w": 1.0, "storage_w": -0.5})
    store.decision(k, k * 2.5, "solved", 0.001, 1.0, "onnx", {"storage": -0.5})
    store.event(k * 2.5, None, "tick", "tick %d" % k)
    store.board("storage", last_seen_s=k * 2.5, frames_ok=k)
    store.commit()
    store.clock.t += 2.5


def count(path, table, run_id=None):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0]
    finally:
        conn.close()


def fill_disk(store):
    """Disk full: no page may be added to the file."""
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute("PRAGMA max_page_count=%d" % pages)


def free_disk(store):
    store.conn.execute("PRAGMA max_page_count=1073741823")


def test_disk_full_buffers_rows_raises_an_alarm_and_writes_them_in_order_later(store):
    tick(store, 0)
    assert store.alarm is None
    fill_disk(store)
    for k in range(1, 40):                  # enough rows to need new pages
        tick(store, k, rows=20)
    assert store.alarm is not None and "full" in store.alarm
    assert store.rows_buffered > 0 and store.rows_dropped == 0
    free_disk(store)
    tick(store, 40)
    assert store.alarm is None and store.rows_buffered == 0
    seqs = [r[0] for r in store.conn.execute("SELECT seq FROM telemetry ORDER BY rowid")]
    expected = list(range(5)) + [k * 100 + j for k in range(1, 40) for j in range(20)] + [4000 + j for j in range(5)]
    assert seqs == expected                 # every row once, in the order written
    assert [r[0] for r in store.conn.execute("SELECT tick FROM decision ORDER BY tick")] == list(range(41))
    outage = store.conn.execute("SELECT t_s, detail FROM event WHERE kind='store_outage'").fetchall()
    assert len(outage) == 1 and "full" in outage[0][1] and "0 of them dropped" in outage[0][1]
    # the outage event comes after the rows it speaks of (the tick that found the disk free
    # again was buffered too: it is written behind the others)
    kinds = [r[0] for r in store.conn.execute("SELECT kind FROM event ORDER BY rowid")]
    assert kinds[-2:] == ["tick", "store_outage"] and kinds.count("tick") == 41
    assert count(store.path, "telemetry") == len(expected)     # committed: another reader sees them


def test_the_buffer_is_bounded_and_drops_the_oldest(tmp_path):
    s = Store(tmp_path / "s.sqlite", max_buffered=50, clock=Clock())
    s.start_run("lab", "test", 60, 2.5, {})
    fill_disk(s)
    for k in range(30):
        tick(s, k, rows=10)                 # 14 rows a tick: 420 rows, 50 kept
    dropped = s.rows_dropped
    assert s.rows_buffered == 50 and dropped > 200     # the first ticks may still have fitted
    assert "50 rows buffered, %d dropped" % dropped in s.alarm
    free_disk(s)
    s.commit()
    assert s.alarm is None
    detail = s.conn.execute("SELECT detail FROM event WHERE kind='store_outage'").fetchone()[0]
    assert "%d rows buffered, %d of them dropped" % (50 + dropped, dropped) in detail
    # the newest rows survived, the oldest buffered ones went
    seqs = {r[0] for r in s.conn.execute("SELECT seq FROM telemetry")}
    assert {2900 + j for j in range(10)} <= seqs and len(seqs) < 300
    s.close()


def test_a_lock_held_by_another_writer_buffers_instead_of_waiting(tmp_path):
    s = Store(tmp_path / "s.sqlite", busy_timeout_s=0.05, clock=Clock())
    s.start_run("lab", "test", 60, 2.5, {})
    tick(s, 0)
    other = sqlite3.connect(s.path, timeout=0.05, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")        # another writer holds the lock
    tick(s, 1)
    tick(s, 2)
    assert s.alarm is not None and "locked" in s.alarm
    other.execute("ROLLBACK")
    other.close()
    tick(s, 3)
    assert s.alarm is None
    assert [r[0] for r in s.conn.execute("SELECT tick FROM decision ORDER BY tick")] == [0, 1, 2, 3]
    s.close()


def _overwrite(path, byte=b"\xab"):
    """Overwrite a file's every byte (the store's file and its WAL and index)."""
    import os
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            size = os.path.getsize(p)
            with open(p, "r+b") as f:
                f.write(byte * size)


def test_a_file_corrupted_mid_run_keeps_the_tick_going_and_says_so(store, tmp_path):
    for k in range(3):
        tick(store, k)
    _overwrite(store.path)
    for k in range(3, 8):
        tick(store, k)                      # no exception
    assert store.alarm is not None and "not a database" in store.alarm
    assert store.rows_buffered == 5 * 10       # 10 rows a tick
    # an operator moves the corrupt file away: the store reopens a fresh one, puts the run back
    # and writes what it kept
    import os
    for p in (store.path, store.path + "-wal", store.path + "-shm"):
        if os.path.exists(p):
            os.replace(p, str(tmp_path / ("corrupt-" + os.path.basename(p))))
    tick(store, 8)
    assert store.alarm is None and store.rows_buffered == 0
    assert [r[0] for r in store.conn.execute("SELECT tick FROM decision ORDER BY tick")] == list(range(3, 9))
    assert store.conn.execute("SELECT id FROM run").fetchall()[0][0] == store.run_id
    assert "not a database" in store.conn.execute(
        "SELECT detail FROM event WHERE kind='store_outage'").fetchone()[0]


def test_finish_run_and_close_on_a_full_disk_do_not_raise(store):
    tick(store, 0)
    fill_disk(store)
    for k in range(1, 30):
        tick(store, k, rows=20)
    store.finish_run({"ok": True})
    assert store.alarm is not None
    store.close()                           # logs what is lost, raises nothing


def test_a_row_sqlite_refuses_is_dropped_not_the_others(store):
    tick(store, 0)
    store.event(1.0, None, "odd", object())     # a value sqlite cannot bind
    tick(store, 1)
    assert store.alarm is None and store.rows_rejected == 1
    assert [r[0] for r in store.conn.execute("SELECT tick FROM decision ORDER BY tick")] == [0, 1]


def test_the_board_table_counts_bad_data(store):
    store.board("storage", bad_data=3)
    store.commit()
    assert store.conn.execute("SELECT bad_data FROM board").fetchone()[0] == 3


def test_an_older_file_gets_the_setpoints_split_by_unit_and_the_renamed_policy(tmp_path):
    """Issue 28 point 7: a file written before the grid board's voltage setpoint had columns of
    its own (it sat in ``telemetry.setpoint_w`` and ``setpoint.value_w``, NOT NULL) is brought
    up to the schema when the edge opens it: grid values move to ``setpoint_v`` / ``value_v``,
    the power roles' stay, dispatch rows of ``mpc_perfect`` read ``mpc_perfect_forecast``, and
    the dashboard reads the file."""
    from picogrid.edge.control.store import DISPATCH_COLUMNS, connect
    from picogrid.web.db import check_readable
    from picogrid.web.queries import EDGE_COLUMNS

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    dispatch_columns = ", ".join(f"{c} REAL" for c in DISPATCH_COLUMNS)
    old.executescript("""
        CREATE TABLE telemetry (run_id INTEGER NOT NULL, t_s REAL NOT NULL, tick INTEGER NOT NULL,
            board TEXT NOT NULL, role TEXT NOT NULL, seq INTEGER NOT NULL,
            v_bus_v REAL, v_port_v REAL, i_port_a REAL, p_bus_w REAL, p_port_w REAL,
            energy_bus_j REAL, setpoint_w REAL, flags INTEGER);
        CREATE TABLE setpoint (run_id INTEGER NOT NULL, tick INTEGER NOT NULL, board TEXT NOT NULL,
            seq INTEGER NOT NULL, mode INTEGER NOT NULL, value_w REAL NOT NULL,
            acked INTEGER NOT NULL DEFAULT 0, ack_latency_s REAL, ack_status INTEGER);
        CREATE TABLE dispatch (run_id INTEGER NOT NULL, policy TEXT NOT NULL, tick INTEGER NOT NULL,
            %s, PRIMARY KEY (run_id, policy, tick));
        INSERT INTO telemetry VALUES (1, 0.0, 0, 'grid', 'grid', 1, 7.0, 12.0, 0.1, 1.0, 1.2, 0.0, 7.05, 0);
        INSERT INTO telemetry VALUES (1, 0.0, 0, 'storage', 'storage', 1, 7.0, 9.0, 0.1, 1.0, 1.2, 0.0, -0.5, 0);
        INSERT INTO setpoint VALUES (1, 0, 'grid', 3, 0, 7.05, 1, 0.01, 0);
        INSERT INTO setpoint VALUES (1, 0, 'storage', 4, 0, -0.5, 1, 0.01, 2);
        INSERT INTO dispatch (run_id, policy, tick, grid_w) VALUES (1, 'mpc_perfect', 0, 0.5);
        INSERT INTO dispatch (run_id, policy, tick, grid_w) VALUES (1, 'mpc', 0, 0.25);
    """ % dispatch_columns)
    old.close()
    conn = connect(path)
    tel = {r["board"]: (r["setpoint_w"], r["setpoint_v"], r["flags"])
           for r in conn.execute("SELECT * FROM telemetry")}
    assert tel == {"grid": (None, 7.05, 0), "storage": (-0.5, None, 0)}
    sp = [tuple(r) for r in conn.execute(
        "SELECT board, seq, value_w, value_v, acked, ack_status FROM setpoint ORDER BY rowid")]
    assert sp == [("grid", 3, None, 7.05, 1, 0), ("storage", 4, -0.5, None, 1, 2)]
    assert sorted(tuple(r) for r in conn.execute("SELECT policy, grid_w FROM dispatch")) == [
        ("mpc", 0.25), ("mpc_perfect_forecast", 0.5)]
    conn.close()
    conn = connect(path)          # a second opening changes nothing
    assert conn.execute("SELECT count(*) FROM setpoint").fetchone()[0] == 2
    check_readable(conn, EDGE_COLUMNS)
    conn.close()
    s = Store(path, clock=Clock())  # and the edge writes new rows into it, a voltage as such
    s.start_run("lab", "test", 60, 2.5, {})
    s.setpoint(0, "grid", 5, 0, 7.1, True, 0.01, 0)
    s.telemetry(0.0, 0, "grid", "grid", 2, dict(TEL, setpoint_w=None, setpoint_v=7.1))
    s.commit()
    row = s.conn.execute("SELECT value_w, value_v FROM setpoint WHERE seq=5").fetchone()
    assert tuple(row) == (None, 7.1)
    row = s.conn.execute("SELECT setpoint_w, setpoint_v FROM telemetry WHERE seq=2").fetchone()
    assert tuple(row) == (None, 7.1)
    s.close()
