"""The edge's small parts: estimation, metering, dispatch mapping, the scenario source, and
the serial link + fleet over a real pseudo-terminal with the real codec."""

import os
import select
import threading
import time
import tty

import numpy as np
import pytest

from picogrid.edge.control import dispatch
from picogrid.edge.control import estimate
from picogrid.edge.control import metering
from picogrid.edge.optimizer import economics
from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.boards.links import SerialLink
from picogrid.edge.optimizer.mpc_config import config_from_site
from picogrid.edge.optimizer.optimize import Decision
from picogrid.edge.sources.signals import ScenarioSource
from picogrid.edge.site import load_site
from picogrid.firmware import protocol as P


def test_storage_energy_from_terminal_voltage_and_esr():
    # 0.5 F at 9 V open circuit = 20.25 J; discharging 0.25 A through 4 ohm drops 1 V
    assert estimate.storage_energy_j(8.0, 0.25, 0.5, 4.0) == pytest.approx(20.25)
    assert estimate.storage_energy_j(-1.0, 0.0, 0.5, 4.0) == 0.0


def test_rebooted_board_is_not_metered():
    prev = {"pv": {"t_ms": 5000, "energy_bus_j": 40.0}, "grid": {"t_ms": 5000, "energy_bus_j": -3.0}}
    cur = {"pv": {"t_ms": 7500, "energy_bus_j": 47.5}, "grid": {"t_ms": 900, "energy_bus_j": 0.2}}
    assert metering.tick_energies(prev, cur) == {"pv": 7.5, "grid": None}


def test_tick_power_is_over_the_boards_own_window():
    # a 2.5 s tick whose closing setpoint went out 0.5 s late: 1 W for 3.0 s is 1 W, not 1.2 W
    prev = {"load1": {"t_ms": 10000, "energy_bus_j": -5.0}, "pv": {"t_ms": 10000, "energy_bus_j": 1.0}}
    cur = {"load1": {"t_ms": 13000, "energy_bus_j": -8.0}, "pv": {"t_ms": 9000, "energy_bus_j": 0.0}}
    e = metering.tick_energies(prev, cur)
    assert metering.tick_powers(prev, cur, e) == {"load1": pytest.approx(-1.0), "pv": None}


def test_balance_residual_and_costs():
    energies = {"pv": 5.0, "grid": -2.0, "storage": 0.0, "load1": -2.9}
    # bus capacitor 0.1 F from 7.0 V to 7.1 V stores 0.0705 J: the rest is the residual
    res = metering.balance_residual_j(energies, 7.0, 7.1, 0.1)
    assert res == pytest.approx(0.1 - 0.0705)
    assert metering.balance_residual_j(dict(energies, pv=None), 7.0, 7.1, 0.1) is None
    assert economics.bill(2.0, 3.0, 0.8) == pytest.approx(6.0)      # import pays 3 c/J
    assert economics.bill(-2.0, 3.0, 0.8) == pytest.approx(-1.6)    # export earns 0.8 c/J


def _decision(pv_cap, storage, served):
    return Decision(status="solved", solve_time_s=0.0, iterations=1, objective=0.0, p_storage_w=storage,
                    p_grid_w=0.0, pv_cap_w=pv_cap, load_served_w=np.array(served))


@pytest.mark.parametrize("pv_cap, pv_fc, islanded, served, expect", [
    (2.0, 2.0, False, [0.5, 0.2, 0.0],
     {"pv": (0, -1.0), "storage": (0, 0.3), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.2), "load3": (1, 0.0)}),
    (1.2, 2.0, False, [0.5, 0.2, 0.1],
     {"pv": (0, 1.2), "storage": (0, 0.3), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.2), "load3": (0, 0.1)}),
    (2.0, 2.0, True, [0.5, 0.0005, 0.1],
     {"pv": (0, -1.0), "storage": (2, 0.3), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (1, 0.0), "load3": (0, 0.1)}),
])
def test_decision_to_setpoints(pv_cap, pv_fc, islanded, served, expect):
    sp = dispatch.setpoints(_decision(pv_cap, 0.3, served), pv_fc, 7.0, islanded)
    assert {k: (m, pytest.approx(v)) for k, (m, v) in sp.items()} == expect


def test_no_demand_is_not_shedding():
    sp = dispatch.setpoints(_decision(1.0, 0.0, [0.0, 0.0, 0.2]), 1.0, 7.0, False, demand_w=[0.0, 0.5, 0.2])
    assert sp["load1"] == (0, 0.0)      # nothing to serve: off, not shed
    assert sp["load2"] == (1, 0.0)      # demand left unserved: shed


