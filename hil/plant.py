"""Averaged-model physics of the lab bench: six converters on one DC bus.

Every converter is modelled at the averaged (switching-cycle-mean) level used for control
design (Erickson & Maksimovic, *Fundamentals of Power Electronics*, 3rd ed., ch. 7): the
board's 16-bit PWM duty sets the reference of a peak-current-mode stage, and the port
current follows that reference with a first-order lag ``tau_s``. Ports:

* ``pv``: a 4-cell PV emulator, single-diode model without series/shunt resistance,
  ``i = isc * sun - i0 * (exp(v / a) - 1)``, with ``a`` fitted so Voc = 5 V at Isc = 0.92 A
  and the fill factor gives an MPP near 4 W (docs/design.md §2), feeding the converter's input
  capacitor: ``C_in dv/dt = i_pv(v) - i_stage``. The capacitor makes the PV voltage a state
  the board regulates (voltage-mode MPPT), as on a real converter input.
* ``storage``: a 0.5 F supercapacitor with 4 ohm ESR, ``E = C v_oc^2 / 2``.
* ``grid``: a 12 V lab supply behind the grid board; zero when disconnected (outage).
* ``load1..3``: LED strings, ``v = v_f + r_d * i`` (linearised LED characteristic).

Bus: ``C_bus dv/dt = sum(p_bus_k) / v`` with converter efficiency ``eta`` applied on the
side that receives power. Sign convention: power into the bus is positive.

Units are SI throughout (V, A, W, J, s, F, ohm).
"""

import math
import random

from picogrid.firmware.protocol import ROLES  # the boards' role order: indices on the wire

SMPS_ROLES = ROLES[:3]
LOAD_ROLES = ROLES[3:]

#: Defaults of the "lab" bench (docs/design.md §2); overridden by the site file's [plant] table.
LAB_PLANT = {
    "bus_capacitance_f": 0.1,      # bulk bus capacitance of the simulated bench (docs/design.md §2)
    "bus_voltage_init_v": 7.0,
    "eta": 0.95,                   # converter efficiency, each direction
    "tau_s": 0.002,                # current-loop lag of the power stage
    "pv_isc_a": 0.92,
    "pv_voc_v": 5.0,
    "pv_thermal_voltage_v": 0.125,  # a = n*Ns*Vt for 4 cells, n ~ 1.2 at 25 degC
    "pv_input_capacitance_f": 0.01,  # converter input bulk capacitance, scaled like the bus's
    "storage_capacitance_f": 0.5,
    "storage_esr_ohm": 4.0,
    "storage_voltage_init_v": 9.0,
    "storage_voltage_max_v": 14.0,
    "grid_voltage_v": 12.0,
    "led_forward_voltage_v": 2.8,
    "led_dynamic_resistance_ohm": 2.0,
    # duty -> current-reference ranges of each power stage [A]
    "current_range_a": {"pv": [0.0, 1.0], "storage": [-2.0, 2.0], "grid": [-2.0, 2.0],
                        "load1": [0.0, 0.4], "load2": [0.0, 0.4], "load3": [0.0, 0.4]},
    "adc_lsb_v": 0.0048,           # 12-bit ADC over a 1:6 divider on 3.3 V
    "ina219_lsb_a": 0.0001,        # INA219 with a 0.1 ohm shunt, 10 uV LSB
    "noise_lsb": 1.0,              # Gaussian sensor noise, in LSBs (1 sigma)
}


def pv_current_a(voltage_v, sun, isc_a, voc_v, a_v):
    """PV array current at a terminal voltage, single-diode model without resistances.

    Parameters
    ----------
    voltage_v : float [V]
    sun : float [-] irradiance as a fraction of the array's rating (0..1)
    isc_a, voc_v : float [A], [V] short-circuit current and open-circuit voltage at sun = 1
    a_v : float [V] modified ideality factor n * Ns * kT/q

    Returns
    -------
    float [A], clipped at 0 (the converter's input diode blocks reverse current).
    """
    i0 = isc_a / (math.exp(voc_v / a_v) - 1.0)
    return max(0.0, isc_a * sun - i0 * (math.exp(voltage_v / a_v) - 1.0))


def pv_voltage_v(current_a, sun, isc_a, voc_v, a_v):
    """Inverse of :func:`pv_current_a`: terminal voltage [V] when ``current_a`` is drawn.

    Drawing more than the photocurrent collapses the voltage to 0 (the current is then
    limited by the array, see :meth:`Plant.step`).
    """
    i0 = isc_a / (math.exp(voc_v / a_v) - 1.0)
    iph = isc_a * sun
    if current_a >= iph:
        return 0.0
    return a_v * math.log((iph - current_a) / i0 + 1.0)


