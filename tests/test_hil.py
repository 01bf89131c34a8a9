"""Closed-loop control of every role on the HIL bench: the real firmware under MicroPython.

One scripted run of the bench (plant + six MicroPython boards on pseudo-terminals), driven by
the real edge pieces (:class:`Fleet` + :class:`SerialLink`) and by the plant's control
channel (irradiance step, 1 W load step, grid outage). The assertions read the plant's true
state (sampled at 20 Hz through the control channel, and its per-tick ``truth.jsonl``), the
boards' telemetry and their events. Stated targets (issue 3):

* pv: >= 97 % of the available maximum power within ``PV_SETTLE_S`` after an irradiance
  step; output <= cap (+5 %) under curtailment, ``PV_SETTLE_S`` after the cap arrives;
  backs off on bus over-voltage;
* grid: bus within +-5 % of 7.0 V through a 1 W load step; reports import (+) / export (-);
* storage: bus-side power within 5 % of its setpoint; holds the bus when the grid is lost;
* loads: within 5 % of their setpoints; shed/restore; failsafe by priority;
* failsafe: every board enters its safe state after the watchdog time, reports it, and
  recovers when setpoints return.
"""

import os
import select
import threading
import time
import tty

import numpy as np
import pytest

from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.boards.links import SerialLink, TcpLink
from picogrid.firmware import protocol as P
from picogrid.hil.bench import HIL_NICE, Bench
from picogrid.hil.plant import ROLES
from picogrid.hil.plant_server import PlantServer
from picogrid.hil.day import load_site
from picogrid.hil.faults import Faults

pytestmark = pytest.mark.e2e

WATCHDOG_MS = 1500
PV_SETTLE_S = 1.0          # stated settling time of the MPPT after an irradiance step
PV_BUS_LIMIT_V = 7.2       # the pv board's over-voltage limit in this run
NOMINAL_V = 7.0
T_END_S = 19.5


class EdgeDriver:
    """A minimal edge: real links and fleet, setpoints re-sent every ``period_s``.

    ``setpoints[name] = (mode, value)`` or None (stop talking to that board);
    ``cycle[name]`` = values sent in turn instead. Like the edge's runner, it tells storage to
    island when the grid board reports islanded, and also when the grid board is silent.
    """

    def __init__(self, bench, period_s=0.25, keys=None):
        keys = keys or {}
        self.fleet = Fleet({name: info["id"] for name, info in bench.boards.items()})
        self.links = {}
        for name, port in bench.ports.items():
            if name in keys:
                link = TcpLink(name, port, self.fleet.on_frame, keys[name])
            else:
                link = SerialLink(name, port, self.fleet.on_frame)
            self.fleet.attach(name, link)
            self.links[name] = link
        self.setpoints = {}
        self.cycle = {}
        self.period_s = period_s
        self.tick = 0
        self.sent = []              # (t_s, name, seq, mode, value)
        self._stop = threading.Event()
        self._thread = None

    def wait_hello(self, timeout_s=10.0):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.fleet.request_hello()
            if all(s["role"] for s in self.fleet.snapshot().values()):
                return True
            time.sleep(0.2)
        return False

    def _loop(self):
        while not self._stop.is_set():
            grid = self.fleet.snapshot()["grid"]["telemetry"]
            islanded = bool(grid and grid["flags"] & P.FLAG_ISLANDED) or "grid" in self.fleet.stale(1.0)
            for name, sp in list(self.setpoints.items()):
                if sp is None:
                    continue
                mode, value = sp
                values = self.cycle.get(name)     # the test may swap ``cycle`` while this runs
                if values:
                    value = values[self.tick % len(values)]
                if name == "storage" and islanded:
                    mode = P.MODE_ISLAND
                seq = self.fleet.send_setpoint(name, self.tick, mode, value)
                self.sent.append((time.time(), name, seq, mode, value))
            self.tick += 1
            self._stop.wait(self.period_s)

    def start(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for link in self.links.values():
            link.close()


class Recorder:
    """Samples the plant's true state at ``period_s`` on a thread: list of (t_s, state)."""

    def __init__(self, plant, period_s=0.05):
        self.plant = plant
        self.rows = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.period_s = period_s

    def _loop(self):
        while not self._stop.is_set():
            self.rows.append((time.time(), self.plant.state()))
            self._stop.wait(self.period_s)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)

    def window(self, t_from, t_to):
        return [s for t, s in self.rows if t_from <= t <= t_to]