def _scenario(n_days=3, n_ticks=4):
    n = n_days * n_ticks
    cols = {c: list(np.arange(n, dtype=float) + k) for k, c in enumerate(
        ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w",
         "import_price_per_j", "export_price_per_j", "clearsky_ghi_w_m2", "sun"))}
    cols.update(day=["d%d" % (i // n_ticks) for i in range(n)], day_of_year=[100] * n, weekday=[2] * n)
    return cols


def test_scenario_source_is_causal():
    src = ScenarioSource(_scenario(), 4)
    h = src.history(2, 6)
    # the run day starts at row 8: tick 2 is row 10, so history is rows 4..9
    assert list(h["pv_available_w"]) == [4, 5, 6, 7, 8, 9]
    demand, imp, exp = src.now(2)
    assert list(demand) == [11, 12, 13] and imp == 14 and exp == 15
    assert len(src.truth()["pv_available_w"]) == 4
    with pytest.raises(ValueError, match="history"):
        src.history(0, 9)
    with pytest.raises(ValueError, match="lacks columns"):
        ScenarioSource({"day": ["a"] * 4}, 4)


@pytest.fixture
def pty_link():
    """A SerialLink on the slave side of a real pseudo-terminal; the test plays the board."""
    master, slave = os.openpty()
    tty.setraw(slave)
    fleet = Fleet({"load1": 4, "load2": 5})
    link = SerialLink("load1", os.ttyname(slave), fleet.on_frame)
    fleet.attach("load1", link)
    yield master, fleet, link
    link.close()
    os.close(master)
    os.close(slave)


def _wait(cond, timeout=60.0):
    """Poll ``cond`` until it holds: returns at once when it does; the timeout only ends a test
    that would otherwise hang (a loaded machine may take seconds), it measures nothing."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_fleet_gets_telemetry_and_counts_corruption(pty_link):
    master, fleet, link = pty_link
    tel = P.pack_telemetry(1000, 7.0, 3.2, 0.15, -0.5, 0.48, -12.0, 0.5, 0)
    good = P.encode_frame(P.MSG_TELEMETRY, 4, 1, tel)
    bad = bytearray(P.encode_frame(P.MSG_TELEMETRY, 4, 2, tel))
    bad[5] ^= 0x10
    foreign = P.encode_frame(P.MSG_TELEMETRY, 5, 1, tel)     # load2's id on load1's port
    os.write(master, b"\x00garbage\x00" + bytes(bad) + foreign + good)
    assert _wait(lambda: fleet.snapshot()["load1"]["telemetry"] is not None)
    t = fleet.snapshot()["load1"]["telemetry"]
    assert t["p_bus_w"] == pytest.approx(-0.5) and t["energy_bus_j"] == pytest.approx(-12.0)
    # the garbage between two delimiters is one framing error, the flipped bit one CRC error
    assert link.errors["framing_errors"] == 1 and link.errors["crc_errors"] == 1
    assert fleet.foreign_frames == 1
    assert fleet.snapshot()["load2"]["telemetry"] is None


def test_serial_link_writes_the_resync_byte_and_gives_up_on_a_board_that_does_not_read(pty_link):
    """The link opens with one 0x00 (PROTOCOL.md §1); a board that stops reading (nobody reads
    the pty) makes writes time out and return False instead of blocking the tick."""
    master, fleet, link = pty_link
    assert _wait(lambda: os.read(master, 1) == b"\x00")
    results = []

    def flood():
        for _ in range(5000):       # the pty holds a few thousand frames, then stops taking them
            results.append(link.send(P.MSG_SETPOINT, 4, 1, P.pack_setpoint(1, P.MODE_NORMAL, 0.1)))
            if results[-1] is False:
                return

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    writer.join(timeout=30.0)
    assert not writer.is_alive() and results[-1] is False and results.count(True) > 100
    while select.select([master], [], [], 0.1)[0]:     # the board reads again
        os.read(master, 65536)
    assert link.send(P.MSG_SETPOINT, 4, 2, P.pack_setpoint(1, P.MODE_NORMAL, 0.1)) is True


def test_serial_link_reopens_a_port_that_failed(pty_link):
    """A read error (a Pico reset re-enumerates its USB port) closes and reopens the port; the
    board's frames reach the fleet again, and the link resynchronised with a 0x00."""
    master, fleet, link = pty_link
    link._serial.close()        # the port fails under the reader, as a vanished device does
    assert _wait(lambda: link.reopens == 1)
    tel = P.pack_telemetry(2000, 7.0, 3.2, 0.15, -0.25, 0.48, -12.0, 0.5, 0)
    os.write(master, P.encode_frame(P.MSG_TELEMETRY, 4, 1, tel))
    assert _wait(lambda: fleet.snapshot()["load1"]["telemetry"] is not None)
    assert fleet.snapshot()["load1"]["telemetry"]["p_bus_w"] == pytest.approx(-0.25)


def test_fleet_reports_foreign_frames_and_lost_events_without_a_flood():
    """A board on the wrong port is said at its 1st, 2nd, 4th ... frame, not at every one; events
    pushed out of the full queue between two drains are counted in one events_dropped event."""
    fleet = Fleet({"load1": 4, "load2": 5})
    tel = P.pack_telemetry(1000, 7.0, 3.2, 0.15, -0.5, 0.48, -12.0, 0.5, 0)
    for seq in range(5):
        fleet.on_frame("load1", P.MSG_TELEMETRY, 5, seq, tel)     # load2's id on load1's link
    foreign = [row for row in fleet.drain_events() if row[2] == "foreign_frame"]
    assert fleet.foreign_frames == 5 and [row[3].split()[0] for row in foreign] == ["1", "2", "4"]
    hello = P.pack_hello("load1", "1.0.0", 0, 7)
    for seq in range(1003):
        fleet.on_frame("load1", P.MSG_HELLO, 4, seq, hello)     # one 'hello' event each
    rows = fleet.drain_events()
    assert len(rows) == 1001 and rows[-1][2] == "events_dropped" and rows[-1][3].startswith("3 event(s) lost")
    fleet.on_frame("load1", P.MSG_HELLO, 4, 2000, hello)
    assert [row[2] for row in fleet.drain_events()] == ["hello"]      # counted once


def test_setpoint_ack_round_trip_and_timeout(pty_link):
    master, fleet, link = pty_link
    seq = fleet.send_setpoint("load1", 3, P.MODE_NORMAL, 0.4)
    dec = P.Decoder()
    assert _wait(lambda: any(f[0] == P.MSG_SETPOINT for f in dec.feed(os.read(master, 256))))
    os.write(master, P.encode_frame(P.MSG_ACK, 4, 7, P.pack_ack(seq, P.ACK_OK))
             + P.encode_frame(P.MSG_TELEMETRY, 4, 8, P.pack_telemetry(1, 7, 3, 0.1, -0.4, 0.38, -1, 0.4, 0)))
    acks = fleet.wait_acks({"load1": seq}, 60.0)      # returns when the ack is in
    assert acks["load1"][0] == P.ACK_OK
    assert fleet.snapshot()["load1"]["snapshot"] is not None
    t0 = time.monotonic()
    assert fleet.wait_acks({"load1": fleet.send_setpoint("load1", 4, 0, 0.1)}, 0.2) == {}
    assert time.monotonic() - t0 >= 0.2
    assert fleet.stale(60.0) == ["load2"]


def test_a_setpoint_that_cannot_be_written_is_not_waited_for(pty_link):
    """The port went away (a USB cable pulled): the write fails, so there is no sequence number
    to wait for, and the tick does not spend its ack timeout on it."""
    master, fleet, link = pty_link
    link._serial.close()
    assert fleet.send_setpoint("load1", 3, P.MODE_NORMAL, 0.4) is None
    fleet._cond = _NeverWaits(fleet._cond)     # waiting at all would be spending the timeout
    assert fleet.wait_acks({"load1": None}, 2.0) == {}


class _NeverWaits:
    """A Condition whose ``wait`` fails the test: the code under test must not wait on it."""

    def __init__(self, cond):
        self._cond = cond

    def __enter__(self):
        return self._cond.__enter__()

    def __exit__(self, *exc):
        return self._cond.__exit__(*exc)

    def wait(self, timeout=None):
        raise AssertionError(f"waited on the ack condition ({timeout} s)")

    def __getattr__(self, name):
        return getattr(self._cond, name)


def test_health_reports_stale_stuck_and_balance_changes_once():
    from picogrid.edge.boards.health import Health

    h = Health(["pv", "grid"], stuck_samples=3, residual_alarm_w=0.2)
    assert h.check({"grid"}) == [("grid", "board_stale", "no telemetry for 1.0 s")]
    assert h.check({"grid"}) == []                       # reported once, not every tick
    assert [e[1] for e in h.check(set())] == ["board_back"]
    same = {"v_bus_v": 7.0, "v_port_v": 4.5, "i_port_a": 0.7, "p_bus_w": 3.0}
    for _ in range(4):
        h.telemetry("pv", same)
    assert [e[1] for e in h.check(set())] == ["sensor_stuck"]
    h.telemetry("pv", dict(same, i_port_a=0.7001))       # noise again
    assert [e[1] for e in h.check(set())] == ["sensor_ok"]
    assert h.balance(0.1, 2.5) == [] and h.balance(1.0, 2.5) == []    # 0.04 W, then 0.4 W once
    assert [e[1] for e in h.balance(-1.0, 2.5)] == ["balance_alarm"]   # second tick in a row
    assert h.balance(None, 2.5) == []
    h.balance(0.0, 2.5)
    assert h.balance(1.0, 2.5) == [] and h.balance(None, 2.5) == [] and h.balance(1.0, 2.5) == []  # not in a row


def test_runner_plans_to_the_day_end_over_the_forecast_scenarios():
    """Near the day's end the plan sees no load after it (the day is scored with its stored
    energy at the terminal value), and the lab profile plans over its three quantile and seven
    error scenarios."""
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    src = ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks)
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0)
    n = runner.horizon
    fan = lambda v: {0.1: np.full(n, 0.5 * v), 0.5: np.full(n, v), 0.9: np.full(n, 2.0 * v)}
    fc = {"pv_available_w": fan(0.0), "import_price_per_j": fan(3.0),
          **{f"load{k}_demand_w": fan(0.3) for k in (1, 2, 3)}}
    k = n_ticks - 3
    decision, *_ = runner.optimise(k, 20.0, fc, islanded=False)
    assert decision.ok
    assert np.all(decision.plan["p_load"][3:] == 0.0)
    assert np.all(decision.plan["p_load"][1:3] > 0.0)
    assert len(decision.scenario_objectives) == 3 + runner.cfg.error_scenario_days == 10


def test_runner_plans_on_its_forecasters_scenario_energies():
    """On a day as long as the models' the runner plans its scenarios on the forecaster's
    calibrated energies (other scenario costs than without them), and solves."""
    from picogrid.edge.forecasting.forecast import Forecaster
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    src = ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks)
    forecaster = Forecaster(profile="lab")
    with_cal = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=forecaster, t0=0.0)
    without = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0)
    assert with_cal.energy_calibration is forecaster.energy_calibration is not None
    n = with_cal.horizon
    fan = lambda v: {0.1: np.full(n, 0.5 * v), 0.5: np.full(n, v), 0.9: np.full(n, 2.0 * v)}  # noqa: E731
    fc = {"pv_available_w": fan(0.5), "import_price_per_j": fan(3.0),
          **{f"load{k}_demand_w": fan(0.3) for k in (1, 2, 3)}}
    a, *_ = with_cal.optimise(20, 20.0, fc, islanded=False)
    b, *_ = without.optimise(20, 20.0, fc, islanded=False)
    assert a.ok and b.ok and len(a.scenario_objectives) == 3 + with_cal.cfg.error_scenario_days
    assert not np.allclose(a.scenario_objectives, b.scenario_objectives)


