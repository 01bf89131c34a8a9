"""Forecast features, shared by training and the edge run time (numpy only, no pandas).

One feature vector per forecast call and series, in this order:

1. ``N_LAGS`` lags: the series' last ``N_LAGS`` completed ticks, oldest first [series unit];
2. calendar of the forecast start (the first tick to forecast): tick-of-day sin/cos,
   day-of-year sin/cos (period 365.25 d), weekday one-hot (Monday = 0) [-];
3. PV only: clear-sky GHI of the ``HORIZON`` ticks to forecast [W/m2] (deterministic, so a
   legitimate future input).
"""

from __future__ import annotations

import numpy as np

SERIES = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w", "import_price_per_j")
UNITS = {"pv_available_w": "W", "load1_demand_w": "W", "load2_demand_w": "W",
         "load3_demand_w": "W", "import_price_per_j": "c/J"}
#: series that cannot be negative (clipped at the output)
NON_NEGATIVE = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w")
USES_CLEARSKY = ("pv_available_w",)
N_LAGS = 60
HORIZON = 60
QUANTILES = (0.1, 0.5, 0.9)
CALENDAR_NAMES = ("tick_sin", "tick_cos", "doy_sin", "doy_cos") + tuple(f"weekday_{d}" for d in range(7))


def _check_series(series: str) -> None:
    if series not in SERIES:
        raise ValueError(f"unknown series {series!r}; known: {SERIES}")


def feature_names(series: str) -> list[str]:
    """Names of the feature vector's entries for ``series``, in order."""
    _check_series(series)
    names = [f"lag_{N_LAGS - i}" for i in range(N_LAGS)] + list(CALENDAR_NAMES)
    if series in USES_CLEARSKY:
        names += [f"clearsky_ghi_h{h}" for h in range(HORIZON)]
    return names


def n_features(series: str) -> int:
    """Length of the feature vector of ``series``."""
    return len(feature_names(series))


def calendar_features(tick, day_of_year, weekday, n_ticks: int) -> np.ndarray:
    """Calendar features of the forecast start.

    Parameters
    ----------
    tick : int or array [M]
        Tick of day of the first forecast step, 0 .. n_ticks-1.
    day_of_year : int or array [M]
        1 .. 366.
    weekday : int or array [M]
        0 (Monday) .. 6.
    n_ticks : int
        Ticks per day.

    Returns
    -------
    numpy.ndarray [M, 11] (or [11] for scalars), float64

    Raises
    ------
    ValueError
        Out-of-range values.
    """
    tick, doy, wd = (np.asarray(x) for x in (tick, day_of_year, weekday))
    if n_ticks < 1 or np.any((tick < 0) | (tick >= n_ticks)):
        raise ValueError(f"tick must be in 0..{n_ticks - 1}, got {tick}")
    if np.any((doy < 1) | (doy > 366)):
        raise ValueError(f"day_of_year must be in 1..366, got {doy}")
    if np.any((wd < 0) | (wd > 6)) or np.any(wd != np.round(wd)):
        raise ValueError(f"weekday must be an integer 0..6, got {wd}")
    a = 2 * np.pi * tick / n_ticks
    b = 2 * np.pi * (doy - 1) / 365.25
    onehot = (wd.astype(np.int64)[..., None] == np.arange(7)).astype(np.float64)
    return np.concatenate([np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=-1), onehot], axis=-1)


