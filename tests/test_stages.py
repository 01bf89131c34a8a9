"""One-cycle tests of the tick loop's stages, one table per stage (issue 28, point 6).

The runner (edge/control/runner.py) runs observe -> estimate -> forecast -> plan -> dispatch ->
record each tick. Each table row here is one cycle of one stage on the lab site, inputs in and
outputs out, through the real components (Fleet fed with protocol frames, EdgeRunner, the
policies' planners with their MpcController, Forecaster, SQLite Store); time is a test clock.

- observe/estimate: storage and grid telemetry frames -> stored energy, islanded flag, or why
  there is no estimate (never reported, stale, beyond the capacitor, absurd report dropped).
- forecast: the fans a planner plans on (lab models, seasonal naive, the true day, none) and
  the window the optimiser gets from them (shapes, step 0 = what is known now).
- plan: every planner of PLANNERS in a situation -> signs of storage and grid power, loads shed,
  and the bus balance (islanded never imports; a price above every value of lost load never sheds).
- dispatch: a decision -> per-board (mode, value) setpoints.
- record: a decision, its setpoints and the metered boundaries -> the rows in the SQLite store.
"""

import json

import numpy as np
import pytest

from clocks import Clock
from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.control import dispatch
from picogrid.edge.control.planners import PLANNERS
from picogrid.edge.control.runner import EdgeRunner
from picogrid.edge.control.store import Store
from picogrid.edge.forecasting.forecast import Forecaster
from picogrid.edge.forecasting.scenarios import forecast_inputs
from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer.decision import Decision
from picogrid.edge.site import board_ids, load_site
from picogrid.edge.sources.signals import LOAD_SERIES, LOADS, ScenarioSource
from picogrid.firmware import protocol as P

SITE = load_site()                              # the lab bench: 0.5 F / 4 ohm storage, 7 V bus
N_TICKS = int(SITE["bench"]["n_ticks"])
PV_CAP_W = float(SITE["pv"]["capability_w"])
V_BUS = float(SITE["bench"]["bus_voltage_v"])
SERIES = ("pv_available_w",) + LOAD_SERIES + ("import_price_per_j",)
# the MPC on the true day, whatever its key is now ('mpc_perfect', maybe 'mpc_perfect_forecast')
PERFECT = next(p for p, c in PLANNERS.items() if c.solves and c.one_plan)
FORECASTING = next(p for p, c in PLANNERS.items() if c.solves and not c.one_plan)      # 'mpc'
RULE = next(p for p, c in PLANNERS.items() if not c.solves)                            # 'naive'


def _source(pv_w=0.0, demand_w=(0.3, 0.3, 0.3), price_now=2.8, price_later=None, k=None, ramp=False):
    """Three days of 60 ticks (two of history, then the run day): flat values, the import price
    ``price_later`` after tick ``k`` of every day, export at a third of import; ``ramp`` makes
    every row different (a half-sine sun, loads and price moving through the day, each day 10 %
    above the one before) so a forecast can be traced to the row it came from."""
    n = 3 * N_TICKS
    tod, day = np.arange(n) % N_TICKS, np.arange(n) // N_TICKS
    price = np.where(tod > k, price_later, price_now) if price_later is not None else np.full(n, price_now)
    cols = {"pv_available_w": np.full(n, pv_w), "import_price_per_j": price}
    for i, d in enumerate(demand_w):
        cols[LOAD_SERIES[i]] = np.full(n, d)
    if ramp:
        grow = 1.0 + 0.1 * day
        cols["pv_available_w"] = 3.0 * np.clip(np.sin(np.pi * (tod - 10) / 40), 0, None) * grow
        for i, s in enumerate(LOAD_SERIES):
            cols[s] = (0.2 + 0.1 * i + 0.002 * tod) * grow
        cols["import_price_per_j"] = (2.0 + 0.02 * tod) * grow
    cols["export_price_per_j"] = cols["import_price_per_j"] / 3
    cols["sun"] = cols["pv_available_w"] / PV_CAP_W
    cols["clearsky_ghi_w_m2"] = 1000.0 * cols["sun"]
    cols.update(day=["d%d" % d for d in day], day_of_year=[150] * n, weekday=[2] * n)
    return ScenarioSource(cols, N_TICKS)