def test_runner_reserve_uses_the_pessimistic_quantiles():
    """With the reserve switched on, the runner keeps energy for P90 demand against P10 PV
    (docs/design.md §4), not for the expected forecast; step 0 is what the feed says now."""
    from picogrid.edge.optimizer.optimize import reserve_energy_j
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site

    site = load_site()
    site["reserve"] = {"enabled": True, "duration_s": 10 * float(site["bench"]["tick_s"])}
    n_ticks = int(site["bench"]["n_ticks"])
    src = ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks)
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0)
    n, cfg = runner.horizon, runner.cfg
    fan = lambda v: {0.1: np.full(n, 0.5 * v), 0.5: np.full(n, v), 0.9: np.full(n, 2.0 * v)}
    fc = {"pv_available_w": fan(0.4), "import_price_per_j": fan(3.0),
          **{f"load{k}_demand_w": fan(0.3) for k in (1, 2, 3)}}
    decision, *_ = runner.optimise(0, 20.0, fc, islanded=False)
    assert decision.ok
    demand_p90 = np.full((n, 3), 0.6)
    pv_p10 = np.full(n, 0.2)
    demand_p90[0], pv_p10[0] = src.now(0)[0], src.sun_now(0) * runner.pv_capability_w
    expect = reserve_energy_j(cfg, demand_p90, pv_p10, np.full(n, cfg.p_imp_max_w))
    assert decision.plan["reserve_j"] == pytest.approx(expect)
    assert decision.plan["reserve_j"][5] > reserve_energy_j(cfg, np.full((n, 3), 0.3), np.full(n, 0.4),
                                                            np.full(n, cfg.p_imp_max_w))[5]