def pv_mpp(sun, isc_a, voc_v, a_v, steps=400):
    """Maximum power point ``(power_w, voltage_v, current_a)`` by a dense scan of the I-V curve."""
    best = (0.0, 0.0, 0.0)
    for k in range(1, steps):
        v = voc_v * k / steps
        i = pv_current_a(v, sun, isc_a, voc_v, a_v)
        if v * i > best[0]:
            best = (v * i, v, i)
    return best


def irradiance_for_power_fraction(fraction, isc_a, voc_v, a_v, tol=1e-4):
    """Irradiance (photocurrent fraction) at which the array's MPP is ``fraction`` of its rated MPP.

    The scenario's ``sun`` is measured PV *power* normalised by the system's capacity; the
    emulator's MPP is not linear in irradiance (the MPP voltage falls logarithmically in dim
    light), so the bench inverts :func:`pv_mpp` by bisection to reproduce the measured power.

    Parameters
    ----------
    fraction : float [-], 0..1 (values above 1 are extrapolated linearly)
    isc_a, voc_v, a_v : as :func:`pv_current_a`

    Returns
    -------
    float [-], the ``sun`` argument of :func:`pv_current_a`.
    """
    if fraction <= 0.0:
        return 0.0
    rated = pv_mpp(1.0, isc_a, voc_v, a_v)[0]
    if fraction >= 1.0:
        return fraction
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if pv_mpp(mid, isc_a, voc_v, a_v)[0] < fraction * rated:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class Plant:
    """State and integration of the bench. Not thread-safe: one owner steps it.

    Parameters
    ----------
    params : dict, see ``LAB_PLANT`` for keys and units.
    seed : int, seed of the sensor-noise generator.
    """

    def __init__(self, params=None, seed=1):
        self.p = dict(LAB_PLANT)
        self.p.update(params or {})
        self.rng = random.Random(seed)
        self.v_bus = self.p["bus_voltage_init_v"]
        self.v_pv = 0.0
        c = self.p["storage_capacitance_f"]
        self.storage_energy_j = 0.5 * c * self.p["storage_voltage_init_v"] ** 2
        self.sun = 0.0
        self.grid_connected = True
        # a board that has not started yet has its PWM off: zero current, not the range's end
        self.duty = {r: self.duty_for_current(r, 0.0) for r in ROLES}
        self.i_port = {r: 0.0 for r in ROLES}
        self.v_port = {r: 0.0 for r in ROLES}
        self.p_bus = {r: 0.0 for r in ROLES}
        self.time_s = 0.0
        # Fault injection: role -> (bias added to every reading, or None), stuck readings
        self.sensor_bias = {}
        self.sensor_stuck = {}
        # Fault injection: an unmodelled load drawn straight from the bus [W] (load spike)
        self.extra_load_w = 0.0
        self._update_ports()

    # -- actuation ------------------------------------------------------------------
    def current_reference_a(self, role):
        lo, hi = self.p["current_range_a"][role]
        return lo + (hi - lo) * self.duty[role] / 65535.0

    def duty_for_current(self, role, current_a):
        """The 16-bit duty that sets ``role``'s current reference to ``current_a`` [A]."""
        lo, hi = self.p["current_range_a"][role]
        d = int(round((current_a - lo) / (hi - lo) * 65535))
        return min(max(d, 0), 65535)

    def set_duty(self, role, duty_u16):
        if not 0 <= duty_u16 <= 65535:
            raise ValueError("duty out of range for %s: %r" % (role, duty_u16))
        self.duty[role] = int(duty_u16)

    # -- physics --------------------------------------------------------------------
    def _port_voltage(self, role, i):
        p = self.p
        if role == "pv":
            return self.v_pv
        if role == "storage":
            return self.storage_voc_v() - i * p["storage_esr_ohm"]
        if role == "grid":
            return p["grid_voltage_v"] if self.grid_connected else 0.0
        return p["led_forward_voltage_v"] + p["led_dynamic_resistance_ohm"] * i

    def pv_array_current_a(self):
        p = self.p
        return pv_current_a(self.v_pv, self.sun, p["pv_isc_a"], p["pv_voc_v"], p["pv_thermal_voltage_v"])

    def storage_voc_v(self):
        return math.sqrt(2.0 * max(self.storage_energy_j, 0.0) / self.p["storage_capacitance_f"])

    def _limit_current(self, role, i):
        """Physical limits of each port: what the element can actually source or sink."""
        p = self.p
        if role == "pv":
            # an empty input capacitor cannot supply more than the array's current
            if self.v_pv <= 0.0:
                return min(max(i, 0.0), self.pv_array_current_a())
            return max(i, 0.0)
        if role == "storage":
            if i > 0 and self.storage_energy_j <= 1e-6:
                return 0.0
            if i < 0 and self.storage_voc_v() >= p["storage_voltage_max_v"]:
                return 0.0
            # past voc / (2 ESR) the port power falls again: the stage cannot draw more
            return min(i, self.storage_voc_v() / (2.0 * p["storage_esr_ohm"]))
        if role == "grid":
            return i if self.grid_connected else 0.0
        # an LED buck cannot raise its output above the bus voltage
        if self.v_bus <= p["led_forward_voltage_v"]:
            return 0.0
        return max(i, 0.0)

    def _update_ports(self):
        eta = self.p["eta"]
        for role in ROLES:
            i = self.i_port[role]
            v = self._port_voltage(role, i)
            self.v_port[role] = v
            if role in LOAD_ROLES:
                self.p_bus[role] = -v * i / eta
            else:
                p_port = v * i
                self.p_bus[role] = p_port * eta if p_port > 0 else p_port / eta

    def step(self, dt_s):
        """Advance the bench by ``dt_s`` seconds (forward Euler, caller keeps dt_s <= 1 ms)."""
        p = self.p
        alpha = min(1.0, dt_s / p["tau_s"])
        for role in ROLES:
            i_ref = self.current_reference_a(role)
            i = self.i_port[role] + alpha * (i_ref - self.i_port[role])
            self.i_port[role] = self._limit_current(role, i)
        # PV input capacitor: array current in, stage current out
        c_in = p["pv_input_capacitance_f"]
        self.v_pv = max(0.0, self.v_pv + (self.pv_array_current_a() - self.i_port["pv"]) * dt_s / c_in)
        self._update_ports()
        # storage energy leaves at the open-circuit voltage; ESR loss is part of it
        voc = self.storage_voc_v()
        i_st = self.i_port["storage"]
        self.storage_energy_j -= (voc * i_st) * dt_s
        e_max = 0.5 * p["storage_capacitance_f"] * p["storage_voltage_max_v"] ** 2
        self.storage_energy_j = min(max(self.storage_energy_j, 0.0), e_max)
        # bus capacitor: energy balance, so the bench conserves energy exactly
        p_net_w = sum(self.p_bus.values()) - (self.extra_load_w if self.v_bus > 0.5 else 0.0)
        e_bus = 0.5 * p["bus_capacitance_f"] * self.v_bus ** 2 + p_net_w * dt_s
        self.v_bus = math.sqrt(max(2.0 * e_bus / p["bus_capacitance_f"], 0.0))
        self.time_s += dt_s

    def advance(self, duration_s, max_step_s=0.001):
        """Integrate ``duration_s`` seconds in sub-steps of at most ``max_step_s``."""
        n = max(1, int(math.ceil(duration_s / max_step_s)))
        for _ in range(n):
            self.step(duration_s / n)

    def pv_available_w(self):
        """Maximum power [W] the PV array could give at the present sun (port side)."""
        p = self.p
        return pv_mpp(self.sun, p["pv_isc_a"], p["pv_voc_v"], p["pv_thermal_voltage_v"])[0]

    def bus_energy_j(self):
        return 0.5 * self.p["bus_capacitance_f"] * self.v_bus ** 2

    # -- sensing --------------------------------------------------------------------
    def _sense(self, value, lsb):
        noisy = value + self.rng.gauss(0.0, self.p["noise_lsb"] * lsb)
        return round(noisy / lsb) * lsb

    def measure(self, role):
        """What the board's sensors read: ``(v_port_v, i_port_a, v_bus_v, i_bus_a)``.

        Voltages through the ADC divider, currents through INA219s on port and bus side;
        ``i_bus_a`` is positive into the bus. Injected faults (bias, stuck) apply here.
        """
        if role in self.sensor_stuck:
            return self.sensor_stuck[role]
        v_lsb, i_lsb = self.p["adc_lsb_v"], self.p["ina219_lsb_a"]
        v_bus = max(self.v_bus, 1e-3)
        reading = (
            self._sense(self.v_port[role], v_lsb),
            self._sense(self.i_port[role], i_lsb),
            self._sense(self.v_bus, v_lsb),
            self._sense(self.p_bus[role] / v_bus, i_lsb),
        )
        bias = self.sensor_bias.get(role)
        if bias:
            reading = tuple(x + b for x, b in zip(reading, bias))
        return reading