def _runner(source, policy=RULE, store=None, forecaster=None, clock=None, record="dispatch"):
    clock = clock or Clock(0.0)
    fleet = Fleet(board_ids(SITE), clock=clock)
    return EdgeRunner(SITE, source, fleet, store=store, forecaster=forecaster, t0=0.0, policy=policy,
                      record=record, clock=clock)


def _report(fleet, board, v_port_v=9.0, i_port_a=0.0, flags=0, t_ms=1000):
    """One telemetry frame of ``board`` through the fleet, as a link's reader thread delivers it."""
    setpoint = V_BUS if board == "grid" else 0.0
    fleet.on_frame(board, P.MSG_TELEMETRY, fleet.boards[board].board_id, t_ms,
                   P.pack_telemetry(t_ms, V_BUS, v_port_v, i_port_a, 0.0, 0.0, 0.0, setpoint, flags))


# --------------------------------------------------------------------------- observe / estimate
# frames: (board, at [s], telemetry); the stage runs at 'now' [s]. Storage 0.5 F, ESR 4 ohm,
# rated 13.5 V: the estimate is C (v + i R)^2 / 2, refused above C (1.2 * 13.5 V)^2 / 2 = 65.6 J;
# the boards' watchdog (8 s) is the storage telemetry's age limit, Health's 1 s the grid's.
OBSERVE = {
    "idle at 9 V": dict(frames=[("storage", 0.0, {}), ("grid", 0.0, {})], now=0.5,
                        energy_j=20.25, islanded=False, note=None),
    "discharging 0.25 A: +1 V over the ESR": dict(
        frames=[("storage", 0.0, {"i_port_a": 0.25}), ("grid", 0.0, {})], now=0.5,
        energy_j=25.0, islanded=False, note=None),
    "storage quiet longer than the watchdog": dict(
        frames=[("storage", 0.0, {}), ("grid", 8.4, {})], now=8.5, energy_j=None, islanded=False, note="stale"),
    "storage never reported": dict(frames=[("grid", 0.0, {})], now=0.5, energy_j=None, islanded=False,
                                   note="no storage telemetry"),
    "20 V: more than the capacitor holds": dict(
        frames=[("storage", 0.0, {"v_port_v": 20.0}), ("grid", 0.0, {})], now=0.5,
        energy_j=None, islanded=False, note="exceeds"),
    "absurd 1e6 V report dropped by the fleet": dict(
        frames=[("storage", 0.0, {"v_port_v": 1e6}), ("grid", 0.0, {})], now=0.5,
        energy_j=None, islanded=False, note="no storage telemetry"),
    "grid board reports no supply": dict(
        frames=[("storage", 0.0, {}), ("grid", 0.0, {"flags": P.FLAG_ISLANDED})], now=0.5,
        energy_j=20.25, islanded=True, note=None),
    "grid board silent": dict(frames=[("storage", 0.0, {})], now=0.5, energy_j=20.25, islanded=True, note=None),
}


@pytest.mark.parametrize("case", OBSERVE.values(), ids=OBSERVE.keys())
def test_observe_estimates_storage_energy_and_the_grid(case):
    clock = Clock(0.0)
    runner = _runner(_source(), clock=clock)
    for i, (board, at, tel) in enumerate(case["frames"]):
        clock.t = at
        _report(runner.fleet, board, t_ms=1000 * (i + 1), **tel)
    clock.t = case["now"]
    runner.check_health(clock.t)           # the tick's health check marks silent boards stale
    _, e_j, islanded = runner.observe()
    if case["energy_j"] is None:
        assert e_j is None and case["note"] in runner.energy_note
    else:
        assert e_j == pytest.approx(case["energy_j"], rel=1e-6) and runner.energy_note is None
    assert islanded is case["islanded"]


# --------------------------------------------------------------------------- forecast
# What a planner plans on at tick K of a day whose every row differs: the fans it returns
# (series -> quantile -> [N]), their sources, and the window forecast_inputs makes of them.
K = 20
FORECAST = {
    "mpc on the lab models": dict(policy=FORECASTING, models="lab", sources={"onnx"}, steps=None,
                                  scenarios=3 + 7),
    "mpc without models: same tick yesterday": dict(policy=FORECASTING, models="none",
                                                    sources={"seasonal_naive:no model"}, steps="yesterday",
                                                    scenarios=3 + 7),
    "the MPC with perfect forecasts: the true day": dict(policy=PERFECT, models=None, sources={"truth"},
                                                         steps="today", scenarios=None),
    "naive: no forecast": dict(policy=RULE, models=None, sources=set(), steps=None, scenarios=None),
}