def test_runner_plans_jobs_for_the_deferrable_board():
    """Jobs of the source reach the MPC with the board's headroom; the plan's job power goes
    to load3 on top of its demand; the last tick's job energy counts until it is metered."""
    from picogrid.edge.control import dispatch
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    job = {"start": 0, "end": 6, "energy": 2.0}
    src = ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks, jobs=[job])
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0)
    assert runner.deferrable.board == "load3"
    runner.update_jobs()
    n, dt = runner.horizon, runner.cfg.dt_s
    fan = lambda v: {0.1: np.full(n, 0.5 * v), 0.5: np.full(n, v), 0.9: np.full(n, 2.0 * v)}
    fc = {"pv_available_w": fan(0.5), "import_price_per_j": fan(3.0),
          **{f"load{k}_demand_w": fan(0.3) for k in (1, 2, 3)}}
    decision, _, demand, _ = runner.optimise(0, 20.0, fc, islanded=False)
    assert decision.ok
    p_def = decision.plan["p_def"].sum(axis=1)
    assert p_def[:6].sum() * dt == pytest.approx(2.0, rel=1e-3) and np.all(p_def[6:] < 1e-6)
    # within load3's rating on top of its demand
    assert np.all(p_def <= np.maximum(runner.deferrable.rating_w - demand[:, 2], 0.0) + 1e-6)
    demand_now = src.now(0)[0]
    sp = dispatch.setpoints(decision, 0.5, 7.0, False, demand_now, deferrable_load="load3")
    assert sp["load3"][1] == pytest.approx(decision.load_served_w[2] + decision.p_deferrable_w)
    jobs = runner.deferrable
    jobs.sent(0, 0.8 / dt, dt)
    assert jobs.planning().live(1) == [{"start": -1.0, "end": 5.0, "energy": pytest.approx(1.2)}]
    assert jobs.ledger.live(1)[0]["energy"] == 2.0       # the ledger itself waits for the meters
    # metering: what load3 drew beyond its demand goes to the job
    demand_t = np.array([0.1, 0.1, 0.2])
    assert jobs.meter(0, -(0.2 + 0.3) * dt, demand_t, dt) == pytest.approx(0.3)
    assert jobs.ledger.delivered_j == pytest.approx([0.3 * dt])
    runner.update_jobs()                                 # same day, same jobs: kept
    assert jobs.ledger.delivered_j == pytest.approx([0.3 * dt])
    src.day = "the next day"                             # same windows on a new day: new jobs
    runner.update_jobs()
    assert jobs.ledger.delivered_j.tolist() == [0.0]


