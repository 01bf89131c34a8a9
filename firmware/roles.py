# Role state machines: what each board does with its measurements and the edge's setpoint.
# One class per role, all with the same methods, so board.py never branches on the role:
#   setpoint(mode, value) -> ack status   apply a validated setpoint from the edge
#   failsafe()                            go to the role's safe state (docs/design.md §3)
#   step(v_port, i_port, v_bus, i_bus, dt_s) -> current reference [A]
#   reported_setpoint() -> the applied setpoint telemetry reports: [W] for the power roles
#                          (pv: its cap, -1 for none), [V] for grid (PROTOCOL.md section 3)
# Measurements: port voltage [V] and current [A] (+ out of the port element for sources,
# + into the LED for loads), bus voltage [V], bus-side current [A] (+ into the bus).
from control import PI, PerturbObserve, PowerTracker, clamp

# wire constants (modes, ack statuses, flags) come from the one codec file
import protocol as P


class _Role:
    def __init__(self, cfg):
        self.cfg = cfg
        lim = cfg["limits"]
        self.i_min_a, self.i_max_a = cfg["current_range_a"]
        self.v_bus_ref_v = lim.get("bus_voltage_v", 7.0)
        # PV backs off above 108 %: inside the ±10 % band the bus must hold, above the storage
        # guard's 106 % (storage absorbs first). At 110 % a grid lost while exporting took the
        # bus to 110.1 % before the back-off (picogrid soak, docs/soak.md)
        self.v_bus_max_v = lim.get("bus_voltage_max_v", self.v_bus_ref_v * 1.08)
        self.flags = 0
        self.eta = cfg["gains"].get("stage_efficiency", 0.95)
        self.v_port_v = 0.0      # last measured port voltage, for setpoint feed-forward

    def _bounded(self, value, lo, hi):
        """Clamp a setpoint to the board's own limits; report whether it was clamped."""
        v = clamp(value, lo, hi)
        return v, (P.ACK_LIMITED if v != value else P.ACK_OK)

    def reported_setpoint(self):
        """The setpoint being applied, after local limits, as telemetry carries it."""
        raise NotImplementedError


class PvRole(_Role):
    """MPPT with an optional power cap (curtailment); backs off on bus over-voltage.

    The outer P&O loop moves the PV voltage reference; an inner PI loop sets the stage's
    current so the input capacitor, and with it the array, sits at that voltage (more
    current, lower voltage). Under a cap the reference slides away from the MPP by an
    integral law on the power excess (``k_cap`` [V/(W s)]) and holds in a 3 % band below
    the cap, rather than P&O hunting across it. It slides LEFT of the MPP (current-source
    side) first, where dP/dV is about Isc (~1 W/V) instead of the several W/V near open
    circuit, so ADC quantisation (4.8 mV) does not make the capped power jump. Left of the
    MPP the power cannot fall below about Isc x ``voltage_min_v``; a cap under that floor
    (pinned at the minimum and still over) moves the reference to open circuit and
    curtails on the RIGHT side instead, until the cap is lifted. Where the reference comes
    from open circuit (at boot, after an over-voltage back-off) a cap curtails on the right
    side too: nudging left from there would run through the MPP first.
    """

    def __init__(self, cfg):
        _Role.__init__(self, cfg)
        g = cfg["gains"]
        lim = cfg["limits"]
        self.mppt = PerturbObserve(g.get("mppt_step_v", 0.05), lim.get("voltage_min_v", 1.0),
                                   lim.get("voltage_max_v", 5.0), g.get("mppt_every", 10))
        # e = v - v_ref: too high a voltage means too little current drawn
        self.pi = PI(g.get("kp_v", 0.3), g.get("ki_v", 10.0), 0.0, self.i_max_a)
        self.k_cap = g.get("k_cap", 5.0)
        self.cap_w = None        # power cap [W]; None = no cap (-1 on the wire)
        # which side of the MPP a cap curtails on: -1 left, +1 right (open-circuit side). The
        # reference starts at open circuit, so right; lifting the cap lets P&O reach the MPP,
        # after which the next cap prefers the left
        self.cap_side = 1.0

    def _lift_cap(self):
        self.cap_w, self.cap_side = None, -1.0

    def setpoint(self, mode, value):
        if value < 0:
            self._lift_cap()
            return P.ACK_OK
        self.cap_w, status = self._bounded(value, 0.0, self.cfg["limits"].get("power_max_w", 5.0))
        return status

    def reported_setpoint(self):
        return -1.0 if self.cap_w is None else self.cap_w

    def failsafe(self):
        self._lift_cap()

    def step(self, v_port, i_port, v_bus, i_bus, dt_s):
        p_bus = v_bus * i_bus
        cap = self.cap_w
        self.flags = 0
        if v_bus > self.v_bus_max_v:
            # nobody absorbs the power: stop drawing from the array now, not at the PI's pace
            self.mppt.back_off()
            self.pi.reset(0.0)
            self.cap_side = 1.0      # at open circuit now: a cap curtails from this side
            self.flags = P.FLAG_LIMITED
            return 0.0
        if cap is not None and p_bus > cap * 0.97:
            self.flags = P.FLAG_LIMITED
            if p_bus > cap:
                if self.cap_side < 0 and self.mppt.v_ref <= self.mppt.v_min_v:
                    self.cap_side = 1.0          # under the left side's floor: go right
                    self.mppt.back_off()
                else:
                    self.mppt.nudge(self.cap_side * self.k_cap * (p_bus - cap) * dt_s)
        elif cap is not None and p_bus > cap * 0.8:
            # close below the cap: quarter steps, so P&O cannot jump well past it
            self.mppt.step(v_port * i_port, 0.25)
        else:
            self.mppt.step(v_port * i_port)
        return self.pi.step(v_port - self.mppt.v_ref, dt_s)


