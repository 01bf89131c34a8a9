"""Fault injection on the HIL bench (hil/faults.py), one scripted run with every fault.

For each fault the tests show, from what the real edge pieces (Fleet + SerialLink) received
and from the plant's true state: the edge sees it, the other boards keep running (telemetry
keeps coming, no failsafe), no setpoint is applied from a corrupt frame, and the bus stays
within +-10 % of 7.0 V throughout.
"""

import json
import struct
import time

import pytest

from picogrid.firmware import protocol as P
from picogrid.hil.bench import Bench
from picogrid.hil.faults import Faults, LinkProxy
from test_hil import NOMINAL_V, EdgeDriver, Recorder, lab_site, mean

pytestmark = pytest.mark.e2e

BOARDS = ("pv", "storage", "grid", "load1", "load2", "load3")
LOAD3_VALUES = (0.2, 0.4, 0.6)      # load3 cycles through these: any other value was never sent
BIAS_I_A = 0.05                     # load1 bus-current sensor bias [A]: ~0.35 W at 7 V

# (start_s, end_s, name, inject, clear); times from the start of the script
SCRIPT = [
    (2.0, 4.5, "corrupt", {"fault": "link", "board": "load3", "corrupt_p": 0.02},
     {"fault": "link", "board": "load3"}),
    (5.0, 7.0, "drop_delay", {"fault": "link", "board": "load2", "direction": "up", "drop_p": 0.05},
     {"fault": "link", "board": "load2"}),
    (5.0, 7.0, "delay", {"fault": "link", "board": "load1", "delay_s": 0.3},
     {"fault": "link", "board": "load1"}),
    (7.5, 9.5, "bias", {"fault": "sensor_bias", "board": "load1", "bias": [0, 0, 0, BIAS_I_A]},
     {"fault": "sensor_bias", "board": "load1", "bias": None}),
    (10.0, 11.5, "stuck", {"fault": "sensor_stuck", "board": "load2"},
     {"fault": "sensor_stuck", "board": "load2", "stuck": False}),
    (12.0, 14.0, "sun_drop", {"fault": "irradiance", "value": 0.2}, {"fault": "irradiance", "value": 1.0}),
    (16.0, 18.0, "spike", {"fault": "load_spike", "power_w": 1.5}, {"fault": "load_spike", "power_w": 0.0}),
    (18.5, 20.5, "outage", {"fault": "grid_outage"}, {"fault": "grid_outage", "out": False}),
    (21.0, 23.0, "kill", {"fault": "kill_board", "board": "grid"}, {"fault": "restart_board", "board": "grid"}),
]
T_END_S = 25.5
CYCLE_END_S = 4.5                   # load3 cycles its setpoint until the corrupt window ends


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faults")
    bench = Bench(lab_site(), run_dir, time.time(), 1.0, [1.0] * 60, link_proxy=True).start()
    edge = EdgeDriver(bench)
    faults = Faults(bench)
    rec = None
    try:
        assert edge.wait_hello()
        edge.setpoints.update(grid=(0, NOMINAL_V), storage=(0, 0.5), pv=(0, -1.0), load1=(0, 0.5),
                              load2=(0, 0.3), load3=(0, LOAD3_VALUES[0]))
        edge.cycle = {"load3": LOAD3_VALUES}
        edge.start()
        rec = Recorder(faults.plant).start()
        t0 = time.time()
        steps = []
        for start, end, _, inject, clear in SCRIPT:
            steps.append(dict(inject, at_s=start))
            steps.append(dict(clear, at_s=end))
        # load3's 4 Hz cycle shows that no setpoint comes from a corrupt frame; it also keeps the
        # grid's bus-power readings swinging by +-0.5 W, which would bury the faults after it
        faults.run_script([s for s in steps if s["at_s"] <= CYCLE_END_S], t_start=t0)
        edge.cycle = {}
        faults.run_script([s for s in steps if s["at_s"] > CYCLE_END_S], t_start=t0)
        time.sleep(max(0.0, t0 + T_END_S - time.time()))
        t_end = time.time()
    finally:
        if rec:
            rec.stop()
        edge.close()
        faults.close()
        stats = {n: p.stats for n, p in bench.proxies.items()}
        bench.stop()
    (run_dir / "trace.json").write_text(json.dumps({"t0": t0, "rows": rec.rows if rec else []}))
    yield {"t0": t0, "t_end": t_end, "rec": rec, "edge": edge, "faults": faults, "stats": stats,
           "events": edge.fleet.drain_events(), "telemetry": edge.fleet.drain_telemetry()}


def window(run, name):
    for start, end, n, _, _ in SCRIPT:
        if n == name:
            return run["t0"] + start, run["t0"] + end
    raise KeyError(name)


def telemetry(run, name, t_from, t_to):
    return [(ts, t) for (ts, n, _, _, t) in run["telemetry"] if n == name and t_from <= ts <= t_to]