def test_runner_meters_a_late_tick_by_its_mean_power(tmp_path):
    """A tick whose closing setpoints went out 0.5 s late (the MPC still deciding) spans 3.0 s
    on the boards: load1 drawing its 1.0 W demand is metered at 1.0 W, so no load is shed,
    and the bus balance is taken over the boards' real windows."""
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site
    from picogrid.edge.control.store import Store

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    scenario = _scenario(n_days=3, n_ticks=n_ticks)
    scenario["load1_demand_w"] = [1.0] * len(scenario["load1_demand_w"])
    src = ScenarioSource(scenario, n_ticks)
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", n_ticks, float(site["bench"]["tick_s"]), {})
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=store, forecaster=None, t0=0.0,
                        record="dispatch")
    p_w = {"pv": 1.5, "grid": 0.0, "storage": 0.0, "load1": -1.0,
           "load2": -src.now(0)[0][1], "load3": -src.now(0)[0][2]}
    p_w["grid"] = -sum(p_w.values())

    def boundary(t_ms):
        return {n: {"t_ms": t_ms, "energy_bus_j": p * t_ms / 1000.0, "v_bus_v": 7.0, "v_port_v": 9.0,
                    "i_port_a": 0.0} for n, p in p_w.items()}

    runner.meter(0, boundary(10_000))
    runner.meter(1, boundary(13_000))          # 3.0 s for a 2.5 s tick
    row = runner.measured[-1]
    assert row["load1_w"] == pytest.approx(-1.0) and row["pv_w"] == pytest.approx(1.5)
    assert row["balance_residual_j"] == pytest.approx(0.0, abs=1e-9)
    stored = store.conn.execute("SELECT load1_w FROM dispatch WHERE tick=0").fetchone()[0]
    assert stored == pytest.approx(-1.0)
    store.close()


