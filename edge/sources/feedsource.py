"""The lab market feed as the edge's signal source (docs/design.md §2), instead of a replayed scenario.

:class:`FeedSource` offers the edge's runner the same methods as
:class:`picogrid.edge.sources.signals.ScenarioSource`, backed by :class:`picogrid.edge.sources.labfeed.LabFeed`:
once per tick it takes the feed's snapshot (live, cached or forecast, and says which), and
the day's observations become the "truth" the baselines are computed on at the end.

The feed knows one total demand; the bench has three LED loads, so the demand is split by
the site's ``[labfeed] load_shares`` (default equal thirds), each capped at its rating.
:class:`FeedForecaster` forecasts from what the feed taught the online learner
(``/yesterday``) and from the sun the edge itself saw yesterday (the feed has no sun history).
"""

import copy
import logging
import threading
import time

import numpy as np

from picogrid.edge.sources.deferrable import normalise_jobs
from picogrid.edge.sources.labfeed import (DAY_S, TICK_S, TICKS_PER_DAY, DaySunFit, LabFeedError, OnlineDayLearner,
                                   day_tick, pooled_quantiles)
from picogrid.edge.sources.signals import LOADS, SERIES

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)


def feed_site(site):
    """A copy of ``site`` for a run on the feed.

    The feed tells no days before the edge saw them, so there are no past forecasts for error
    scenarios: ``error_scenario_days`` is off. Its prices need nothing: whatever their scale
    (integer c/J from 10 to a few hundred on a teaching server), the site's economics follow
    it (:mod:`picogrid.edge.optimizer.economics`).
    """
    site = copy.deepcopy(site)
    site.get("optimizer", {}).pop("error_scenario_days", None)
    return site


def feed_source(site, feed, memory=None):
    """The :class:`FeedSource` of ``site``: its PV capability, ``[labfeed] load_shares`` and
    each load board's rating; ``memory``: a :class:`picogrid.edge.sources.feedmemory.FeedMemory`."""
    return FeedSource(feed, site["pv"]["capability_w"],
                      site.get("labfeed", {}).get("load_shares", (1 / 3, 1 / 3, 1 / 3)),
                      [site["boards"][l].get("limits", {}).get("power_max_w", 1.0) for l in LOADS],
                      memory=memory, tick_s=float(site["bench"].get("tick_s", TICK_S)))


