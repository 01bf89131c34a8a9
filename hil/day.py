"""Scenario runner: one real day on the HIL bench, with the edge controller and its store.

Puts the layers together the way they run in the lab: the plant and six MicroPython boards
(:mod:`picogrid.hil.bench`), the edge's serial links, fleet, forecaster and MPC
(:mod:`picogrid.edge.control.runner`), the SQLite store the dashboard reads, and at the end the
baselines and the summary (:mod:`picogrid.edge.control.report`).
"""

import copy
import datetime as dt
import logging
import pathlib
import threading
import time
import tomllib

import numpy as np

from picogrid.edge.control import report
from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.optimizer.mpc_config import config_from_site
from picogrid.edge.boards.links import SerialLink
from picogrid.edge.control.runner import EdgeRunner
from picogrid.edge.sources.signals import ScenarioSource, load_scenario, save_scenario
from picogrid.edge.site import board_ids, deferrable_board, load_site  # noqa: F401  (load_site: used by callers)
from picogrid.edge.control.store import Store
from picogrid.hil.bench import Bench

log = logging.getLogger(__name__)

DEFAULT_DAY = "2013-07-16"      # a day of the held-out test period (models/DATA.md)
HISTORY_DAYS = 2                # days before the run the forecaster may look back on, at least
_HELLO_TIMEOUT_S = 10.0


def prepare_scenario(run_dir, day, n_ticks, pv_capability_w, history_days=HISTORY_DAYS):
    """Build (or reuse) the bench-scale scenario of ``day`` with ``history_days`` days of
    history before it; returns its path."""
    path = pathlib.Path(run_dir) / ("scenario-%s-%d-%g-%d.json" % (day, n_ticks, pv_capability_w, history_days))
    if not path.exists():
        from picogrid.models.scenario import build_bench_days   # pandas: only where data is built
        first = (dt.date.fromisoformat(day) - dt.timedelta(days=history_days)).isoformat()
        frame = build_bench_days(first, history_days + 1, n_ticks=n_ticks,
                                 bench={"pv_capability_w": pv_capability_w})
        save_scenario(frame, path)
    return path


def data_scenario(site, run_dir, path, latitude, longitude, altitude=None, day=None, currency_factor=1.0):
    """The scenario JSON of a day of a user's own file (``picogrid demo --data``), scaled to
    ``site`` from its history days (:func:`picogrid.models.user_scenario.bench_days`).

    The file must hold the days the forecasters' lags read before the run day; the error
    scenarios' past days are taken as far as it reaches (the runner fills the rest with the point
    forecast and says so, :meth:`EdgeRunner.prepare`).

    Returns
    -------
    (pathlib.Path, str, list of str)
        The scenario's path, the run day, and the notes (the split and each scaling factor) for
        the summary.
    """
    from picogrid.edge.forecasting.forecast import model_history_days
    from picogrid.models.features import profile_dims
    from picogrid.models.user_scenario import bench_days

    n_ticks = int(site["bench"]["n_ticks"])
    profile = site.get("profile", "lab")
    lag_days = HISTORY_DAYS
    if profile_dims(profile)["n_ticks"] == n_ticks:
        lag_days = max(lag_days, model_history_days(profile))
    frame, notes = bench_days(path, site, latitude, longitude, altitude, day, lag_days,
                              lag_days + config_from_site(site).error_days, currency_factor)
    run_day = frame["day"].iloc[-1]
    out = pathlib.Path(run_dir) / ("scenario-data-%s-%d.json" % (run_day, n_ticks))
    save_scenario(frame, out)
    return out, run_day, notes