@pytest.mark.parametrize("case", FORECAST.values(), ids=FORECAST.keys())
def test_forecast_window_of_each_planner(case, tmp_path):
    src = _source(ramp=True)
    forecaster = {"lab": lambda: Forecaster(profile="lab"), "none": lambda: Forecaster(artifact_dir=tmp_path),
                  None: lambda: None}[case["models"]]()
    runner = _runner(src, policy=case["policy"], forecaster=forecaster)
    _, fans, sources, pv_now = runner.planner.plan(K, 20.0, islanded=False)
    assert set(sources.values()) == case["sources"]
    demand, imp, exp = src.now(K)
    assert pv_now == pytest.approx(src.sun_now(K) * PV_CAP_W)
    if not case["sources"]:
        assert fans == {}
        return
    n = runner.horizon
    now = {"pv_available_w": pv_now, "import_price_per_j": imp, **dict(zip(LOAD_SERIES, demand))}
    for s in SERIES:
        assert set(fans[s]) == {0.1, 0.5, 0.9}
        p10, p50, p90 = (np.asarray(fans[s][q]) for q in (0.1, 0.5, 0.9))
        assert p50.shape == (n,) and np.all(p10 <= p50 + 1e-9) and np.all(p50 <= p90 + 1e-9)
        assert p50[0] == pytest.approx(now[s])                 # step 0 is what is known now
        if s != "import_price_per_j":
            assert np.all(p10 >= 0.0)                          # watts of sun and demand
        rows = 2 * N_TICKS + K + np.arange(1, n)               # the run day's rows of steps 1..N-1
        if case["steps"] == "yesterday":
            np.testing.assert_allclose(p50[1:], src.cols[s][rows - N_TICKS])
        elif case["steps"] == "today":                         # past the day's end: its last value
            np.testing.assert_allclose(p50[1:], src.cols[s][np.minimum(rows, 3 * N_TICKS - 1)])
    window = forecast_inputs(fans, runner.cfg, LOAD_SERIES, runner.known_now(K))
    assert window["pv_avail_w"].shape == (n,) and window["demand_w"].shape == (n, len(LOADS))
    assert window["import_price_per_j"].shape == window["export_price_per_j"].shape == (n,)
    np.testing.assert_allclose(window["demand_w"][0], demand)
    assert window["export_price_per_j"][0] == pytest.approx(exp)
    assert len(window.get("scenarios") or ()) == (case["scenarios"] or 0)


# --------------------------------------------------------------------------- plan
# A situation at tick k (energy [J], flat PV and demand [W], the import price now and after
# tick k [c/J], grid lost or not) -> per policy: storage 'charge' / 'discharge' / 'idle', grid
# 'import' / 'export' / 'none' / 'no import', the loads served less than their demand.
# None: no expectation. The lab's values of lost load are 40 / 12 / 6 c/J (load1 / 2 / 3).
PLAN = {
    "islanded never imports": dict(            # three ticks left: the store has enough for them
        k=N_TICKS - 3, e_j=20.0, pv_w=0.0, demand_w=(0.5, 0.5, 0.5), islanded=True, price_now=2.8,
        storage="discharge", grid="none", shed=[]),
    "islanded short of power sheds the lowest value of lost load": dict(
        k=N_TICKS - 2, e_j=40.0, pv_w=0.0, demand_w=(1.0, 1.0, 1.0), islanded=True, price_now=2.8,
        storage="discharge", grid="none", shed=["load3"]),
    "cheap now, dear later, storage empty: charge": dict(
        k=30, e_j=1.0, pv_w=0.0, demand_w=(0.3, 0.3, 0.3), islanded=False, price_now=0.5, price_later=4.0,
        storage={FORECASTING: "charge", PERFECT: "charge", RULE: "idle"}, grid="import", shed=[]),
    "dear now, cheap later, storage full: discharge, no import": dict(
        k=30, e_j=40.0, pv_w=0.0, demand_w=(0.3, 0.3, 0.3), islanded=False, price_now=4.0, price_later=0.5,
        storage="discharge", grid="no import", shed=[]),
    "a price above every value of lost load never sheds": dict(
        k=30, e_j=1.0, pv_w=0.0, demand_w=(0.5, 0.5, 0.5), islanded=False, price_now=100.0,
        storage=None, grid="import", shed=[]),
    "sunny surplus, storage full: export": dict(
        k=30, e_j=45.0, pv_w=3.5, demand_w=(0.3, 0.3, 0.3), islanded=False, price_now=2.8,
        storage=None, grid="export", shed=[]),
}
_SIGN = {"storage": {"charge": lambda p: p < -1e-3, "discharge": lambda p: p > 1e-3, "idle": lambda p: abs(p) <= 1e-3},
         "grid": {"import": lambda p: p > 1e-3, "export": lambda p: p < -1e-3, "none": lambda p: abs(p) <= 1e-6,
                  "no import": lambda p: p <= 1e-6}}