class FeedSource:
    """Signals of the current lab day from the feed, tick by tick.

    Parameters
    ----------
    feed : picogrid.edge.sources.labfeed.LabFeed
    pv_capability_w : float, PV power at 100 % sun [W]
    load_shares : sequence of 3 floats summing to 1, the demand split over load1..3
    load_max_w : sequence of 3 floats, each load's rating [W]
    memory : picogrid.edge.sources.feedmemory.FeedMemory, optional
        Where the days seen are kept across runs: the ones before the feed's current day are
        restored into the feed's learner and the sun history now, and the memory is saved at
        each day's last tick, when a new day has been learnt and by :meth:`close`.
    tick_s : float
        The bench's tick [s]: on a bench faster than the feed (``--feed-speed``) a job's energy
        [J] is scaled by ``tick_s / TICK_S``, so it asks the board the same power as on the feed.
    """

    MAX_SUN_DAYS = 28

    def __init__(self, feed, pv_capability_w, load_shares=(1 / 3, 1 / 3, 1 / 3), load_max_w=(1.0, 1.0, 1.0),
                 memory=None, tick_s=TICK_S):
        shares = np.asarray(load_shares, float)
        if shares.shape != (len(LOADS),) or (shares < 0).any() or abs(shares.sum() - 1.0) > 1e-6:
            raise ValueError("load_shares must be %d non-negative numbers summing to 1" % len(LOADS))
        self.feed = feed
        self.n_ticks = TICKS_PER_DAY
        self.pv_capability_w = float(pv_capability_w)
        self.shares = shares
        self.load_max_w = np.asarray(load_max_w, float)
        self.day = None
        self.observed = {s: np.full(self.n_ticks, np.nan) for s in SERIES + ("sun",)}
        self.sources = {}            # tick -> where the feed's values came from
        self.sun_days = {}           # lab day -> the sun seen that day, oldest first (the last MAX_SUN_DAYS)
        self._sun_band = None
        self._sun_seen = np.zeros(self.n_ticks, bool)   # ticks the feed gave a sun for (not a stand-in)
        self.memory = memory
        if memory is not None:       # before the first snapshot: the learner takes days in order
            feed.learner, self.sun_days = memory.restore(feed.learner, self._feed_day(), feed.base_url)
        self.listeners = []          # callables(snapshot) run once per tick (e.g. the bench's sun)
        self.job_energy_scale = float(tick_s) / TICK_S    # the bench's time over the feed's
        self._jobs = []              # the day's /deferables, as last heard, windows normalised
        self._job_notes = []         # ... and what that did to each odd one (normalise_jobs)
        self._lock = threading.Lock()
        self._tick = None

    def begin_tick(self, k):
        """Take the feed's snapshot for tick ``k`` (once, whichever runner asks first)."""
        with self._lock:
            if self._tick == k:
                return
            snap = self.feed.snapshot()
            if snap.tick != k:
                log.warning("feed says tick %d, the edge runs tick %d", snap.tick, k)
            if self.day is not None and snap.day != self.day and k == 0:
                self.sun_days[self.day] = self._day_sun()
                self.sun_days = dict(list(self.sun_days.items())[-self.MAX_SUN_DAYS:])
                self._sun_band = None
                self._remember()           # the learner has the day before from /yesterday now
                for a in self.observed.values():
                    a[:] = np.nan
                self._sun_seen[:] = False
                self._jobs, self._job_notes = [], []
            self.day = snap.day
            if snap.sources.get("deferables") in ("live", "cached"):
                # windows no tick of the day can serve are mended or refused here, once for every
                # user of jobs() (the runners, the day's report); the board's rating is the runner's
                self._jobs, self._job_notes = normalise_jobs(snap.deferables, self.n_ticks)
            self._tick = k
            sun = snap.sun_fraction if snap.sun_fraction is not None else (
                self.observed["sun"][k - 1] if k > 0 else 0.0)
            demand = snap.demand_w if snap.demand_w is not None else 0.0
            self.observed["sun"][k] = sun
            self._sun_seen[k] = snap.sun_fraction is not None
            self.observed["pv_available_w"][k] = sun * self.pv_capability_w
            for name, d in zip(LOADS, self.split(demand)):
                self.observed[name + "_demand_w"][k] = d
            self.observed["import_price_per_j"][k] = _or_nan(snap.import_price_per_j)
            self.observed["export_price_per_j"][k] = _or_nan(snap.export_price_per_j)
            self.sources[k] = dict(snap.sources, status=snap.status)
            if k == self.n_ticks - 1:
                self._remember()           # the day's sun is complete
        for listener in self.listeners:
            try:
                listener(snap)
            except Exception:   # a listener (the bench's sun relay) must not stop the tick
                log.exception("feed listener failed at tick %d", k)

    def restore(self, rows, next_tick):
        """Take back the day's observations before ``next_tick`` from a resumed run's measured
        dispatch rows (:mod:`picogrid.edge.control.resume`): each row's ``pv_available_w``,
        ``loadN_demand_w`` and prices at its ``tick``. A tick without a row (the edge was
        down, or the tick was not metered) holds the last one seen, as a tick the feed did not
        answer does; before the first row the day stays unknown."""
        last = None
        by_tick = {int(r["tick"]): r for r in rows}
        for t in range(min(int(next_tick), self.n_ticks)):
            row = by_tick.get(t, last)
            if row is None:
                continue
            last = row
            sun = float(row["pv_available_w"]) / self.pv_capability_w if self.pv_capability_w > 0 else 0.0
            self.observed["sun"][t] = sun
            self.observed["pv_available_w"][t] = float(row["pv_available_w"])
            self._sun_seen[t] = t in by_tick
            for name in LOADS:
                self.observed[name + "_demand_w"][t] = float(row[name + "_demand_w"])
            for series in ("import_price_per_j", "export_price_per_j"):
                self.observed[series][t] = _or_nan(row[series])

    def now(self, tick):
        """``(demand_w [L], import_price_per_j, export_price_per_j)`` the feed gave for ``tick``
        ([W] per load, [c/J]); a price it could not give is the last one known, else 0."""
        demand = np.array([self.observed[l + "_demand_w"][tick] for l in LOADS])
        imp, exp = self.observed["import_price_per_j"][tick], self.observed["export_price_per_j"][tick]
        # a price the feed could not give (down, nothing learnt yet): the last one known, else 0
        return demand, self._known(imp, "import_price_per_j", tick), self._known(exp, "export_price_per_j", tick)

    def _known(self, value, series, tick):
        if not np.isnan(value):
            return float(value)
        past = self.observed[series][:tick]
        past = past[~np.isnan(past)]
        return float(past[-1]) if past.size else 0.0

    def jobs(self):
        """The day's deferrable jobs as the feed last gave them, their windows normalised
        (:func:`picogrid.edge.sources.deferrable.normalise_jobs` without a rating): ``[{start, end,
        energy}]`` (ticks of the day, end exclusive; J on the bench's time scale)."""
        return [dict(j, energy=j["energy"] * self.job_energy_scale) for j in self._jobs]

    def job_notes(self):
        """One sentence per job of :meth:`jobs`' list that the feed stated oddly: what was done."""
        return list(self._job_notes)

    def sun_now(self, tick):
        """The feed's ``/sun`` at ``tick`` as a fraction of PV capability (percent / 100)."""
        return float(self.observed["sun"][tick])

    def split(self, demand_w):
        """The feed's total demand [W] (array [...]) over the loads: ``[..., L]`` [W], by the
        shares, each capped at its load's rating."""
        return np.minimum(np.asarray(demand_w, float)[..., None] * self.shares, self.load_max_w)

    def _last_sun_day(self):
        """The last day before today whose sun was seen, or None."""
        seen = [d for d in self.sun_days if self.day is None or d < self.day]
        return seen[-1] if seen else None

    @property
    def yesterday_sun(self):
        """The sun the edge saw on the previous day (or the last day it saw) [n_ticks], or None."""
        d = self._last_sun_day()
        return None if d is None else self.sun_days[d]

    @property
    def sun_age_days(self):
        """How many days before today :attr:`yesterday_sun` is (1: yesterday), or None."""
        d = self._last_sun_day()
        return None if d is None or self.day is None else self.day - d

    def _feed_day(self):
        """The feed's current lab day (its ``/price`` says; the clock's when it does not answer)."""
        try:
            return int(self.feed.get("price")["day"])
        except LabFeedError:
            return day_tick(self.feed.clock())[0]

    def _day_sun(self):
        """Today's sun as the feed gave it [n_ticks], NaN where it gave none (not the stand-in)."""
        return np.where(self._sun_seen, self.observed["sun"], np.nan)

    def _remember(self):
        """Save the days seen (today's sun too) to the memory, if there is one; a failed write
        is logged and the day goes on."""
        if self.memory is None or self.day is None:
            return
        today = self.feed.today         # what the feed said live today, whole only at its end
        whole = {self.day: today} if all(np.isfinite(a).all() for a in today.values()) else {}
        try:
            self.memory.save(self.feed.learner, {**self.sun_days, self.day: self._day_sun()}, whole,
                             self.feed.base_url)
        except OSError:
            log.exception("feed memory %s not saved", self.memory.path)

    def close(self):
        """The run ends (done, stopped or failed): save the memory, today's part-day sun too."""
        with self._lock:
            self._remember()

    def sun_band(self, tick, horizon):
        """P10 and P90 offsets of "the sun yesterday at the same tick" from tick ``tick`` on,
        from how each day seen differed from the one seen before it at each tick of day (the
        day before, unless the edge was not running then).

        Returns
        -------
        (numpy.ndarray [horizon], numpy.ndarray [horizon]) or None
            Offsets in fractions of PV capability (P10 <= 0 <= P90; zero where too few days
            differ there); None before it has seen ``OnlineDayLearner.BAND_MIN_DAYS`` day-to-day
            changes.
        """
        if self._sun_band is None:     # once per day (False: too few days yet)
            seen = [a for a in self.sun_days.values() if np.isfinite(a).any()]
            diffs = [b - a for a, b in zip(seen[:-1], seen[1:])]
            self._sun_band = len(diffs) >= OnlineDayLearner.BAND_MIN_DAYS and np.nan_to_num(pooled_quantiles(
                diffs, (0.1, 0.9), OnlineDayLearner.BAND_TICKS, OnlineDayLearner.BAND_MIN_SAMPLES))
        if self._sun_band is False:
            return None
        steps = (int(tick) + np.arange(horizon)) % self.n_ticks
        return np.minimum(self._sun_band[0][steps], 0.0), np.maximum(self._sun_band[1][steps], 0.0)

    def history(self, tick, length):
        """Today's observations before ``tick``, zero-padded in front to ``length`` (the
        runner's interface; :class:`FeedForecaster` reads only the latest value, for persistence)."""
        out = {}
        for s in SERIES:
            today = np.nan_to_num(self.observed[s][:tick])
            out[s] = np.concatenate([np.zeros(max(length - tick, 0)), today])[-length:]
        return out

    def clearsky(self, tick, horizon):
        """Zeros [W/m2] of shape [horizon]: the lab has no site coordinates, and the feed's
        forecaster does not read clear-sky irradiance."""
        return np.zeros(horizon)     # no site coordinates in the lab: the forecaster does not need it

    def calendar(self, tick):
        """``{tick, day_of_year, weekday, n_ticks}``; the feed's days have no date, so the
        calendar is a fixed day 1, Monday."""
        return {"tick": int(tick), "day_of_year": 1, "weekday": 0, "n_ticks": self.n_ticks}

    def truth(self):
        """What the feed said at each tick of the day (NaN for ticks not run yet); prices it
        could not give are the ones the edge used instead (see :meth:`now`)."""
        out = {s: a.copy() for s, a in self.observed.items()}
        run = ~np.isnan(self.observed["sun"])
        for series in ("import_price_per_j", "export_price_per_j"):
            for t in np.flatnonzero(run):
                out[series][t] = self._known(self.observed[series][t], series, t)
        return out