def replay_source(site, run_dir, day, scenario_path=None):
    """The :class:`ScenarioSource` of a replayed real ``day`` for ``site`` (or of the scenario
    JSON at ``scenario_path``, its last day the run day: a user's own days, ``demo --data``).

    With a deferrable load (``[deferrable]``), jobs are taken out of its real demand as
    ``picogrid evaluate`` does (:func:`picogrid.edge.sources.signals.split_jobs`, on every day, so the
    forecaster's history is split alike); the run day's jobs are the source's.
    """
    from picogrid.edge.sources.signals import split_days

    from picogrid.edge.forecasting.forecast import model_history_days
    from picogrid.models.features import profile_dims

    n_ticks = int(site["bench"]["n_ticks"])
    profile = site.get("profile", "lab")
    history_days = HISTORY_DAYS
    if profile_dims(profile)["n_ticks"] == n_ticks:     # the profile's models will run: their history
        history_days = max(history_days, model_history_days(profile))
    # the error scenarios' past days are forecast before the run (EdgeRunner.prepare): theirs too
    history_days += config_from_site(site).error_days
    scenario = load_scenario(scenario_path or prepare_scenario(run_dir, day, n_ticks, site["pv"]["capability_w"],
                                                               history_days))
    board, _ = deferrable_board(site)
    jobs = []
    if board is not None:
        col = np.asarray(scenario[board + "_demand_w"], float)
        jobs = split_days(col, float(site["bench"]["tick_s"]), n_ticks)[-1]   # the run day is the last
        scenario[board + "_demand_w"] = col.tolist()
    return ScenarioSource(scenario, n_ticks, jobs)


class _Bench:
    """One bench (plant + six boards) with the edge's links, fleet and tick runner on it."""

    def __init__(self, site, run_dir, source, t0):
        b = site["bench"]
        sun = [0.0 if x != x else x for x in source.truth()["sun"][: int(b["n_ticks"])]]
        self.bench = Bench(site, run_dir, t0, float(b["tick_s"]), sun).start()
        self.fleet = Fleet(board_ids(site))
        self.links = []
        try:
            for name, port in self.bench.ports.items():
                link = SerialLink(name, port, self.fleet.on_frame)
                self.fleet.attach(name, link)
                self.links.append(link)
        except BaseException:
            self.stop()
            raise
        self.runner = None
        self.store = None       # a comparison bench's own connection
        self.error = None

    def wait_hello(self):
        self.fleet.request_hello()
        deadline = time.time() + _HELLO_TIMEOUT_S
        while time.time() < deadline and any(s["role"] is None for s in self.fleet.snapshot().values()):
            time.sleep(0.05)
        missing = [n for n, s in self.fleet.snapshot().items() if s["role"] is None]
        if missing:
            log.warning("no hello from %s; running without them", ", ".join(missing))

    def run(self, on_tick=None):
        try:
            self.runner.run_day(on_tick)
        except BaseException as exc:   # Ctrl-C or a failure: reported by Day.run on the main thread
            self.error = exc
            self.runner.stop_requested.set()     # the day's other benches stop at their next tick

    def stop(self):
        for link in self.links:
            link.close()
        self.bench.stop()


