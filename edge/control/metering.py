"""Per-tick energy metering from the boards' cumulative bus-side energy counters.

Every board integrates the power it puts into the bus (``energy_bus_j``) and reports the
counter right after acknowledging a setpoint, so consecutive snapshots bracket one tick on
every board within a few milliseconds. Conservation on the bus gives the check

    residual = sum_k dE_k - dE_bus_capacitor,

which is zero for a perfect meter; what remains is sensor quantisation, sampling and the
snapshot skew between boards.
"""

from picogrid.edge.control.estimate import energy_from_voltage_j


def tick_energies(prev, cur):
    """Energy per board over one tick [J]: name -> dE.

    None where a snapshot is missing, or where the board's uptime ``t_ms`` went backwards:
    it rebooted and its counter restarted from zero, so the difference means nothing.
    """
    out = {}
    for name in cur:
        a, b = prev.get(name), cur.get(name)
        if a is None or b is None or b["t_ms"] < a["t_ms"]:
            out[name] = None
        else:
            out[name] = b["energy_bus_j"] - a["energy_bus_j"]
    return out


def tick_powers(prev, cur, energies):
    """Mean bus power per board over its own snapshot window [W]: name -> dE / dt.

    A window runs from one setpoint's acknowledgement to the next, so it is the nominal tick
    stretched or shortened by how long the edge took to decide (5 ms to 1 s of a 2.5 s lab
    tick with the MPC in the demo): energy over the nominal tick would charge that jitter to
    the tick's served demand, and the per-tick shortfall at the value of lost load. ``dt`` is
    the board's own uptime clock (``t_ms``) between the snapshots; None where ``energies``
    (:func:`tick_energies`) has None.
    """
    out = {}
    for name, e in energies.items():
        dt_s = (cur[name]["t_ms"] - prev[name]["t_ms"]) / 1000.0 if e is not None else 0.0
        out[name] = e / dt_s if dt_s > 0 else None
    return out


def balance_residual_j(energies, v_bus_start_v, v_bus_end_v, bus_capacitance_f):
    """Bus energy balance residual [J]; None if any board's energy is unknown."""
    if any(e is None for e in energies.values()) or v_bus_start_v is None or v_bus_end_v is None:
        return None
    d_cap = (energy_from_voltage_j(v_bus_end_v, bus_capacitance_f)
             - energy_from_voltage_j(v_bus_start_v, bus_capacitance_f))
    return sum(energies.values()) - d_cap