@pytest.mark.parametrize("policy", sorted(PLANNERS))
@pytest.mark.parametrize("case", PLAN.values(), ids=PLAN.keys())
def test_each_planner_in_a_situation(case, policy, tmp_path):
    k = case["k"]
    src = _source(case["pv_w"], case["demand_w"], case["price_now"], case.get("price_later"), k=k)
    forecaster = Forecaster(artifact_dir=tmp_path) if PLANNERS[policy] is PLANNERS[FORECASTING] else None
    runner = _runner(src, policy=policy, forecaster=forecaster)
    decision, _, _, pv_now = runner.planner.plan(k, case["e_j"], case["islanded"])
    assert decision.status.startswith(("solved", "naive")), decision.status
    for quantity, p in (("storage", decision.p_storage_w), ("grid", decision.p_grid_w)):
        want = case[quantity].get(policy) if isinstance(case[quantity], dict) else case[quantity]
        if want is not None:
            assert _SIGN[quantity][want](p), "%s %+.4f W, expected %s" % (quantity, p, want)
    served = np.asarray(decision.load_served_w)
    assert [n for n, s, d in zip(LOADS, served, case["demand_w"]) if s < d - 1e-3] == case["shed"]
    assert np.all(served <= np.asarray(case["demand_w"]) + 1e-6)
    # the bus balances: PV used + storage + grid = what the loads and jobs take
    assert decision.pv_cap_w <= pv_now + 1e-6
    assert decision.pv_cap_w + decision.p_storage_w + decision.p_grid_w == pytest.approx(
        served.sum() + decision.p_deferrable_w, abs=1e-4)


# --------------------------------------------------------------------------- dispatch
# decision (first-step powers [W]) + the PV the plan assumed, the grid state and each load's
# demand -> (mode, value) per board; load3 is the lab's deferrable board. Modes: 0 normal,
# 1 shed, 2 island; pv -1 = no cap; grid = the bus voltage reference [V].
DISPATCH = {
    "serve all, discharge, import": dict(
        d=dict(pv_cap_w=1.0, p_storage_w=0.5, p_grid_w=0.25, load_served_w=[0.5, 0.5, 0.75]), pv_w=1.0,
        islanded=False, demand=[0.5, 0.5, 0.75],
        sp={"pv": (0, -1.0), "storage": (0, 0.5), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.5),
            "load3": (0, 0.75)}),
    "curtail PV, charge": dict(
        d=dict(pv_cap_w=2.5, p_storage_w=-1.0, p_grid_w=0.0, load_served_w=[0.5, 0.5, 0.5]), pv_w=3.0,
        islanded=False, demand=[0.5, 0.5, 0.5],
        sp={"pv": (0, 2.5), "storage": (0, -1.0), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.5),
            "load3": (0, 0.5)}),
    "cap within 1 mW of the forecast is no cap": dict(
        d=dict(pv_cap_w=2.9995, p_storage_w=-1.0, p_grid_w=-0.4995, load_served_w=[0.5, 0.5, 0.5]), pv_w=3.0,
        islanded=False, demand=[0.5, 0.5, 0.5],
        sp={"pv": (0, -1.0), "storage": (0, -1.0), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.5),
            "load3": (0, 0.5)}),
    "islanded: storage holds the bus, loads shed": dict(
        d=dict(pv_cap_w=0.0, p_storage_w=0.5, p_grid_w=0.0, load_served_w=[0.5, 0.0, 0.0]), pv_w=0.0,
        islanded=True, demand=[0.5, 0.5, 0.0],
        sp={"pv": (0, -1.0), "storage": (2, 0.5), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (1, 0.0),
            "load3": (0, 0.0)}),
    "deferrable board: jobs on top of its own demand": dict(
        d=dict(pv_cap_w=1.5, p_storage_w=0.0, p_grid_w=0.0, load_served_w=[0.5, 0.5, 0.25], p_deferrable_w=0.25),
        pv_w=1.5, islanded=False, demand=[0.5, 0.5, 0.25],
        sp={"pv": (0, -1.0), "storage": (0, 0.0), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.5),
            "load3": (0, 0.5)}),
    "deferrable board shed of its demand still runs the jobs": dict(
        d=dict(pv_cap_w=1.25, p_storage_w=0.0, p_grid_w=0.0, load_served_w=[0.5, 0.5, 0.0], p_deferrable_w=0.25),
        pv_w=1.25, islanded=False, demand=[0.5, 0.5, 0.75],
        sp={"pv": (0, -1.0), "storage": (0, 0.0), "grid": (0, 7.0), "load1": (0, 0.5), "load2": (0, 0.5),
            "load3": (0, 0.25)}),
}


