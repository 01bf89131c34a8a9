"""Exogenous signals the edge sees: demand, prices, and PV history, tick by tick.

:class:`ScenarioSource` replays a prepared real-data scenario (``models.scenario``) the way
the lab market feed serves it (docs/design.md §2): at tick ``k`` the current demand and prices
are known, the past is known, the future is not. The forecaster gets only the past.

The scenario is a mapping of column name -> list, one entry per (day, tick), oldest first,
as written by :func:`save_scenario`; the last ``n_ticks`` rows are the day being run and
the rows before them are history.
"""

import json

import numpy as np

LOADS = ("load1", "load2", "load3")
#: the loads' demand series, in the order of ``LOADS`` (the optimiser's demand columns)
LOAD_SERIES = tuple(l + "_demand_w" for l in LOADS)
SERIES = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w",
          "import_price_per_j", "export_price_per_j")
#: measured past weather, passed to the forecaster when the scenario has it
WEATHER = ("ghi_w_m2", "temp_air_c")


def save_scenario(frame, path):
    """Write a scenario DataFrame (``models.scenario.build_bench_days``) as column JSON."""
    cols = {c: frame[c].tolist() for c in frame.columns}
    with open(path, "w") as f:
        json.dump(cols, f)


def load_scenario(path):
    """The scenario columns (name -> list, see the module docstring) saved at ``path`` (JSON)."""
    with open(path) as f:
        return json.load(f)


class ScenarioSource:
    """Causal view of a scenario.

    Parameters
    ----------
    columns : mapping name -> sequence, see module docstring
    n_ticks : int, ticks per day
    jobs : sequence, deferrable jobs of the day being run (lab feed ``/deferables`` format,
        ticks of that day), served like the feed's

    Raises
    ------
    ValueError if a required column is missing or the table is shorter than one day.
    """

    def __init__(self, columns, n_ticks, jobs=()):
        numeric = SERIES + ("clearsky_ghi_w_m2", "day_of_year", "weekday", "sun")
        missing = [c for c in numeric + ("day",) if c not in columns]
        if missing:
            raise ValueError("scenario lacks columns %s" % missing)
        self.n_ticks = int(n_ticks)
        # only what the edge uses: provenance and flag columns stay in the file
        self.cols = {c: np.asarray(columns[c], dtype=float) for c in numeric}
        self.weather = tuple(c for c in WEATHER if c in columns)
        self.cols.update({c: np.asarray(columns[c], dtype=float) for c in self.weather})
        self.days = list(columns["day"])
        n = len(self.days)
        if n < self.n_ticks or n % self.n_ticks:
            raise ValueError("scenario has %d rows, not a whole number of %d-tick days" % (n, self.n_ticks))
        self.offset = n - self.n_ticks     # row of tick 0 of the day being run
        self.day = self.days[self.offset]
        self._jobs = [dict(j) for j in jobs]

    def _row(self, tick):
        return self.offset + tick

    def now(self, tick):
        """Demand per load [W, shape [L]] and prices [c/J] known at ``tick`` (lab feed /demand, /price)."""
        r = self._row(tick)
        demand = np.array([self.cols[l + "_demand_w"][r] for l in LOADS])
        return demand, self.cols["import_price_per_j"][r], self.cols["export_price_per_j"][r]

    def sun_now(self, tick):
        """PV availability at ``tick`` as a fraction of capability (lab feed /sun, percent / 100)."""
        return float(self.cols["sun"][self._row(tick)])

    def history(self, tick, length):
        """Past ``length`` values of every series (and past weather) before ``tick``, oldest first."""
        r = self._row(tick)
        if r - length < 0:
            raise ValueError("scenario has only %d rows of history before tick %d" % (r, tick))
        return {s: self.cols[s][r - length:r] for s in SERIES + self.weather}

    def clearsky(self, tick, horizon):
        """Clear-sky GHI [W/m2] of the next ``horizon`` ticks: astronomy, not a forecast of actuals.

        Beyond the scenario's last row the same ticks of the last day are repeated.
        """
        rows = np.arange(self._row(tick), self._row(tick) + horizon)
        rows = np.where(rows < len(self.days), rows, rows - self.n_ticks)
        return self.cols["clearsky_ghi_w_m2"][rows]

    def calendar(self, tick):
        """Calendar of ``tick`` as the forecasters read it: ``{tick, day_of_year (1..366),
        weekday (0 = Monday), n_ticks}``."""
        r = self._row(tick)
        # a tick before the run day (negative) is the same tick of day of an earlier day
        return {"tick": int(tick) % self.n_ticks, "day_of_year": int(self.cols["day_of_year"][r]),
                "weekday": int(self.cols["weekday"][r]), "n_ticks": self.n_ticks}

    def jobs(self):
        """The day's deferrable jobs (lab feed ``/deferables``): ``[{start, end, energy}]``."""
        return [dict(j) for j in self._jobs]

    def close(self):
        """The run ends: nothing to keep (a replayed day is read-only; a feed source saves
        what it learnt here)."""

    def truth(self):
        """The day's actual series (for baselines and evaluation only, never for control)."""
        sl = slice(self.offset, self.offset + self.n_ticks)
        return {s: self.cols[s][sl] for s in SERIES + ("sun",)}


#: share of load3's energy in each job window that becomes a deferrable job on a replayed day
JOB_SHARE = 0.5


def job_windows(n_ticks):
    """The two job windows of a day, ``[(start, end), ...]`` in ticks (end exclusive)."""
    return [(n_ticks // 4, n_ticks // 2), (n_ticks // 2, 7 * n_ticks // 8)]


def split_jobs(load3_w, dt_s, n_ticks):
    """Take ``JOB_SHARE`` of load3's energy in each window out of its demand as a job.

    Parameters
    ----------
    load3_w : array [n_ticks]  real demand of load3 [W]
    dt_s : float  tick [s]

    Returns
    -------
    (ndarray [n_ticks], list of dict)
        Remaining load3 demand [W] and the jobs ``{"start", "end", "energy"}`` [tick, tick, J].
    """
    rest = np.asarray(load3_w, float).copy()
    jobs = []
    for start, end in job_windows(n_ticks):
        moved = JOB_SHARE * rest[start:end]
        rest[start:end] -= moved
        jobs.append({"start": start, "end": end, "energy": float(moved.sum() * dt_s)})
    return rest, jobs


def split_days(load_w, dt_s, n_ticks):
    """:func:`split_jobs` on every whole day of ``load_w`` [W], in place.

    Returns the jobs of each day, ``[[{"start", "end", "energy"}, ...], ...]``.
    """
    jobs = []
    for start in range(0, len(load_w) - n_ticks + 1, n_ticks):
        sl = slice(start, start + n_ticks)
        load_w[sl], day_jobs = split_jobs(load_w[sl], dt_s, n_ticks)
        jobs.append(day_jobs)
    return jobs
