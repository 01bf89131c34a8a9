"""Online recalibration of the P10-P90 band from the forecaster's own realised errors.

The ONNX models carry offsets calibrated once on the validation days (split conformal, see
:func:`models.qnet.calibration_offsets`). When the series drifts (a load that is idle on most
validation days and busy on the test days) those offsets no longer give 80 % coverage. The
tracker below corrects the band online, from the outcomes the edge has already seen, in the
spirit of adaptive conformal inference (Gibbs & Candes, "Adaptive conformal inference under
distribution shift", NeurIPS 2021) and of the quantile tracker of conformal PID control
(Angelopoulos, Candes & Tibshirani, NeurIPS 2023): each tail has a log scale factor of its
half-width around the P50,

    P10' = P50 - (P50 - P10) * exp(a_lo),   P90' = P50 + (P90 - P50) * exp(a_hi),

and every newly realised tick moves them by ``lr * (miss rate - tail)``, where the miss rate is
the fraction of the stored (already issued, already adjusted) fans covering that tick whose P10
lies above / P90 below the realised value. So a tail that is missed more often than 10 % widens
and one that is never missed narrows, and the long-run miss rate of each tail is pulled to
``tail`` whatever the shift. Scaling the half-widths (rather than adding an offset) keeps the
P50 untouched, keeps the quantiles ordered, leaves a fan of width 0 (PV at night, an idle load
at P10 = P50 = 0) at width 0, and needs no unit per series.

Strictly causal: a fan issued at tick ``t`` is only compared with values of ticks ``>= t`` that
have been realised before the current call, and the current fan is adjusted with the factors
learned from those. Used by the edge (:class:`picogrid.edge.forecasting.forecast.Forecaster`) and, on the
held-out test days in time order, by :mod:`models.evaluate`. numpy only.
"""

from __future__ import annotations

import numpy as np

#: learning rate of the log factors per realised DAY; per tick it is ``LR_PER_DAY / n_ticks``
#: (lab 0.01, site 0.0021). Chosen on the validation days only (static offsets calibrated on
#: 2013-01-01..03-31, the tracker run on 2013-04-01..06-30, lab and site, loads and price: it
#: brought every tracked series to a coverage of 0.80..0.835 there (load 1, whose P90 is 0 on
#: most ticks, at the top) with the mean pinball loss up by at most 1.5 %; larger rates moved
#: load 1 closer to 0.80 but cost more pinball loss, e.g. site load 3 +11 % at 0.02 per tick).
#: Reproduce: ``python -m picogrid.models.select_recalibration --profile lab|site``
LR_PER_DAY = 0.6
#: target miss rate of each tail (P10 and P90)
TAIL = 0.1
#: bound of each log factor: the band is never scaled by more than e^3 ~ 20x or less than 1/20
MAX_LOG_FACTOR = 3.0
#: series whose band is tracked online by default (PV keeps its static calibration: at night its
#: fan has width 0 and cannot be missed, so a tick-wise miss rate would over-narrow the day)
TRACKED = ("load1_demand_w", "load2_demand_w", "load3_demand_w", "import_price_per_j")


