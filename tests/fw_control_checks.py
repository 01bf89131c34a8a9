# Closed-loop checks of the firmware's control laws and role logic against small models.
# The same file runs under CPython (imported by tests/test_firmware.py) and under the
# MicroPython unix port (run as a script), so both interpreters are held to one result.
import json
import math
import sys

import config
import roles
from control import PI, PerturbObserve


def _cfg(role, **extra):
    raw = {"board_id": 1, "role": role, "hal": "sim", "current_range_a": [-2.0, 2.0]}
    if role == "pv":
        raw["current_range_a"] = [0.0, 1.0]
    for k in extra:
        raw[k] = extra[k]
    return config.validate(raw)


def pi_antiwindup():
    """Saturate high for 5 s, then reverse the error: the output must leave saturation at once.
    A loop whose error cannot vanish must end AT its limit, not frozen below it."""
    pi = PI(1.0, 10.0, -1.0, 1.0)
    for _ in range(500):
        pi.step(5.0, 0.01)
    u = pi.step(-0.5, 0.01)
    near = PI(0.3, 10.0, 0.0, 1.0)
    near.reset(0.68)                  # kp*e + integral = 0.92: one more step crosses the limit
    held = [near.step(0.8, 0.01) for _ in range(20)]
    return {"after_reversal": u, "held_at_limit": held[-1]}


def _pv_closed_loop(cap_w=None, seconds=6.0):
    """The PvRole with its inner PI on a single-diode array + input capacitor, 100 Hz control
    (plant at 1 ms), into a 7.0 V bus through a 95 % stage: (true MPP [W], port powers [W]
    and bus powers [W] of the last second, the largest bus power of the run [W], the role)."""
    isc, voc, a, c_in = 0.92, 5.0, 0.125, 0.01
    i0 = isc / (math.exp(voc / a) - 1.0)
    role = roles.make(_cfg("pv"))
    if cap_w is not None:
        role.setpoint(0, cap_w)
    v, i_stage, dt = 0.0, 0.0, 0.01
    best = 0.0
    for k in range(40, 5000):   # dense scan of the curve for the true MPP
        vv = voc * k / 5000
        best = max(best, vv * max(0.0, isc - i0 * (math.exp(vv / a) - 1.0)))
    port, bus, peak = [], [], 0.0
    n_steps = int(seconds * 100)
    for n in range(n_steps):
        for _ in range(10):
            i_pv = max(0.0, isc - i0 * (math.exp(v / a) - 1.0))
            v = max(0.0, v + (i_pv - i_stage) * 0.001 / c_in)
        p = v * i_stage
        peak = max(peak, 0.95 * p)
        if n >= n_steps - 100:              # the last second only: the unix port's heap is small
            port.append(p)
            bus.append(0.95 * p)
        i_stage = role.step(v, i_stage, 7.0, 0.95 * p / 7.0, dt)
    return best, port, bus, peak, role


def mppt_on_pv_curve():
    """Voltage-mode P&O with the PvRole's inner PI: settled power against the true MPP."""
    best, port, _, _, _ = _pv_closed_loop()
    settled = sum(port) / len(port)
    return {"mpp_w": best, "settled_w": settled, "ratio": settled / best}


def pv_caps():
    """Curtailment from a fresh role at full sun: settled bus power (last 1 s mean, max), the
    run's peak and the flags, per cap."""
    out = {}
    for cap in (0.0, 0.5, 1.0, 1.2, 1.5, 2.5):
        _, _, bus, peak, role = _pv_closed_loop(cap, seconds=8.0)
        out[str(cap)] = [sum(bus) / len(bus), max(bus), peak, role.flags]
    return out


def setpoint_limits():
    load = roles.make(_cfg("load1", limits={"power_max_w": 1.0}, current_range_a=[0.0, 0.4]))
    st = roles.make(_cfg("storage", limits={"power_max_w": 2.0}))
    return {"load_over": load.setpoint(0, 1.5), "load_value": load.p_set_w,
            "load_ok": load.setpoint(0, 0.5), "storage_over": st.setpoint(0, -3.0),
            "storage_value": st.p_set_w}


def failsafe_states():
    out = {}
    for name, prio in (("load1", "critical"), ("load2", "normal"), ("load3", "deferrable")):
        r = roles.make(_cfg(name, priority=prio, limits={"power_max_w": 1.0}, current_range_a=[0.0, 0.4]))
        r.setpoint(0, 0.3)
        r.failsafe()
        out[name] = [r.shed, r.p_set_w]
    st = roles.make(_cfg("storage"))
    st.setpoint(0, 1.0)
    st.failsafe()
    out["storage"] = st.p_set_w
    # idle while the grid board holds the bus (7.0 V); a bus sagging to 6.0 V (the grid board
    # gone as well) is backed up by the bus guard, flagged ISLANDED
    i_held = [st.step(10.0, 0.0, 7.0, 0.0, 0.01) for _ in range(50)][-1]
    out["storage_held_a"] = [i_held, st.flags]
    i_sag = [st.step(10.0, 0.0, 6.0, 0.0, 0.01) for _ in range(50)][-1]
    out["storage_sag_a"] = [i_sag, st.flags]
    return out


def storage_limits():
    """An empty supercapacitor must not be discharged, a full one not charged."""
    st = roles.make(_cfg("storage", limits={"voltage_min_v": 2.0, "voltage_max_v": 13.5}))
    st.setpoint(0, 1.0)
    i_empty = st.step(1.9, 0.0, 7.0, 0.0, 0.01)
    st.setpoint(0, -1.0)
    i_full = st.step(13.6, 0.0, 7.0, 0.0, 0.01)
    return {"i_empty": i_empty, "i_full": i_full, "flags": st.flags}


def grid_regulates_bus():
    """PI on an averaged bus (0.1 F) through a 1 W load step: worst deviation from 7.0 V, with
    the gains the boards run (roles.py defaults: edge/sites/lab.toml sets no grid gains)."""
    g = roles.make(_cfg("grid"))
    v, c, load_w, worst = 7.0, 0.1, 1.0, 0.0
    i = 0.0
    for n in range(300):
        if n == 100:
            load_w = 2.0
        for _ in range(10):
            p_grid = 0.95 * 12.0 * i if i > 0 else 12.0 * i / 0.95
            e = 0.5 * c * v * v + (p_grid - load_w) * 0.001
            v = math.sqrt(max(2 * e / c, 0.0))
        if n > 100:
            worst = max(worst, abs(v - 7.0))
        i = g.step(12.0, i, v, p_grid / v, 0.01)
    return {"worst_dev_v": worst, "final_v": v}


def config_errors():
    errs = []
    for raw in ({}, {"board_id": 1, "role": "toaster", "current_range_a": [0, 1]},
                {"board_id": 300, "role": "pv", "current_range_a": [0, 1]},
                {"board_id": 1, "role": "pv"},
                {"board_id": 1, "role": "pv", "current_range_a": [0, 1], "link": {"type": "tcp"}}):
        try:
            config.validate(raw)
            errs.append(None)
        except config.ConfigError as exc:
            errs.append(str(exc))
    return errs


def run_all():
    return {"pi_antiwindup": pi_antiwindup(), "mppt": mppt_on_pv_curve(), "pv_caps": pv_caps(),
            "setpoint_limits": setpoint_limits(), "failsafe": failsafe_states(),
            "storage_limits": storage_limits(), "grid": grid_regulates_bus(),
            "config_errors": config_errors()}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(run_all()) + "\n")
