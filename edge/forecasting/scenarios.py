"""Forecast scenarios for the MPC's stochastic plan, and its inputs from the forecast fans.

Planning on the expected forecast is blind to the cost of being wrong, and that cost is
lopsided here: a joule short in the evening is bought at the import price (about four times the
export price on the lab feed), a joule too many is sold at the export price. The two-stage
stochastic programme (Birge & Louveaux, "Introduction to Stochastic Programming", 2nd ed.,
Springer 2011, ch. 1 and 3) minimises the probability-weighted cost over ``S`` scenarios, each
with its own plan, and ties them together through the first step, the one decision that is
applied now (non-anticipativity). The plan then keeps the stored energy that pays off in the
expensive scenarios. Each scenario otherwise plans as if it knew its future from the next step
on, which is optimistic when the next steps will not yet tell the scenarios apart;
``MpcConfig.scenario_shared_steps`` ties the storage and deferrable powers of the first few
steps instead (a robust horizon), while PV, loads and grid follow each scenario.

Scenarios come from the forecast quantiles with the extended Swanson–Megill three-point
approximation: P10, P50, P90 with weights 0.3, 0.4, 0.3 (Keefer & Bodily, "Three-point
approximations for continuous random variables", Management Science 29(5), 1983), demand and
PV taken in opposite corners (high demand with low PV), so the wide scenario is the hard one.
A day at the P90 of every step is rarer than a P90 day: ``MpcConfig.scenario_correlation``
builds PV and the loads so that their energy over the coming hours is that of step errors of
that correlation, and ``MpcConfig.scenario_spread`` scales every deviation (both chosen on the
validation days: docs/results-log.md).

The stacked QP that plans them is :class:`picogrid.edge.optimizer.scenario_qp.ScenarioQp`.
"""

from __future__ import annotations

import logging

import numpy as np

from picogrid.edge.forecasting.error_scenarios import error_scenarios

log = logging.getLogger(__name__)

#: Extended Swanson–Megill three-point approximation: quantiles and weights (Keefer & Bodily 1983).
SWANSON_MEGILL_QUANTILES = (0.1, 0.5, 0.9)
SWANSON_MEGILL_WEIGHTS = (0.3, 0.4, 0.3)
def quantile_scenarios(fans, quantiles, spread=1.0, low_side=("pv_available_w",), correlation=1.0,
                       energy_series=()):
    """Scenario series from forecast fans, high demand paired with low PV.

    Scenario ``k`` takes every series at ``P50 + spread * (P_q - P50)`` with ``q =
    quantiles[k]``, or ``q = 1 - quantiles[k]`` for ``low_side`` series. The fans give marginal
    quantiles per step; a scenario holding every step at its P90 is a far rarer day than a P90
    day (the spikes of a load do not all come at once), which ``spread`` < 1 allows for.

    With ``correlation`` < 1 the ``energy_series`` (the powers whose sum over the coming hours
    the stored energy must match: PV and the loads) are built so that the scenario's energy
    from step 1 to every step ``k`` deviates from the median's by
    ``sqrt((1 - rho) * sum_j d_j**2 + rho * (sum_j d_j)**2)``, ``d_j = P_q - P50`` at step
    ``j``: the deviation of a sum of equicorrelated errors with correlation ``rho`` (a normal
    approximation; ``rho = 1`` is the step-wise construction above, the errors all at once;
    ``rho = 0`` independent steps, whose sum spreads as the root of the summed squares). The
    scenario's step ``k`` takes the increment of that cumulative deviation, so the near steps keep
    nearly their own quantile and the far ones move less. Step 0 keeps its own deviation (the
    solver replaces it with what is known now).

    Parameters
    ----------
    fans : mapping series -> {quantile: array [N]}
        Forecast fans with P50 (key 0.5) and the quantiles asked for (and their mirrors
        ``1 - q`` for ``low_side`` series).
    quantiles : sequence of float
        Quantile of each scenario, e.g. ``(0.1, 0.5, 0.9)`` (``MpcConfig.scenario_quantiles``).
    spread : float
        Share of the quantile's distance from the median kept (> 0; 1 = the quantile itself).
    low_side : iterable of str
        Series taken at the mirrored quantile (PV: the high-demand scenario is the dull one).
    correlation : float
        Correlation ``rho`` in [0, 1] of the step errors of ``energy_series`` (1: step-wise).
    energy_series : iterable of str
        Series built from their cumulative deviation when ``correlation`` < 1.

    Returns
    -------
    list of dict
        One ``{series: array [N]}`` per scenario.

    Raises
    ------
    KeyError
        If a fan lacks a quantile.
    """
    out = []
    for q in quantiles:
        scen = {}
        for name, fan in fans.items():
            mid = np.asarray(fan[0.5], float)
            dev = np.asarray(fan[round(1.0 - q, 6) if name in low_side else q], float) - mid
            if correlation < 1.0 and name in energy_series:
                dev = _cumulative_deviation(dev, correlation)
            scen[name] = mid + spread * dev
        out.append(scen)
    return out


