# Control laws shared by the roles: PI with anti-windup, perturb-and-observe MPPT, and an
# integral power tracker. Pure arithmetic on floats: no I/O, no allocation per call, so the
# same code runs in the 1 kHz loop on the RP2040 and under the unix port in the HIL bench.
# References: Astrom & Hagglund, "Advanced PID Control" (2006) §3.5 (anti-windup by
# conditional integration); Femia et al., IEEE Trans. Power Electron. 20(4), 2005 (P&O).


def clamp(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


class PI:
    """u = kp*e + ki*integral(e), clamped to [out_min, out_max], with anti-windup.

    At a limit the integral is held where the output just reaches it: it never winds past
    the limit (conditional integration), and it never stops short of it either, so a loop
    whose error cannot vanish inside the limits ends at the limit, not below it.
    """

    def __init__(self, kp, ki, out_min, out_max):
        self.kp = kp
        self.ki = ki
        self.out_min = out_min
        self.out_max = out_max
        self.integral = 0.0

    def reset(self, integral=0.0):
        self.integral = clamp(integral, self.out_min, self.out_max)

    def step(self, error, dt_s):
        p = self.kp * error
        trial = self.integral + self.ki * error * dt_s
        if p + trial > self.out_max:
            # up to the limit, and no further than the integral already was
            hold = self.out_max - p
            trial = min(trial, hold if hold > self.integral else self.integral)
        elif p + trial < self.out_min:
            hold = self.out_min - p
            trial = max(trial, hold if hold < self.integral else self.integral)
        self.integral = trial
        return clamp(p + trial, self.out_min, self.out_max)


class PerturbObserve:
    """Perturb-and-observe MPPT on the PV voltage reference.

    Every ``every`` calls it compares port power with the previous sample and keeps or
    reverses the direction of the voltage step. Perturbing the voltage, not the current,
    keeps the operating point off the steep current-source side of the I-V curve, where a
    current step past the photocurrent collapses the array voltage.
    """

    def __init__(self, step_v, v_min_v, v_max_v, every=5, p_min_w=0.02, v_restart_v=None):
        self.step_v = step_v
        self.p_min_w = p_min_w
        # with no power to compare (night) P&O would drift to one end: wait near the usual
        # MPP instead (0.8-0.9 Voc for crystalline cells), ready for sunrise
        self.v_restart_v = v_restart_v if v_restart_v is not None else 0.9 * v_max_v
        self.v_min_v = v_min_v
        self.v_max_v = v_max_v
        self.every = every
        self.v_ref = v_max_v
        self._count = 0
        self._last_p = 0.0
        self._dir = -1.0

    def step(self, power_w, scale=1.0):
        """One P&O decision every ``every`` calls; ``scale`` shrinks the voltage step (fine
        steps near a power cap, so one step cannot jump far past it)."""
        self._count += 1
        if self._count < self.every:
            return self.v_ref
        self._count = 0
        if power_w < self.p_min_w:
            self.v_ref, self._dir, self._last_p = self.v_restart_v, -1.0, power_w
            return self.v_ref
        if power_w < self._last_p:
            self._dir = -self._dir
        self._last_p = power_w
        self.v_ref = clamp(self.v_ref + self._dir * self.step_v * scale, self.v_min_v, self.v_max_v)
        return self.v_ref

    def back_off(self):
        """Bus over-voltage: go to open circuit at once (no power drawn), from either side
        of the MPP; P&O climbs back from there when the bus allows it."""
        self._count = 0
        self.v_ref = self.v_max_v
        self._dir = -1.0
        self._last_p = 0.0

    def nudge(self, dv_v):
        """Move the reference by ``dv_v`` [V] away from the MPP; P&O resumes from there,
        heading back towards the MPP."""
        self._count = 0
        self.v_ref = clamp(self.v_ref + dv_v, self.v_min_v, self.v_max_v)
        self._dir = -1.0 if dv_v > 0 else 1.0
        self._last_p = 0.0


class PowerTracker:
    """Integral loop from a power error to a current reference: di = gain * e / v."""

    def __init__(self, gain, i_min_a, i_max_a):
        self.gain = gain
        self.i_min_a = i_min_a
        self.i_max_a = i_max_a
        self.i_ref = 0.0

    def jump(self, target_w, voltage_v, eta, into_bus):
        """Feed-forward on a new setpoint: the current that gives ``target_w`` at the bus
        through a stage of efficiency ``eta``; the integral loop then trims the rest."""
        v = voltage_v if voltage_v > 1.0 else 1.0
        i = target_w / (eta * v) if (target_w > 0) == into_bus else target_w * eta / v
        self.i_ref = clamp(i, self.i_min_a, self.i_max_a)

    def step(self, target_w, measured_w, voltage_v):
        v = voltage_v if voltage_v > 1.0 else 1.0
        self.i_ref = clamp(self.i_ref + self.gain * (target_w - measured_w) / v,
                           self.i_min_a, self.i_max_a)
        return self.i_ref
