"""A board whose sensors fail says so and keeps talking (issue 33 point 6), on the HIL bench.

The firmware under the MicroPython unix port, its simulation HAL fed garbage (NaN) by the plant's
``sensor_garbage`` fault: load1 reports ``EV_PERIPHERAL_FAULT`` naming the part, sets
``FLAG_FAULT`` and ``FLAG_FAILSAFE``, holds its stage at 0 A (the plant sees its zero-current
duty), refuses setpoints, answers the edge's HELLO request with its HELLO and the fault again,
and when the sensors read sanely again reports ``EV_PERIPHERAL_OK`` and takes setpoints again.
The other boards run on. The same on the emulated RP2040 with an INA219 absent or answering
garbage: tests/test_rp2040.py.
"""

import json
import pathlib
import time

import pytest

from picogrid.firmware import protocol as P
from picogrid.hil.bench import Bench
from picogrid.hil.faults import Faults
from test_hil import NOMINAL_V, EdgeDriver, lab_site

pytestmark = pytest.mark.e2e


def wait_for(pred, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    return None


def test_garbage_sensors_are_a_reported_fault_and_the_board_keeps_answering(tmp_path):
    bench = Bench(lab_site(), tmp_path, time.time(), 1.0, [1.0] * 60).start()
    edge = EdgeDriver(bench)
    faults = Faults(bench)
    events = []

    def seen(name, kind, since):
        events.extend(edge.fleet.drain_events())
        return [e for e in events if e[1] == name and e[2] == kind and e[0] >= since]

    try:
        assert edge.wait_hello()
        edge.setpoints.update(grid=(0, NOMINAL_V), storage=(0, 0.0), pv=(0, -1.0), load1=(0, 0.5),
                              load2=(0, 0.3), load3=(0, 0.3))
        edge.start()
        time.sleep(1.0)
        t_fault = time.time()
        faults.sensor_garbage("load1")
        got = wait_for(lambda: seen("load1", "peripheral_fault", t_fault), 5.0)
        assert got and got[0][3].startswith("sim sensors: reading nan"), events
        assert wait_for(lambda: seen("load1", "failsafe_enter", t_fault), 2.0), events
        time.sleep(1.0)
        tel = edge.fleet.snapshot()["load1"]["telemetry"]
        assert tel["flags"] & P.FLAG_FAULT and tel["flags"] & P.FLAG_FAILSAFE, tel
        assert tel["v_bus_v"] == 0.0 and tel["i_port_a"] == 0.0
        duty = faults.plant.state()["duty"]["load1"]
        cfg = json.loads((pathlib.Path(bench.boards["load1"]["dir"]) / "board.json").read_text())
        lo, hi = cfg["current_range_a"]
        assert duty == int((0.0 - lo) / (hi - lo) * 65535 + 0.5), duty     # 0 A
        seq = edge.fleet.send_setpoint("load1", 999, P.MODE_NORMAL, 0.4)
        assert wait_for(lambda: seq in edge.fleet.boards["load1"].acks, 2.0)
        assert edge.fleet.boards["load1"].acks[seq][0] == P.ACK_REJECTED
        # the edge asks who is there: the HELLO, and the fault with it
        t_ask = time.time()
        edge.fleet.request_hello()
        assert wait_for(lambda: seen("load1", "hello", t_ask), 2.0), events
        assert wait_for(lambda: seen("load1", "peripheral_fault", t_ask), 2.0), events
        # the others ran on
        for name in ("pv", "storage", "grid", "load2", "load3"):
            t = edge.fleet.snapshot()[name]["telemetry"]
            assert not t["flags"] & (P.FLAG_FAULT | P.FLAG_FAILSAFE), (name, t)
        t_back = time.time()
        faults.sensor_garbage("load1", False)
        got = wait_for(lambda: seen("load1", "peripheral_ok", t_back), 5.0)
        assert got and got[0][3] == "sim sensors: ok", events
        assert wait_for(lambda: seen("load1", "failsafe_exit", t_back), 3.0), events
        assert wait_for(lambda: not edge.fleet.snapshot()["load1"]["telemetry"]["flags"]
                        & (P.FLAG_FAULT | P.FLAG_FAILSAFE), 3.0)
    finally:
        edge.close()
        faults.close()
        bench.stop()


def test_a_hardware_layer_that_cannot_be_built_is_reported_on_the_link(tmp_path):
    """board.json without its ``sim`` section: the HAL's constructor fails, main.py keeps the
    link and the board says HELLO, then the fault, with FLAG_FAULT in its telemetry."""
    import os
    import select
    import subprocess
    import tty

    from picogrid.hil.bench import FIRMWARE_DIR, micropython_command

    (tmp_path / "board.json").write_text(json.dumps(
        {"board_id": 4, "role": "load1", "hal": "sim", "current_range_a": [0, 1], "loop_period_ms": 10}))
    master, slave = os.openpty()
    tty.setraw(slave)
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(FIRMWARE_DIR))
    proc = subprocess.Popen([micropython_command(), str(FIRMWARE_DIR / "main.py"), "board.json"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    dec = P.Decoder(side=P.SIDE_EDGE)
    seen = []
    try:
        deadline = time.time() + 10.0
        while time.time() < deadline and not (P.MSG_TELEMETRY in [s[0] for s in seen] and len(seen) > 3):
            if select.select([master], [], [], 0.2)[0]:
                seen += [(f[0], f[3]) for f in dec.feed(os.read(master, 4096))]
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    kinds = [t for t, _ in seen]
    assert P.MSG_HELLO in kinds, seen
    events = [P.unpack_event(p) for t, p in seen if t == P.MSG_EVENT]
    assert (P.EV_PERIPHERAL_FAULT, "hal: KeyError: sim") in events, events
    tel = [P.unpack_telemetry(p) for t, p in seen if t == P.MSG_TELEMETRY]
    assert tel[-1][-1] & P.FLAG_FAULT and tel[-1][-1] & P.FLAG_FAILSAFE, tel