class OnlineBandTracker:
    """Causal online scaling of the P10/P90 half-widths of one series' fans.

    Parameters
    ----------
    horizon : int
        Steps per fan (ticks).
    lr : float
        Step of each log factor per realised tick (> 0); :func:`lr_per_tick` of the profile.
    tail : float
        Target miss rate of each tail (0 < tail < 0.5).
    max_log_factor : float
        Bound of the absolute value of each log factor.
    non_negative : bool
        Clip the adjusted P10 at 0 (PV and loads).

    Attributes
    ----------
    log_factors : numpy.ndarray [2]
        Current (lower, upper) log factors.
    n_updates : int
        Realised ticks learned from since the last reset.

    Raises
    ------
    ValueError
        Non-positive horizon or learning rate, tail outside (0, 0.5).
    """

    def __init__(self, horizon: int, lr: float, tail: float = TAIL,
                 max_log_factor: float = MAX_LOG_FACTOR, non_negative: bool = False):
        if int(horizon) < 1 or not lr > 0 or not 0 < tail < 0.5 or not max_log_factor > 0:
            raise ValueError(f"need horizon >= 1, lr > 0, 0 < tail < 0.5, max_log_factor > 0; got "
                             f"{horizon}, {lr}, {tail}, {max_log_factor}")
        self.horizon, self.lr, self.tail = int(horizon), float(lr), float(tail)
        self.max_log_factor, self.non_negative = float(max_log_factor), bool(non_negative)
        self.reset()

    def reset(self) -> None:
        """Forget the stored fans and the learned factors."""
        self.log_factors = np.zeros(2)
        self.n_updates = 0
        self._forget()

    def _forget(self) -> None:
        # ring of the last `horizon` issued fans, slot = issue time mod horizon
        self._t = None                                   # issue time of the latest call [ticks]
        self._issued = np.full(self.horizon, -1, np.int64)
        self._lo = np.zeros((self.horizon, self.horizon))
        self._hi = np.zeros((self.horizon, self.horizon))

    def _learn(self, u: int, y: float) -> None:
        """Update the factors with the realised value ``y`` of tick ``u``."""
        age = u - self._issued
        ok = (self._issued >= 0) & (age >= 0) & (age < self.horizon)
        if not ok.any() or not np.isfinite(y):
            return
        slots = np.flatnonzero(ok)
        below = np.mean(y < self._lo[slots, age[slots]])
        above = np.mean(y > self._hi[slots, age[slots]])
        self.log_factors += self.lr * (np.array([below, above]) - self.tail)
        np.clip(self.log_factors, -self.max_log_factor, self.max_log_factor, out=self.log_factors)
        self.n_updates += 1

    def adjust(self, fan, elapsed, realized=()) -> np.ndarray:
        """Learn from the ticks realised since the previous call, then adjust and store ``fan``.

        Parameters
        ----------
        fan : array [3, horizon]
            P10, P50, P90 of the ticks from now on (post-processed: sorted, clipped).
        elapsed : int or None
            Ticks since the previous call. ``None`` or negative (time went backwards: another
            run, a replay) resets the tracker; more than the horizon, or more than
            ``len(realized)``, forgets the stored fans but keeps the factors (a gap: some
            outcomes are unknown); 0 replaces the fan stored for this tick.
        realized : array [>= elapsed]
            Past values, oldest first, ending with the last completed tick (the forecaster's
            history); the last ``elapsed`` of them are the newly realised ticks.

        Returns
        -------
        numpy.ndarray [3, horizon], float64
            The adjusted fan (P50 unchanged).

        Raises
        ------
        ValueError
            ``fan`` is not [3, horizon].
        """
        fan = np.asarray(fan, dtype=np.float64)
        if fan.shape != (3, self.horizon):
            raise ValueError(f"fan must be [3, {self.horizon}], got {fan.shape}")
        realized = np.asarray(realized, dtype=np.float64).ravel()
        if elapsed is None or elapsed < 0:
            self.reset()
        elif self._t is not None and (elapsed > self.horizon or elapsed > realized.size):
            self._forget()
        elif self._t is not None and elapsed > 0:
            new = realized[realized.size - elapsed:]
            for k in range(elapsed):
                self._learn(self._t + k, new[k])
        t = (self._t + int(elapsed)) if (self._t is not None and elapsed is not None and elapsed >= 0) else 0
        f_lo, f_hi = np.exp(self.log_factors)
        out = fan.copy()
        out[0] = fan[1] - (fan[1] - fan[0]) * f_lo
        out[2] = fan[1] + (fan[2] - fan[1]) * f_hi
        if self.non_negative:
            out[0] = np.maximum(out[0], 0.0)
        slot = t % self.horizon
        self._issued[slot], self._lo[slot], self._hi[slot] = t, out[0], out[2]
        self._t = t
        return out


def lr_per_tick(n_ticks: int) -> float:
    """Learning rate per realised tick for a day of ``n_ticks`` ticks (:data:`LR_PER_DAY` / n_ticks).

    Raises
    ------
    ValueError
        ``n_ticks`` < 1.
    """
    if int(n_ticks) < 1:
        raise ValueError(f"n_ticks must be >= 1, got {n_ticks}")
    return LR_PER_DAY / int(n_ticks)


def calendar_elapsed(previous: tuple | None, calendar: dict) -> int | None:
    """Ticks between two forecast calls from their calendars (``day_of_year``, ``tick``).

    Returns ``None`` (unknown: reset) for the first call, for another ``n_ticks``, and for a
    backwards step, except across New Year's midnight (day 365/366 -> day 1 counts as one day).
    """
    if previous is None:
        return None
    doy0, tick0, n0 = previous
    doy, tick, n = int(calendar["day_of_year"]), int(calendar["tick"]), int(calendar["n_ticks"])
    if n != n0:
        return None
    days = doy - doy0
    if days < 0 and doy == 1 and doy0 >= 365:
        days = 1
    elapsed = days * n + tick - tick0
    return elapsed if elapsed >= 0 else None