def _cumulative_deviation(dev, rho):
    """Per-step deviations whose running sum from step 1 is that of equicorrelated errors.

    ``dev`` [N] holds the marginal deviations ``P_q - P50`` of one quantile (one sign, as the
    fans are sorted); see :func:`quantile_scenarios`.
    """
    out = np.array(dev, float)
    d = out[1:]
    total = np.cumsum(d)
    cum = np.sign(total) * np.sqrt((1.0 - rho) * np.cumsum(d * d) + rho * total * total)
    out[1:] = np.diff(cum, prepend=0.0)
    return out


def solve_scenarios(fans, cfg, load_series, export_fee_per_j, calibration=None, tick=None):
    """``scenarios`` argument of :meth:`MpcController.solve` from forecast fans, or ``None``.

    Parameters
    ----------
    fans : mapping series -> {quantile: array [>= N]}
        ``pv_available_w``, each of ``load_series`` and ``import_price_per_j`` (and
        ``export_price_per_j`` if the feed forecasts it).
    cfg : MpcConfig
        Gives the horizon ``N``, ``scenario_quantiles`` and ``scenario_spread``.
    load_series : sequence of str
        Fan names of the loads, in the config's load order.
    export_fee_per_j : float
        Import minus export price [price/J], used when there is no export fan.
    calibration : picogrid.edge.forecasting.energy_calibration.EnergyCalibration or None
        With ``cfg.scenario_energy_spread`` set, PV and the loads take the calibrated net
        energies instead of the correlation construction (prices keep theirs). ``None`` (a
        forecaster without a calibration, e.g. the lab feed's online learner) or one fitted for
        another horizon keeps the correlation construction, with one warning.
    tick : int or None
        Tick of day of step 0 (the calibration's bucket).

    Returns
    -------
    list of dict or None
        ``None`` when the config has no scenarios; else one mapping per scenario with
        ``pv_avail_w`` [N], ``demand_w`` [N, L], ``import_price_per_j`` [N] and
        ``export_price_per_j`` [N] (negative powers clipped to 0).
    """
    if not cfg.scenario_quantiles or len(cfg.scenario_quantiles) < 2:
        return None
    n = cfg.horizon
    names = ["pv_available_w", *load_series, "import_price_per_j"]
    names += ["export_price_per_j"] if "export_price_per_j" in fans else []
    energy = ("pv_available_w", *load_series)
    calibrated = cfg.scenario_energy_spread is not None
    if calibrated and (calibration is None or tick is None or calibration.horizon != n):
        # e.g. the lab feed's online learner, or a day of another length than the models'
        _warn_once("scenario_energy_spread is set but there is no scenario energy calibration for "
                   f"this forecaster and a horizon of {n}: PV and load scenarios from the correlation "
                   "construction")
        calibrated = False
    # calibrated: PV and the loads come from the calibration, only the prices from the fans here
    scenarios = quantile_scenarios({k: fans[k] for k in names if not (calibrated and k in energy)},
                                   cfg.scenario_quantiles, cfg.scenario_spread,
                                   correlation=cfg.scenario_correlation, energy_series=energy)
    if calibrated:
        for sc, series in zip(scenarios, calibration.energy_series(
                fans, tick, cfg.scenario_quantiles, cfg.scenario_energy_spread, load_series)):
            sc.update(series)
    out = []
    for sc in scenarios:
        sc = {k: fit_horizon(v, n) for k, v in sc.items()}
        imp = sc["import_price_per_j"]
        out.append({"pv_avail_w": np.maximum(sc["pv_available_w"], 0.0),
                    "demand_w": np.maximum(np.column_stack([sc[k] for k in load_series]), 0.0),
                    "import_price_per_j": imp,
                    "export_price_per_j": sc.get("export_price_per_j", imp - export_fee_per_j)})
    return out


def expected_value(fan):
    """Expected value of a forecast fan ``{quantile: array [N]}``, the mean of its quantiles [N].

    A risk-neutral plan needs expected energies, not medians: the median of a spiky load
    (a kettle, a washing machine) is near zero most of the time although its mean is not,
    and a plan on medians sells the stored energy the evening then has to buy back. With
    P10/P50/P90 this is the three-point estimate of the mean (equal weights).
    """
    return np.mean([np.asarray(v, float) for v in fan.values()], axis=0)


