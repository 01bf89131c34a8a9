"""``picogrid evaluate --profile labfeed``: savings capture on lab-feed days, through the feed client.

The lab kit's market feed (DESIGN.md §2) is where a lab user's edge learns its day: no model
trained beforehand, only what ``/yesterday`` taught :class:`picogrid.edge.labfeed.OnlineDayLearner`
and the sun the edge saw. This runs that path over many days, faster than real time:

- the loopback feed (:func:`picogrid.models.labfeed_server.serve_days`, the real day before the
  first as its ``/yesterday``) serves real days in the feed's format
  (:func:`picogrid.models.labfeed_server.generate_lab_days`: integer c/J on the feed's price
  scale, one total demand, the first laundry cycle as the day's deferrable);
- the edge's own client (:class:`picogrid.edge.labfeed.LabFeed`, HTTP on 127.0.0.1) reads it
  under a clock that leaps from tick to tick, and :class:`picogrid.edge.feedsource.FeedSource`
  and :class:`~picogrid.edge.feedsource.FeedForecaster` turn it into the runner's inputs, as on
  ``picogrid demo --feed``;
- the first ``warm_days`` days only teach the learner (the edge has just started); each later
  day is run in closed loop (:func:`picogrid.edge.policies.simulate_policy`, storage half full
  at the start, the energy left scored at the terminal value) by the MPC on those forecasts
  (``mpc_own``), the MPC on the true day (``mpc_perfect``), the naive rule and the
  perfect-foresight LP (``perfect_foresight``), and pymgrid's MPC on the same fans and on the true day
  (``pymgrid_own``, ``pymgrid_perfect``), with the lab site file's ``[labfeed]`` economics
  (:func:`picogrid.edge.feedsource.feed_site`) and the feed's 5 s tick.

The load split and ratings are the site file's (:func:`picogrid.edge.feedsource.feed_source`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt

import numpy as np

from picogrid.edge import policies
from picogrid.edge.evaluate import (COMPARED, baselines, cached_fans, capture, compared_runs, fans_forecast,
                                    load_site, perfect_controller, perfect_forecast, report_compared, run_mpc)
from picogrid.edge.forecast import forecast_from_now
from picogrid.edge.labfeed import TICK_S, LabFeed, parse
from picogrid.edge.mpc_config import MpcConfig, config_from_site
from picogrid.edge.optimize import MpcController
from picogrid.edge.pymgrid_policy import PymgridMpc
from picogrid.edge.signals import LOAD_SERIES

#: days that only teach the learner before the first scored one (the learner scores its choices
#: from the third day on, :class:`picogrid.edge.labfeed.OnlineDayLearner`)
WARM_DAYS = 5
#: a lab day index for the served days (any; the clock leaps)
DAY0 = 5_900_000


class LeapingClock:
    """Unix time [s] that the evaluation sets: the feed and its client read the same one."""

    def __init__(self, t=0.0):
        self.t = float(t)

    def __call__(self):
        return self.t


def _truth(day, source, cfg):
    """:class:`policies.DayTruth` of a served day: the demand split as the feed source splits it,
    the jobs' windows as the edge's client reads them (the feed's deadline is inclusive)."""
    jobs = [{"start": j["start_tick"], "end": j["end_tick"], "energy": j["energy_j"]}
            for j in parse("deferables", day["deferables"])]
    return policies.DayTruth(
        pv_avail_w=np.asarray(day["sun"], float) / 100.0 * source.pv_capability_w,
        demand_w=source.split(day["demand"]),
        import_price_per_j=np.asarray(day["sell_price"], float),
        export_price_per_j=np.asarray(day["buy_price"], float),
        e0_j=0.5 * (cfg.e_min_j + cfg.e_max_j), jobs=jobs)


def check_overrides(overrides):
    """Raise ValueError for an ``MpcConfig`` override lab-feed days cannot take (``dt_s``: the
    feed's tick is fixed; ``error_scenario_days``: the feed tells no day before the edge saw it,
    so there are no past forecasts, :func:`picogrid.edge.feedsource.feed_site`)."""
    if overrides and "dt_s" in overrides:
        raise ValueError(f"dt_s is the feed's tick ({TICK_S:g} s) on lab-feed days, not a setting")
    if overrides and overrides.get("error_scenario_days"):
        raise ValueError("error_scenario_days: lab-feed days have no past forecasts to take errors from")


def evaluate_feed(first_day="2013-07-01", n_days=30, warm_days=WARM_DAYS, overrides=None, progress=None,
                  compare=True):
    """Run the policies over ``n_days`` lab-feed days from ``first_day`` (after ``warm_days``).

    Parameters
    ----------
    first_day : str
        ISO date of the first scored day (real data of :func:`generate_lab_days`).
    n_days, warm_days : int
        Scored days (>= 1) and learning-only days before them (>= 0).
    overrides : dict, optional
        ``MpcConfig`` fields over the lab site file's (as ``picogrid evaluate --set``).
    progress : callable ``(profile, done, total)``, optional
    compare : bool
        Also run pymgrid's MPC on the same fans and on the true day
        (:func:`picogrid.edge.evaluate.compared_runs`).

    Returns
    -------
    dict
        ``costs``: policy -> [n_days] cost [c, feed scale]; ``days`` (dates); ``sources`` (forecast
        source -> series-ticks); ``solve_ms``; ``statuses``; ``pymgrid_ms`` and
        ``pymgrid_statuses`` (with ``compare``); ``cfg``; ``learned`` (per scored day,
        ``(its lab day, the last lab day the learner had learnt at its first tick)``).

    Raises
    ------
    ValueError
        On ``n_days < 1`` or ``warm_days < 0``, or an override of ``dt_s`` (the feed's tick is fixed).
    """
    from picogrid.edge.feedsource import FeedForecaster, feed_site, feed_source
    from picogrid.models.labfeed_server import serve_days

    if n_days < 1 or warm_days < 0:
        raise ValueError(f"need n_days >= 1 and warm_days >= 0, got {n_days}, {warm_days}")
    check_overrides(overrides)
    site, _, _ = load_site("lab", overrides)      # validates the overrides
    site = feed_site(site)
    cfg = config_from_site(site)
    if overrides:
        cfg = MpcConfig.from_dict({**dataclasses.asdict(cfg), **overrides})
    cfg = cfg.replace(dt_s=TICK_S)
    start = _dt.date.fromisoformat(first_day) - _dt.timedelta(days=warm_days)
    clock = LeapingClock(DAY0 * 300.0)
    server = serve_days(start.isoformat(), warm_days + n_days, clock, day0=DAY0)
    days = server.days[1:]      # played on lab days DAY0, DAY0 + 1, ...
    policies_run = ("naive", "perfect_foresight", "mpc_perfect", "mpc_own") + (COMPARED if compare else ())
    costs = {p: [] for p in policies_run}
    sources, solve_ms, statuses, learned = {}, [], {}, []
    pymgrid_ms, pymgrid_statuses = [], {}
    try:
        src = feed_source(site, LabFeed(server.url, timeout_s=2.0, clock=clock))
        forecaster = FeedForecaster(src)
        ctrl, ctrl_perfect = MpcController(cfg), perfect_controller(cfg)
        pm = PymgridMpc(cfg) if compare else None

        def at_tick(i, t):
            clock.t = (DAY0 + i) * 300.0 + t * TICK_S + 0.1 * TICK_S
            src.begin_tick(t)

        for i, day in enumerate(days):
            if i < warm_days:          # the edge only watches: the learner and the sun history fill
                for t in range(src.n_ticks):
                    at_tick(i, t)
                continue
            truth = _truth(day, src, cfg)

            def fans_at(t, now, i=i):
                at_tick(i, t)
                if t == 0:
                    learned.append((DAY0 + i, max(src.feed.learner.days, default=None)))
                fans = forecast_from_now(forecaster, src.history(t, 2 * src.n_ticks), now, LOAD_SERIES,
                                         src.calendar(t), src.clearsky(t + 1, cfg.horizon))
                for s in forecaster.source.values():
                    sources[s] = sources.get(s, 0) + 1
                return fans

            results = baselines(truth, cfg)
            results["mpc_perfect"] = run_mpc(ctrl_perfect, perfect_forecast(None, i, truth, cfg), truth, cfg)
            fans = cached_fans(fans_at)
            results["mpc_own"] = run_mpc(ctrl, fans_forecast(fans, truth, cfg), truth, cfg, solve_ms, statuses)
            if pm is not None:
                results.update(compared_runs(pm, fans, truth, cfg, pymgrid_ms, pymgrid_statuses))
            for p in policies_run:
                costs[p].append(results[p].total_cost)
            if progress:
                progress("labfeed", i - warm_days + 1, n_days)
    finally:
        server.close()
    return {"costs": {p: np.array(v) for p, v in costs.items()},
            "days": [d["date"] for d in days[warm_days:]], "sources": sources,
            "solve_ms": np.array(solve_ms), "statuses": statuses, "pymgrid_ms": np.array(pymgrid_ms),
            "pymgrid_statuses": pymgrid_statuses, "pymgrid_solver": pm.solver_name if pm else None,
            "cfg": cfg, "learned": learned}


def report(res, out):
    """Print costs, savings capture and the forecast sources of :func:`evaluate_feed`'s result."""
    c, n = res["costs"], len(res["days"])
    print(f"== labfeed: {n} lab-feed days {res['days'][0]} .. {res['days'][-1]} (served by the loopback "
          f"feed, read by the edge's client), N={res['cfg'].horizon}, dt={res['cfg'].dt_s:g} s", file=out)
    for p, v in c.items():
        extra = "" if p in ("naive", "perfect_foresight") else f"  savings capture {100 * capture(c, p):6.1f} %"
        print(f"  {p:16s} cost {np.sum(v):12.5g} c (per day mean {np.mean(v):.5g}){extra}", file=out)
    med = np.nanmedian([policies.savings_capture(a, b, o) for a, b, o in zip(c["naive"], c["mpc_own"], c["perfect_foresight"])])
    print(f"  per-day capture (feed forecasts): median {100 * med:.1f} %", file=out)
    src = ", ".join(f"{k} x{v}" for k, v in sorted(res["sources"].items()))
    print(f"  forecasts: the feed's online learner and the sun seen; series-ticks by source: {src}", file=out)
    ms = res["solve_ms"]
    print(f"  MPC solve p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms; "
          f"statuses {res['statuses']}", file=out)
    report_compared(res, out)


def main(first_day, n_days, overrides, out, progress=None, compare=True):
    """Run and report (the ``labfeed`` profile of ``picogrid evaluate``); returns the result."""
    res = evaluate_feed(first_day, n_days, overrides=overrides, progress=progress, compare=compare)
    report(res, out)
    return res