class Day:
    """One day on identical benches; use as a context manager so every process stops.

    The MPC runs on the main bench and everything it does is recorded; the naive rule runs
    at the same time on a second bench (``run_dir/naive-bench``) so both policies are
    measured under the same physics, sensors and converter losses. The perfect-foresight
    optimum is computed on the day's true data; with ``perfect_bench`` (a replayed day) the
    same MPC also runs with perfect forecasts (that true future) on a third bench
    (``run_dir/mpc-perfect-forecast-bench``), so the MPC with perfect forecasts is measured through
    the bench's physics too.

    Parameters
    ----------
    site : dict, from :func:`load_site`
    run_dir : path for the store, board folders, logs and plots
    day : str 'YYYY-MM-DD', the real day to replay
    n_run_ticks : int or None, stop after this many ticks (a short test day)
    db_path : path of the SQLite store (default ``run_dir/picogrid.sqlite``)
    start_delay_s : float, time between launching the boards and tick 0
    feed : picogrid.edge.sources.labfeed.LabFeed or None; when given, the lab market feed is the
        source of sun, demand and prices instead of the replayed day: the day starts at the
        feed's next day boundary, each feed tick lasts ``bench.tick_s`` of wall time (5 s on
        the real feed; less with an accelerated feed clock), and the benches' PV emulators
        follow the feed's sun.
    feed_memory : picogrid.edge.sources.feedmemory.FeedMemory or None; with a feed, the days earlier
        runs saw (restored before the day, saved at its last tick and when the day stops).
    perfect_bench : bool, also run the MPC with perfect forecasts (the true future) on a third bench
    scenario_path : path of a scenario JSON to replay instead of the shipped data's ``day`` (its last
        day is run; :func:`replay_source`)

    Raises
    ------
    ValueError
        If ``n_run_ticks`` is out of range, or ``perfect_bench`` is asked with a feed (its
        future is not known in advance).
    """

    def __init__(self, site, run_dir, day=DEFAULT_DAY, n_run_ticks=None, db_path=None,
                 start_delay_s=4.0, forecaster=None, feed=None, feed_memory=None, perfect_bench=False,
                 scenario_path=None):
        if perfect_bench and feed is not None:
            raise ValueError("perfect_bench needs a replayed day: the lab feed's future is not known")
        self.perfect_bench = bool(perfect_bench)
        site = copy.deepcopy(site)      # n_run_ticks changes it: the caller's stays as it was
        self.site = site
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.day = day
        self.db_path = pathlib.Path(db_path) if db_path else self.run_dir / "picogrid.sqlite"
        n_ticks = int(site["bench"]["n_ticks"])
        self.feed = feed
        if feed is not None:
            from picogrid.edge.sources.feedsource import FeedForecaster, feed_source, feed_site
            self.site = site = feed_site(site)
            self.source = feed_source(site, feed, feed_memory)
            forecaster = forecaster or FeedForecaster(self.source)
        else:
            self.source = replay_source(site, self.run_dir, day, scenario_path)
        if n_run_ticks is not None:
            if not 0 < int(n_run_ticks) <= n_ticks:
                raise ValueError("n_run_ticks must be 1..%d, got %r" % (n_ticks, n_run_ticks))
            site["bench"]["n_ticks"] = int(n_run_ticks)
        self.start_delay_s = start_delay_s
        self.forecaster = forecaster
        self.sides = {}
        self.stores = []

    @property
    def bench(self):
        return self.sides["mpc"].bench

    @property
    def runner(self):
        return self.sides["mpc"].runner

    def _relay_sun(self, snap):
        """The lab's PV emulators follow the feed's sun (power fraction -> irradiance)."""
        from picogrid.hil.faults import PlantControl
        from picogrid.hil.plant import LAB_PLANT, irradiance_for_power_fraction
        if snap.sun_fraction is None:
            return
        p = dict(LAB_PLANT, **self.site.get("plant", {}))
        g = irradiance_for_power_fraction(snap.sun_fraction, p["pv_isc_a"], p["pv_voc_v"], p["pv_thermal_voltage_v"])
        for side in self.sides.values():
            PlantControl(side.bench.plant_port).command("sun", value=g)

    def start(self):
        try:
            return self._start()
        except BaseException:      # half-started: stop what did start, then report
            self.stop()
            raise

    def _start(self):
        from picogrid.edge.forecasting.forecast import Forecaster
        b = self.site["bench"]
        if self.feed is not None:
            from picogrid.edge.sources.feedsource import next_day_start
            t0 = next_day_start(self.feed, float(b["tick_s"]), self.start_delay_s)
        else:
            t0 = time.time() + self.start_delay_s
        self.sides["mpc"] = _Bench(self.site, self.run_dir, self.source, t0)
        self.sides["naive"] = _Bench(self.site, self.run_dir / "naive-bench", self.source, t0)
        if self.perfect_bench:
            self.sides["mpc_perfect_forecast"] = _Bench(self.site, self.run_dir / "mpc-perfect-forecast-bench",
                                                        self.source, t0)
        for side in self.sides.values():
            side.wait_hello()
        store = Store(self.db_path)
        label = self.source.day if self.feed is None else "lab feed %s" % self.feed.base_url
        store.start_run(self.site["profile"], label, int(b["n_ticks"]), float(b["tick_s"]),
                        {"bench": b, "run_dir": str(self.run_dir),
                         "deferrable_board": deferrable_board(self.site)[0]})
        for name in self.sides["mpc"].fleet.boards:
            store.board(name, link="serial")
        store.commit()
        self.stores = [store]
        if self.feed is not None:
            self.source.listeners.append(self._relay_sun)
        forecaster = self.forecaster or Forecaster()
        self.sides["mpc"].runner = EdgeRunner(self.site, self.source, self.sides["mpc"].fleet, store,
                                              forecaster, t0)
        self.sides["mpc"].runner.prepare()      # the error scenarios' past days, before tick 0
        for name, side in self._comparison_sides():
            side.store = Store(self.db_path)    # it writes from its own thread: its own connection
            side.store.run_id = store.run_id
            self.stores.append(side.store)
            # one stop for the whole day: the first bench that fails (or Ctrl-C) ends every bench
            side.runner = EdgeRunner(self.site, self.source, side.fleet, side.store, None, t0,
                                     policy=name, record="dispatch",
                                     stop_requested=self.sides["mpc"].runner.stop_requested)
        return self

    def _comparison_sides(self):
        """``(policy, bench)`` of the benches beside the MPC's: the naive rule, the MPC with perfect forecasts."""
        return [(name, side) for name, side in self.sides.items() if name != "mpc"]

    def run(self, on_tick=None):
        """Run every tick on every bench, then the perfect_foresight and the summary; returns the summary."""
        store = self.stores[0]
        others = [threading.Thread(target=side.run, name=name + "-bench", daemon=True)
                  for name, side in self._comparison_sides()]
        for thread in others:
            thread.start()
        self.sides["mpc"].run(on_tick)
        for thread in others:
            thread.join()
        errors = [s.error for s in self.sides.values() if s.error is not None]
        if errors:
            store.finish_run({}, status="failed")
            raise errors[0]
        try:
            return self._summarise(store)
        except BaseException:
            store.finish_run({}, status="failed")
            raise

    def _summarise(self, store):
        rows = {p: [dict(r) for r in store.conn.execute(
            "SELECT * FROM dispatch WHERE run_id=? AND policy=? ORDER BY tick", (store.run_id, p))]
            for p in self.sides}
        n = len(rows["mpc"])
        truth = {k: v[:n] for k, v in self.source.truth().items()}
        r = self.runner
        d = r.deferrable
        deferrable = report.Deferrable(d.board, d.rating_w, self.source.jobs()) if d else None
        s, perfect_foresight = report.summary(rows["mpc"], rows["naive"], truth, r.cfg, r.start_energy_j,
                                   r.solve_times_s, r.statuses, r.solve_cpu_s, deferrable,
                                   mpc_perfect_forecast_rows=rows.get("mpc_perfect_forecast"),
                                   mpc_perfect_forecast_statuses=self.sides["mpc_perfect_forecast"].runner.statuses
                                   if "mpc_perfect_forecast" in self.sides else ())
        for t, row in enumerate(report.baseline_rows(perfect_foresight, truth, self.runner.cfg.dt_s)):
            store.dispatch("perfect_foresight", t, row)
        s["boards_alive"] = sum(self.bench.alive().values())
        store.finish_run(s)
        return s

    def stop(self):
        self.source.close()          # a feed source keeps the days seen for the next run
        for side in self.sides.values():
            side.stop()
        for store in self.stores:
            store.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