class StorageRole(_Role):
    """Tracks a bus-side power setpoint (+ discharge) inside voltage/current limits.

    Islanded (mode ISLAND from the edge) it regulates the bus at its reference with a PI
    loop, as the grid board would. Before the edge has told it, a one-sided guard acts as a
    backup source: below 96 % of the reference it discharges (PI, output >= 0), above 106 %
    it charges (PI, output <= 0), and inside that band it does nothing, so it never fights
    the grid board's regulation at 100 % (two integrators on one reference would oscillate).
    """

    def __init__(self, cfg):
        _Role.__init__(self, cfg)
        g = cfg["gains"]
        lim = cfg["limits"]
        self.v_min_v = lim.get("voltage_min_v", 2.0)
        self.v_max_v = lim.get("voltage_max_v", 13.5)
        self.p_max_w = lim.get("power_max_w", 3.0)
        # bus loop gain kp * v_port / (C_bus * v_bus) ~ 1 * 9 / 0.7 = 13 /s: a time constant
        # of ~80 ms, 8 loop periods of the HIL bench, so a loaded host's late loops do not
        # make it ring; the guard is a slower backup still
        kp, ki = g.get("kp", 1.0), g.get("ki", 8.0)
        self.tracker = PowerTracker(g.get("track_gain", 0.2), self.i_min_a, self.i_max_a)
        self.pi = PI(kp, ki, self.i_min_a, self.i_max_a)
        kg, kgi = g.get("guard_kp", 0.5), g.get("guard_ki", 4.0)
        self.guard_lo = PI(kg, kgi, 0.0, self.i_max_a)     # supports a sagging bus
        self.guard_hi = PI(kg, kgi, self.i_min_a, 0.0)     # absorbs a swelling bus
        self.v_guard_lo_v = self.v_bus_ref_v * lim.get("guard_low", 0.96)
        self.v_guard_hi_v = self.v_bus_ref_v * lim.get("guard_high", 1.06)
        self.islanded = False
        self.p_set_w = 0.0       # bus-side power setpoint [W], + discharge

    def reported_setpoint(self):
        return self.p_set_w

    def setpoint(self, mode, value):
        self.islanded = mode == P.MODE_ISLAND
        if self.islanded:
            self.pi.reset(self.tracker.i_ref)
        self.p_set_w, status = self._bounded(value, -self.p_max_w, self.p_max_w)
        if not self.islanded:
            self.tracker.jump(self.p_set_w, self.v_port_v, self.eta, True)
        return status

    def failsafe(self):
        self.p_set_w = 0.0
        self.islanded = False
        self.tracker.i_ref = 0.0

    def step(self, v_port, i_port, v_bus, i_bus, dt_s):
        self.v_port_v = v_port
        self.flags = 0
        # the power limit holds in every mode: islanded or backing up, the supercapacitor's
        # port (4 ohm ESR) could otherwise swing tens of watts and make the bus ring
        i_lim = 1.1 * self.p_max_w / (v_port if v_port > 1.0 else 1.0)
        self.pi.out_min, self.pi.out_max = -i_lim, i_lim
        self.guard_lo.out_max = i_lim
        self.guard_hi.out_min = -i_lim
        if self.islanded:
            self.flags = P.FLAG_ISLANDED
            i = self.pi.step(self.v_bus_ref_v - v_bus, dt_s)
            self.tracker.i_ref = i
        else:
            self.pi.reset(self.tracker.i_ref)
            guard = (self.guard_lo.step(self.v_guard_lo_v - v_bus, dt_s)
                     + self.guard_hi.step(self.v_guard_hi_v - v_bus, dt_s))
            if guard != 0.0:
                # nobody holds the bus: back it up; the tracker waits meanwhile
                self.flags = P.FLAG_ISLANDED
                i = clamp(self.tracker.i_ref + guard, self.i_min_a, self.i_max_a)
            else:
                i = self.tracker.step(self.p_set_w, v_bus * i_bus, v_port)
        if i > i_lim or i < -i_lim:
            i = clamp(i, -i_lim, i_lim)
            self.flags |= P.FLAG_LIMITED
        # voltage limits: no discharge when empty, no charge when full
        if (v_port <= self.v_min_v and i > 0) or (v_port >= self.v_max_v and i < 0):
            i = 0.0
            self.tracker.i_ref = 0.0
            self.flags |= P.FLAG_LIMITED
        return i