class FeedForecaster:
    """Forecasts for lab-feed days, with the ``forecast``/``source`` interface of the ONNX one.

    Demand and prices: the feed's online day learner, corrected by what today showed so far
    (:meth:`picogrid.edge.sources.labfeed.OnlineDayLearner.forecast`), with P10/P90 from its own errors
    on the days seen (:meth:`~picogrid.edge.sources.labfeed.OnlineDayLearner.band`); PV: the sun the
    edge saw yesterday at the same ticks, banded by how its days differed from the day before
    (:meth:`FeedSource.sun_band`), or, before the edge has seen a whole day's sun (its first
    day on a feed), the day curve fitted to today's sun so far with its posterior predictive
    band (:class:`~picogrid.edge.sources.labfeed.DaySunFit`: zero at night, a half-sine by day), not
    the sun now held flat (which held a 1.5 W afternoon sun through the night). Until the
    sun band has its days, yesterday's sun takes the spread of today's day curve around its
    median as its band, rather than none. Before a band is known its quantiles are all the
    point forecast, and the source says so.
    """

    def __init__(self, source):
        self.src = source
        self.source = {}
        self._sun_fit = DaySunFit(source.n_ticks)

    def _learned(self, key, today, k, n):
        """``(point [n], band or None, source label)`` of ``key`` from tick ``k`` on, or None before
        any feed history; the band is :func:`early_band` until the learner has its own errors."""
        learner = self.src.feed.learner
        if not learner.data.get(key):
            return None
        band, label = learner.band(key, k, n), "labfeed_learner"
        if band is None:         # too few days of the learner's own errors: the days' own spread
            band, label = early_band(learner.data[key], k, n), "labfeed_learner:early band"
        return learner.forecast(key, np.asarray(today[:k], float), n), band, label

    def forecast(self, history, calendar, clearsky_ghi_w_m2):
        """P10/P50/P90 of ``len(clearsky_ghi_w_m2)`` ticks from ``calendar["tick"]`` on.

        ``history``: series -> values through the tick before that one (the last is the latest
        known, what persistence holds); the learner reads today's observations before it.
        """
        k = int(calendar["tick"])
        n = len(clearsky_ghi_w_m2)
        src, obs = self.src, self.src.observed
        latest = {name: float(np.asarray(v, float)[-1]) for name, v in history.items() if len(v)}
        fans, source = {}, {}

        def held(name):    # persistence: the latest value over the horizon
            return {q: np.full(n, latest[name]) for q in QUANTILES}

        def fan(point, band, learned_as):
            point = np.nan_to_num(np.asarray(point, float))
            if band is None:
                return {q: point for q in QUANTILES}, learned_as + ":no band yet"
            return {0.1: point + band[0], 0.5: point, 0.9: point + band[1]}, learned_as

        total = self._learned("demand", sum(np.nan_to_num(obs[l + "_demand_w"]) for l in LOADS), k, n)
        total_fan = None if total is None else fan(*total)
        # the learner knows the total demand: split it as the feed's demand is split
        split = None if total_fan is None else {q: src.split(np.maximum(v, 0.0)) for q, v in total_fan[0].items()}
        for i, l in enumerate(LOADS):
            name = l + "_demand_w"
            if split is None:
                fans[name], source[name] = held(name), "persistence:no feed history"
            else:
                fans[name], source[name] = {q: v[:, i] for q, v in split.items()}, total_fan[1]
        for name, key in (("import_price_per_j", "sell_price"), ("export_price_per_j", "buy_price")):
            learned = self._learned(key, obs[name], k, n)
            if learned is None:
                fans[name], source[name] = held(name), "persistence:no feed history"
            else:
                fans[name], source[name] = fan(*learned)
        if src.yesterday_sun is not None and not np.isnan(src.yesterday_sun).all():
            steps = (k + np.arange(n)) % src.n_ticks
            point = np.nan_to_num(src.yesterday_sun)[steps] * src.pv_capability_w
            learned_as = "edge_yesterday" if src.sun_age_days == 1 else f"edge_sun_seen:{src.sun_age_days} days ago"
            band = src.sun_band(k, n)
            if band is not None:
                fans["pv_available_w"], source["pv_available_w"] = fan(
                    point, tuple(b * src.pv_capability_w for b in band), learned_as)
            else:   # too few days for a day-to-day band: the spread of today's day curve around its median
                today_sun = self._sun_fit.fan(src._day_sun(), k, n, QUANTILES)
                fans["pv_available_w"] = {q: point + (today_sun[q] - today_sun[0.5]) * src.pv_capability_w
                                          for q in QUANTILES}
                source["pv_available_w"] = learned_as + ":band of sun_day_fit"
        else:     # no day's sun seen before today: the day curve today's sun so far says
            fans["pv_available_w"] = {q: v * src.pv_capability_w
                                      for q, v in self._sun_fit.fan(src._day_sun(), k, n, QUANTILES).items()}
            source["pv_available_w"] = "sun_day_fit:first day"
        self.source = source
        # powers are not negative; the sun is at most the PV capability
        for name in ("pv_available_w", *(l + "_demand_w" for l in LOADS)):
            fans[name] = {q: np.maximum(v, 0.0) for q, v in fans[name].items()}
        fans["pv_available_w"] = {q: np.minimum(v, src.pv_capability_w) for q, v in fans["pv_available_w"].items()}
        return fans


