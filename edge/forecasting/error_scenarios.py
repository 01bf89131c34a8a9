"""Forecast-error scenarios: this tick's forecast plus the errors of the forecasts issued at the
same tick on the last ``K`` days.

The quantile scenarios of :mod:`picogrid.edge.forecasting.scenarios` hold the coming hours' net energy at
the P10/P50/P90 of the forecaster's past errors, with the weights of a three-point
approximation, which say little about a day far in a tail. The errors the forecasts of earlier
days actually made keep the shapes of such days (an evening under-forecast, a cloudy afternoon)
with their timing, so ``K`` scenarios ``point + error_k`` beside the quantile ones let the plan
weigh them. This is the historical-error (empirical) way of building scenarios from a point
forecast; ``K`` and the scenarios' total weight (``MpcConfig.error_scenario_days``,
``error_scenario_weight``) were chosen on the validation days (``docs/results-log.md``: lab
capture 65.7 % against 60.5 % there, 64.5 % against 64.0 % on the test days, both after the
same 7-day warm-up of the forecaster).

The point forecast is the plan's own (:func:`picogrid.edge.forecasting.scenarios.planned_point`: PV's
P50, each load's fan mean moved ``demand_p90_weight`` towards its P90), the values
:func:`~picogrid.edge.forecasting.scenarios.forecast_inputs` plans the expected case on, so an error
scenario is that plan plus what such a plan missed before.
"""

import numpy as np

#: PV's series; the loads' come from the caller. Prices keep the median's (the quantile
#: scenarios carry their spread).
PV_SERIES = "pv_available_w"


def forecast_errors(point, realised):
    """``realised - point`` for every series of ``point``, over the steps both hold.

    Parameters
    ----------
    point : mapping series -> array [>= N]
        A past tick's :func:`~picogrid.edge.forecasting.scenarios.planned_point`.
    realised : mapping series -> array [N]
        What those steps turned out to be (all in the past by now).

    Returns
    -------
    dict
        ``{series: array [N]}``.
    """
    out = {}
    for s, p in point.items():
        m = min(len(realised[s]), len(p))     # a plan longer than the forecaster's horizon
        out[s] = np.asarray(realised[s], float)[:m] - np.asarray(p, float)[:m]
    return out


def error_scenarios(window, errors, load_series, count):
    """``count`` scenario inputs of :meth:`MpcController.solve`: the window's point forecast
    plus each past error (none yet: the point forecast itself).

    Parameters
    ----------
    window : mapping
        :func:`~picogrid.edge.forecasting.scenarios.forecast_inputs`'s plan: ``pv_avail_w`` [N] and
        ``demand_w`` [N, L] (step 0 the known values), prices [N].
    errors : sequence of mapping or None
        Up to ``count`` :func:`forecast_errors` (``{series: array [N]}``), most recent day first;
        ``None`` for a day without one.
    load_series : sequence of str
        Load series names, in the order of ``window["demand_w"]``'s columns.
    count : int
        Scenarios to return (``MpcConfig.error_scenario_days``).

    Returns
    -------
    list of dict
        ``count`` mappings with ``pv_avail_w`` [N], ``demand_w`` [N, L] (>= 0; step 0 the
        window's) and the window's prices.
    """
    pv0, dem0 = np.asarray(window["pv_avail_w"], float), np.asarray(window["demand_w"], float)
    n = pv0.shape[0]
    errors = list(errors or [])[:count]
    errors += [None] * (count - len(errors))
    out = []
    for err in errors:
        pv, dem = pv0.copy(), dem0.copy()
        if err is not None:
            pv[1:] += _fit(err[PV_SERIES], n)[1:]
            for j, s in enumerate(load_series):
                dem[1:, j] += _fit(err[s], n)[1:]
        out.append({"pv_avail_w": np.maximum(pv, 0.0), "demand_w": np.maximum(dem, 0.0),
                    "import_price_per_j": window["import_price_per_j"],
                    "export_price_per_j": window["export_price_per_j"]})
    return out


def _fit(x, n):
    x = np.asarray(x, float)
    return x[:n] if len(x) >= n else np.concatenate([x, np.zeros(n - len(x))])
