"""A user's own days as a scenario: clear-sky GHI from the site's location, and a HIL day on the
bench (``picogrid demo --data FILE``, issue 29 point 3).

:func:`bench_days` turns a file (docs/own-data.md) into the columns a replayed day has
(:func:`models.scenario.build_bench_days`; ``hil/day.py`` saves them as the scenario JSON): the
run day (default the file's last whole day) and the days before it as history, at the site's
ticks, scaled to the site the way the shipped replay scales its data: ``sun`` = PV / its 99.9th
percentile (clipped to 0..1) and ``pv_available_w`` = sun x ``[pv] capability_w``; each load / its
99th percentile x the load rating (clipped there); both prices x the site's
``price_scale_per_j`` / the mean import price. Every factor is taken from the history days only
(never the run day) and stated in the notes the demo prints with its summary.
"""

from __future__ import annotations

import datetime as _dt
import warnings

import numpy as np
import pandas as pd

from . import user_data

PV_SCALE_QUANTILE = 0.999
LOAD_SCALE_QUANTILE = 0.99
#: a load rating when the site file names none (models.scenario.BENCH_DEFAULTS)
DEFAULT_LOAD_RATING_W = 1.0


def clearsky_ghi(days, n_ticks, tz, latitude, longitude, altitude=None):
    """Clear-sky GHI [W/m2] of every tick of ``days`` (ISO dates in the file's UTC offset ``tz``):
    the mean of pvlib's Ineichen model over each tick's minutes (or its midpoint). ``altitude``
    [m]: default pvlib's look-up for the location.

    Raises
    ------
    ValueError
        Latitude or longitude out of range.
    """
    import pvlib

    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError(f"latitude {latitude} / longitude {longitude} out of range (-90..90, -180..180)")
    per_tick = 1440 // n_ticks if 1440 % n_ticks == 0 else 1
    step_s = 86400 / n_ticks / per_tick
    loc = pvlib.location.Location(latitude, longitude, altitude=altitude)
    out = []
    for day in days:
        start = pd.Timestamp(day).tz_localize(tz)
        times = start + pd.to_timedelta((np.arange(n_ticks * per_tick) + 0.5) * step_s, unit="s")
        with warnings.catch_warnings():     # pvlib 0.16 on pandas 3: DatetimeIndex.dayofyear deprecated
            warnings.filterwarnings("ignore", message=".*dayofyear.*")
            ghi = loc.get_clearsky(pd.DatetimeIndex(times), model="ineichen")["ghi"].to_numpy(float)
        out.append(np.nan_to_num(ghi).reshape(n_ticks, per_tick).mean(axis=1))
    return np.concatenate(out)


def consecutive_tail(days):
    """The last run of consecutive ISO dates in ``days`` (sorted): ``(kept, skipped)``."""
    d = [_dt.date.fromisoformat(x) for x in days]
    start = len(d) - 1
    while start > 0 and (d[start] - d[start - 1]).days == 1:
        start -= 1
    return days[start:], days[:start]


def load_rating_w(site):
    """A site's per-load rating [W]: ``[scenario] load_rating_w``, else ``[loads] rating_w``, else
    :data:`DEFAULT_LOAD_RATING_W`."""
    return float(site.get("scenario", {}).get("load_rating_w",
                                              site.get("loads", {}).get("rating_w", DEFAULT_LOAD_RATING_W)))


