"""Forecast features, shared by training and the edge run time (numpy only, no pandas).

Two profiles share one feature layout (:data:`PROFILES`): ``lab`` (60 ticks per day, one tick
= 24 min of a real day, 60-step horizon, the demo's bench) and ``site`` (288 five-minute ticks,
288-step horizon). One feature vector per forecast call and series, in this order:

1. ``n_lags`` lags: the series' last ``n_lags`` completed ticks, oldest first [series unit];
2. calendar of the forecast start (the first tick to forecast): tick-of-day sin/cos,
   day-of-year sin/cos (period 365.25 d), weekday one-hot (Monday = 0) [-];
3. PV only: clear-sky GHI of the ``horizon`` ticks to forecast [W/m2] (astronomy, so a
   legitimate future input);
4. PV only: PAST weather, never future actuals: a flag (1 = weather given), the mean GHI of
   the last day and of the last ``n_ticks // 6`` ticks [W/m2] and the mean air temperature of
   the last day [degC]. When the caller has no weather history the four values are 0 (flag 0);
   the model is trained with 30 % of its windows masked that way, so it serves both cases.

Series of :data:`STEP_ALIGNED` (load 3) use a different, per-step layout instead: for each
forecast step ``h`` the same :data:`STEP_FEATURE_NAMES` (the values at the target's tick of day
yesterday and the day before and around them, summaries of the last two days, the target's
hour of day and weekday, ...; see :func:`step_features`), flattened step-major into
``[horizon * len(STEP_FEATURE_NAMES)]``. They are built from the last TWO days of history (what
the edge passes; weekly features from 15 days did not lower the validation MAE, see
:mod:`models.select_history`), so the model can be one small network shared by all steps
(:mod:`models.stepnet`) that sees each step's own tick-of-day context.
"""

from __future__ import annotations

import numpy as np

SERIES = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w", "import_price_per_j")
UNITS = {"pv_available_w": "W", "load1_demand_w": "W", "load2_demand_w": "W",
         "load3_demand_w": "W", "import_price_per_j": "c/J"}
#: series that cannot be negative (clipped at the output)
NON_NEGATIVE = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w")
USES_CLEARSKY = ("pv_available_w",)
USES_WEATHER = ("pv_available_w",)
#: past-weather history keys (optional in :func:`build_features`)
WEATHER_KEYS = ("ghi_w_m2", "temp_air_c")
WEATHER_NAMES = ("wx_available", "ghi_mean_last_day_w_m2", "ghi_mean_recent_w_m2", "temp_mean_last_day_c")
#: ticks per day, lags and horizon of each profile
PROFILES = {
    "lab": {"n_ticks": 60, "n_lags": 60, "horizon": 60},
    "site": {"n_ticks": 288, "n_lags": 288, "horizon": 288},
}
N_LAGS = PROFILES["lab"]["n_lags"]
HORIZON = PROFILES["lab"]["horizon"]
QUANTILES = (0.1, 0.5, 0.9)
#: series with per-step (target-aligned) features and a step-shared network (models.stepnet)
STEP_ALIGNED = ("load3_demand_w",)
#: days of history the per-step features read (the edge passes 2 x n_ticks)
STEP_HISTORY_DAYS = 2
#: two-day history summarised as this many block means (4 h blocks of the real day)
N_HISTORY_BLOCKS = 12
STEP_FEATURE_NAMES = (
    ("same_tick_yesterday", "same_tick_day_before", "around_tick_yesterday_mean",
     "around_tick_day_before_mean", "around_tick_yesterday_max", "last", "last_2h_mean", "last_2h_max",
     "yesterday_mean", "day_before_mean")
    + tuple(f"block_mean_{i}" for i in range(N_HISTORY_BLOCKS))
    + ("step_fraction", "target_tick_sin", "target_tick_cos")
    + tuple(f"target_hour_{i}" for i in range(24))
    + tuple(f"target_weekday_{d}" for d in range(7))
    + ("doy_sin", "doy_cos"))
