"""Issue 27 point 5: ``picogrid soak`` and the resume from SQLite it relies on.

* The short soak: the real feed behind a garbage proxy, the plant and six keyed MicroPython
  boards behind link proxies, ``picogrid edge --resume`` as its own process; one cycle of the
  fault schedule (board kill, link noise, feed garbage, grid outage, disk full, ``kill -9``
  of the edge, replayed and forged frames both ways). Every figure must be 0 except the
  ticks the edge was dead for, which must be few (it restarts within a tick or two).
* The soak's acceptance detector is shown to detect: a board without a key takes a forged
  setpoint, and the watch says so (a detector that cannot fire would make the 0 above hollow).
* Resume: a run left ``running`` in a real SQLite store is found with its next tick and its
  records; a run whose day is over is not resumed and is marked failed.
"""

import json
import pathlib
import time

import pytest

from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.control.resume import find_resumable
from picogrid.edge.control.store import Store
from picogrid.edge.site import board_ids, load_site
from picogrid.firmware import protocol as P
from picogrid.hil import soak as S
from picogrid.hil.bench import Bench

LAB = pathlib.Path(__file__).resolve().parent.parent / "edge" / "sites" / "lab.toml"


def _wait(cond, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.e2e
def test_short_soak_loses_nothing_and_accepts_no_forged_or_replayed_frame(tmp_path):
    with S.Soak(LAB, tmp_path / "soak", speed=4.0, seed=3) as soak:
        r = soak.run(S.CYCLE_S, on_line=lambda line: None)
    print("\n".join(S.report_lines(r)))
    assert r["edge_kills"] == 1 and r["ticks_due"] >= 0.8 * S.CYCLE_S / r["tick_s"]
    # every kind of attack was made, and the faults all ran
    assert set(r["injected"]) >= {"down_forged", "down_replay", "down_replay_old_session",
                                  "up_forged", "up_replay", "up_replay_old_session"}, r["injected"]
    assert r["feed_answers"]["garbage"] > 0
    assert {f[1] for f in r["faults"]} >= {"kill_board", "restart_board", "link", "grid_outage",
                                           "disk_full", "kill_edge", "feed_garbage", "inject"}
    # the figures the issue asks to be 0
    assert r["ticks_without_decision_edge_up"] == 0, r
    # the bus holds its band wherever a source can hold it (a grid outage that empties the storage
    # in the dark leaves the critical load without any: docs/soak.md)
    assert r["bus_band_violations"] - r["bus_band_violations_storage_exhausted"] == 0, r
    assert r["rows_lost"] == 0 and r["rows_duplicated"] == 0, r
    assert r["forged_accepted"] == 0 and r["replayed_accepted"] == 0, r
    # the edge came back and resumed the run it was killed in: a few ticks at most went undecided
    log = (tmp_path / "soak" / "edge.log").read_text()
    assert "Resumed run" in log
    assert r["ticks_without_decision_edge_down"] <= 8, r
    # the disk-full fault really failed the store's writes, and the rows came back
    assert "store not writable" in log or "cannot be written" in log


def test_the_watch_sees_a_board_without_a_key_take_a_forged_setpoint(tmp_path):
    site = load_site(LAB, tick_s=1.0)
    with Bench(site, tmp_path, time.time(), 1.0, [0.5] * 600, link_proxy=True) as bench:
        watch = S.WireWatch("load1")
        bench.proxies["load1"].taps.append(watch)
        fleet = Fleet(board_ids(site))
        links = bench.open_links(fleet.on_frame, fleet)
        try:
            fleet.request_hello()
            assert _wait(lambda: fleet.snapshot()["load1"]["role"] is not None), "no hello from load1"
            seq = fleet.send_setpoint("load1", 1, P.MODE_NORMAL, 0.2)
            assert fleet.wait_acks({"load1": seq}, 5.0).get("load1"), "no ack of a genuine setpoint"
            time.sleep(S._REPLAY_AGE_S + 0.2)
            attacks = [a for a in watch.attacks(time.time()) if a[0] == "down" and a[1] == "forged"]
            assert attacks
            bench.proxies["load1"].inject("down", attacks[0][2])
            assert _wait(lambda: watch.accepted, 5.0), "an unkeyed board's ack of the forgery went unseen"
            assert watch.accepted[0][1] == "forged"
        finally:
            for link in links.values():
                link.close()


def _run_with_ticks(store, t0, n_decided, tick_s=1.0, n_ticks=60):
    store.start_run("lab", "feed", n_ticks, tick_s, {"t0": t0})
    for k in range(n_decided):
        store.decision(k, k * tick_s, "solved", 0.002, 1.0, "feed", {"pv": -1.0}, None,
                       details={"storage_energy_j": 20.0 + k, "solve_cpu_s": 0.001})
        if k < n_decided - 1:      # tick k is metered at tick k + 1
            store.dispatch("mpc", k, {"pv_available_w": 1.0, "load1_demand_w": 0.1, "load2_demand_w": 0.1,
                                      "load3_demand_w": 0.1, "import_price_per_j": 30.0,
                                      "export_price_per_j": 10.0, "deferrable_w": None})
    store.commit()


def test_a_running_run_is_found_with_its_next_tick_and_records(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    now = time.time()
    _run_with_ticks(store, now - 10.5, 10)
    point = find_resumable(store.conn, "lab", now)
    assert point is not None and point.run_id == store.run_id
    assert point.next_tick == 10 and point.t0 == pytest.approx(now - 10.5)
    assert point.start_energy_j == 20.0
    assert [d["tick"] for d in point.decisions] == list(range(10))
    assert [r["tick"] for r in point.dispatch] == list(range(9))
    assert find_resumable(store.conn, "site", now) is None      # another site's run is not taken
    store.close()


def test_a_run_whose_day_ended_is_not_resumed_and_is_marked_failed(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    now = time.time()
    _run_with_ticks(store, now - 100.0, 5)          # 60 ticks of 1 s: over 40 s ago
    assert find_resumable(store.conn, "lab", now) is None
    status = store.conn.execute("SELECT status FROM run WHERE id=?", (store.run_id,)).fetchone()[0]
    assert status == "failed"
    store.close()


def test_a_store_without_t0_is_not_resumed(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.start_run("lab", "2013-07-16", 60, 1.0, {"bench": {}})
    store.commit()
    assert find_resumable(store.conn, "lab", time.time()) is None
    assert json.loads(store.conn.execute("SELECT config_json FROM run").fetchone()[0]) == {"bench": {}}
    store.close()
