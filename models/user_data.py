"""A user's own time series (CSV or Parquet) read into the project's series, in SI units.

The format (docs/own-data.md): one row per sample, columns carrying their unit in their name:

========================== ============================================ ==========================
column                     unit forms accepted                          becomes
========================== ============================================ ==========================
``timestamp``              ISO 8601 with a UTC offset (``Z``, ``+01:00``) the index (that offset)
``pv_<u>``                 ``_w``, ``_kw``                              ``pv_available_w`` [W]
``load_<u>`` or            ``_w``, ``_kw``                              ``load1_demand_w`` ..
``load1_<u>`` ..``load3``                                               ``load3_demand_w`` [W]
``import_price_<u>``       ``_per_j``, ``_per_wh``, ``_per_kwh``,       ``import_price_per_j``
                           ``_per_mwh`` (site currency unit)            [currency/J]
``export_price_<u>``       the same; optional (absent: 0)               ``export_price_per_j``
``ghi_w_m2``               W/m2; optional                               ``ghi_w_m2``
``temp_air_c``             degC; optional                               ``temp_air_c``
========================== ============================================ ==========================

The site's currency unit is the cent (docs/design.md §7: prices in cents per joule); a file
priced in euros is read with ``currency_factor=100``. Every conversion applied is listed in
:attr:`UserData.conversions`.

Validation collects every problem before giving up, so nothing is half-loaded: one
:class:`DataError` lists them all (the first :data:`MAX_PER_KIND` of each kind), each naming
the data row (1 = the first row after the header; CSV line = row + 1) and the column.
Missing samples (a gap between two timestamps on the file's own grid) are not an error: the
rows are added as NaN, flagged in column ``gap`` and reported in :attr:`UserData.gaps`, never
filled.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: column unit suffix -> factor to the SI series' unit
POWER_UNITS = {"w": 1.0, "kw": 1e3}
PRICE_UNITS = {"per_j": 1.0, "per_wh": 1 / 3.6e3, "per_kwh": 1 / 3.6e6, "per_mwh": 1 / 3.6e9}
WEATHER = {"ghi_w_m2": "ghi_w_m2", "temp_air_c": "temp_air_c"}
#: plausible range of each power column's largest value per site kind [W]: a bench's boards
#: carry watts, a home's converters kilowatts (a 5 MW household is a unit error)
POWER_MAX_W = {"bench": 1.0e3, "home": 1.0e5}
#: a home's power column whose largest value lies above 0 but below this is in kW under a _w name
HOME_POWER_MIN_W = 10.0
WEATHER_RANGE = {"ghi_w_m2": (-50.0, 1500.0), "temp_air_c": (-60.0, 60.0)}
#: the problems of each kind listed in a DataError; the rest are counted
MAX_PER_KIND = 5
KINDS = ("bench", "home")
_KIND_ALIASES = {"lab": "bench", "site": "home"}
_COLUMN = re.compile(r"^(?P<what>pv|load[1-3]?|import_price|export_price)_(?P<unit>.+)$")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: ``kind`` (e.g. ``'negative power'``), the data ``row``
    (1-based, None for the whole file), the ``column`` (None for the whole row) and a message."""

    kind: str
    row: int | None
    column: str | None
    message: str

    def __str__(self):
        return self.located()

    def located(self, csv=False):
        """The problem as text; ``csv``: the row's line in the file is named too (header = line 1)."""
        where = []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.row + 1})" if csv else ""))
        if self.column is not None:
            where.append(f"column {self.column}")
        return (", ".join(where) + ": " if where else "") + self.message