def test_summary_energies_leave_unmetered_ticks_out():
    """A tick without load1's and the grid's reading (a missed ack) is neither shed load nor
    zero import: the energies cover the metered ticks and the tick is counted as incomplete."""
    from picogrid.cli import _summary_lines
    from picogrid.edge.control import report

    site = load_site()
    cfg = config_from_site(site).replace(horizon=4)
    rows = [{"tick": t, "grid_w": 1.0, "storage_w": 0.0, "pv_w": 0.5, "load1_w": -0.3, "load2_w": -0.6,
             "load3_w": -0.6, "load1_demand_w": 0.3, "load2_demand_w": 0.6, "load3_demand_w": 0.6,
             "import_price_per_j": 1.0, "export_price_per_j": 0.5, "storage_energy_j": 20.0,
             "balance_residual_j": 0.0, "deferrable_w": 0.0} for t in range(4)]
    rows[2].update(load1_w=None, grid_w=None, balance_residual_j=None)
    truth = {"pv_available_w": np.full(4, 0.5), "import_price_per_j": np.ones(4),
             "export_price_per_j": np.full(4, 0.5), **{f"load{k}_demand_w": np.full(4, d)
                                                       for k, d in ((1, 0.3), (2, 0.6), (3, 0.6))}}
    s, _ = report.summary(rows, [], truth, cfg, 20.0, [0.01] * 4, ["solved"] * 4)
    dt = cfg.dt_s
    assert s["load1_served_energy_j"] == pytest.approx(3 * 0.3 * dt)
    assert s["load1_shed_energy_j"] == pytest.approx(0.0)
    assert s["load2_served_energy_j"] == pytest.approx(4 * 0.6 * dt)
    assert s["import_energy_j"] == pytest.approx(3 * 1.0 * dt)
    assert s["ticks_incomplete_mpc"] == 1 and np.isnan(s["cost_mpc"])
    assert any("1 ticks lack a board's reading" in line for line in _summary_lines(s))
    # the third bench's rows count alike: an unmetered tick leaves its cost unknown, not free
    s, _ = report.summary(rows, [], truth, cfg, 20.0, [0.01] * 4, ["solved"] * 4, mpc_perfect_forecast_rows=rows)
    assert s["ticks_incomplete_mpc_perfect_forecast"] == 1 and np.isnan(s["cost_mpc_perfect_forecast"])
    assert any(line.strip().startswith("all measured") for line in _summary_lines(s))
    # all metered: the naive bench imports more, the third bench less; the capture against it is
    # measured, unless one of its ticks was decided without the true future
    full = [dict(r, load1_w=-0.3, grid_w=1.0, balance_residual_j=0.0) for r in rows]
    naive = [dict(r, grid_w=2.0) for r in full]
    perfect = [dict(r, grid_w=0.5) for r in full]
    s, _ = report.summary(full, naive, truth, cfg, 20.0, [0.01] * 4, ["solved"] * 4, mpc_perfect_forecast_rows=perfect,
                          mpc_perfect_forecast_statuses=["solved_exact"] * 4)
    assert 0.0 < s["savings_capture_vs_mpc_perfect_forecast"] < 1.0 and s["ticks_fallback_mpc_perfect_forecast"] == 0
    s, _ = report.summary(full, naive, truth, cfg, 20.0, [0.01] * 4, ["solved"] * 4, mpc_perfect_forecast_rows=perfect,
                          mpc_perfect_forecast_statuses=["solved_exact"] * 3 + ["fallback:no_true_future"])
    assert np.isfinite(s["cost_mpc_perfect_forecast"]) and np.isnan(s["savings_capture_vs_mpc_perfect_forecast"])
    assert any("none: that bench had fallback ticks" in line for line in _summary_lines(s))


def test_runner_health_sees_every_report_of_the_tick_once(tmp_path):
    """Reports that arrive while a tick runs (forecast, solve, the boards' post-ack snapshots)
    reach Health as well as the store, and none twice: five identical load1 readings, three
    before the tick and two during it, are four repeats."""
    from picogrid.edge.boards.health import Health
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids
    from picogrid.edge.control.store import Store

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    fleet = Fleet(board_ids(site))
    tel = P.pack_telemetry(1000, 7.0, 3.2, 0.15, -0.5, 0.48, -12.0, 0.5, 0)
    report = lambda: fleet.on_frame("load1", P.MSG_TELEMETRY, fleet.boards["load1"].board_id, 1, tel)  # noqa: E731

    class ReportingSource(ScenarioSource):
        """The scenario, with load1 reporting while the runner reads the source mid-tick."""
        def now(self, k):
            if not getattr(self, "reported", False):
                self.reported = True
                report()
                report()
            return super().now(k)

    src = ReportingSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks)
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", n_ticks, float(site["bench"]["tick_s"]), {})
    runner = EdgeRunner(site, src, fleet, store=store, forecaster=None, t0=0.0, policy="naive", record="dispatch")
    runner.health = Health(fleet.boards, stuck_samples=4)
    for _ in range(3):
        report()
    runner.tick(0)
    assert runner.health._same["load1"] == 4
    assert "sensor_stuck" in [kind for board, kind, _ in runner.health.check(set()) if board == "load1"]
    store.close()


def test_runner_day_stops_at_the_next_tick_when_asked(tmp_path):
    """A day whose stop is requested (another bench of the day failed, Ctrl-C) ends before its
    next tick, and says how many ticks it ran."""
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids
    from picogrid.edge.control.store import Store

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    src = ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks)
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", n_ticks, float(site["bench"]["tick_s"]), {})
    now = [0.0]
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=store, forecaster=None, t0=0.0, policy="naive",
                        record="dispatch", clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))

    def on_tick(k):
        if k == 1:
            runner.stop_requested.set()

    assert runner.run_day(on_tick) == 2 and len(runner.statuses) == 2
    store.close()


