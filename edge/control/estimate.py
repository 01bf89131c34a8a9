"""State estimation from board telemetry: stored energy of the supercapacitor, bus state.

The storage board reports its port voltage and current; the open-circuit voltage follows
from the ESR model ``v_oc = v_port + i * R_esr`` (discharge current positive), and the
stored energy from ``E = C v_oc^2 / 2`` (ideal capacitor; Maxwell BCAP datasheets use the
same relation for usable energy).
"""


def supercapacitor(site):
    """``(capacitance_f [F], esr_ohm [ohm])`` of the site's storage, which the edge's estimate needs.

    Raises
    ------
    ValueError
        If ``[storage]`` lacks ``capacitance_f`` or ``esr_ohm``. The edge knows the stored
        energy only from the storage board's port voltage and current (PROTOCOL.md telemetry),
        which give a capacitor's state but not a battery's (its state of charge is not in the
        telemetry): the battery "site" profile runs in ``picogrid evaluate``'s closed loop, not
        against boards.
    """
    st = site.get("storage", {})
    missing = [k for k in ("capacitance_f", "esr_ohm") if k not in st]
    if missing:
        raise ValueError(
            f"profile {site.get('profile', '?')!r}: [storage] has no {' / '.join(missing)}; the edge estimates "
            "the stored energy of a supercapacitor from the storage board's voltage and current, and the "
            "board telemetry carries no battery state of charge (use this profile with picogrid evaluate)")
    return float(st["capacitance_f"]), float(st["esr_ohm"])


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
