"""Scenario runner: one real day on the HIL bench, with the edge controller and its store.

Puts the layers together the way they run in the lab: the plant and six MicroPython boards
(:mod:`picogrid.hil.bench`), the edge's serial links, fleet, forecaster and MPC
(:mod:`picogrid.edge.runner`), the SQLite store the dashboard reads, and at the end the
baselines and the summary (:mod:`picogrid.edge.report`).
"""

import datetime as dt
import logging
import pathlib
import time
import tomllib

from picogrid.edge import report
from picogrid.edge.fleet import Fleet
from picogrid.edge.links import SerialLink
from picogrid.edge.runner import EdgeRunner
from picogrid.edge.signals import ScenarioSource, load_scenario, save_scenario
from picogrid.edge.store import Store
from picogrid.hil.bench import Bench

log = logging.getLogger(__name__)

SITE_DIR = pathlib.Path(__file__).resolve().parent.parent / "edge" / "sites"
DEFAULT_DAY = "2013-07-16"      # a day of the held-out test period (models/DATA.md)
HISTORY_DAYS = 2                # days before the run the forecaster may look back on
_HELLO_TIMEOUT_S = 10.0


def load_site(path=None, **overrides):
    """Parse a site TOML (default: the lab bench) and apply ``bench`` overrides."""
    path = pathlib.Path(path) if path else SITE_DIR / "lab.toml"
    with open(path, "rb") as f:
        site = tomllib.load(f)
    unknown = set(overrides) - set(site["bench"])
    if unknown:
        raise ValueError("unknown bench settings: %s" % sorted(unknown))
    site["bench"].update({k: v for k, v in overrides.items() if v is not None})
    return site


def prepare_scenario(run_dir, day, n_ticks, pv_capability_w):
    """Build (or reuse) the bench-scale scenario of ``day`` with its history; returns its path."""
    path = pathlib.Path(run_dir) / ("scenario-%s-%d-%g.json" % (day, n_ticks, pv_capability_w))
    if not path.exists():
        from picogrid.models.scenario import build_bench_days   # pandas: only where data is built
        first = (dt.date.fromisoformat(day) - dt.timedelta(days=HISTORY_DAYS)).isoformat()
        frame = build_bench_days(first, HISTORY_DAYS + 1, n_ticks=n_ticks,
                                 bench={"pv_capability_w": pv_capability_w})
        save_scenario(frame, path)
    return path


class Day:
    """One day on the bench; use as a context manager so every process is stopped.

    Parameters
    ----------
    site : dict, from :func:`load_site`
    run_dir : path for the store, board folders, logs and plots
    day : str 'YYYY-MM-DD', the real day to replay
    n_run_ticks : int or None, stop after this many ticks (a short test day)
    db_path : path of the SQLite store (default ``run_dir/picogrid.sqlite``)
    start_delay_s : float, time between launching the boards and tick 0
    """

    def __init__(self, site, run_dir, day=DEFAULT_DAY, n_run_ticks=None, db_path=None,
                 start_delay_s=3.0, forecaster=None):
        self.site = site
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.day = day
        self.db_path = pathlib.Path(db_path) if db_path else self.run_dir / "picogrid.sqlite"
        n_ticks = int(site["bench"]["n_ticks"])
        scenario = load_scenario(prepare_scenario(self.run_dir, day, n_ticks, site["pv"]["capability_w"]))
        self.source = ScenarioSource(scenario, n_ticks)
        if n_run_ticks:
            site["bench"]["n_ticks"] = int(n_run_ticks)
        self.start_delay_s = start_delay_s
        self.forecaster = forecaster
        self.bench = None
        self.links = []
        self.store = None
        self.runner = None

    def start(self):
        from picogrid.edge.forecast import Forecaster
        b = self.site["bench"]
        t0 = time.time() + self.start_delay_s
        sun = self.source.truth()["sun"][: int(b["n_ticks"])]
        self.bench = Bench(self.site, self.run_dir, t0, float(b["tick_s"]), sun).start()
        fleet = Fleet({name: info["id"] for name, info in self.bench.boards.items()})
        for name, port in self.bench.ports.items():
            link = SerialLink(name, port, fleet.on_frame)
            fleet.attach(name, link)
            self.links.append(link)
        fleet.request_hello()
        deadline = time.time() + _HELLO_TIMEOUT_S
        while time.time() < deadline and any(s["role"] is None for s in fleet.snapshot().values()):
            time.sleep(0.05)
        missing = [n for n, s in fleet.snapshot().items() if s["role"] is None]
        if missing:
            log.warning("no hello from %s; running without them", ", ".join(missing))
        self.store = Store(self.db_path)
        self.store.start_run(self.site["profile"], self.source.day, int(b["n_ticks"]),
                             float(b["tick_s"]), {"bench": b, "run_dir": str(self.run_dir)})
        for name in fleet.boards:
            self.store.board(name, link="serial")
        self.store.commit()
        self.runner = EdgeRunner(self.site, self.source, fleet, self.store,
                                 self.forecaster or Forecaster(), t0)
        return self

    def run(self, on_tick=None):
        """Run every tick, then compute baselines and the summary; returns the summary dict."""
        try:
            self.runner.run_day(on_tick)
        except BaseException:
            self.store.finish_run({}, status="failed")
            raise
        rows = [dict(r) for r in self.store.conn.execute(
            "SELECT * FROM dispatch WHERE run_id=? AND policy='mpc' ORDER BY tick", (self.store.run_id,))]
        n = len(rows)
        truth = {k: v[:n] for k, v in self.source.truth().items()}
        s, naive, oracle = report.summary(rows, truth, self.runner.cfg, self.runner.e0_j,
                                          self.runner.solve_times_s, self.runner.statuses)
        for policy, result in (("naive", naive), ("oracle", oracle)):
            for t, row in enumerate(report.baseline_rows(result, truth, self.runner.cfg.dt_s)):
                self.store.dispatch(policy, t, row)
        alive = self.bench.alive()
        s["boards_alive"] = sum(alive.values())
        self.store.finish_run(s)
        return s

    def stop(self):
        for link in self.links:
            link.close()
        if self.bench:
            self.bench.stop()
        if self.store:
            self.store.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