@pytest.mark.parametrize("case", DISPATCH.values(), ids=DISPATCH.keys())
def test_dispatch_setpoints(case):
    fields = dict(case["d"], load_served_w=np.array(case["d"]["load_served_w"]))
    decision = Decision(status="solved", solve_time_s=0.0, iterations=1, objective=0.0, **fields)
    sp = dispatch.setpoints(decision, case["pv_w"], V_BUS, case["islanded"], case["demand"], deferrable_load="load3")
    assert sp == case["sp"]


# --------------------------------------------------------------------------- record
# runner.send (no board linked here: nothing acks) then runner.persist of tick 3 into a real
# SQLite store -> its rows. record='dispatch' is the comparison bench: no audit rows at all.
RECORD = {
    "a solved plan, everything recorded": dict(
        record="all", status="solved", d=dict(p_storage_w=0.25, p_grid_w=0.5, pv_cap_w=0.0,
                                              load_served_w=[0.5, 0.25, 0.0]),
        fans=True, note="",
        decision=("solved", "discharge storage 0.25 W; import 0.50 W; shed load3",
                  {"pv": -1.0, "storage": 0.25, "grid": 7.0, "load1": 0.5, "load2": 0.25, "load3": 0.0}),
        setpoints=[("grid", 0, 7.0), ("load1", 0, 0.5), ("load2", 0, 0.25), ("load3", 1, 0.0),
                   ("pv", 0, -1.0), ("storage", 0, 0.25)],
        forecasts=len(SERIES) * 3, telemetry=2, boards=6, events=["no_ack"]),
    "the safe rule under an operator note": dict(
        record="all", status="fallback:no_storage_estimate",
        d=dict(p_storage_w=0.0, p_grid_w=0.75, pv_cap_w=0.0, load_served_w=[0.25, 0.25, 0.25]), fans=False,
        note="manual", decision=("fallback:no_storage_estimate",
                                 "[fallback:no_storage_estimate] import 0.75 W [manual]",
                                 {"pv": -1.0, "storage": 0.0, "grid": 7.0, "load1": 0.25, "load2": 0.25,
                                  "load3": 0.25}),
        setpoints=[("grid", 0, 7.0), ("load1", 0, 0.25), ("load2", 0, 0.25), ("load3", 0, 0.25),
                   ("pv", 0, -1.0), ("storage", 0, 0.0)],
        forecasts=0, telemetry=2, boards=6, events=["no_ack"]),
    "comparison bench: dispatch rows only": dict(
        record="dispatch", status="solved", d=dict(p_storage_w=0.25, p_grid_w=0.5, pv_cap_w=0.0,
                                                   load_served_w=[0.5, 0.25, 0.0]),
        fans=True, note="", decision=None, setpoints=[], forecasts=0, telemetry=0, boards=0, events=[]),
}


