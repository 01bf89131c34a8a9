"""State estimation from board telemetry: stored energy of the supercapacitor, bus state.

The storage board reports its port voltage and current; the open-circuit voltage follows
from the ESR model ``v_oc = v_port + i * R_esr`` (discharge current positive), and the
stored energy from ``E = C v_oc^2 / 2`` (ideal capacitor; Maxwell BCAP datasheets use the
same relation for usable energy).
"""


def storage_energy_j(v_port_v, i_port_a, capacitance_f, esr_ohm):
    """Stored energy [J] of a supercapacitor from its terminal voltage [V] and current [A]."""
    v_oc = max(v_port_v + i_port_a * esr_ohm, 0.0)
    return 0.5 * capacitance_f * v_oc * v_oc


def energy_from_voltage_j(voltage_v, capacitance_f):
    """Energy [J] of a capacitor at ``voltage_v`` [V] (bus capacitor, storage limits)."""
    return 0.5 * capacitance_f * voltage_v * voltage_v


def bus_voltage_v(snapshot):
    """Median of the bus voltages the boards measure (robust to one bad sensor) [V]."""
    vs = sorted(s["telemetry"]["v_bus_v"] for s in snapshot.values() if s["telemetry"])
    if not vs:
        return None
    return vs[len(vs) // 2]