def bench_days(path, site, latitude, longitude, altitude=None, day=None, history_days=2, max_history_days=None,
               currency_factor=1.0, kind="home"):
    """The run day of a user's file with the days before it, scaled to ``site``.

    Parameters
    ----------
    path : str or Path
        The time series (docs/own-data.md).
    site : dict
        Parsed site TOML: ``[bench] n_ticks``, ``[pv] capability_w``, the load rating
        (:func:`load_rating_w`) and ``[optimizer] price_scale_per_j``.
    latitude, longitude, altitude : float
        The site's location [deg N, deg E, m] (clear-sky GHI).
    day : str, optional
        ISO date of the run day (default: the file's last whole day).
    history_days : int
        Days before the run day that must be in the file (the forecasters' lags).
    max_history_days : int, optional
        Days before the run day to take when the file has them (default ``history_days``).
    currency_factor : float
        Site currency units per unit of the file's prices.
    kind : str
        ``home`` or ``bench``: the plausible power range of the file (:func:`user_data.load_user_data`).

    Returns
    -------
    (pandas.DataFrame, list of str)
        Rows of (day, tick), the history days then the run day, with the columns of
        :func:`models.scenario.build_bench_days` the edge reads (``day``, ``tick``,
        ``day_of_year``, ``weekday``, ``sun``, ``pv_available_w``, ``load1_demand_w`` ..
        ``load3_demand_w``, ``import_price_per_j``, ``export_price_per_j``,
        ``clearsky_ghi_w_m2``, weather if the file has it); and notes saying what was done.

    Raises
    ------
    picogrid.models.user_data.DataError
        The file fails its checks.
    ValueError
        The run day is not a whole day of the file, fewer than ``history_days`` consecutive
        whole days precede it, or the history has no PV or no import price to scale by.
    """
    n_ticks = int(site["bench"]["n_ticks"])
    data = user_data.load_user_data(path, kind, currency_factor)
    frame, dropped = user_data.tick_days(data, n_ticks, hold=True)
    days = list(dict.fromkeys(frame["day"]))
    day = day or days[-1]
    if day not in days:
        raise ValueError(f"{path}: {day} is not a whole day without gaps of the file (whole days: {days[0]} .. "
                         f"{days[-1]}; left out: {dropped})")
    kept, _ = consecutive_tail(days[:days.index(day) + 1])
    want = max(history_days, max_history_days or history_days)
    have = len(kept) - 1
    if have < history_days:
        raise ValueError(f"{path}: the run day {day} needs {history_days} whole consecutive day(s) before it in the "
                         f"file (the forecasters' lags), the file has {have}: pick a later --day or give a longer file")
    use = kept[-(min(have, want) + 1):]
    frame = frame[frame["day"].isin(use)].reset_index(drop=True)
    hist = frame[frame["day"] != day]
    notes = [f"{path}: run day {day}, history {use[0]} .. {use[-2]} ({len(use) - 1} days"
             + (f" of the {want} the site's forecasters and error scenarios read" if len(use) - 1 < want else "")
             + f"); {data.step_s:g} s samples at {86400 / n_ticks:g} s ticks"
             + (" (each sample held over its interval: a tick carries means reaching up to one sample past it)"
                if (86400 / n_ticks) % data.step_s else "")]
    cap = float(np.quantile(hist["pv_available_w"], PV_SCALE_QUANTILE))
    if cap <= 0:
        raise ValueError(f"{path}: no PV in the history days {use[0]} .. {use[-2]} to scale the sun by")
    pv_w = float(site["pv"]["capability_w"])
    frame["sun"] = np.clip(frame["pv_available_w"] / cap, 0.0, 1.0)
    frame["pv_available_w"] = frame["sun"] * pv_w
    scaled = [f"sun = PV / {cap:.5g} W (its {100 * PV_SCALE_QUANTILE:g}th percentile), PV = sun x {pv_w:g} W"]
    rating = load_rating_w(site)
    for k in (1, 2, 3):
        c = f"load{k}_demand_w"
        q = float(np.quantile(hist[c], LOAD_SCALE_QUANTILE))
        if q > 0:
            frame[c] = np.clip(frame[c] * (rating / q), 0.0, rating)
            scaled.append(f"{c} x {rating / q:.4g} ({100 * LOAD_SCALE_QUANTILE:g}th percentile {q:.5g} W -> "
                          f"{rating:g} W, clipped)")
    mean_price = float(hist["import_price_per_j"].mean())
    price_scale = float(site.get("optimizer", {}).get("price_scale_per_j", 0.0))
    if price_scale > 0:
        if mean_price <= 0:
            raise ValueError(f"{path}: the history's mean import price is {mean_price:g}: nothing to scale by")
        f = price_scale / mean_price
        frame["import_price_per_j"] *= f
        frame["export_price_per_j"] *= f
        scaled.append(f"prices x {f:.4g} (mean import {mean_price:.4g} -> the site's price_scale_per_j {price_scale:g})")
    notes.append("scaled to the site, factors from the history days only: " + "; ".join(scaled))
    frame["clearsky_ghi_w_m2"] = clearsky_ghi(use, n_ticks, data.frame.index.tz, latitude, longitude, altitude)
    notes.append(f"clear-sky GHI: pvlib Ineichen at {latitude:g} N, {longitude:g} E"
                 + (f", {altitude:g} m" if altitude is not None else ""))
    return frame, notes