def early_band(days, tick, horizon, window=OnlineDayLearner.BAND_TICKS + 3, min_samples=5):
    """P10/P90 offsets for a learned series before the learner has scored its own errors.

    With two or more days seen, the quantiles of how each day differed from the one before at
    each tick of day (the error of "as yesterday", the learner's first expert); with one, of how
    that day scattered around its own running median over ``2 window + 1`` ticks (its tick-to-tick
    noise, which on a teaching server's prices is most of the error). Pooled over ``window``
    ticks either side, as :func:`picogrid.edge.sources.labfeed.pooled_quantiles` does.

    Parameters
    ----------
    days : list of array [n_ticks]
        The days seen, oldest first [series unit].
    tick, horizon : int
        The forecast's first tick and its length.

    Returns
    -------
    (numpy.ndarray [horizon], numpy.ndarray [horizon]) or None
        P10 offset <= 0 <= P90 offset; None with no day seen.
    """
    days = [np.asarray(d, float) for d in days]
    if not days:
        return None
    n = days[-1].size
    if len(days) >= 2:
        errors = [b - a for a, b in zip(days[:-1], days[1:])]
    else:
        padded = np.pad(days[0], window, mode="edge")
        running = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * window + 1), axis=1)
        errors = [days[0] - running]
    q = np.nan_to_num(pooled_quantiles(errors, (0.1, 0.9), window, min_samples))
    steps = (int(tick) + np.arange(horizon)) % n
    return np.minimum(q[0][steps], 0.0), np.maximum(q[1][steps], 0.0)


def next_day_start(feed, tick_s, min_delay_s):
    """Wall time [s] of the feed's next day start, at least ``min_delay_s`` from now.

    ``tick_s`` is the wall duration of one feed tick (5 s on the real feed, less when the feed
    clock is accelerated); the time returned is a tenth of a tick past the boundary, clear of it.
    """
    while True:
        feed_now, wall_now = feed.clock(), time.time()
        to_next_day_s = (int(feed_now // DAY_S) + 1) * DAY_S - feed_now
        t0 = wall_now + to_next_day_s * tick_s / TICK_S + 0.1 * tick_s
        if t0 - wall_now >= min_delay_s:
            return t0
        time.sleep(t0 - wall_now + 0.2 * tick_s)     # too close: take the day after


def _or_nan(x):
    return float("nan") if x is None else float(x)