def others_keep_running(run, fault, exclude):
    """Every other board sent telemetry all through the fault window and stayed out of failsafe."""
    a, b = window(run, fault)
    for name in BOARDS:
        if name in exclude:
            continue
        rows = telemetry(run, name, a, b)
        times = [a] + [ts for ts, _ in rows] + [b]
        gap = max(t2 - t1 for t1, t2 in zip(times, times[1:]))
        assert gap < 1.0, (fault, name, gap)
        assert not any(t["flags"] & P.FLAG_FAILSAFE for _, t in rows), (fault, name)


def test_bus_within_10_percent_all_run(run):
    rows = run["rec"].rows
    assert len(rows) > 300
    worst = max(abs(s["v_bus_v"] - NOMINAL_V) for _, s in rows)
    assert worst <= 0.10 * NOMINAL_V, worst
    last = run["rec"].rows[-1][1]
    assert last["v_bus_min_v"] >= 0.9 * NOMINAL_V and last["v_bus_max_v"] <= 1.1 * NOMINAL_V


def test_corrupt_bytes_counted_and_never_applied(run):
    link = run["edge"].links["load3"]
    assert run["stats"]["load3"]["up"]["corrupted"] > 0 and run["stats"]["load3"]["down"]["corrupted"] > 0
    # up: the edge's decoder dropped the damaged frames and counted them
    errs = link.errors
    assert errs["crc_errors"] + errs["framing_errors"] > 0
    # down: the board dropped them too and told the edge
    a, b = window(run, "corrupt")
    reports = [d for t, n, k, d in run["events"] if n == "load3" and k == "decode_error" and a <= t <= b + 1.5]
    assert reports, "load3 never reported its decode errors"
    # no setpoint from a corrupt frame: every value load3 ever applied is one the edge sent
    sent = {struct.unpack("<f", struct.pack("<f", v))[0] for v in LOAD3_VALUES}
    applied = {t["setpoint_w"] for _, t in telemetry(run, "load3", run["t0"], run["t_end"])}
    assert applied and applied <= sent | {0.0}, applied - sent
    others_keep_running(run, "corrupt", exclude=("load3",))


def test_dropped_and_delayed_bytes(run):
    # dropped bytes up: lost frames show as decoder errors at the edge
    assert run["stats"]["load2"]["up"]["dropped"] > 0
    errs = run["edge"].links["load2"].errors
    assert errs["crc_errors"] + errs["framing_errors"] > 0
    # delayed: the edge measures the ack latency of load1 (sent -> ack received)
    a, b = window(run, "delay")
    fleet = run["edge"].fleet
    lat = [fleet.boards["load1"].acks[seq][1] - ts for ts, n, seq, _, _ in run["edge"].sent
           if n == "load1" and a + 0.5 <= ts <= b - 0.7 and seq in fleet.boards["load1"].acks]
    calm = [fleet.boards["load1"].acks[seq][1] - ts for ts, n, seq, _, _ in run["edge"].sent
            if n == "load1" and ts < a - 0.5 and seq in fleet.boards["load1"].acks]
    assert lat and calm and min(lat) >= 0.55 > max(calm), (min(lat), max(calm))   # 0.3 s each way
    others_keep_running(run, "drop_delay", exclude=("load2",))


def test_sensor_bias_shows_in_the_bus_balance(run):
    # the edge's bus balance (sum of every board's reported bus power, ~0 in steady state)
    # moves by the biased sensor's error; load1's biased loop also draws less than it says
    a, b = window(run, "bias")
    before = residual_w(run, a - 2.0, a - 0.2)
    during = residual_w(run, a + 0.8, b)
    assert abs(before) < 0.15
    # it shows, with the bias's sign and size (measured 0.32-0.36 W over four runs)
    assert during - before == pytest.approx(BIAS_I_A * NOMINAL_V, abs=0.1)
    others_keep_running(run, "bias", exclude=("load1",))


def test_stuck_sensor_shows_as_frozen_readings(run):
    a, b = window(run, "stuck")
    rows = [t for _, t in telemetry(run, "load2", a + 0.3, b)]
    calm = [t for _, t in telemetry(run, "load2", a - 2.0, a - 0.2)]
    key = ("v_port_v", "i_port_a", "v_bus_v")
    assert len(rows) >= 4 and len({tuple(t[k] for k in key) for t in rows}) == 1
    assert len({tuple(t[k] for k in key) for t in calm}) > 1       # live sensors are noisy
    others_keep_running(run, "stuck", exclude=("load2",))


def test_irradiance_drop(run):
    a, b = window(run, "sun_drop")
    # from the MPPT's stated settling time (test_hil.PV_SETTLE_S) after the drop
    pv = mean(t["p_bus_w"] for _, t in telemetry(run, "pv", a + 1.0, b))
    avail = mean(s["pv_available_w"] for s in run["rec"].window(a + 1.0, b))
    assert avail < 1.0 and pv == pytest.approx(avail * 0.95, rel=0.1)
    before = mean(t["p_bus_w"] for _, t in telemetry(run, "grid", a - 1.5, a))
    during = mean(t["p_bus_w"] for _, t in telemetry(run, "grid", a + 0.7, b))
    assert during - before > 2.0          # the grid makes up for the lost PV
    others_keep_running(run, "sun_drop", exclude=())