def test_perfect_runner_plans_one_plan_on_the_true_future(tmp_path):
    """The third bench's runner plans on the source's true day (every quantile the truth, the
    day's last value past its end) with one plan, and scores as the perfect_foresight's model does."""
    from picogrid.edge.optimizer import policies
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site

    from picogrid.edge.control.store import Store
    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    cols = _scenario(n_days=3, n_ticks=n_ticks)
    # the sun the source tells now is the truth's PV (as in a replayed day)
    cols["sun"] = [p / float(site["pv"]["capability_w"]) for p in cols["pv_available_w"]]
    src = ScenarioSource(cols, n_ticks)
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0,
                        policy="mpc_perfect_forecast", record="dispatch")
    assert runner.cfg.scenario_weights is None and runner.mpc is not None
    truth, k = src.truth(), n_ticks - 5
    fans, sources = runner.true_future(k)
    assert set(sources.values()) == {"truth"}
    for series in ("pv_available_w", "load1_demand_w", "import_price_per_j"):
        for q in (0.1, 0.5, 0.9):
            np.testing.assert_array_equal(fans[series][q][:5], truth[series][k:])
            assert np.all(fans[series][q][5:] == truth[series][-1])
    # from tick 0 on the true day, the plan's cost is the perfect-foresight optimum's
    decision, *_ = runner.optimise(0, 20.0, runner.true_future(0)[0], islanded=False)
    perfect_foresight = policies.solve_perfect_foresight(runner.cfg, 20.0, truth["pv_available_w"],
                                   np.column_stack([truth[f"load{i}_demand_w"] for i in (1, 2, 3)]),
                                   truth["import_price_per_j"], truth["export_price_per_j"])
    assert decision.ok and not decision.scenario_objectives
    assert decision.objective == pytest.approx(perfect_foresight.objective, rel=1e-6, abs=1e-6)
    # a source without the whole day: planned as a failed forecast, and the tick says it was not
    # the reference (the summary then gives no capture against this bench)
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", n_ticks, float(site["bench"]["tick_s"]), {})
    fleet = Fleet(board_ids(site))
    runner = EdgeRunner(site, src, fleet, store=store, forecaster=None, t0=0.0,
                        policy="mpc_perfect_forecast", record="dispatch")
    seq = iter(range(1, 100))
    storage_reports = lambda: fleet.on_frame(  # noqa: E731  (the storage board at 9 V, idle: 20 J stored)
        "storage", P.MSG_TELEMETRY, fleet.boards["storage"].board_id, next(seq),
        P.pack_telemetry(1000 * next(seq), 7.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0))
    storage_reports()
    assert runner.tick(0).status == "solved_exact"
    day = src.truth()
    src.truth = lambda: {"pv_available_w": day["pv_available_w"]}   # the meters' part of the day only
    _, sources = runner.true_future(k)
    assert set(sources.values()) == {"seasonal_naive:KeyError"}
    storage_reports()
    decision = runner.tick(1)
    assert decision.status == "fallback:no_true_future" and "seasonal_naive:KeyError" in decision.reason
    assert runner.statuses == ["solved_exact", "fallback:no_true_future"]
    # the whole day, but a price the optimiser cannot use: the solver's fallback, said alike
    src.truth = lambda: dict(day, import_price_per_j=np.full(len(day["import_price_per_j"]), np.nan))
    storage_reports()
    assert runner.tick(2).status.startswith("fallback:non-finite input")
    kinds = [r[0] for r in store.conn.execute("SELECT kind FROM event").fetchall()]
    assert kinds == ["reference_fallback", "reference_fallback"]
    store.close()
    with pytest.raises(ValueError, match="mpc\\|naive\\|mpc_perfect_forecast"):
        EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0, policy="perfect_foresight")


def test_runner_error_scenarios_from_the_forecasts_it_issued(caplog):
    """With error scenarios the runner first forecasts the K days before the run (prepare), and
    each tick's past errors are what the source's history says, less those forecasts; a source
    without the history says so, and its error scenarios are the point forecast."""
    from picogrid.edge.forecasting.forecast import Forecaster
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site

    site = load_site()
    site["optimizer"]["error_scenario_days"] = 2
    n_ticks = int(site["bench"]["n_ticks"])
    src = ScenarioSource(_scenario(n_days=5, n_ticks=n_ticks), n_ticks)
    runner = EdgeRunner(site, src, Fleet(board_ids(site)), store=None, forecaster=Forecaster(profile="lab"),
                        t0=0.0)
    with caplog.at_level("ERROR"):
        runner.prepare()
    assert "forecaster failed" not in caplog.text          # the models' own forecasts, not a fallback
    assert set(runner._points) == set(range(-2 * n_ticks, 0)) and None not in runner._points.values()
    errors = runner.past_errors(0)
    n = runner.horizon
    assert len(errors) == 2 and None not in errors
    for j, err in enumerate(errors, start=1):
        realised = src.history(0, j * n_ticks)
        point = runner._points[-j * n_ticks]
        np.testing.assert_allclose(err["load2_demand_w"], realised["load2_demand_w"][:n] - point["load2_demand_w"])
    fc = {"pv_available_w": {q: np.full(n, 1.0) for q in (0.1, 0.5, 0.9)},
          "import_price_per_j": {q: np.full(n, 3.0) for q in (0.1, 0.5, 0.9)},
          **{f"load{k}_demand_w": {q: np.full(n, 0.3) for q in (0.1, 0.5, 0.9)} for k in (1, 2, 3)}}
    decision, *_ = runner.optimise(0, 20.0, fc, islanded=False)
    assert decision.ok and len(decision.scenario_objectives) == 3 + 2
    short = ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks)   # two days of history
    runner = EdgeRunner(site, short, Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0)
    with caplog.at_level("WARNING"):
        runner.prepare()
    assert "no forecasts before tick" in caplog.text and runner.past_errors(0) == [None, None]