class GridRole(_Role):
    """Holds the bus at its reference with a PI loop; the port power is import (+)."""

    def __init__(self, cfg):
        _Role.__init__(self, cfg)
        g = cfg["gains"]
        # loop gain kp * 12 V / (C_bus * v_bus) = 1 * 12 / 0.7 ~ 17 /s (time constant ~60 ms,
        # 6 periods of the bench's 10 ms loop); a 1 W step then moves the bus ~0.1 V
        self.pi = PI(g.get("kp", 1.0), g.get("ki", 8.0), self.i_min_a, self.i_max_a)
        self.v_set_v = self.v_bus_ref_v   # bus-voltage reference being held [V]

    def reported_setpoint(self):
        return self.v_set_v

    def setpoint(self, mode, value):
        self.v_set_v, status = self._bounded(value, self.v_bus_ref_v * 0.95, self.v_bus_ref_v * 1.05)
        return status

    def failsafe(self):
        self.v_set_v = self.v_bus_ref_v

    def step(self, v_port, i_port, v_bus, i_bus, dt_s):
        if v_port <= 1.0:
            # no supply behind the port: hold the loop at zero so it reconnects bumplessly
            # instead of with an integral wound up during the outage
            self.flags = P.FLAG_ISLANDED
            self.pi.reset(0.0)
            return 0.0
        self.flags = 0
        return self.pi.step(self.v_set_v - v_bus, dt_s)


class LoadRole(_Role):
    """LED driver following a served-power setpoint [W]; shed turns it off."""

    def __init__(self, cfg):
        _Role.__init__(self, cfg)
        g = cfg["gains"]
        self.p_max_w = cfg["limits"].get("power_max_w", 1.0)
        self.tracker = PowerTracker(g.get("track_gain", 0.2), 0.0, self.i_max_a)
        self.shed = False
        self.p_set_w = 0.0       # served-power setpoint [W]

    def reported_setpoint(self):
        return self.p_set_w

    def setpoint(self, mode, value):
        self.shed = mode == P.MODE_SHED
        if self.shed:
            self.p_set_w = 0.0
            return P.ACK_OK
        self.p_set_w, status = self._bounded(value, 0.0, self.p_max_w)
        self.tracker.jump(self.p_set_w, self.v_port_v, self.eta, False)
        return status

    def failsafe(self):
        # critical loads stay on, the others are shed (docs/design.md §3)
        if self.cfg["priority"] == "critical":
            self.shed = False
            self.p_set_w = self.cfg["limits"].get("failsafe_power_w", self.p_max_w)
        else:
            self.shed = True
            self.p_set_w = 0.0

    def step(self, v_port, i_port, v_bus, i_bus, dt_s):
        self.v_port_v = v_port
        self.flags = P.FLAG_SHED if self.shed else 0
        if self.shed:
            self.tracker.i_ref = 0.0
            return 0.0
        return self.tracker.step(self.p_set_w, -v_bus * i_bus, v_port)


def make(cfg):
    role = cfg["role"]
    if role == "pv":
        return PvRole(cfg)
    if role == "storage":
        return StorageRole(cfg)
    if role == "grid":
        return GridRole(cfg)
    return LoadRole(cfg)
