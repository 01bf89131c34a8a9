"""Scenario energies calibrated on the forecaster's past errors (the lab MPC's hedge).

What the storage has to cover is the net energy, loads less PV, from now to each coming step.
The three-point scenarios of :mod:`picogrid.edge.forecasting.scenarios` derive it from the per-step fans
and an assumed step-error correlation, which misplaces it: on 30 lab days from 2013-04-01 (a
one-off check of the lab config) the true net energy of the next 36 steps exceeded the median
scenario's on over 90 % of the ticks and fell below the low scenario's on none (a sum of the
medians of on/off loads is below the median of their sum). This module measures the error instead. Per start-tick bucket
``b`` and step ``k`` it keeps the quantiles of

    z_k = (E_true(1..k) - E_P50(1..k)) / W(1..k),

the net energy's error over steps 1..k, in units of the fans' summed P10-P90 widths over the
same steps (so a wide day's fan still widens its scenarios). A scenario at quantile ``q`` then
holds its net energy at ``E_P50 + z_q * W`` at every ``k``, spread over PV and the loads in
proportion to their widths. This is split-conformal calibration (Vovk et al., "Algorithmic
Learning in a Random World", 2005; Lei et al., JASA 113, 2018) applied to the cumulative sum
the storage decision depends on.

Fitted by ``python -m picogrid.edge.evaluation.energy_calibration_fit --profile lab`` on the calibration days
(the first quarter of the validation split), in time order through the edge's own forecast path
(:func:`picogrid.edge.evaluation.evaluate.forecast_fans`, online recalibration included), and stored next
to the forecasters' model cards as ``scenario_energy.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from picogrid.edge.forecasting.scenarios import fit_horizon

#: PV takes the opposite sign of the loads in the net energy the storage covers.
PV_SERIES = "pv_available_w"
FILE_NAME = "scenario_energy.json"
#: Calibration days: the first quarter of the validation split (models/DATA.md); the choice of
#: the spread uses the second quarter, the test half is not touched.
CALIBRATION_FIRST_DAY = "2013-01-01"
CALIBRATION_DAYS = 90
#: Start-tick buckets: 6 = four-hour blocks of the lab day (90 days x 10 ticks per bucket).
N_BUCKETS = 6
#: A (bucket, step) quantile needs this many errors; fewer (steps near the day's end for late
#: buckets) repeat the previous step's quantiles.
MIN_SAMPLES = 30


def _sign(series):
    """+1 for a load, -1 for PV: the sign of a series in the net energy (loads - PV)."""
    return -1.0 if series == PV_SERIES else 1.0


def bucket(tick, n_buckets, n_ticks):
    """Start-tick bucket of a forecast issued at ``tick`` of an ``n_ticks`` day."""
    return min(max(int(tick), 0) * n_buckets // n_ticks, n_buckets - 1)


def widths(fans, names, n):
    """Series -> P90 - P10 [N] (>= 0) of ``names``."""
    return {s: np.maximum(fit_horizon(fans[s][0.9], n) - fit_horizon(fans[s][0.1], n), 0.0) for s in names}


def net(fans, names, q, n):
    return sum(_sign(s) * fit_horizon(fans[s][q], n) for s in names)


class EnergyCalibration:
    """Quantiles of the normalised cumulative net-energy error, per start-tick bucket and step.

    Parameters
    ----------
    z : array, shape [B, N, Q]
        ``z[b, k, i]``: quantile ``quantiles[i]`` of ``z_k`` (module docstring) for forecasts
        issued in bucket ``b`` (ticks ``b * n_ticks // B ..``); ``z[:, 0]`` is unused (step 0 is
        known). Dimensionless.
    quantiles : sequence of float, shape [Q]
        Increasing, with 0.5 among them.
    n_ticks : int
        Ticks per day of the forecasts it was fitted on.
    meta : dict, optional
        Provenance kept in the file (days, command, sample counts).

    Raises
    ------
    ValueError
        On shapes that do not match, quantiles without 0.5 or not increasing, or non-finite ``z``.
    """

    def __init__(self, z, quantiles, n_ticks, meta=None):
        self.z = np.asarray(z, float)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.n_ticks = int(n_ticks)
        self.meta = dict(meta or {})
        if self.z.ndim != 3 or self.z.shape[2] != len(self.quantiles):
            raise ValueError(f"z has shape {self.z.shape}, expected [buckets, steps, {len(self.quantiles)}]")
        if 0.5 not in self.quantiles or list(self.quantiles) != sorted(set(self.quantiles)):
            raise ValueError(f"quantiles must increase and include 0.5, got {self.quantiles}")
        if not np.all(np.isfinite(self.z)):
            raise ValueError("z has non-finite values")

    @property
    def horizon(self):
        return self.z.shape[1]

    def bucket(self, tick):
        """Bucket of a forecast issued at ``tick`` (0 .. n_ticks - 1)."""
        return bucket(tick, self.z.shape[0], self.n_ticks)

    def energy_series(self, fans, tick, quantiles, spread, load_series):
        """PV and load series of each scenario, their net energy at the calibrated quantiles.

        Parameters
        ----------
        fans : mapping series -> {quantile: array [>= N]}
            Plan-aligned fans (step 0 known) with 0.1, 0.5 and 0.9 for PV and every load.
        tick : int
            Tick of day of step 0.
        quantiles : sequence of float
            Scenario quantiles (``MpcConfig.scenario_quantiles``), each one of :attr:`quantiles`.
        spread : float
            Share of each quantile's distance from the median ``z`` kept (> 0; 1 = as fitted).
        load_series : sequence of str

        Returns
        -------
        list of dict
            One ``{series: array [N]}`` per quantile (W; step 0 = the median's, i.e. known).
            The net energy ``sum_{j=1..k} (loads - PV)`` of scenario ``q`` is the median's plus
            ``z_q * W(1..k)`` times the tick length, for every ``k``.

        Raises
        ------
        ValueError
            If a quantile was not fitted.
        """
        names = [PV_SERIES, *load_series]
        n = self.horizon
        table = self.z[self.bucket(tick)]
        w = widths(fans, names, n)
        w_sum = sum(w.values())
        cum_w = np.cumsum(w_sum[1:])
        # a step where every fan is a point (night, no load spread): the loads share the change
        share = {s: np.where(w_sum[1:] > 0, w[s][1:] / np.maximum(w_sum[1:], 1e-300),
                             0.0 if s == PV_SERIES else 1.0 / len(load_series)) for s in names}
        mid_z = table[1:, self.quantiles.index(0.5)]
        out = []
        for q in quantiles:
            if float(q) not in self.quantiles:
                raise ValueError(f"scenario quantile {q} not fitted (have {self.quantiles})")
            z = mid_z + spread * (table[1:, self.quantiles.index(float(q))] - mid_z)
            step = np.diff(z * cum_w, prepend=0.0)         # per-step net deviation [W]
            scen = {}
            for s in names:
                v = fit_horizon(fans[s][0.5], n).copy()
                v[1:] += _sign(s) * share[s] * step
                scen[s] = v
            out.append(scen)
        return out

    def to_dict(self):
        return {"kind": "scenario_energy_calibration", "n_ticks": self.n_ticks,
                "quantiles": list(self.quantiles), "z": np.round(self.z, 6).tolist(), **self.meta}

    def save(self, path):
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`. Raises ValueError on a file of another kind."""
        d = json.loads(Path(path).read_text())
        if d.get("kind") != "scenario_energy_calibration":
            raise ValueError(f"{path}: not a scenario energy calibration")
        meta = {k: v for k, v in d.items() if k not in ("kind", "n_ticks", "quantiles", "z")}
        return cls(d["z"], d["quantiles"], d["n_ticks"], meta)