@pytest.mark.parametrize("case", RECORD.values(), ids=RECORD.keys())
def test_record_lands_in_the_store(case, tmp_path):
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", N_TICKS, float(SITE["bench"]["tick_s"]), {})
    clock = Clock(7.5)
    runner = _runner(_source(), store=store, clock=clock, record=case["record"])
    _report(runner.fleet, "storage")
    _report(runner.fleet, "grid")
    fields = dict(case["d"], load_served_w=np.array(case["d"]["load_served_w"]))
    decision = Decision(status=case["status"], solve_time_s=0.01, iterations=0, objective=float("nan"), **fields)
    fans = {s: {q: np.full(runner.horizon, 0.5) for q in (0.1, 0.5, 0.9)} for s in SERIES} if case["fans"] else {}
    sp = dispatch.setpoints(decision, 0.0, V_BUS, False, [0.5, 0.5, 0.5] if case["fans"] else [0.25] * 3)
    runner.send(3, sp)
    runner.persist(3, 7.5, decision, fans, {s: "onnx" for s in fans}, sp, case["note"])
    q = lambda sql: [tuple(r) for r in store.conn.execute(sql)]  # noqa: E731
    rows = q("SELECT tick, status, reason, setpoints_json, objective FROM decision")
    if case["decision"] is None:
        assert rows == []
    else:
        status, reason, setpoints = case["decision"]
        assert [(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows] == [(3, status, reason, setpoints, None)]
    # the grid board's value is its bus-voltage reference [V] (its own column where the schema has one)
    sent = store.conn.execute("SELECT * FROM setpoint WHERE tick=3 AND acked=0 ORDER BY board").fetchall()
    assert [(r["board"], r["mode"], r["value_v"] if "value_v" in r.keys() and r["value_v"] is not None
             else r["value_w"]) for r in sent] == case["setpoints"]
    assert q("SELECT COUNT(*) FROM forecast WHERE tick=3")[0][0] == case["forecasts"]
    assert q("SELECT COUNT(*) FROM telemetry WHERE tick=3")[0][0] == case["telemetry"]
    assert q("SELECT COUNT(*) FROM board")[0][0] == case["boards"]
    assert [r[0] for r in q("SELECT kind FROM event")] == case["events"]
    assert runner.fleet.telemetry_peek() == []                 # drained either way: the next tick starts clean
    store.close()


# two tick boundaries of every board (uptime t_ms [ms], bus-side energy counter [J], storage at
# 9 V) -> the dispatch row of the tick between them: mean powers over each board's own window.
METER = {
    "a balanced 2.5 s tick: PV charges storage, loads served, export": dict(
        power_w={"pv": 1.5, "storage": -0.2, "grid": -0.4, "load1": -0.3, "load2": -0.3, "load3": -0.3},
        rebooted=None, expect={"pv_w": 1.5, "storage_w": -0.2, "grid_w": -0.4, "load1_w": -0.3,
                               "balance_residual_j": 0.0, "storage_energy_j": 20.25}),
    "storage rebooted within the tick: not metered, no balance": dict(
        power_w={"pv": 1.0, "storage": 0.0, "grid": -0.1, "load1": -0.3, "load2": -0.3, "load3": -0.3},
        rebooted="storage", expect={"pv_w": 1.0, "storage_w": None, "grid_w": -0.1, "load1_w": -0.3,
                                    "balance_residual_j": None, "storage_energy_j": 20.25}),
}


@pytest.mark.parametrize("record", ["all", "dispatch"])
@pytest.mark.parametrize("case", METER.values(), ids=METER.keys())
def test_meter_records_the_dispatch_row(case, record, tmp_path):
    store = Store(tmp_path / "picogrid.sqlite")
    store.start_run("lab", "test", N_TICKS, float(SITE["bench"]["tick_s"]), {})
    src = _source()
    runner = _runner(src, store=store, record=record)

    def boundary(t_ms):
        return {n: {"t_ms": (t_ms - 50_000 if n == case["rebooted"] and t_ms > 10_000 else t_ms),
                    "energy_bus_j": p * t_ms / 1000.0, "v_bus_v": V_BUS, "v_port_v": 9.0, "i_port_a": 0.0}
                for n, p in case["power_w"].items()}

    runner.meter(5, boundary(10_000))
    runner.meter(6, boundary(12_500))
    cols = ("tick",) + tuple(case["expect"]) + ("import_price_per_j", "cost")
    got = dict(zip(cols, store.conn.execute("SELECT %s FROM dispatch WHERE policy=?" % ", ".join(cols),
                                            (RULE,)).fetchone()))
    assert got["tick"] == 5
    for col, want in case["expect"].items():
        assert got[col] == (None if want is None else pytest.approx(want, abs=1e-9)), col
    _, imp, exp = src.now(5)
    assert got["import_price_per_j"] == pytest.approx(imp)
    assert got["cost"] == pytest.approx(economics.bill(case["power_w"]["grid"] * 2.5, imp, exp))
    store.close()