def build_features(series: str, history, calendar: dict, clearsky_ghi_w_m2=None) -> np.ndarray:
    """Feature matrix of one forecast call.

    Parameters
    ----------
    series : str
        One of :data:`SERIES`.
    history : array [>= N_LAGS]
        Past tick values, oldest first; the last one is the most recent completed tick.
    calendar : dict
        ``tick`` (first tick to forecast), ``day_of_year``, ``weekday``, ``n_ticks``.
    clearsky_ghi_w_m2 : array [HORIZON], optional
        Clear-sky GHI of the forecast ticks [W/m2]; required for PV.

    Returns
    -------
    numpy.ndarray [1, n_features(series)], float32

    Raises
    ------
    ValueError
        Unknown series, short or non-finite history, missing calendar keys, bad clear-sky.
    """
    _check_series(series)
    hist = np.asarray(history, dtype=np.float64).ravel()
    if hist.size < N_LAGS:
        raise ValueError(f"{series}: need >= {N_LAGS} past ticks, got {hist.size}")
    lags = hist[-N_LAGS:]
    if not np.isfinite(lags).all():
        raise ValueError(f"{series}: history has non-finite values in the last {N_LAGS} ticks")
    missing = {"tick", "day_of_year", "weekday", "n_ticks"} - set(calendar)
    if missing:
        raise ValueError(f"calendar lacks {sorted(missing)}")
    parts = [lags, calendar_features(calendar["tick"], calendar["day_of_year"],
                                     calendar["weekday"], int(calendar["n_ticks"]))]
    if series in USES_CLEARSKY:
        if clearsky_ghi_w_m2 is None:
            raise ValueError(f"{series}: clearsky_ghi_w_m2 [{HORIZON}] is required")
        cs = np.asarray(clearsky_ghi_w_m2, dtype=np.float64).ravel()
        if cs.size != HORIZON or not np.isfinite(cs).all():
            raise ValueError(f"clearsky_ghi_w_m2 must be {HORIZON} finite values, got {cs.size}")
        parts.append(cs)
    return np.concatenate(parts)[None, :].astype(np.float32)


def training_windows(series: str, values, tick, day_of_year, weekday, n_ticks: int,
                     clearsky_ghi_w_m2=None, starts=None):
    """All (features, target) windows of a contiguous tick series.

    Window ``i`` forecasts ``values[i : i + HORIZON]`` from ``values[i - N_LAGS : i]`` with the
    calendar of tick ``i`` (exactly what :func:`build_features` builds at run time).

    Parameters
    ----------
    series : str
    values, tick, day_of_year, weekday : arrays [T]
    n_ticks : int
    clearsky_ghi_w_m2 : array [T], optional (required for PV)
    starts : array of int, optional
        Window starts to use; default every ``i`` in ``N_LAGS .. T - HORIZON``.

    Returns
    -------
    X : numpy.ndarray [M, n_features], float32
    Y : numpy.ndarray [M, HORIZON], float64
    start_tick : numpy.ndarray [M], int64
    """
    _check_series(series)
    v = np.asarray(values, dtype=np.float64)
    if starts is None:
        starts = np.arange(N_LAGS, v.size - HORIZON + 1)
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < N_LAGS or starts.max() > v.size - HORIZON):
        raise ValueError("window starts out of range")
    lag_idx = starts[:, None] + np.arange(-N_LAGS, 0)
    hor_idx = starts[:, None] + np.arange(HORIZON)
    tk = np.asarray(tick)[starts]
    parts = [v[lag_idx], calendar_features(tk, np.asarray(day_of_year)[starts],
                                           np.asarray(weekday)[starts], n_ticks)]
    if series in USES_CLEARSKY:
        if clearsky_ghi_w_m2 is None:
            raise ValueError(f"{series}: clearsky_ghi_w_m2 is required")
        parts.append(np.asarray(clearsky_ghi_w_m2, dtype=np.float64)[hor_idx])
    return np.concatenate(parts, axis=1).astype(np.float32), v[hor_idx], tk.astype(np.int64)


def postprocess(series: str, quantiles) -> np.ndarray:
    """Make a quantile fan physical: clip non-negative series at 0, then sort the quantiles
    (monotone rearrangement, Chernozhukov, Fernandez-Val & Galichon, Econometrica 2010).

    Parameters
    ----------
    quantiles : array [..., len(QUANTILES), HORIZON]

    Returns
    -------
    numpy.ndarray, same shape, float64
    """
    q = np.asarray(quantiles, dtype=np.float64)
    if series in NON_NEGATIVE:
        q = np.maximum(q, 0.0)
    return np.sort(q, axis=-2)


def seasonal_naive(history, n_ticks: int, horizon: int = HORIZON) -> np.ndarray:
    """Same tick yesterday: forecast step h is ``history[-n_ticks + (h % n_ticks)]``.

    Raises
    ------
    ValueError
        History shorter than ``n_ticks``.
    """
    hist = np.asarray(history, dtype=np.float64).ravel()
    if n_ticks < 1 or hist.size < n_ticks:
        raise ValueError(f"seasonal naive needs >= n_ticks={n_ticks} past ticks, got {hist.size}")
    return hist[-n_ticks:][np.arange(horizon) % n_ticks]
