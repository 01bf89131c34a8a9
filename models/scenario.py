"""The bench-scale scenario: real days mapped onto the lab bench's 60-tick day.

One real calendar day becomes ``n_ticks`` ticks (default 60, so one tick = 24 min of the real
day, like the lab market feed's 60-tick day). Each tick's value is the time-weighted mean of
the real series over that tick's minutes, in the local standard time of the series' own site
(see :mod:`models.data`). The shapes are real; only scaling and resampling happen here:

- ``sun`` = measured PV AC power / system capacity, clipped to [0, 1]; the capacity is the
  99.9th percentile of the whole PV record (cloud-edge spikes above it are clipped);
- ``pv_available_w`` = sun * ``pv_capability_w``;
- ``load{k}_demand_w`` = sub-meter k / its 99th percentile over the whole record at tick
  resolution * ``load_rating_w``, clipped to the rating;
- ``import_price_per_j`` = (spot + ``grid_fee_eur_per_mwh``) * ``cents_per_j_per_eur_per_mwh``,
  ``export_price_per_j`` = spot * ``cents_per_j_per_eur_per_mwh``, both in cents per joule at
  bench scale (the lab feed's unit). A spot price of 40 EUR/MWh gives 2.85 c/J import and
  0.6 c/J export with the defaults. Negative spot prices stay negative.

The datasets cover different years, so a scenario day D (2012-01-01 .. 2013-12-31, the PV
calendar) takes PV and weather from D itself, the load from the day of year ``D.year - 4``
with the same weekday nearest to D's month-day, and the price from year 2015 (for 2012) or
2018 (for 2013), same rule. A source day with missing data is replaced by another real day
(PV: same month-day of 2011, which is outside the scenario calendar, then of an earlier
scenario year, then the previous days; a PV gap at night, where clear-sky GHI is 0, reads 0; load and price: the same
weekday one, two, ... eight weeks before, and only if none is complete, weeks after); the source
day actually used is reported in ``*_source_day`` and flagged in ``*_substitute`` columns. Details in ``models/DATA.md``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging

import numpy as np
import pandas as pd

from . import data

log = logging.getLogger(__name__)

#: Default bench: lab profile of docs/design.md section 2 plus the price scaling documented above.
BENCH_DEFAULTS = {
    "pv_capability_w": 4.0,            # PV emulator MPP [W]
    "load_rating_w": 1.0,              # each LED driver [W]
    "grid_fee_eur_per_mwh": 150.0,     # network charges + levies added to spot for import
    "cents_per_j_per_eur_per_mwh": 0.015,  # bench price scale [c/J per EUR/MWh]
}
SCENARIO_FIRST_DAY = _dt.date(2012, 1, 1)
SCENARIO_LAST_DAY = _dt.date(2013, 12, 31)
#: scenario (PV) year -> (load year, price year)
YEAR_MAP = {2012: (2008, 2015), 2013: (2009, 2018)}
#: PV year used only as a pool of substitutes for incomplete PV days
PV_SPARE_YEAR = 2011
#: chronological split of the scenario calendar (inclusive bounds)
SPLIT = {
    "train": ("2012-01-01", "2012-12-31"),
    "validation": ("2013-01-01", "2013-06-30"),
    "test": ("2013-07-01", "2013-12-31"),
}
PV_CAPACITY_QUANTILE = 0.999
LOAD_SCALE_QUANTILE = 0.99
_MIN_VALID_FRACTION = 0.5     # a tick needs half of its minutes measured
_MAX_LOAD_MISSING_DAY = 0.02  # a load day may miss at most 2 % of its minutes


class _TickTable:
    """Per-day tick means of a regular series: ``values[day, tick, column]``."""

    def __init__(self, frame: pd.DataFrame, sample_min: int, n_ticks: int, centred: bool = False):
        if 1440 % n_ticks:
            raise ValueError(f"n_ticks must divide 1440 minutes, got {n_ticks}")
        step = frame.index[1] - frame.index[0]
        if step != pd.Timedelta(minutes=sample_min):
            raise ValueError(f"expected a {sample_min}-min grid, got {step}")
        first = frame.index[0].normalize()
        last = frame.index[-1].normalize() + pd.Timedelta(days=1)
        grid = pd.date_range(first, last, freq=f"{sample_min}min", inclusive="left")
        arr = frame.reindex(grid).to_numpy(np.float64)
        # each sample holds over its own interval, never beyond it: [label, label + step)
        # for interval averages, [label - step/2, label + step/2) for instantaneous samples
        minutes = np.repeat(arr, sample_min, axis=0)
        if centred:
            half = sample_min // 2
            minutes = np.concatenate([minutes[half:], np.full((half, arr.shape[1]), np.nan)])
        n_days = len(minutes) // 1440
        per_tick = 1440 // n_ticks
        cube = minutes.reshape(n_days, n_ticks, per_tick, arr.shape[1])
        valid = np.isfinite(cube)
        self.valid_fraction = valid.mean(axis=2)
        with np.errstate(invalid="ignore"):
            self.values = np.where(valid, cube, 0.0).sum(axis=2) / valid.sum(axis=2)
        self.values[self.valid_fraction < _MIN_VALID_FRACTION] = np.nan
        self.columns = list(frame.columns)
        self.first_day = first.date()
        self.n_days = n_days

    def row(self, day: _dt.date) -> int | None:
        i = (day - self.first_day).days
        return i if 0 <= i < self.n_days else None

    def complete(self, day: _dt.date) -> bool:
        i = self.row(day)
        return i is not None and bool(np.isfinite(self.values[i]).all())


@functools.lru_cache(maxsize=4)
def _tables(n_ticks: int) -> dict:
    """Tick tables of all sources, plus the dataset-wide scale factors (cached per n_ticks)."""
    pv = data.load_pv_power()
    weather = data.load_pv_weather()
    house = data.load_household()
    prices = data.load_day_ahead_prices()
    prices = prices.reindex(pd.date_range(prices.index[0], prices.index[-1], freq="1h"))
    tables = {
        "pv": _TickTable(pv, 15, n_ticks),
        "weather": _TickTable(weather, 30, n_ticks, centred=True),  # PSM3: instantaneous
        "load": _TickTable(house[list(data.LOAD_COLUMNS)], 1, n_ticks),
        "price": _TickTable(prices, 60, n_ticks),
    }
    missing_day = house["missing"].resample("D").mean()
    tables["load_bad_days"] = {d.date() for d in missing_day.index[missing_day > _MAX_LOAD_MISSING_DAY]}
    tables["pv_capacity_w"] = float(np.nanquantile(pv["pv_power_w"], PV_CAPACITY_QUANTILE))
    load_vals = tables["load"].values.reshape(-1, len(data.LOAD_COLUMNS))
    tables["load_p99_w"] = np.nanquantile(load_vals, LOAD_SCALE_QUANTILE, axis=0)
    log.info("PV capacity %.0f W, load p99 %s W", tables["pv_capacity_w"], tables["load_p99_w"])
    return tables


def _same_weekday_near(day: _dt.date, year: int) -> _dt.date:
    """Date in ``year`` with ``day``'s weekday, nearest to its month-day (Feb 29 -> Feb 28)."""
    try:
        base = day.replace(year=year)
    except ValueError:
        base = _dt.date(year, 2, 28)
    shift = (day.weekday() - base.weekday()) % 7
    return base + _dt.timedelta(days=shift if shift <= 3 else shift - 7)


