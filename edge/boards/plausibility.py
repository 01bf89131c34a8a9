"""Physical plausibility of board telemetry, per role (issue 27, point 3).

The codec (:func:`picogrid.firmware.protocol.unpack_telemetry`) only refuses non-finite
floats; a float32 can still say 3e38 V, and a stored energy of 5.8e77 J then reaches the
solver. Here every measured field of a report is held against what the hardware can show:

* port voltage: the SMPS boards' port range, 0 to :data:`SMPS_PORT_V_MAX` (17.5 V), and for
  the storage board its rated voltage if the site says more, with :data:`MARGIN`;
* port current: within the boards' :data:`BOARD_I_MAX_A` (5 A) either way, with margin;
* bus voltage: a wide band around the site's bus voltage (0 to the larger of twice the
  nominal voltage and the SMPS port range, with margin; a little below 0 for sensor offset);
* powers: within what that voltage and current can give, ``V_max * I_max``;
* the bus energy counter (J since boot, signed): within that power over the longest uptime
  the u32 ``t_ms`` can count (49.7 days), i.e. finite and of a possible size;
* the applied setpoint (the wire's ``setpoint``, before the fleet splits it by unit): finite
  and within the power bound (the grid board's is a voltage [V], below it as well).

A report with any field outside its bounds is a bad-data event of that board and is not
used: :func:`screen` is called by the fleet where a decoded report is accepted, and a refused
report neither replaces the board's last good telemetry nor counts as the board being heard
from, so a board that only sends nonsense goes stale like a silent one.
"""

from __future__ import annotations

import math

from picogrid.firmware.protocol import ROLES

SMPS_PORT_V_MAX = 17.5       # [V] the SMPS boards' port voltage range, 0..17.5 V
BOARD_I_MAX_A = 5.0          # [A] the boards' current rating, either direction
MARGIN = 0.2                 # relative margin on every bound (calibration, transients)
SENSOR_OFFSET_V = 0.5        # [V] how far below 0 a voltage reading may sit (ADC offset)
SENSOR_OFFSET_A = 0.05       # [A] same for a current that cannot flow backwards
_UPTIME_MAX_S = 2 ** 32 / 1000.0   # [s] the u32 t_ms range
SMPS_ROLES = ROLES[:3]
LOAD_ROLES = ROLES[3:]
FIELDS = ("v_bus_v", "v_port_v", "i_port_a", "p_bus_w", "p_port_w", "energy_bus_j", "setpoint")


def bounds(site=None):
    """``{role: {field: (lo, hi)}}`` for the measured telemetry fields.

    Parameters
    ----------
    site : dict, optional
        The site (``bench.bus_voltage_v``, ``storage.voltage_max_v`` widen the bounds when
        they exceed the lab hardware's); None gives the lab hardware's bounds alone.
    """
    site = site or {}
    m = 1.0 + MARGIN
    bus_nominal = float(site.get("bench", {}).get("bus_voltage_v", 0.0) or 0.0)
    storage_v = float(site.get("storage", {}).get("voltage_max_v", 0.0) or 0.0)
    v_port_hi = SMPS_PORT_V_MAX * m
    v_bus_hi = max(2.0 * bus_nominal, SMPS_PORT_V_MAX) * m
    i_hi = BOARD_I_MAX_A * m
    out = {}
    for role in ROLES:
        v_hi = max(v_port_hi, storage_v * m) if role == "storage" else v_port_hi
        p_hi = max(v_hi, v_bus_hi) * i_hi
        # a load draws, it never feeds its port: its current may not go (much) negative
        i_lo = -SENSOR_OFFSET_A if role in LOAD_ROLES else -i_hi
        out[role] = {
            "v_bus_v": (-SENSOR_OFFSET_V, v_bus_hi),
            "v_port_v": (-SENSOR_OFFSET_V, v_hi),
            "i_port_a": (i_lo, i_hi),
            "p_bus_w": (-p_hi, p_hi),
            "p_port_w": (-p_hi, p_hi),
            "energy_bus_j": (-p_hi * _UPTIME_MAX_S, p_hi * _UPTIME_MAX_S),
            "setpoint": (-max(p_hi, v_bus_hi), max(p_hi, v_bus_hi)),   # W, or V for grid
        }
    return out


_DEFAULT = bounds()


def violations(role, telemetry, table=None):
    """The fields of ``telemetry`` outside the bounds of ``role`` (empty: plausible).

    A missing field is not checked (the codec delivers them all); a non-number, NaN or an
    infinity is a violation. An unknown role (no HELLO yet) is held to the loosest bounds of
    any role.

    Returns
    -------
    list of str
        e.g. ``["v_port_v=3e+38 outside -0.5..21"]``.
    """
    table = table or _DEFAULT
    if role in table:
        b = table[role]
    else:
        b = {f: (min(table[r][f][0] for r in table), max(table[r][f][1] for r in table)) for f in FIELDS}
    bad = []
    for field in FIELDS:
        if field not in telemetry:
            continue
        v = telemetry[field]
        lo, hi = b[field]
        try:
            ok = not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        except TypeError:
            ok = False
        if not ok:
            bad.append("%s=%.6g outside %.6g..%.6g" % (field, v, lo, hi) if isinstance(v, (int, float))
                       else "%s=%r is not a number" % (field, v))
    return bad


class Plausibility:
    """The bounds of a site and the count of refused reports per board.

    Set as ``fleet.plausibility`` (see :func:`screen`); without one the fleet uses the lab
    hardware's bounds.
    """

    def __init__(self, site=None):
        self.table = bounds(site)
        self.rejected = {}          # board name -> refused reports
        self._last_ok = {}          # board name -> whether its last report passed

    def screen(self, fleet, b, now, seq, telemetry):
        """True if ``telemetry`` of board state ``b`` may be used; else count it and queue one
        ``bad_data`` fleet event (the fleet's lock is held by the caller).

        Events are not one per report: the first refusal after a good report, and then the
        2nd, 4th, 8th ... refusal of the board, each with the count so far.
        """
        bad = violations(b.role or b.name, telemetry, self.table)
        if not bad:
            self._last_ok[b.name] = True
            return True
        n = self.rejected[b.name] = self.rejected.get(b.name, 0) + 1
        if self._last_ok.get(b.name, True) or n & (n - 1) == 0:
            fleet._event((now, b.name, "bad_data", "seq %d refused (%d so far): %s"
                          % (seq, n, "; ".join(bad))[:300]))
        self._last_ok[b.name] = False
        return False


def screen(fleet, b, now, seq, telemetry):
    """The fleet's hook: :meth:`Plausibility.screen` of ``fleet.plausibility``, created with
    the lab hardware's bounds the first time when the fleet has none."""
    p = getattr(fleet, "plausibility", None)
    if p is None:
        p = fleet.plausibility = Plausibility()
    return p.screen(fleet, b, now, seq, telemetry)


def rejected(fleet, name):
    """Reports of board ``name`` refused so far (0 when the fleet has screened none)."""
    p = getattr(fleet, "plausibility", None)
    return p.rejected.get(name, 0) if p is not None else 0
