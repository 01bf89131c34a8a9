"""State estimation from board telemetry: stored energy of the supercapacitor, bus state.

The storage board reports its port voltage and current; the open-circuit voltage follows
from the ESR model ``v_oc = v_port + i * R_esr`` (discharge current positive), and the
stored energy from ``E = C v_oc^2 / 2`` (ideal capacitor; Maxwell BCAP datasheets use the
same relation for usable energy).

Bounds (issue 27): an estimate no capacitor can hold (more than ``C v_max^2 / 2`` at its rated
voltage with :data:`ENERGY_MARGIN`, or from non-finite inputs) is refused, and the storage
board's last telemetry is only used while it is fresh (:func:`storage_estimate`).
"""

import logging
import math

log = logging.getLogger(__name__)

#: the SMPS port range [V]: a capacitor behind the storage board cannot be charged above it
SMPS_PORT_V_MAX = 17.5
#: relative margin on the rated voltage: an estimate above C (v_max (1 + margin))^2 / 2 is absurd
ENERGY_MARGIN = 0.2


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


def storage_energy_max_j(capacitance_f, voltage_max_v=None):
    """Largest plausible stored energy [J]: ``C (v_max (1 + ENERGY_MARGIN))^2 / 2``, ``v_max``
    the rated voltage [V] (default: the SMPS port range, :data:`SMPS_PORT_V_MAX`)."""
    v = (SMPS_PORT_V_MAX if voltage_max_v is None else float(voltage_max_v)) * (1.0 + ENERGY_MARGIN)
    return 0.5 * float(capacitance_f) * v * v


def storage_energy_checked(v_port_v, i_port_a, capacitance_f, esr_ohm, voltage_max_v=None):
    """``(energy_j, None)``, or ``(None, reason)`` when the estimate is not physical.

    The stored energy of a supercapacitor from its terminal voltage [V] and current [A]
    (discharge positive), refused when an input is not a finite number or the energy exceeds
    :func:`storage_energy_max_j` of ``voltage_max_v`` (the rated voltage [V]; default the SMPS
    port range).
    """
    try:
        v, i = float(v_port_v), float(i_port_a)
    except (TypeError, ValueError):
        return None, "storage telemetry v_port_v=%r i_port_a=%r is not a number" % (v_port_v, i_port_a)
    if not (math.isfinite(v) and math.isfinite(i)):
        return None, "storage telemetry not finite: v_port_v=%r i_port_a=%r" % (v, i)
    v_oc = max(v + i * esr_ohm, 0.0)
    e_j = 0.5 * capacitance_f * v_oc * v_oc
    e_max = storage_energy_max_j(capacitance_f, voltage_max_v)
    if not math.isfinite(e_j) or e_j > e_max:
        return None, ("storage energy %.3g J from v_port_v=%.3g V, i_port_a=%.3g A exceeds the %.3g J a %.3g F "
                      "capacitor holds at its rated voltage with margin" % (e_j, v, i, e_max, capacitance_f))
    return e_j, None


def storage_energy_j(v_port_v, i_port_a, capacitance_f, esr_ohm, voltage_max_v=None):
    """Stored energy [J] of a supercapacitor from its terminal voltage [V] and current [A];
    None (logged, with the reason) when it is not physical (:func:`storage_energy_checked`)."""
    e_j, why = storage_energy_checked(v_port_v, i_port_a, capacitance_f, esr_ohm, voltage_max_v)
    if why is not None:
        log.warning("stored energy estimate refused: %s", why)
    return e_j


def estimate_stale(last_seen_s, now_s, max_age_s):
    """Why the storage board's estimate is stale, or None while it is fresh.

    Parameters
    ----------
    last_seen_s : float or None
        When the board's last accepted telemetry came [s, the fleet's clock]; None: never.
    now_s : float
        Now, on the same clock [s].
    max_age_s : float
        Oldest telemetry still used [s]: the bench's watchdog (after it the board itself is in
        failsafe) or the health check's stale time, whichever the caller trusts.

    Returns
    -------
    str or None
    """
    if last_seen_s is None:
        return "no storage telemetry yet"
    age = now_s - last_seen_s
    if not math.isfinite(age) or age > max_age_s:
        return "storage telemetry %.1f s old (stale after %.1f s)" % (age, max_age_s)
    return None


def storage_estimate(board, now_s, max_age_s, capacitance_f, esr_ohm, voltage_max_v=None):
    """``(energy_j, None)`` from the storage board's state, or ``(None, reason)`` when the
    board never reported, its last report is older than ``max_age_s`` [s], or the estimate is
    not physical.

    ``board`` is the storage entry of :meth:`picogrid.edge.boards.fleet.Fleet.snapshot`
    (``telemetry``, ``last_seen_s``); ``now_s`` on the fleet's clock.
    """
    tel = board.get("telemetry") if board else None
    if tel is None:
        return None, "no storage telemetry"
    why = estimate_stale(board.get("last_seen_s"), now_s, max_age_s)
    if why is not None:
        return None, why
    return storage_energy_checked(tel["v_port_v"], tel["i_port_a"], capacitance_f, esr_ohm, voltage_max_v)


def storage_voltage_max_v(site):
    """The storage's rated voltage [V] for the energy bound: the site's ``[storage]
    voltage_max_v`` (the lab's 13.5 V is its 14 V rating less a margin), else None."""
    v = site.get("storage", {}).get("voltage_max_v")
    return float(v) if v is not None else None


def energy_from_voltage_j(voltage_v, capacitance_f):
    """Energy [J] of a capacitor at ``voltage_v`` [V] (bus capacitor, storage limits)."""
    return 0.5 * capacitance_f * voltage_v * voltage_v


def bus_voltage_v(snapshot):
    """Median of the bus voltages the boards measure (robust to one bad sensor) [V]."""
    vs = sorted(s["telemetry"]["v_bus_v"] for s in snapshot.values() if s["telemetry"])
    if not vs:
        return None
    return vs[len(vs) // 2]