CALENDAR_NAMES = ("tick_sin", "tick_cos", "doy_sin", "doy_cos") + tuple(f"weekday_{d}" for d in range(7))


def _check_series(series: str) -> None:
    if series not in SERIES:
        raise ValueError(f"unknown series {series!r}; known: {SERIES}")


def profile_dims(profile: str = "lab") -> dict:
    """``{'n_ticks', 'n_lags', 'horizon'}`` of a profile.

    Raises
    ------
    ValueError
        Unknown profile.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    return dict(PROFILES[profile])


def feature_names(series: str, profile: str = "lab") -> list[str]:
    """Names of the feature vector's entries for ``series``, in order."""
    _check_series(series)
    d = profile_dims(profile)
    if series in STEP_ALIGNED:
        return [f"h{h}_{n}" for h in range(d["horizon"]) for n in STEP_FEATURE_NAMES]
    names = [f"lag_{d['n_lags'] - i}" for i in range(d["n_lags"])] + list(CALENDAR_NAMES)
    if series in USES_CLEARSKY:
        names += [f"clearsky_ghi_h{h}" for h in range(d["horizon"])]
    if series in USES_WEATHER:
        names += list(WEATHER_NAMES)
    return names


def n_features(series: str, profile: str = "lab") -> int:
    """Length of the feature vector of ``series``."""
    return len(feature_names(series, profile))


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