def _weekly_candidates(day: _dt.date):
    # backwards first: a substitute repeats a day the scenario has already shown, so a window's
    # lags never contain a copy of its own target; forwards only where no earlier week exists
    # (the first days of a source year), and then flagged in ``*_substitute``
    yield day
    for k in range(1, 9):
        yield day - _dt.timedelta(days=7 * k)
    for k in range(1, 9):
        yield day + _dt.timedelta(days=7 * k)


def _pv_candidates(day: _dt.date):
    # 2011 (outside the scenario calendar, so never a training or test day) first, then
    # earlier scenario years, then the previous days: substitutes only ever look backwards
    yield day
    for year in [PV_SPARE_YEAR] + list(range(day.year - 1, PV_SPARE_YEAR, -1)):
        if year < day.year:
            try:
                yield day.replace(year=year)
            except ValueError:  # Feb 29
                yield _dt.date(year, 2, 28)
    # at least 3 days back: beyond the models' two days of lags, so no window's lags can
    # hold a copy of its own target (models/DATA.md)
    for k in range(3, 15):
        yield day - _dt.timedelta(days=k)


def _pv_complete(t: dict, day: _dt.date) -> bool:
    """All daytime ticks measured (night ticks may be missing: PV is 0 without sun)."""
    i, j = t["pv"].row(day), t["weather"].row(day)
    if i is None or j is None or not np.isfinite(t["weather"].values[j]).all():
        return False
    daytime = t["weather"].values[j, :, t["weather"].columns.index("ghi_clear_w_m2")] > 0
    return bool(np.isfinite(t["pv"].values[i, daytime, 0]).all())


