"""Issue 27 point 3, telemetry: physically absurd reports are bad data, not used; a stored-energy
estimate no capacitor can hold is refused; a silent storage board's estimate goes stale."""

import math

import pytest
from picogrid.edge.boards import plausibility as PL
from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.control import estimate
from picogrid.firmware import protocol as P

GOOD = {"t_ms": 1000, "v_bus_v": 7.0, "v_port_v": 9.0, "i_port_a": 0.15, "p_bus_w": -0.5, "p_port_w": 0.48,
        "energy_bus_j": -12.0, "setpoint": 0.5, "flags": 0}
LAB = {"bench": {"bus_voltage_v": 7.0}, "storage": {"voltage_max_v": 13.5, "capacitance_f": 0.5, "esr_ohm": 4.0}}


@pytest.mark.parametrize("role,field,value,ok", [
    ("storage", "v_port_v", 9.0, True),
    ("storage", "v_port_v", 17.5, True),          # the SMPS range
    ("storage", "v_port_v", 20.9, True),          # within the margin
    ("storage", "v_port_v", 3e38, False),         # the review's report
    ("storage", "v_port_v", -3e38, False),
    ("storage", "v_port_v", 22.0, False),
    ("storage", "v_port_v", -0.4, True),          # sensor offset
    ("storage", "v_port_v", -2.0, False),
    ("storage", "v_port_v", math.nan, False),
    ("storage", "v_port_v", math.inf, False),
    ("storage", "i_port_a", 5.0, True),           # the boards' rating
    ("storage", "i_port_a", -5.9, True),
    ("storage", "i_port_a", -7.0, False),         # negative beyond the rating
    ("storage", "i_port_a", 7.0, False),
    ("load1", "i_port_a", 0.3, True),
    ("load1", "i_port_a", -1.0, False),           # a load does not feed its port
    ("grid", "v_bus_v", 7.0, True),
    ("grid", "v_bus_v", 0.0, True),               # a bus that collapsed is news, not nonsense
    ("grid", "v_bus_v", 25.0, False),
    ("grid", "v_bus_v", 1e9, False),
    ("pv", "p_bus_w", 4.0, True),
    ("pv", "p_bus_w", 1e6, False),
    ("pv", "p_port_w", -1e30, False),
    ("pv", "energy_bus_j", 5e4, True),            # a long day's counter
    ("pv", "energy_bus_j", 3e38, False),
    ("grid", "setpoint", 7.0, True),              # the grid board's setpoint is a voltage
    ("load2", "setpoint", -1e12, False),
    ("load2", "setpoint", "7", False),
    ("mystery", "v_port_v", 9.0, True),           # no HELLO yet: the loosest role's bounds
    ("mystery", "v_port_v", 3e38, False),
])
def test_bounds_per_role(role, field, value, ok):
    t = dict(GOOD, **{field: value})
    bad = PL.violations(role, t, PL.bounds(LAB))
    assert (not bad) == ok, bad
    if not ok:
        assert bad[0].startswith(field)


def test_bounds_follow_the_site():
    """A site whose bus or storage voltage is higher widens those bounds (a 380 V bus)."""
    house = PL.bounds({"bench": {"bus_voltage_v": 380.0}, "storage": {"voltage_max_v": 48.0}})
    assert not PL.violations("grid", dict(GOOD, v_bus_v=380.0), house)
    assert PL.violations("grid", dict(GOOD, v_bus_v=380.0), PL.bounds(LAB))
    assert not PL.violations("storage", dict(GOOD, v_port_v=50.0), house)
    assert PL.violations("pv", dict(GOOD, v_port_v=50.0), house)      # pv keeps the SMPS range


def frame(**values):
    t = dict(GOOD, **values)
    return P.pack_telemetry(*(t[k] for k in P.TELEMETRY_FIELDS))


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_fleet_keeps_the_last_good_report_and_counts_the_bad_ones():
    clock = Clock()
    fleet = Fleet({"storage": 2}, clock=clock)
    fleet.plausibility = PL.Plausibility(LAB)
    fleet.on_frame("storage", P.MSG_TELEMETRY, 2, 1, frame(v_port_v=9.0))
    clock.t = 101.0
    for seq, bad in enumerate((dict(v_port_v=3e38), dict(i_port_a=-40.0), dict(v_bus_v=1e20)), start=2):
        fleet.on_frame("storage", P.MSG_TELEMETRY, 2, seq, frame(**bad))
    s = fleet.snapshot()["storage"]
    assert s["telemetry"]["v_port_v"] == 9.0           # the last good report
    assert s["last_seen_s"] == 100.0                   # nonsense is not a sign of life
    assert fleet.stale(0.5) == ["storage"]
    assert fleet.plausibility.rejected == {"storage": 3} and PL.rejected(fleet, "storage") == 3
    assert PL.rejected(Fleet({"storage": 2}), "storage") == 0
    assert [r[3] for r in fleet.telemetry_log] == [1]  # only the good one is stored
    events = fleet.drain_events()
    assert [e[2] for e in events] == ["bad_data", "bad_data"]    # the 1st and the 2nd, not each
    assert "v_port_v=3e+38" in events[0][3] and "(2 so far)" in events[1][3]
    # a good report again: used, and the next bad one is said at once
    fleet.on_frame("storage", P.MSG_TELEMETRY, 2, 9, frame(v_port_v=9.5))
    fleet.on_frame("storage", P.MSG_TELEMETRY, 2, 10, frame(p_bus_w=-1e9))
    assert fleet.snapshot()["storage"]["telemetry"]["v_port_v"] == 9.5
    assert [e[2] for e in fleet.drain_events()] == ["bad_data"]