def residual_w(run, t_from, t_to):
    """The edge's bus balance over a window [W]: the sum of every board's mean bus power.

    Each board's mean is its own energy counter's change between its first and last report in
    the window, over its own clock: the quantity the edge's per-tick balance uses. It
    integrates at the control-loop rate, where a mean of the few telemetry samples in the
    window would carry the grid's regulation ripple. A board with fewer than two reports in
    the window (load2 while its link drops bytes) is bracketed by its reports around it.
    """
    total = 0.0
    for n in BOARDS:
        rows = telemetry(run, n, run["t0"], run["t_end"])
        inside = [r for r in rows if t_from <= r[0] <= t_to]
        if len(inside) >= 2:
            first, last = inside[0][1], inside[-1][1]
        else:
            first = max((r for r in rows if r[0] <= t_from), key=lambda r: r[0])[1]
            last = min((r for r in rows if r[0] >= t_to), key=lambda r: r[0])[1]
        total += (last["energy_bus_j"] - first["energy_bus_j"]) / ((last["t_ms"] - first["t_ms"]) / 1000.0)
    return total


def test_load_spike(run):
    # an unmodelled load: the grid imports it, and the balance of what the boards report
    # (which no board sees) is short by just that much
    a, b = window(run, "spike")
    before = residual_w(run, a - 1.5, a)
    during = residual_w(run, a + 0.5, b)
    assert during - before == pytest.approx(1.5, abs=0.15)   # measured 1.49-1.54 W over 7 runs
    grid_before = mean(t["p_bus_w"] for _, t in telemetry(run, "grid", a - 1.5, a))
    grid_during = mean(t["p_bus_w"] for _, t in telemetry(run, "grid", a + 0.5, b))
    assert grid_during - grid_before == pytest.approx(1.5, abs=0.4)
    others_keep_running(run, "spike", exclude=())


def test_grid_outage(run):
    a, b = window(run, "outage")
    grid = telemetry(run, "grid", a + 0.3, b)
    assert grid and all(t["flags"] & P.FLAG_ISLANDED for _, t in grid)
    st = telemetry(run, "storage", a + 0.5, b)
    assert st and all(t["flags"] & P.FLAG_ISLANDED for _, t in st)
    others_keep_running(run, "outage", exclude=())


def test_killed_board_is_reported_and_comes_back(run):
    a, b = window(run, "kill")
    grid = telemetry(run, "grid", a + 0.2, b)
    assert not grid                                           # silent while dead
    back = [ts for ts, _ in telemetry(run, "grid", b, run["t_end"])]
    assert back and back[0] - b < 3.0
    hellos = [t for t, n, k, _ in run["events"] if n == "grid" and k == "hello" and t > b]
    assert hellos
    # storage took the bus over while the grid board was dead: by its own band guard at
    # once, and by the edge's island command after the 1 s stale time + one 0.25 s period
    st = telemetry(run, "storage", a + 1.4, b)
    assert st and all(t["flags"] & P.FLAG_ISLANDED for _, t in st)
    others_keep_running(run, "kill", exclude=("grid",))


def test_stale_board_reported_by_fleet(tmp_path):
    """Fleet.stale names a killed board within its link timeout, and not the others."""
    bench = Bench(lab_site(), tmp_path, time.time(), 1.0, [0.5] * 10).start()
    edge = EdgeDriver(bench)
    try:
        assert edge.wait_hello()
        bench.kill_board("load2")
        time.sleep(1.0)
        assert edge.fleet.stale(0.6) == ["load2"]
        assert not bench.alive()["load2"] and all(v for k, v in bench.alive().items() if k != "load2")
    finally:
        edge.close()
        bench.stop()


def test_fault_script_is_validated(tmp_path):
    class _NoBench:
        plant_port = 9
        proxies = {}
    f = Faults(_NoBench())
    with pytest.raises(ValueError, match="unknown fault"):
        f.run_script([{"at_s": 0, "fault": "meteor"}])
    with pytest.raises(ValueError, match="link_proxy"):
        f.link("load1", drop_p=0.1)
    f.close()


def test_link_proxy_validates_arguments():
    import os
    m, s = os.openpty()
    proxy = LinkProxy("x", s)
    try:
        with pytest.raises(ValueError):
            proxy.set_fault("sideways")
        with pytest.raises(ValueError):
            proxy.set_fault("up", drop_p=1.5)
    finally:
        proxy.close()
        os.close(m)
        os.close(s)


def test_plant_control_rejects_bad_commands(tmp_path):
    bench = Bench(lab_site(), tmp_path, time.time(), 1.0, [0.5])
    bench._start_plant()
    f = Faults(bench)
    try:
        with pytest.raises(RuntimeError, match="unknown role"):
            f.sensor_bias("toaster", [0, 0, 0, 0])
        with pytest.raises(RuntimeError, match="sun"):
            f.irradiance(7.0)
        st = f.plant.state()
        assert st["v_bus_v"] > 0 and set(st["p_bus_w"]) == set(BOARDS)
        assert json.loads(json.dumps(st)) == st
    finally:
        f.close()
        bench.stop()