def _substitute_kind(used: _dt.date, wanted: _dt.date) -> str:
    """'' if the wanted source day was used, else 'earlier' or 'later' (a flagged substitute)."""
    if used == wanted:
        return ""
    return "earlier" if used < wanted else "later"


def _pick(candidates, ok, what: str, day: _dt.date) -> _dt.date:
    for cand in candidates:
        if ok(cand):
            if cand != day:
                log.debug("%s for %s taken from %s", what, day, cand)
            return cand
    raise ValueError(f"no complete {what} source day found for {day}")


def build_bench_days(first_day: str, n_days: int, n_ticks: int = 60,
                     bench: dict | None = None) -> pd.DataFrame:
    """Consecutive real days at bench scale, one row per (day, tick).

    Parameters
    ----------
    first_day : str
        First scenario day, ``'YYYY-MM-DD'``, within 2012-01-01 .. 2013-12-31.
    n_days : int
        Number of consecutive days (>= 1) ending no later than 2013-12-31.
    n_ticks : int
        Ticks per day; must divide 1440 (60 -> 24 min per tick).
    bench : dict, optional
        Overrides of :data:`BENCH_DEFAULTS` (``pv_capability_w`` [W], ``load_rating_w`` [W],
        ``grid_fee_eur_per_mwh`` [EUR/MWh], ``cents_per_j_per_eur_per_mwh``).

    Returns
    -------
    pandas.DataFrame
        ``n_days * n_ticks`` rows with columns ``day`` (str), ``tick`` (0..n_ticks-1),
        ``day_of_year`` (1..366), ``weekday`` (0 = Monday), ``sun`` [0..1],
        ``pv_available_w`` [W], ``load1_demand_w`` .. ``load3_demand_w`` [W],
        ``import_price_per_j`` and ``export_price_per_j`` [c/J, bench scale],
        ``spot_eur_per_mwh`` [EUR/MWh], ``clearsky_ghi_w_m2``, ``ghi_w_m2`` [W/m2],
        ``temp_air_c`` [degC], and provenance ``pv_source_day``, ``load_source_day``,
        ``price_source_day`` (str) with gap flags ``pv_substitute``, ``load_substitute``,
        ``price_substitute`` ('' = the day itself, 'earlier' / 'later' = a substitute day
        before / after it). No NaN.

    Raises
    ------
    ValueError
        Bad date, range outside the scenario calendar, unknown bench key, n_ticks not
        dividing 1440, or no complete source day.
    """
    bench_cfg = dict(BENCH_DEFAULTS)
    unknown = set(bench or {}) - set(BENCH_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown bench keys {sorted(unknown)}; known: {sorted(BENCH_DEFAULTS)}")
    bench_cfg.update(bench or {})
    try:
        start = _dt.date.fromisoformat(first_day)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"first_day must be 'YYYY-MM-DD', got {first_day!r}") from exc
    if int(n_days) < 1:
        raise ValueError(f"n_days must be >= 1, got {n_days}")
    end = start + _dt.timedelta(days=int(n_days) - 1)
    if start < SCENARIO_FIRST_DAY or end > SCENARIO_LAST_DAY:
        raise ValueError(f"scenario days must lie in {SCENARIO_FIRST_DAY}..{SCENARIO_LAST_DAY}, "
                         f"got {start}..{end}")
    t = _tables(int(n_ticks))
    pv, weather, load, price = t["pv"], t["weather"], t["load"], t["price"]
    k_price = float(bench_cfg["cents_per_j_per_eur_per_mwh"])
    load_scale = float(bench_cfg["load_rating_w"]) / t["load_p99_w"]

    frames = []
    for i in range(int(n_days)):
        day = start + _dt.timedelta(days=i)
        load_year, price_year = YEAR_MAP[day.year]
        pv_day = _pick(_pv_candidates(day), lambda d: _pv_complete(t, d), "PV", day)
        load_day = _pick(_weekly_candidates(_same_weekday_near(day, load_year)),
                         lambda d: load.complete(d) and d not in t["load_bad_days"], "load", day)
        price_day = _pick(_weekly_candidates(_same_weekday_near(day, price_year)),
                          lambda d: d.year == price_year and price.complete(d), "price", day)
        pv_w = np.nan_to_num(pv.values[pv.row(pv_day), :, 0], nan=0.0)  # night gaps only
        sun = np.clip(pv_w / t["pv_capacity_w"], 0.0, 1.0)
        wx = weather.values[weather.row(pv_day)]
        loads = np.clip(load.values[load.row(load_day)] * load_scale, 0.0, bench_cfg["load_rating_w"])
        spot = price.values[price.row(price_day), :, 0]
        col = dict(zip(weather.columns, wx.T))
        frames.append(pd.DataFrame({
            "day": day.isoformat(),
            "tick": np.arange(n_ticks),
            "day_of_year": day.timetuple().tm_yday,
            "weekday": day.weekday(),
            "sun": sun,
            "pv_available_w": sun * bench_cfg["pv_capability_w"],
            "load1_demand_w": loads[:, 0],
            "load2_demand_w": loads[:, 1],
            "load3_demand_w": loads[:, 2],
            "import_price_per_j": (spot + bench_cfg["grid_fee_eur_per_mwh"]) * k_price,
            "export_price_per_j": spot * k_price,
            "spot_eur_per_mwh": spot,
            "clearsky_ghi_w_m2": col["ghi_clear_w_m2"],
            "ghi_w_m2": col["ghi_w_m2"],
            "temp_air_c": col["temp_air_c"],
            "pv_substitute": _substitute_kind(pv_day, day),
            "load_substitute": _substitute_kind(load_day, _same_weekday_near(day, load_year)),
            "price_substitute": _substitute_kind(price_day, _same_weekday_near(day, price_year)),
            "pv_source_day": pv_day.isoformat(),
            "load_source_day": load_day.isoformat(),
            "price_source_day": price_day.isoformat(),
        }))
    return pd.concat(frames, ignore_index=True)


def split_days() -> dict[str, list[str]]:
    """Chronological train / validation / test split of the scenario calendar.

    train = 2012 (PV 2012, load 2008, price 2015); validation = 2013-01-01 .. 2013-06-30 and
    test = 2013-07-01 .. 2013-12-31 (PV 2013, load 2009, price 2018). No source day is shared
    between the training year and the later ones, except PV substitutes for a few 2013 days
    before 2013-04-15 (2011 data starts then) that come from 2012; see ``models/DATA.md``.

    Returns
    -------
    dict
        ``{'train': [...], 'validation': [...], 'test': [...]}``, lists of ``'YYYY-MM-DD'``.
    """
    out = {}
    for name, (a, b) in SPLIT.items():
        days = pd.date_range(a, b, freq="D")
        out[name] = [d.date().isoformat() for d in days]
    return out