def planned_point(fans, load_series, demand_p90_weight=0.0):
    """The point forecast a plan takes from fans, before step 0 is set to what is known now.

    PV: its P50 (>= 0); each load: the fan's mean (:func:`expected_value`) moved
    ``demand_p90_weight`` of the way to its P90 (>= 0). :func:`forecast_inputs` plans the
    expected case on it, and the error scenarios measure past errors against it.

    Returns
    -------
    dict
        ``{series: array [H]}`` [W] for ``pv_available_w`` and each of ``load_series``.
    """
    out = {"pv_available_w": np.maximum(np.asarray(fans["pv_available_w"][0.5], float), 0.0)}
    for s in load_series:
        d = np.asarray(expected_value(fans[s]), float)
        if demand_p90_weight:
            d = d + demand_p90_weight * (np.asarray(fans[s][0.9], float) - d)
        out[s] = np.maximum(d, 0.0)
    return out


def fit_horizon(x, n):
    """First ``n`` values of ``x``, the last repeated if it is shorter."""
    x = np.asarray(x, float)
    return x[:n] if len(x) >= n else np.concatenate([x, np.full(n - len(x), x[-1])])


_warned = set()


def _warn_once(text):
    if text not in _warned:
        _warned.add(text)
        log.warning(text)


def forecast_inputs(fans, cfg, load_series, now, calibration=None, tick=None, errors=None):
    """The forecast arguments of :meth:`MpcController.solve` from forecast fans.

    One function for the edge runner and ``picogrid evaluate``, so the bench runs the plan
    the evaluation measured.

    Parameters
    ----------
    fans : mapping series -> {quantile: array [>= N]}
        As for :func:`solve_scenarios`, with quantiles 0.1, 0.5 and 0.9.
    cfg : MpcConfig
        Horizon ``N``, scenarios and the reserve switch.
    load_series : sequence of str
        Fan names of the loads, in the config's load order.
    now : mapping
        What is known at step 0 (the lab feed and the meters tell it): ``pv_avail_w`` [W],
        ``demand_w`` [L] [W], ``import_price_per_j`` and ``export_price_per_j`` [price/J].
    calibration, tick :
        Scenario energy calibration and the tick of day of step 0; see :func:`solve_scenarios`.
    errors : sequence of mapping or None
        With ``cfg.error_scenario_days`` ``K`` > 0 and scenarios: the errors of the forecasts
        issued at this tick of day on the last ``K`` days, most recent first
        (:func:`picogrid.edge.forecasting.error_scenarios.forecast_errors`, ``None`` for a day without one).

    Returns
    -------
    dict
        ``pv_avail_w`` [N] (P50), ``demand_w`` [N, L] (the fan's expected value, see
        :func:`expected_value`, moved ``cfg.demand_p90_weight`` of the way to its P90), ``import_price_per_j`` [N] (P50), ``export_price_per_j`` [N]
        (its fan's P50, else import less the grid fee ``now`` reveals), step 0 from ``now``;
        with scenarios also ``scenarios`` (:func:`solve_scenarios`, then ``K`` error scenarios,
        :func:`picogrid.edge.forecasting.error_scenarios.error_scenarios`); with ``cfg.reserve`` also
        ``reserve_demand_w`` [N, L] (P90) and ``reserve_pv_w`` [N] (P10), the reserve's
        pessimistic corner (docs/design.md §4).

    Raises
    ------
    KeyError
        If a series or quantile is missing from ``fans``.
    """
    n = cfg.horizon
    take = lambda s, q: fit_horizon(fans[s][q], n)  # noqa: E731
    demand_now = np.asarray(now["demand_w"], float)
    fee = float(now["import_price_per_j"]) - float(now["export_price_per_j"])
    point = planned_point(fans, load_series, cfg.demand_p90_weight)
    pv = fit_horizon(point["pv_available_w"], n)
    demand = np.column_stack([fit_horizon(point[s], n) for s in load_series])
    imp = take("import_price_per_j", 0.5).copy()
    exp = take("export_price_per_j", 0.5).copy() if "export_price_per_j" in fans else imp - fee
    pv[0], demand[0] = now["pv_avail_w"], demand_now
    imp[0], exp[0] = now["import_price_per_j"], now["export_price_per_j"]
    out = {"pv_avail_w": pv, "demand_w": demand, "import_price_per_j": imp, "export_price_per_j": exp}
    scen = solve_scenarios(fans, cfg, load_series, fee, calibration, tick)
    if scen is not None:
        if cfg.error_days:
            scen = scen + error_scenarios(out, errors, load_series, cfg.error_days)
        out["scenarios"] = scen
    if cfg.reserve:
        out["reserve_demand_w"] = np.maximum(np.column_stack([take(s, 0.9) for s in load_series]), 0.0)
        out["reserve_pv_w"] = np.maximum(take("pv_available_w", 0.1), 0.0)
        out["reserve_demand_w"][0], out["reserve_pv_w"][0] = demand_now, now["pv_avail_w"]
    return out