class DataError(ValueError):
    """A user data file that cannot be used; :attr:`problems` lists every :class:`Problem` found.

    The message names the file and the first :data:`MAX_PER_KIND` problems of each kind.
    """

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        lines, counts = [], {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
            if counts[p.kind] <= MAX_PER_KIND:
                lines.append(f"  - {p.kind}: {p.located(csv=self.path.lower().endswith('.csv'))}")
        for kind, n in counts.items():
            if n > MAX_PER_KIND:
                lines.append(f"  - {kind}: ... and {n - MAX_PER_KIND} more")
        super().__init__(f"{self.path}: {len(self.problems)} problem(s), nothing loaded:\n" + "\n".join(lines))


@dataclasses.dataclass
class UserData:
    """A validated user file.

    Attributes
    ----------
    frame : pandas.DataFrame
        Index: regular ``DatetimeIndex`` in the file's own fixed UTC offset, step ``step_s``,
        interval starts. Columns ``pv_available_w``, ``load1_demand_w`` .. ``load{n_loads}_demand_w``
        [W], ``import_price_per_j``, ``export_price_per_j`` [currency/J, the site's unit], optional
        ``ghi_w_m2`` [W/m2] and ``temp_air_c`` [degC], float64, NaN only on gap rows; ``gap``
        (bool) marks the rows the file did not have.
    step_s : float
        Sample interval [s] (the most common step between timestamps).
    n_loads : int
        Loads in the file (1..3).
    conversions : list of str
        Each column read: its name in the file, the series it became and the factor applied.
    gaps : list of (pandas.Timestamp, pandas.Timestamp, int)
        First missing timestamp, last missing timestamp and number of missing samples per gap.
    path : str
        The file read.
    """

    frame: pd.DataFrame
    step_s: float
    n_loads: int
    conversions: list
    gaps: list
    path: str

    def summary(self):
        """A few lines for the terminal: period, step, loads, conversions and gaps."""
        idx = self.frame.index
        lines = [f"{self.path}: {len(idx)} samples of {self.step_s:g} s, {idx[0]} .. {idx[-1]}, "
                 f"{self.n_loads} load(s)"]
        lines += [f"  {c}" for c in self.conversions]
        missing = sum(n for _, _, n in self.gaps)
        lines.append(f"  gaps: {len(self.gaps)} ({missing} samples missing, left NaN and flagged)"
                     if self.gaps else "  gaps: none")
        return lines


def _read_table(path: Path):
    """The file as a DataFrame of its raw cells (CSV: all strings; Parquet: as typed).

    Raises ValueError for a suffix other than .csv, .parquet or .pq; OSError if unreadable.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unknown file type {path.suffix!r}; use .csv or .parquet")


def _plan_columns(columns, problems):
    """Map file columns to (series, factor, unit text); record unknown, duplicate, missing ones."""
    plan = {}
    known = ["timestamp", *WEATHER] + [f"{w}_{u}" for w in ("pv", "load", "load1", "load2", "load3")
                                       for u in POWER_UNITS] + \
        [f"{w}_{u}" for w in ("import_price", "export_price") for u in PRICE_UNITS]
    for col in columns:
        name = str(col)
        if name == "timestamp":
            continue
        if name in WEATHER:
            plan[name] = (WEATHER[name], 1.0, name)
            continue
        m = _COLUMN.match(name)
        units = PRICE_UNITS if m and m["what"].endswith("price") else POWER_UNITS
        if not m or m["unit"] not in units:
            close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem("unknown column", None, name, f"not a column of the format{hint}; "
                                    f"known: timestamp, pv_w|kw, load[1-3]_w|kw, import_price_per_j|wh|kwh|mwh, "
                                    f"export_price_..., ghi_w_m2, temp_air_c"))
            continue
        what = m["what"]
        series = {"pv": "pv_available_w", "load": "load1_demand_w", "import_price": "import_price_per_j",
                  "export_price": "export_price_per_j"}.get(what, f"{what}_demand_w")
        if series in [s for s, _, _ in plan.values()]:
            other = next(c for c, (s, _, _) in plan.items() if s == series)
            problems.append(Problem("duplicate column", None, name,
                                    f"{other!r} already gives {series}: keep one of them"))
            continue
        plan[name] = (series, units[m["unit"]], m["unit"])
    targets = {s for s, _, _ in plan.values()}
    if "timestamp" not in [str(c) for c in columns]:
        problems.append(Problem("missing column", None, "timestamp", "required (ISO 8601 with a UTC offset)"))
    for series, form in (("pv_available_w", "pv_w or pv_kw"), ("import_price_per_j", "import_price_per_kwh "
                                                                "(or _per_j, _per_wh, _per_mwh)")):
        if series not in targets:
            problems.append(Problem("missing column", None, form.split()[0], f"required: {form}"))
    if "load" in [str(c).rsplit("_", 1)[0] for c in plan] and any(str(c).startswith(("load1", "load2", "load3"))
                                                                   for c in plan):
        problems.append(Problem("duplicate column", None, next(c for c in plan if str(c).startswith("load_")),
                                "a single load_w/_kw is load 1: do not combine it with load1_..load3_"))
    loads = sorted(int(s[4]) for s in targets if s.startswith("load"))
    if not loads:
        problems.append(Problem("missing column", None, "load1_w", "required: one to three loads, load1_w "
                                "(or _kw) .. load3_w, or a single load_w"))
    elif loads != list(range(1, len(loads) + 1)):
        problems.append(Problem("missing column", None, f"load{len(loads)}_w",
                                f"loads must be numbered from 1 without holes, got load{loads}"))
    return plan, len(loads)


def _timestamps(raw, problems):
    """UTC epoch seconds [N] and the file's UTC offset, from the timestamp column."""
    values = raw["timestamp"]
    n = len(values)
    epoch = np.full(n, np.nan)
    offsets = [None] * n
    if pd.api.types.is_datetime64_any_dtype(values):
        idx = pd.DatetimeIndex(values)
        if idx.tz is None:
            problems.append(Problem("timestamp without offset", 1, "timestamp",
                                    "the column has no time zone; store UTC or a fixed offset"))
            return epoch, None
        items = list(idx)
    else:
        items = []
        for i, text in enumerate(values):
            try:
                items.append(_dt.datetime.fromisoformat(str(text).strip()))
            except ValueError:
                items.append(None)
                problems.append(Problem("bad timestamp", i + 1, "timestamp",
                                        f"{text!r} is not an ISO 8601 date-time"))
    for i, t in enumerate(items):
        if t is None or t is pd.NaT:
            continue
        off = t.utcoffset()
        if off is None:
            problems.append(Problem("timestamp without offset", i + 1, "timestamp",
                                    f"{values.iloc[i]!r} has no UTC offset: local clock times repeat or skip an "
                                    f"hour at DST changes; write e.g. '2024-03-31T02:15:00+01:00' or UTC ('Z')"))
            continue
        offsets[i] = off
        epoch[i] = t.timestamp()
    known = [(i, o) for i, o in enumerate(offsets) if o is not None]
    first = known[0][1] if known else None
    for (i, a), (j, b) in zip(known, known[1:]):
        if a != b:
            problems.append(Problem("DST jump", j + 1, "timestamp",
                                    f"UTC offset changes from {_fmt_offset(a)} (row {i + 1}) to {_fmt_offset(b)}: "
                                    f"a daylight-saving change; write all timestamps in one fixed offset "
                                    f"(standard time or UTC)"))
    return epoch, first


def _fmt_offset(off: _dt.timedelta) -> str:
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _grid(epoch, problems):
    """The step [s] and the gaps ``[(row before, missing samples)]``; records order problems."""
    ok = np.isfinite(epoch)
    rows = np.flatnonzero(ok)
    if len(rows) < 2:
        problems.append(Problem("too short", None, "timestamp", "need at least two valid timestamps"))
        return None, []
    t = epoch[ok]
    d = np.diff(t)
    positive = d[d > 0]
    step = float(pd.Series(positive).mode().iloc[0]) if len(positive) else None
    gaps = []
    for k in np.flatnonzero(d <= 0):
        r = int(rows[k + 1]) + 1
        back = step is not None and d[k] == step - 3600     # the next sample, an hour early
        hour = " (the clock went 1 h back: a DST change written with a fixed offset?)" if back else ""
        kind = "duplicate timestamp" if d[k] == 0 else "timestamp not increasing"
        what = f"same time as row {int(rows[k]) + 1}" if d[k] == 0 else \
            f"{-d[k]:g} s before row {int(rows[k]) + 1}{hour}"
        problems.append(Problem(kind, r, "timestamp", what))
    if step is None:
        return None, []
    if 86400 % step:
        problems.append(Problem("bad step", None, "timestamp",
                                f"the samples are {step:g} s apart, which does not divide a day"))
        return None, []
    for k in np.flatnonzero(d > step):
        r = int(rows[k + 1]) + 1
        if d[k] % step:
            problems.append(Problem("off the grid", r, "timestamp",
                                    f"{d[k]:g} s after row {int(rows[k]) + 1}, not a multiple of the {step:g} s step"))
        else:
            gaps.append((k, int(d[k] // step) - 1))
    return step, gaps


def _numbers(raw, col, problems):
    """Column ``col`` as float64 [N]; every cell that is empty, not a number or not finite is
    recorded as a problem."""
    values = raw[col]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        out = values.to_numpy(np.float64)
        text = None
    else:
        text = values.astype(str).str.strip()
        out = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    for i in np.flatnonzero(~np.isfinite(out)):
        cell = None if text is None else text.iloc[i]
        if cell is None or cell.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            what = f"{cell if cell is not None else out[i]} is not finite"
        elif cell in ("", "None"):
            what = "empty cell"
        else:
            what = f"{cell!r} is not a number"
        problems.append(Problem("non-finite value", i + 1, col, what))
    return out


def load_user_data(path, kind="home", currency_factor=1.0):
    """Read and check a user's time-series file (module docstring; docs/own-data.md).

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.csv`` (comma-separated, header row) or ``.parquet`` file.
    kind : str
        ``'home'`` or ``'bench'`` (or the site profiles ``'site'`` / ``'lab'``): sets the
        plausible power range, :data:`POWER_MAX_W` (and, for a home, :data:`HOME_POWER_MIN_W`).
    currency_factor : float
        Site currency units per currency unit of the file's prices (> 0), e.g. 100 for a file
        in EUR when the site counts cents; default 1 (the file is in the site's unit).

    Returns
    -------
    UserData

    Raises
    ------
    DataError
        Listing every problem: missing, unknown or duplicate columns; timestamps that are not ISO
        8601, lack a UTC offset, change offset (DST), repeat, go back or fall off the grid; values
        that are empty, not numbers, not finite, negative powers, or powers or weather outside the
        plausible range for ``kind``.
    ValueError
        On an unknown ``kind``, a bad ``currency_factor`` or file type.
    OSError
        If the file cannot be read.
    """
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (math.isfinite(currency_factor) and currency_factor > 0):
        raise ValueError(f"currency_factor must be finite and > 0, got {currency_factor!r}")
    path = Path(path)
    raw = _read_table(path)
    problems = []
    plan, n_loads = _plan_columns(list(raw.columns), problems)
    if "timestamp" not in raw.columns:
        raise DataError(path, problems)
    if len(raw) == 0:
        problems.append(Problem("too short", None, None, "the file has no data rows"))
        raise DataError(path, problems)
    epoch, offset = _timestamps(raw, problems)
    step, gaps = _grid(epoch, problems)
    series, conversions = {}, []
    for col, (name, factor, unit) in plan.items():
        v = _numbers(raw, col, problems)
        if name.endswith("_w") and name != "ghi_w_m2":
            si = v * factor
            for i in np.flatnonzero(si < 0):
                problems.append(Problem("negative power", i + 1, col,
                                        f"{v[i]:g} {unit.upper() if unit == 'kw' else 'W'}: powers are >= 0 "
                                        f"(PV produced, loads consumed)"))
            finite = si[np.isfinite(si)]
            top = float(finite.max()) if len(finite) else 0.0
            if top > POWER_MAX_W[kind]:
                i = int(np.nanargmax(si))
                problems.append(Problem("implausible unit", i + 1, col,
                                        f"{top / 1e3:g} kW is beyond a {kind}'s {POWER_MAX_W[kind] / 1e3:g} kW: "
                                        f"is the unit in the column name right?"))
            elif kind == "home" and 0 < top < HOME_POWER_MIN_W:
                i = int(np.nanargmax(si))
                problems.append(Problem("implausible unit", i + 1, col,
                                        f"the largest value is {top:g} W, too small for a home: kW under a _w name?"))
        elif name in WEATHER_RANGE:
            lo, hi = WEATHER_RANGE[name]
            for i in np.flatnonzero((v < lo) | (v > hi)):
                problems.append(Problem("implausible unit", i + 1, col, f"{v[i]:g} outside {lo:g}..{hi:g}"))
        if name.endswith("_per_j"):
            factor = factor * float(currency_factor)
        series[name] = v * factor
        conversions.append(f"{col} -> {name}" + (f" x {factor:.6g}" if factor != 1 else " (as is)"))
    if problems:
        raise DataError(path, problems)
    if "export_price_per_j" not in series:
        series["export_price_per_j"] = np.zeros(len(raw))
        conversions.append("no export price column -> export_price_per_j = 0 (exported energy earns nothing)")
    tz = _dt.timezone(offset)
    index = pd.DatetimeIndex(pd.to_datetime(epoch, unit="s", utc=True)).tz_convert(tz)
    order = ["pv_available_w", *[f"load{k}_demand_w" for k in range(1, n_loads + 1)],
             "import_price_per_j", "export_price_per_j", *[w for w in WEATHER if w in series]]
    frame = pd.DataFrame({c: series[c] for c in order}, index=index)
    full = pd.date_range(index[0], index[-1], freq=pd.Timedelta(seconds=step))
    frame = frame.reindex(full)
    frame["gap"] = ~full.isin(index)
    gap_list = [(index[k] + pd.Timedelta(seconds=step), index[k] + pd.Timedelta(seconds=step * n), n)
                for k, n in gaps]
    return UserData(frame=frame, step_s=step, n_loads=n_loads, conversions=conversions, gaps=gap_list,
                    path=str(path))


def tick_days(data: UserData, n_ticks: int, hold: bool = False) -> tuple[pd.DataFrame, list]:
    """The file's whole days at ``n_ticks`` ticks per day: the first step toward running them.

    Each tick is the mean of the samples it covers (the file's step must divide the tick: no
    sample is ever spread into a tick it did not cover, nor a later value used for an earlier
    tick). Days are calendar days in the file's own UTC offset; a day is kept only if it is
    whole in the file and none of its samples is a gap.

    Parameters
    ----------
    data : UserData
    n_ticks : int
        Ticks per day (must divide 86400 s into whole multiples of ``data.step_s``).
    hold : bool
        Also take a file whose step does not divide the tick (whole seconds both): each sample
        (the mean over its own interval) is held over its interval, and each tick is the mean
        of what it covers, e.g. a 15-minute meter at a 5-minute site (each sample over three
        ticks) or at the bench's 24-minute ticks. A tick then carries means of samples that
        reach up to one step past its start (say so where it is used).

    Returns
    -------
    (pandas.DataFrame, list of (str, str))
        One row per (kept day, tick), columns ``day`` (ISO date), ``tick``, ``day_of_year``,
        ``weekday`` (0 = Monday) and the data's series (``pv_available_w``, ``load1_demand_w`` ..
        ``load3_demand_w`` [W], loads the file lacks at 0 W, prices [currency/J], weather if
        given); and the days left out with the reason (``'partial'`` or ``'gap'``).

    Raises
    ------
    ValueError
        If the tick is not a whole multiple of the file's step, or no whole day is left.
    """
    tick_s = 86400 / int(n_ticks)
    per_tick = tick_s / data.step_s
    whole = abs(per_tick - round(per_tick)) < 1e-9 and per_tick >= 1
    if hold and not whole and tick_s % 1 == 0 and data.step_s % 1 == 0:
        # each sample held over its own interval at the finest grid both steps fall on
        fine = math.gcd(int(tick_s), int(data.step_s))
        k = int(data.step_s) // fine
        frame = data.frame
        index = pd.date_range(frame.index[0], periods=len(frame) * k, freq=pd.Timedelta(seconds=fine))
        held = frame.loc[frame.index.repeat(k)].set_axis(index)
        return tick_days(dataclasses.replace(data, frame=held, step_s=float(fine)), n_ticks)
    if tick_s % 1 or abs(per_tick - round(per_tick)) > 1e-9 or per_tick < 1:
        raise ValueError(f"a tick of {tick_s:g} s is not a whole multiple of the file's {data.step_s:g} s step: "
                         f"give the file at {tick_s:g} s or finer"
                         + ("" if hold else " (or hold each sample over its interval, where the caller offers it)"))
    per_tick = int(round(per_tick))
    frame = data.frame
    series = [c for c in frame.columns if c != "gap"]
    local_day = frame.index.normalize()
    kept, dropped = [], []
    per_day = int(n_ticks) * per_tick
    for day, rows in frame.groupby(local_day):
        name = day.date().isoformat()
        if len(rows) != per_day or rows.index[0] != day:
            dropped.append((name, "partial"))
            continue
        if rows["gap"].any():
            dropped.append((name, "gap"))
            continue
        means = rows[series].to_numpy(np.float64).reshape(int(n_ticks), per_tick, len(series)).mean(axis=1)
        out = pd.DataFrame(means, columns=series)
        out.insert(0, "day", name)
        out.insert(1, "tick", np.arange(int(n_ticks)))
        out.insert(2, "day_of_year", day.timetuple().tm_yday)
        out.insert(3, "weekday", day.weekday())
        for k in range(data.n_loads + 1, 4):
            out[f"load{k}_demand_w"] = 0.0
        kept.append(out)
    if not kept:
        raise ValueError(f"{data.path}: no whole day without gaps at {n_ticks} ticks per day "
                         f"(left out: {dropped})")
    return pd.concat(kept, ignore_index=True), dropped


def main(argv=None):
    """``picogrid data check FILE [--kind home|bench] [--currency-factor X]``: read a user file and
    print what it holds and what was converted, or every problem (exit status 1)."""
    import argparse

    ap = argparse.ArgumentParser(prog="picogrid data", description="check a time-series file of your own "
                                                                   "(format: docs/own-data.md)")
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("check", help="read and validate FILE (.csv or .parquet)")
    p.add_argument("file")
    p.add_argument("--kind", choices=KINDS, default="home", help="plausible power range: home (default) or bench")
    p.add_argument("--currency-factor", type=float, default=1.0,
                   help="site currency units per unit of the file's prices (100: a file in EUR, a site in cents)")
    args = ap.parse_args(argv)
    try:
        data = load_user_data(args.file, args.kind, args.currency_factor)
    except (DataError, ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(data.summary()))
    return 0