def weather_features(ghi_w_m2, temp_air_c, n_ticks: int) -> np.ndarray:
    """Past-weather summary of the ticks before the forecast start.

    Parameters
    ----------
    ghi_w_m2 : array [..., >= n_ticks]
        Past global horizontal irradiance, oldest first [W/m2].
    temp_air_c : array [..., >= n_ticks]
        Past air temperature [degC].
    n_ticks : int
        Ticks per day.

    Returns
    -------
    numpy.ndarray [..., 4], float64
        flag (1), mean GHI of the last day, of the last ``n_ticks // 6`` ticks, mean
        temperature of the last day.
    """
    g = np.asarray(ghi_w_m2, dtype=np.float64)
    t = np.asarray(temp_air_c, dtype=np.float64)
    recent = max(n_ticks // 6, 1)
    return np.stack([np.ones(g.shape[:-1]), g[..., -n_ticks:].mean(axis=-1), g[..., -recent:].mean(axis=-1),
                     t[..., -n_ticks:].mean(axis=-1)], axis=-1)


def step_features(history_2d, tick, day_of_year, weekday, n_ticks: int, horizon: int) -> np.ndarray:
    """Per-step (target-aligned) features of :data:`STEP_FEATURE_NAMES` for each forecast step.

    For step ``h`` of a window starting at tick of day ``tick`` the target is tick
    ``(tick + h) % n_ticks`` of the same or the next day; its features are the values at the
    same tick of day yesterday and the day before (the "seasonal naive" candidates), their
    means over +-``n_ticks // 30`` ticks (+-48 min of the real day) and the maximum over twice
    that around yesterday's (clipped to the past), the last value, mean and maximum of the last
    ``n_ticks // 12`` ticks (2 h), the means of yesterday and the day before, the two days as
    :data:`N_HISTORY_BLOCKS` block means, ``h / n_ticks``, the target's tick-of-day sin/cos,
    hour-of-day one-hot (24) and weekday one-hot (7), and the day-of-year sin/cos of the start.
    Only past values are read.

    Parameters
    ----------
    history_2d : array [M, 2 * n_ticks]
        The last two days before each window's start, oldest first [series unit].
    tick : array [M] of int
        Tick of day of the first forecast step, 0 .. n_ticks-1.
    day_of_year : array [M] of int
        1 .. 366.
    weekday : array [M] of int
        0 (Monday) .. 6, of the first forecast step.
    n_ticks : int
        Ticks per day; a multiple of 6 (the history blocks).
    horizon : int
        Forecast steps, 1 .. n_ticks.

    Returns
    -------
    numpy.ndarray [M, horizon, len(STEP_FEATURE_NAMES)], float32

    Raises
    ------
    ValueError
        Wrong history shape, ``horizon`` outside 1..n_ticks, ``n_ticks`` not a multiple of 6,
        or out-of-range calendar values.
    """
    hist = np.asarray(history_2d, dtype=np.float64)
    n, L = int(n_ticks), 2 * int(n_ticks)
    if hist.ndim != 2 or hist.shape[1] != L:
        raise ValueError(f"history_2d must be [M, {L}], got {hist.shape}")
    if not 1 <= horizon <= n or n % (N_HISTORY_BLOCKS // STEP_HISTORY_DAYS):
        raise ValueError(f"need 1 <= horizon <= n_ticks and n_ticks a multiple of 6, got {horizon}, {n}")
    cal = calendar_features(tick, day_of_year, weekday, n)      # validates the ranges
    M = hist.shape[0]
    tk = np.asarray(tick, np.int64).reshape(M)
    wd = np.asarray(weekday, np.int64).reshape(M)
    h = np.arange(horizon)
    k = max(n // 30, 1)

    def around(day_back: int, half: int) -> np.ndarray:   # [M, horizon, 2 * half + 1], clipped to the past
        idx = np.minimum(L + h - day_back * n, L - 1)[:, None] + np.arange(-half, half + 1)
        return hist[:, np.clip(idx, 0, L - 1)]

    recent = max(n // 12, 1)
    summary = np.concatenate([np.stack([hist[:, -1], hist[:, -recent:].mean(1), hist[:, -recent:].max(1),
                                        hist[:, -n:].mean(1), hist[:, :n].mean(1)], axis=1),
                              hist.reshape(M, N_HISTORY_BLOCKS, -1).mean(2)], axis=1)
    target = tk[:, None] + h                                   # [M, horizon], < 2 n
    tt = target % n
    a = 2 * np.pi * tt / n
    hour = (tt * 24) // n
    twd = (wd[:, None] + target // n) % 7
    parts = [hist[:, L + h - n][..., None], hist[:, L + h - 2 * n][..., None],
             around(1, k).mean(-1)[..., None], around(2, k).mean(-1)[..., None], around(1, 2 * k).max(-1)[..., None],
             np.broadcast_to(summary[:, None, :], (M, horizon, summary.shape[1])),
             np.broadcast_to((h / n)[None, :, None], (M, horizon, 1)),
             np.sin(a)[..., None], np.cos(a)[..., None],
             hour[..., None] == np.arange(24), twd[..., None] == np.arange(7),
             np.broadcast_to(cal[:, None, 2:4], (M, horizon, 2))]
    return np.concatenate([np.asarray(p, np.float32) for p in parts], axis=-1)


def two_day_history(history, n_ticks: int) -> np.ndarray:
    """The last ``2 * n_ticks`` values of ``history``; with only one to two days given, the
    missing older ticks of the day before take the value one day later (yesterday's), so a
    forecaster started a day ago still runs.

    Returns
    -------
    numpy.ndarray [2 * n_ticks], float64

    Raises
    ------
    ValueError
        Fewer than ``n_ticks`` values, or non-finite values among those used.
    """
    hist = np.asarray(history, dtype=np.float64).ravel()
    if hist.size < n_ticks:
        raise ValueError(f"need >= {n_ticks} past ticks, got {hist.size}")
    out = np.empty(2 * n_ticks)
    got = min(hist.size, 2 * n_ticks)
    out[2 * n_ticks - got:] = hist[-got:]
    missing = 2 * n_ticks - got
    out[:missing] = out[n_ticks:n_ticks + missing]
    if not np.isfinite(out).all():
        raise ValueError(f"history has non-finite values in the last {got} ticks")
    return out


def build_features(series: str, history, calendar: dict, clearsky_ghi_w_m2=None, weather=None,
                   profile: str = "lab") -> np.ndarray:
    """Feature matrix of one forecast call.

    Parameters
    ----------
    series : str
        One of :data:`SERIES`.
    history : array [>= n_lags]
        Past tick values, oldest first; the last one is the most recent completed tick.
        Series of :data:`STEP_ALIGNED` read the last ``2 * n_ticks`` (with ``n_ticks`` to
        ``2 * n_ticks`` given, see :func:`two_day_history`).
    calendar : dict
        ``tick`` (first tick to forecast), ``day_of_year``, ``weekday``, ``n_ticks``.
    clearsky_ghi_w_m2 : array [horizon], optional
        Clear-sky GHI of the forecast ticks [W/m2]; required for PV.
    weather : dict, optional
        Past ``ghi_w_m2`` [W/m2] and ``temp_air_c`` [degC], arrays [>= n_ticks] ending at the
        last completed tick. Absent or non-finite -> the PV weather features are 0, flag 0.
    profile : str
        Key of :data:`PROFILES`.

    Returns
    -------
    numpy.ndarray [1, n_features(series, profile)], float32

    Raises
    ------
    ValueError
        Unknown series/profile, short or non-finite history, missing calendar keys, bad
        clear-sky, a calendar ``n_ticks`` other than the profile's (per-step series).
    """
    _check_series(series)
    d = profile_dims(profile)
    if series in STEP_ALIGNED:
        missing = {"tick", "day_of_year", "weekday", "n_ticks"} - set(calendar)
        if missing:
            raise ValueError(f"calendar lacks {sorted(missing)}")
        n = int(calendar["n_ticks"])
        if n != d["n_ticks"]:
            raise ValueError(f"{series}: calendar n_ticks {n} != profile {profile!r} {d['n_ticks']}")
        try:
            two = two_day_history(history, n)
        except ValueError as exc:
            raise ValueError(f"{series}: {exc}") from None
        x = step_features(two[None, :], [calendar["tick"]], [calendar["day_of_year"]], [calendar["weekday"]],
                          n, d["horizon"])
        return x.reshape(1, -1)
    hist = np.asarray(history, dtype=np.float64).ravel()
    if hist.size < d["n_lags"]:
        raise ValueError(f"{series}: need >= {d['n_lags']} past ticks, got {hist.size}")
    lags = hist[-d["n_lags"]:]
    if not np.isfinite(lags).all():
        raise ValueError(f"{series}: history has non-finite values in the last {d['n_lags']} ticks")
    missing = {"tick", "day_of_year", "weekday", "n_ticks"} - set(calendar)
    if missing:
        raise ValueError(f"calendar lacks {sorted(missing)}")
    parts = [lags, calendar_features(calendar["tick"], calendar["day_of_year"],
                                     calendar["weekday"], int(calendar["n_ticks"]))]
    if series in USES_CLEARSKY:
        if clearsky_ghi_w_m2 is None:
            raise ValueError(f"{series}: clearsky_ghi_w_m2 [{d['horizon']}] is required")
        cs = np.asarray(clearsky_ghi_w_m2, dtype=np.float64).ravel()
        if cs.size != d["horizon"] or not np.isfinite(cs).all():
            raise ValueError(f"clearsky_ghi_w_m2 must be {d['horizon']} finite values, got {cs.size}")
        parts.append(cs)
    if series in USES_WEATHER:
        wx = np.zeros(len(WEATHER_NAMES))
        if weather is not None and all(k in weather for k in WEATHER_KEYS):
            g = np.asarray(weather["ghi_w_m2"], dtype=np.float64).ravel()
            t = np.asarray(weather["temp_air_c"], dtype=np.float64).ravel()
            n = d["n_ticks"]
            if g.size >= n and t.size >= n and np.isfinite(g[-n:]).all() and np.isfinite(t[-n:]).all():
                wx = weather_features(g, t, n)
        parts.append(wx)
    return np.concatenate(parts)[None, :].astype(np.float32)


def training_windows(series: str, values, tick, day_of_year, weekday, n_ticks: int,
                     clearsky_ghi_w_m2=None, starts=None, weather=None, profile: str = "lab"):
    """All (features, target) windows of a contiguous tick series.

    Window ``i`` forecasts ``values[i : i + horizon]`` from ``values[i - n_lags : i]`` with the
    calendar of tick ``i`` (exactly what :func:`build_features` builds at run time); series of
    :data:`STEP_ALIGNED` read ``values[i - 2 * n_ticks : i]`` (:func:`step_features`).

    Parameters
    ----------
    series : str
    values, tick, day_of_year, weekday : arrays [T]
    n_ticks : int
    clearsky_ghi_w_m2 : array [T], optional (required for PV)
    starts : array of int, optional
        Window starts to use; default every ``i`` in ``max(n_lags, n_ticks) .. T - horizon``.
    weather : dict of arrays [T], optional
        ``ghi_w_m2``, ``temp_air_c``; absent -> PV weather features 0 (flag 0).
    profile : str

    Returns
    -------
    X : numpy.ndarray [M, n_features], float32
    Y : numpy.ndarray [M, horizon], float64
    start_tick : numpy.ndarray [M], int64
    """
    _check_series(series)
    d = profile_dims(profile)
    n_lags, horizon = d["n_lags"], d["horizon"]
    v = np.asarray(values, dtype=np.float64)
    if series in STEP_ALIGNED:
        first = STEP_HISTORY_DAYS * n_ticks
        if starts is None:
            starts = np.arange(first, v.size - horizon + 1)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and (starts.min() < first or starts.max() > v.size - horizon):
            raise ValueError(f"window starts out of range (per-step features need {first} past ticks)")
        tk = np.asarray(tick)[starts]
        X = step_features(v[starts[:, None] + np.arange(-first, 0)], tk, np.asarray(day_of_year)[starts],
                          np.asarray(weekday)[starts], n_ticks, horizon)
        return X.reshape(starts.size, -1), v[starts[:, None] + np.arange(horizon)], tk.astype(np.int64)
    first = max(n_lags, n_ticks) if (series in USES_WEATHER and weather is not None) else n_lags
    if starts is None:
        starts = np.arange(first, v.size - horizon + 1)
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < first or starts.max() > v.size - horizon):
        raise ValueError("window starts out of range")
    lag_idx = starts[:, None] + np.arange(-n_lags, 0)
    hor_idx = starts[:, None] + np.arange(horizon)
    tk = np.asarray(tick)[starts]
    parts = [v[lag_idx], calendar_features(tk, np.asarray(day_of_year)[starts],
                                           np.asarray(weekday)[starts], n_ticks)]
    if series in USES_CLEARSKY:
        if clearsky_ghi_w_m2 is None:
            raise ValueError(f"{series}: clearsky_ghi_w_m2 is required")
        parts.append(np.asarray(clearsky_ghi_w_m2, dtype=np.float64)[hor_idx])
    if series in USES_WEATHER:
        if weather is None:
            parts.append(np.zeros((starts.size, len(WEATHER_NAMES))))
        else:
            past = starts[:, None] + np.arange(-n_ticks, 0)
            parts.append(weather_features(np.asarray(weather["ghi_w_m2"], np.float64)[past],
                                          np.asarray(weather["temp_air_c"], np.float64)[past], n_ticks))
    return np.concatenate(parts, axis=1).astype(np.float32), v[hor_idx], tk.astype(np.int64)


def postprocess(series: str, quantiles) -> np.ndarray:
    """Make a quantile fan physical: clip non-negative series at 0, then sort the quantiles
    (monotone rearrangement, Chernozhukov, Fernandez-Val & Galichon, Econometrica 2010).

    Parameters
    ----------
    quantiles : array [..., len(QUANTILES), horizon]

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


def persistence(history, horizon: int = HORIZON) -> np.ndarray:
    """Last completed value held over the horizon.

    Raises
    ------
    ValueError
        Empty history.
    """
    hist = np.asarray(history, dtype=np.float64).ravel()
    if hist.size < 1:
        raise ValueError("persistence needs at least one past tick")
    return np.full(horizon, hist[-1])