def test_the_fleet_names_the_applied_setpoint_by_its_unit():
    """Issue 28 point 7: the wire's ``setpoint`` is a power [W] but the grid board's voltage
    reference [V]; the decoded report says which (``setpoint_w`` / ``setpoint_v``, the other None)."""
    fleet = Fleet({"storage": 2, "grid": 3})
    fleet.on_frame("storage", P.MSG_TELEMETRY, 2, 1, frame(setpoint=0.5))
    fleet.on_frame("grid", P.MSG_TELEMETRY, 3, 1, frame(setpoint=7.0))
    snap = fleet.snapshot()
    assert snap["storage"]["telemetry"]["setpoint_w"] == 0.5 and snap["storage"]["telemetry"]["setpoint_v"] is None
    assert snap["grid"]["telemetry"]["setpoint_v"] == 7.0 and snap["grid"]["telemetry"]["setpoint_w"] is None
    assert "setpoint" not in snap["grid"]["telemetry"]


def test_a_fleet_without_site_bounds_uses_the_lab_hardware():
    fleet = Fleet({"storage": 2})
    fleet.on_frame("storage", P.MSG_TELEMETRY, 2, 1, frame(v_port_v=3e38))
    assert fleet.snapshot()["storage"]["telemetry"] is None
    assert fleet.plausibility.rejected == {"storage": 1}


C, ESR = 0.5, 4.0


@pytest.mark.parametrize("v,i,v_max,expect", [
    (9.0, 0.0, 13.5, 0.5 * C * 81.0),
    (9.0, 0.1, 13.5, 0.5 * C * 9.4 ** 2),
    (0.0, -1.0, 13.5, 0.0),                       # v_oc clipped at 0
    (16.0, 0.0, 13.5, 0.5 * C * 256.0),           # within 13.5 V x 1.2
    (17.0, 0.0, 13.5, None),                      # above it
    (3e38, 0.0, 13.5, None),                      # the review's 5.8e77 J
    (3e38, 0.0, None, None),
    (9.0, 3e38, 13.5, None),
    (math.nan, 0.0, 13.5, None),
    (9.0, math.inf, 13.5, None),
    (20.0, 0.0, None, 0.5 * C * 400.0),           # default bound: the SMPS range x 1.2
])
def test_stored_energy_is_bounded(v, i, v_max, expect):
    e, why = estimate.storage_energy_checked(v, i, C, ESR, v_max)
    if expect is None:
        assert e is None and why
    else:
        assert why is None and e == pytest.approx(expect)
    assert estimate.storage_energy_j(v, i, C, ESR, v_max) == (None if expect is None else pytest.approx(expect))


def test_the_bound_is_half_c_v_squared_at_the_rated_voltage_with_margin():
    assert estimate.storage_energy_max_j(0.5, 13.5) == pytest.approx(0.5 * 0.5 * (13.5 * 1.2) ** 2)
    assert estimate.storage_voltage_max_v(LAB) == 13.5 and estimate.storage_voltage_max_v({}) is None


@pytest.mark.parametrize("last_seen,now,max_age,stale", [
    (None, 10.0, 8.0, True),
    (10.0, 10.0, 8.0, False),
    (10.0, 17.9, 8.0, False),
    (10.0, 18.1, 8.0, True),
    (10.0, math.nan, 8.0, True),
])
def test_estimate_stale(last_seen, now, max_age, stale):
    why = estimate.estimate_stale(last_seen, now, max_age)
    assert (why is not None) == stale


def test_storage_estimate_from_the_fleet_snapshot():
    fresh = {"telemetry": dict(GOOD, v_port_v=9.0, i_port_a=0.0), "last_seen_s": 100.0}
    assert estimate.storage_estimate(fresh, 101.0, 8.0, C, ESR, 13.5) == (pytest.approx(20.25), None)
    e, why = estimate.storage_estimate(fresh, 120.0, 8.0, C, ESR, 13.5)
    assert e is None and "20.0 s old" in why
    e, why = estimate.storage_estimate({"telemetry": None, "last_seen_s": None}, 120.0, 8.0, C, ESR)
    assert e is None and why == "no storage telemetry"
    absurd = {"telemetry": dict(GOOD, v_port_v=3e38, i_port_a=0.0), "last_seen_s": 100.0}
    e, why = estimate.storage_estimate(absurd, 101.0, 8.0, C, ESR, 13.5)
    assert e is None and "exceeds" in why