@pytest.mark.parametrize("policy, planner, solves, one_plan, error_days", [
    ("mpc", "ForecastPlanner", True, False, True),
    ("mpc_perfect_forecast", "TrueFuturePlanner", True, True, False),
    ("naive", "RulePlanner", False, True, False),
])
def test_each_policy_has_its_planner(policy, planner, solves, one_plan, error_days):
    """The runner picks one planner per policy and never branches on the policy string: the
    planner says whether the runner keeps an optimiser, plans one plan and error scenarios."""
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    runner = EdgeRunner(site, ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks),
                        Fleet(board_ids(site)), store=None, forecaster=None, t0=0.0, policy=policy, record="dispatch")
    assert type(runner.planner).__name__ == planner
    assert (runner.mpc is not None) == solves
    assert (runner.cfg.scenario_weights is None) == one_plan
    assert (runner.error_days > 0) == error_days


def test_the_rule_planner_plans_one_tick_from_what_is_known_now():
    """One cycle of the rule at a sunny tick: every load served, the surplus into storage up to
    its limit and then exported up to the grid's, the rest curtailed; the bus balances; no fans."""
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    cols = _scenario(n_days=3, n_ticks=n_ticks)
    runner = EdgeRunner(site, ScenarioSource(cols, n_ticks), Fleet(board_ids(site)), store=None,
                        forecaster=None, t0=0.0, policy="naive", record="dispatch")
    k = n_ticks // 2
    decision, fans, sources, pv_now = runner.planner.plan(k, 20.0, islanded=False)
    demand = runner.source.now(k)[0]
    assert fans == {} and sources == {}
    assert decision.load_served_w == pytest.approx(demand)
    cfg = runner.cfg
    assert pv_now > float(np.sum(demand)) + cfg.p_ch_max_w + cfg.p_exp_max_w      # a surplus beyond both limits
    assert decision.p_storage_w == pytest.approx(-cfg.p_ch_max_w)                 # charging at its limit
    assert decision.p_grid_w == pytest.approx(-cfg.p_exp_max_w)                   # exporting at its limit
    assert decision.pv_cap_w + decision.p_storage_w + decision.p_grid_w == pytest.approx(float(np.sum(demand)))


def test_a_silent_storage_board_hands_the_tick_to_the_safe_rule(tmp_path):
    """The storage board's last report older than the boards' watchdog (it has gone quiet): its
    estimate is stale, so the tick is decided by the safe rule with the storage idle, and the
    record says why; a fresh report brings the plan back."""
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.control.store import Store
    from picogrid.edge.site import board_ids

    site = load_site()
    n_ticks = int(site["bench"]["n_ticks"])
    now = [1000.0]
    fleet = Fleet(board_ids(site), clock=lambda: now[0])
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", n_ticks, float(site["bench"]["tick_s"]), {})
    runner = EdgeRunner(site, ScenarioSource(_scenario(n_days=3, n_ticks=n_ticks), n_ticks), fleet, store=store,
                        forecaster=None, t0=now[0], policy="naive", record="all", clock=lambda: now[0])
    seq = iter(range(1, 100))

    def storage_reports():   # the storage board at 9 V, idle: 20 J stored
        fleet.on_frame("storage", P.MSG_TELEMETRY, fleet.boards["storage"].board_id, next(seq),
                       P.pack_telemetry(1000 * next(seq), 7.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0))

    storage_reports()
    assert runner.tick(0).status == "naive"
    now[0] += float(site["bench"]["watchdog_ms"]) / 1000 + 1.0       # quiet for longer than its watchdog
    decision = runner.tick(1)
    assert decision.status == "fallback:no_storage_estimate" and "stale" in decision.reason
    assert decision.p_storage_w == 0.0 and runner.last_setpoints["storage"][1] == 0.0
    texts = [r[0] for r in store.conn.execute("SELECT detail FROM event WHERE kind='no_telemetry'")]
    assert texts and "safe rule" in texts[-1]
    storage_reports()
    assert runner.tick(2).status == "naive"
    store.close()