def lab_site(**bench):
    site = load_site(watchdog_ms=WATCHDOG_MS, **bench)
    site["boards"]["pv"]["limits"] = dict(site["boards"]["pv"]["limits"], bus_voltage_max_v=PV_BUS_LIMIT_V)
    return site


def mean(xs):
    xs = list(xs)
    assert xs, "empty window"
    return sum(xs) / len(xs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("hil")
    bench_t0 = time.time()
    bench = Bench(lab_site(), run_dir, bench_t0, 1.0, [0.5] * 40).start()
    edge = EdgeDriver(bench)
    faults = Faults(bench)
    rec = None
    marks = {}
    try:
        assert edge.wait_hello(), "not every board said hello"
        sp = edge.setpoints
        sp.update(grid=(0, NOMINAL_V), storage=(0, 1.0), pv=(0, -1.0), load1=(0, 0.5),
                  load2=(0, 0.3), load3=(0, 0.0))
        faults.irradiance(0.5)
        edge.start()
        rec = Recorder(faults.plant).start()
        t0 = time.time()
        script = [
            (3.0, "sun_step", lambda: faults.irradiance(1.0)),
            (3.0, "storage_charge", lambda: sp.update(storage=(0, -1.0))),
            (4.9, "mark", faults.plant.mark),
            (5.0, "load_step", lambda: faults.load_spike(1.0)),
            (6.5, "load_step_end", lambda: marks.update(load_step_state=faults.plant.state())),
            (6.5, "load_step_off", lambda: faults.load_spike(0.0)),
            (7.0, "cap", lambda: sp.update(pv=(0, 1.5), load3=(0, 0.8), load2=(P.MODE_SHED, 0.0))),
            (9.0, "uncap", lambda: sp.update(pv=(0, -1.0), load2=(0, 0.3), grid=(0, 7.3))),
            (10.5, "grid_nominal", lambda: sp.update(grid=(0, NOMINAL_V))),
            (12.0, "outage", lambda: faults.grid_outage(True)),
            (14.0, "grid_back", lambda: faults.grid_outage(False)),
            (15.0, "silence", lambda: [sp.update({n: None}) for n in list(sp)]),
            (15.0, "saved", lambda: marks.update(saved=dict(sp_saved))),
            (17.5, "resume", lambda: sp.update(sp_saved)),
        ]
        sp_saved = {}
        for at_s, name, action in script:
            wait = t0 + at_s - time.time()
            if wait > 0:
                time.sleep(wait)
            if name == "silence":
                sp_saved.update(sp)
            action()
            marks[name] = time.time()
        time.sleep(max(0.0, t0 + T_END_S - time.time()))
        marks["end"] = time.time()
        realtime = bench.realtime()
        nice = {n: os.getpriority(os.PRIO_PROCESS, b["proc"].pid) for n, b in bench.boards.items()}
        nice["plant"] = os.getpriority(os.PRIO_PROCESS, bench.plant_proc.pid)
    finally:
        if rec:
            rec.stop()
        edge.close()
        faults.close()
        bench.stop()
    import json
    (run_dir / "trace.json").write_text(json.dumps({"marks": marks, "rows": rec.rows if rec else []}))
    yield {"rec": rec, "marks": marks, "t0": bench_t0, "edge": edge, "run_dir": run_dir,
           "realtime": realtime, "nice": nice,
           "events": edge.fleet.drain_events(), "telemetry": edge.fleet.drain_telemetry()}


def telemetry(run, name, t_from, t_to):
    return [t for (ts, n, _, _, t) in run["telemetry"] if n == name and t_from <= ts <= t_to]


def test_pv_mppt_reaches_97_percent_within_settling_time(run):
    m, rec = run["marks"], run["rec"]
    t_step = m["sun_step"]
    rows = [(t, s) for t, s in rec.rows if t_step <= t <= m["mark"]]
    ratios = [(t - t_step, s["v_port_v"]["pv"] * s["i_port_a"]["pv"] / s["pv_available_w"]) for t, s in rows]
    assert rows[-1][1]["pv_available_w"] > 4.0          # full sun: the ~4 W MPP (docs/design.md §2)
    # MPPT efficiency as energy ratios (EN 50530 rates trackers by energy, not by samples) over
    # 0.25 s bins: one sample caught mid-perturbation on a loaded host is not a tracking loss
    late = [(dt, r) for dt, r in ratios if dt >= PV_SETTLE_S]
    bins = {}
    for dt, r in late:
        bins.setdefault(int((dt - PV_SETTLE_S) / 0.25), []).append(r)
    worst = min(float(np.mean(b)) for b in bins.values())
    assert len(bins) >= 2 and worst >= 0.97, "after %.1f s the MPPT fell to %.3f of the MPP" % (PV_SETTLE_S, worst)
    # and before the step, at half sun, it tracked too
    before = [s["v_port_v"]["pv"] * s["i_port_a"]["pv"] / s["pv_available_w"]
              for s in rec.window(t_step - 1.5, t_step - 0.1)]
    assert mean(before) >= 0.97


def test_pv_honours_power_cap(run):
    m, rec = run["marks"], run["rec"]
    # after the same settling time as the MPPT: the pull-down from ~3.9 W to the cap takes
    # ~0.5 s on a quiet host, longer when the CPU is contended
    capped = [s["p_bus_w"]["pv"] for s in rec.window(m["cap"] + PV_SETTLE_S, m["uncap"])]
    assert max(capped) <= 1.5 * 1.05
    assert mean(capped) >= 1.5 * 0.8        # curtailed to the cap, not switched off
    pv = telemetry(run, "pv", m["cap"] + PV_SETTLE_S, m["uncap"])
    assert all(t["setpoint_w"] == pytest.approx(1.5) for t in pv)


def test_pv_backs_off_on_bus_over_voltage(run):
    m, rec = run["marks"], run["rec"]
    over = rec.window(m["uncap"] + 0.5, m["grid_nominal"])
    assert min(s["v_bus_v"] for s in over) > PV_BUS_LIMIT_V           # the grid holds 7.3 V
    assert mean(s["p_bus_w"]["pv"] for s in over) < 1.0              # vs ~3.9 W uncapped
    pv = telemetry(run, "pv", m["uncap"] + 0.5, m["grid_nominal"])
    assert sum(bool(t["flags"] & P.FLAG_LIMITED) for t in pv) >= len(pv) // 2
    # and returns to MPPT once the bus is back at 7.0 V
    after = rec.window(m["grid_nominal"] + 0.8, m["outage"])
    assert max(s["p_bus_w"]["pv"] for s in after) > 3.5


def test_grid_holds_bus_through_1w_load_step(run):
    state = run["marks"]["load_step_state"]
    assert NOMINAL_V * 0.95 <= state["v_bus_min_v"] and state["v_bus_max_v"] <= NOMINAL_V * 1.05
    assert state["extra_load_w"] == 1.0


def test_grid_reports_import_and_export(run):
    m = run["marks"]
    # full sun (~3.9 W) > loads 0.8 W + storage charging 1 W: the surplus is exported (-);
    # the 1 W spike then cuts the export by ~1 W. Telemetry and truth are sampled at 4 and
    # 20 Hz while the MPPT dithers the PV power by a few 0.1 W, hence the tolerance.
    for t_from, t_to in ((m["storage_charge"] + 0.5, m["mark"]), (m["load_step"] + 0.5, m["load_step_off"])):
        tele = mean(t["p_bus_w"] for t in telemetry(run, "grid", t_from, t_to))
        truth = mean(s["p_bus_w"]["grid"] for s in run["rec"].window(t_from, t_to))
        assert tele == pytest.approx(truth, abs=0.25)
    spike = mean(t["p_bus_w"] for t in telemetry(run, "grid", m["load_step"] + 0.5, m["load_step_off"]))
    calm = mean(t["p_bus_w"] for t in telemetry(run, "grid", m["storage_charge"] + 0.5, m["mark"]))
    assert spike - calm == pytest.approx(1.0, abs=0.3)     # the 1 W spike is imported
    assert calm < 0                                         # surplus PV is exported (-)


def test_storage_tracks_setpoint_within_5_percent(run):
    m, rec = run["marks"], run["rec"]
    for t_from, t_to, target in ((m["sun_step"] - 1.5, m["sun_step"], 1.0),
                                 (m["storage_charge"] + 1.0, m["load_step"], -1.0)):
        got = mean(s["p_bus_w"]["storage"] for s in rec.window(t_from, t_to))
        assert abs(got - target) <= 0.05 * abs(target), (target, got)


def test_storage_takes_over_the_bus_when_grid_is_lost(run):
    m, rec = run["marks"], run["rec"]
    outage = rec.window(m["outage"], m["grid_back"])
    assert all(not s["grid_connected"] for s in outage[2:])
    assert all(abs(s["v_bus_v"] - NOMINAL_V) <= 0.10 * NOMINAL_V for s in outage)
    settled = rec.window(m["outage"] + 0.5, m["grid_back"])
    assert all(abs(s["v_bus_v"] - NOMINAL_V) <= 0.05 * NOMINAL_V for s in settled)
    # the island command needs the grid's next report (<= 0.25 s) and the edge's next
    # setpoint round (<= 0.25 s): the flags are checked from 1 s on
    st = telemetry(run, "storage", m["outage"] + 1.0, m["grid_back"])
    assert st and all(t["flags"] & P.FLAG_ISLANDED for t in st)
    grid = telemetry(run, "grid", m["outage"] + 1.0, m["grid_back"])
    assert all(t["flags"] & P.FLAG_ISLANDED for t in grid)


def test_loads_track_and_shed_and_restore(run):
    m, rec = run["marks"], run["rec"]
    for name, target, t_from, t_to in (("load1", 0.5, m["sun_step"], m["load_step"]),
                                       ("load2", 0.3, m["sun_step"], m["load_step"]),
                                       ("load3", 0.8, m["cap"] + 1.0, m["uncap"]),
                                       ("load2", 0.3, m["uncap"] + 1.0, m["grid_nominal"])):
        # a load's setpoint is the power it draws from the bus (PROTOCOL.md §3)
        served = -mean(s["p_bus_w"][name] for s in rec.window(t_from, t_to))
        assert abs(served - target) <= 0.05 * target, (name, target, served)
    shed = rec.window(m["cap"] + 0.3, m["uncap"])
    assert all(abs(s["p_bus_w"]["load2"]) < 0.01 for s in shed)
    tele = telemetry(run, "load2", m["cap"] + 0.3, m["uncap"])
    assert tele and all(t["flags"] & P.FLAG_SHED for t in tele)


def test_failsafe_per_role_reported_and_recovered(run):
    m, rec = run["marks"], run["rec"]
    t_in = m["silence"] + WATCHDOG_MS / 1000.0 + 0.5
    events = [(t, n, k) for t, n, k, _ in run["events"]]
    for name in ("pv", "storage", "grid", "load1", "load2", "load3"):
        enters = [t for t, n, k in events if n == name and k == "failsafe_enter" and t > m["silence"]]
        exits = [t for t, n, k in events if n == name and k == "failsafe_exit" and t > m["resume"]]
        assert enters and enters[0] >= m["silence"] + WATCHDOG_MS / 1000.0 - 0.3, name
        assert enters[0] <= m["silence"] + WATCHDOG_MS / 1000.0 + 0.5, name
        assert exits and exits[0] <= m["resume"] + 1.0, name
        safe = telemetry(run, name, t_in, m["resume"])
        assert safe and all(t["flags"] & P.FLAG_FAILSAFE for t in safe), name
        back = telemetry(run, name, m["resume"] + 1.0, m["end"])
        assert back and not any(t["flags"] & P.FLAG_FAILSAFE for t in back), name
    safe = rec.window(t_in, m["resume"] - 0.1)
    # storage idle, loads: critical load1 at its failsafe power, the others shed; grid keeps 7 V
    assert all(abs(s["p_bus_w"]["storage"]) < 0.1 for s in safe[5:])
    assert all(abs(s["p_bus_w"]["load2"]) < 0.01 and abs(s["p_bus_w"]["load3"]) < 0.01 for s in safe[5:])
    assert all(s["p_bus_w"]["load1"] < -0.9 for s in safe[5:])
    assert all(abs(s["v_bus_v"] - NOMINAL_V) <= 0.05 * NOMINAL_V for s in safe)
    assert all(s["p_bus_w"]["pv"] > 3.5 for s in safe)        # pv: MPPT, uncapped


def test_truth_log_has_bus_inside_10_percent_every_tick(run):
    import json
    rows = [json.loads(line) for line in (run["run_dir"] / "truth.jsonl").read_text().splitlines()]
    last = int(run["marks"]["end"] - run["t0"]) - 1      # later ticks see the bench stopping
    rows = [r for r in rows if 1 <= r["tick"] < last]
    assert len(rows) >= 15
    for r in rows:
        assert NOMINAL_V * 0.9 <= r["v_bus_min_v"] <= r["v_bus_max_v"] <= NOMINAL_V * 1.1, r


def test_the_bench_asks_for_priority_and_measures_its_real_time(run):
    """A HIL rig runs its plant and boards above other work where allowed, and says whether
    it kept real time: every process's longest gap is measured (the plant's and each role's)."""
    if os.geteuid() == 0:
        assert set(run["nice"].values()) == {HIL_NICE}, run["nice"]
    assert set(run["realtime"]["max_gap_ms"]) >= {"plant"} | set(ROLES), run["realtime"]
    assert run["realtime"]["kept"] == (not run["realtime"]["late_gaps"])


def test_the_plant_counts_late_gaps_and_not_dead_boards(tmp_path):
    server = PlantServer({"port": 0, "t0": time.time(), "tick_s": 1.0, "sun": [0.5]})
    try:
        for who, gap_s in (("plant", 0.004), ("pv", 0.011), ("pv", 0.2), ("load1", 0.9), ("plant", 0.7)):
            server._gap(who, gap_s)
        rt = server.realtime()
        assert rt["late_gaps"] == {"pv": 1, "plant": 1}          # load1's 0.9 s: killed, not late
        assert rt["max_gap_ms"] == {"plant": 700.0, "pv": 200.0} and rt["kept"] is False
    finally:
        server.sock.close()


def test_tcp_link_authenticated_and_replay_rejected(tmp_path):
    """A board on TCP (as a Pico W): HMAC frames both ways; a replayed setpoint is not applied."""
    key = bytes(range(32))
    bench = Bench(lab_site(), tmp_path, time.time(), 1.0, [0.5] * 20, tcp_keys={"load1": key}).start()
    edge = EdgeDriver(bench, keys={"load1": key})
    try:
        assert edge.wait_hello()
        link = edge.links["load1"]
        assert link.kind == "tcp" and link.decoder.frames_ok > 0 and link.errors["auth_errors"] == 0
        seq = edge.fleet.send_setpoint("load1", 1, P.MODE_NORMAL, 0.6)
        assert edge.fleet.wait_acks({"load1": seq}, 2.0)
        # the bytes of the 0.6 W setpoint as they went out (its seq, the session's key)
        old = link.decoder.encode(P.MSG_SETPOINT, edge.fleet.boards["load1"].board_id, seq,
                                  P.pack_setpoint(1, P.MODE_NORMAL, 0.6))
        seq2 = edge.fleet.send_setpoint("load1", 2, P.MODE_NORMAL, 0.2)
        assert edge.fleet.wait_acks({"load1": seq2}, 2.0)
        link.send_raw(old)                     # replay of the 0.6 W setpoint
        forged = P.encode_frame(P.MSG_SETPOINT, edge.fleet.boards["load1"].board_id, seq2 + 5,
                                P.pack_setpoint(3, P.MODE_NORMAL, 0.9), bytes(32))
        link.send_raw(forged)                  # right format, wrong key
        # the board reports decode errors at most once a second; look before its 1.5 s
        # setpoint watchdog would put it in failsafe (and change its setpoint)
        # (the counts are the board's totals: a frame the edge resent, or a reconnect, may add
        # to them; what must show is at least the replay and the forgery)
        def counted(kind):
            return max((int(d.split(kind + " ")[1].split()[0]) for d in reported), default=0)

        events, reported, deadline = [], [], time.time() + 1.4
        while time.time() < deadline and not (counted("replay") >= 1 and counted("auth") >= 1):
            time.sleep(0.05)
            events += [(n, k, d) for _, n, k, d in edge.fleet.drain_events() if n == "load1"]
            reported = [d for n, k, d in events if k == "decode_error"]
        assert counted("replay") >= 1 and counted("auth") >= 1, events
        assert edge.fleet.snapshot()["load1"]["telemetry"]["setpoint_w"] == pytest.approx(0.2)
    finally:
        edge.close()
        bench.stop()


def test_a_bench_that_fails_to_start_leaves_nothing_running(tmp_path):
    """The last board cannot start (a role the plant does not know): the plant and the five
    boards already running are stopped and their pseudo-terminals closed before the error."""
    import copy

    site = copy.deepcopy(load_site())
    site["boards"]["load3"]["role"] = "toaster"
    bench = Bench(site, tmp_path, time.time(), 1.0, [0.5] * 60)
    with pytest.raises(KeyError, match="toaster"):
        bench.start()
    started = [b for b in bench.boards.values() if "proc" in b]
    assert len(started) == 5
    assert bench.plant_proc.poll() is not None and bench.plant_proc.stdout.closed
    assert all(b["proc"].poll() is not None for b in started)
    assert not any("master" in b or "slave" in b for b in bench.boards.values())


def _read_until_hello(fd, decoder, timeout_s=10.0):
    """Bytes read from a board's pseudo-terminal until ``decoder`` yields a HELLO: (bytes, frames)."""
    got, frames, deadline = b"", [], time.time() + timeout_s
    while time.time() < deadline and not any(f[0] == P.MSG_HELLO for f in frames):
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 4096)
            got += chunk
            frames += decoder.feed(chunk)
    return got, frames


def test_a_restarted_board_ends_the_half_frame_it_left_before_its_hello(tmp_path):
    """A board that resets mid-frame leaves the edge's decoder holding half a frame; the new
    firmware's first byte is a 0x00 (PROTOCOL.md §1), so its boot HELLO still arrives whole
    and only the half frame is counted as an error."""
    bench = Bench(lab_site(), tmp_path, time.time(), 1.0, [0.5] * 20).start()
    fd = os.open(bench.ports["load1"], os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        _, frames = _read_until_hello(fd, P.Decoder())
        assert frames and frames[0][0] == P.MSG_HELLO
        bench.kill_board("load1")
        while select.select([fd], [], [], 0.3)[0]:
            os.read(fd, 4096)              # what the old process wrote before it died
        decoder = P.Decoder()
        frame = P.encode_frame(P.MSG_HEARTBEAT, bench.boards["load1"]["id"], 7, b"")
        assert decoder.feed(frame[:len(frame) // 2]) == []      # the board died here
        bench.start_board("load1")
        got, frames = _read_until_hello(fd, decoder)
        assert got[:1] == b"\x00"
        assert frames and frames[0][0] == P.MSG_HELLO, (got[:40], frames)
        assert decoder.frames_ok == len(frames)
        assert decoder.crc_errors + decoder.framing_errors == 1
    finally:
        os.close(fd)
        bench.stop()


def test_restarting_a_running_board_leaves_one_process(tmp_path):
    """start_board on a board that still runs stops it first: two processes would share its
    pseudo-terminal and its converter, and stop() would never reap the first."""
    bench = Bench(lab_site(), tmp_path, time.time(), 1.0, [0.5] * 20).start()
    try:
        old = bench.boards["load2"]["proc"]
        bench.start_board("load2")
        assert old.poll() is not None
        assert bench.boards["load2"]["proc"] is not old and bench.boards["load2"]["proc"].poll() is None
    finally:
        bench.stop()
