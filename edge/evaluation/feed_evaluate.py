"""``picogrid evaluate --profile labfeed``: savings capture on lab-feed days, through the feed client.

The lab kit's market feed (docs/design.md §2) is where a lab user's edge learns its day: no model
trained beforehand, only what ``/yesterday`` taught :class:`picogrid.edge.sources.labfeed.OnlineDayLearner`
and the sun the edge saw. This runs that path over many days, faster than real time:

- the loopback feed (:func:`picogrid.models.labfeed_server.serve_days`, the day before the
  first as its ``/yesterday``) serves days of one of two kinds in the feed's format: ``real``
  days (:func:`picogrid.models.labfeed_server.generate_lab_days`: integer c/J on the feed's
  price scale, one total demand, the first laundry cycle as the day's deferrable) and
  ``teaching`` days (:func:`picogrid.models.labfeed_server.generate_teaching_days`: a synthetic
  model of an independent teaching server, integer prices of 10-150 c/J with +-20 c/J noise
  from tick to tick, noisy demand, 1-3 jobs a day, some of them odd); each kind is run and
  reported on its own, with the same structure (:func:`evaluate_feed`'s ``kind``);
- the edge's own client (:class:`picogrid.edge.sources.labfeed.LabFeed`, HTTP on 127.0.0.1) reads it
  under a clock that leaps from tick to tick, and :class:`picogrid.edge.sources.feedsource.FeedSource`
  and :class:`~picogrid.edge.sources.feedsource.FeedForecaster` turn it into the runner's inputs, as on
  ``picogrid demo --feed``;
- the first ``warm_days`` days only teach the learner (the edge has just started); each later
  day is run in closed loop (:func:`picogrid.edge.optimizer.policies.simulate_policy`, storage half full
  at the start, the energy left scored at the terminal value) by the MPC on those forecasts
  (``mpc_own``), the MPC with perfect forecasts (``mpc_perfect_forecast``), the naive rule and the
  perfect-foresight LP (``perfect_foresight``), and pymgrid's MPC on the same fans and on the true day
  (``pymgrid_own``, ``pymgrid_perfect``), with the lab site file as
  :func:`picogrid.edge.sources.feedsource.feed_site` sets it for the feed, and the feed's 5 s tick.

The load split and ratings are the site file's (:func:`picogrid.edge.sources.feedsource.feed_source`).

Besides savings capture, each kind reports what a saving must not be bought with (docs/design.md
§4): the energy each policy shed while the grid was connected and the deferrable energy it left
undelivered (both targets 0 J; the jobs as the edge reads them, odd windows normalised or refused
as its runner does, :func:`client_jobs`: the energy that takes away is reported, not scored),
the MPC's bill (import cost − export revenue) against the naive
rule's, and the forecast quality of :class:`~picogrid.edge.sources.feedsource.FeedForecaster` on the
days the edge saw: forecasts are issued at every tick of every day from the edge's start (the
forecaster has no state of its own, so forecasts on the learning-only days change nothing), so
"day 1" is the first day the edge ever saw, with only the ``/yesterday`` of its first tick.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging

import numpy as np

from picogrid.edge.optimizer import economics, policies
from picogrid.edge.evaluation.evaluate import (COMPARED, baselines, cached_fans, capture, compared_runs, fans_forecast,
                                    known_now, load_site, perfect_controller, perfect_forecast, report_compared,
                                    run_mpc)
from picogrid.edge.sources.deferrable import JobLedger, normalise_jobs
from picogrid.edge.forecasting.forecast import forecast_from_now
from picogrid.edge.sources.labfeed import TICK_S, TICKS_PER_DAY as N_TICKS_FEED, LabFeed, parse
from picogrid.edge.optimizer.mpc_config import MpcConfig, config_from_site
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.edge.evaluation.pymgrid_policy import PymgridMpc
from picogrid.edge.sources.signals import LOAD_SERIES

#: days that only teach the learner before the first scored one (the learner scores its choices
#: from the third day on, :class:`picogrid.edge.sources.labfeed.OnlineDayLearner`)
WARM_DAYS = 5
#: a lab day index for the served days (any; the clock leaps)
DAY0 = 5_900_000
#: kinds of lab-feed day evaluated (:data:`picogrid.models.labfeed_server.KINDS`), in report order
FEED_KINDS = ("real", "teaching")
#: seed of the teaching days (:func:`picogrid.models.labfeed_server.generate_teaching_days`)
TEACHING_SEED = 0
#: series whose forecast quality is reported: PV available [W], total demand [W], import price [c/J]
FORECAST_SERIES = ("pv_available_w", "demand_w", "import_price_per_j")


class HeldBack(logging.Filter):
    """Holds back and counts a logger's warnings (the feed client's one line per degraded tick,
    which odd ``/deferables`` would repeat every tick of the day); other levels pass.

    Attributes
    ----------
    count : int
        Warnings held back.
    first : str or None
        The first of them.
    """

    def __init__(self):
        super().__init__()
        self.count, self.first = 0, None

    def filter(self, record):
        if record.levelno != logging.WARNING:
            return True
        self.count += 1
        self.first = self.first or record.getMessage()
        return False


class LeapingClock:
    """Unix time [s] that the evaluation sets: the feed and its client read the same one."""

    def __init__(self, t=0.0):
        self.t = float(t)

    def __call__(self):
        return self.t


def client_jobs(deferables, cfg):
    """A day's ``/deferables`` as the edge reads them: parsed by its client job by job
    (:func:`picogrid.edge.sources.labfeed.parse`), then normalised as its runner normalises them
    (:func:`picogrid.edge.sources.deferrable.normalise_jobs` at the deferrable board's rating
    ``cfg.p_def_max_w`` [W] and tick ``cfg.dt_s`` [s]).

    Parameters
    ----------
    deferables : list of dict
        As served (``{"start", "end", "energy"}``: ticks with an inclusive deadline, J).
    cfg : MpcConfig

    Returns
    -------
    dict
        ``jobs``: the jobs kept, in :class:`policies.DayTruth` format (window ``start <= t <
        end``, J); ``rejected``: jobs the parser rejects; ``refused`` and ``normalised``: jobs the
        normalisation refused or changed; ``notes``: its sentences; ``stated_j``: the energy
        the parsed jobs state [J]; ``removed_j``: how much of it the normalisation refused or
        capped [J] (not in the scored day).
    """
    parsed, rejected = [], 0
    for job in deferables:
        try:
            parsed += parse("deferables", [job])
        except ValueError:
            rejected += 1
    jobs, notes = normalise_jobs(parsed, N_TICKS_FEED, cfg.p_def_max_w, cfg.dt_s)
    stated_j = float(sum(j["energy_j"] for j in parsed if np.isfinite(j["energy_j"]) and j["energy_j"] > 0))
    return {"jobs": jobs, "rejected": rejected, "notes": notes,
            "refused": sum(n.startswith("refused") for n in notes),
            "normalised": sum(n.startswith("normalised") for n in notes),
            "stated_j": stated_j, "removed_j": max(stated_j - float(sum(j["energy"] for j in jobs)), 0.0)}


def _truth(day, source, cfg):
    """:class:`policies.DayTruth` of a served day: the demand split as the feed source splits it,
    the jobs as the edge reads them (the feed's deadline is inclusive; odd windows normalised or
    refused, :func:`client_jobs`)."""
    return policies.DayTruth(
        pv_avail_w=np.asarray(day["sun"], float) / 100.0 * source.pv_capability_w,
        demand_w=source.split(day["demand"]),
        import_price_per_j=np.asarray(day["sell_price"], float),
        export_price_per_j=np.asarray(day["buy_price"], float),
        e0_j=0.5 * (cfg.e_min_j + cfg.e_max_j), jobs=client_jobs(day["deferables"], cfg)["jobs"])


def day_outcome(result, truth, cfg):
    """What a policy's day delivered, from its :class:`policies.DayResult`'s arrays.

    Returns
    -------
    dict
        ``shed_connected_j``: demand not served on the ticks the grid could import [J];
        ``shortfall_j``: deferrable job energy not delivered in its window [J] (the day's jobs
        replayed through a :class:`~picogrid.edge.sources.deferrable.JobLedger` with the power the
        policy's deferrable load took); ``bill``: import cost − export revenue [c].
    """
    connected = truth.limits(cfg)[0] > 0
    demand = np.asarray(truth.demand_w, float).reshape(truth.n_steps, -1)
    shed_w = (demand - result.load_served_w).sum(axis=1)
    ledger = JobLedger(truth.jobs)
    if len(ledger) and result.deferrable_w is not None:
        for t, p_w in enumerate(result.deferrable_w):
            ledger.deliver(t, p_w * cfg.dt_s, cfg.dt_s)
    return {"shed_connected_j": float(cfg.dt_s * shed_w[connected].sum()),
            "shortfall_j": ledger.shortfall_j(),
            "bill": float(result.costs["import_cost"] - result.costs["export_revenue"])}


def _forecast_targets(truth):
    """The day's true series of :data:`FORECAST_SERIES` [T]."""
    return {"pv_available_w": np.asarray(truth.pv_avail_w, float),
            "demand_w": np.asarray(truth.demand_w, float).reshape(truth.n_steps, -1).sum(axis=1),
            "import_price_per_j": np.asarray(truth.import_price_per_j, float)}


def forecast_quality(issued, truth, load_series=LOAD_SERIES):
    """MAE of the P50 and P10-P90 coverage of one day's forecasts against what the feed served.

    Parameters
    ----------
    issued : dict
        Tick ``t`` -> the plan-aligned fans issued at ``t``
        (:func:`picogrid.edge.forecasting.forecast.forecast_from_now`: step 0 is the known value now, step
        ``k`` the forecast of tick ``t + k``).
    truth : policies.DayTruth
        What the feed served that day (demand split and capped at the loads' ratings as the
        edge splits it).
    load_series : sequence of str
        The loads' fan names; their sum is the total demand.

    Returns
    -------
    dict
        Series of :data:`FORECAST_SERIES` -> ``{"mae", "coverage"}``: for each issue tick the
        mean over the steps ahead that fall within the day (ticks ``t+1 .. T-1``) of ``|P50 -
        truth|`` [series unit] and of ``P10 <= truth <= P90`` (1e-9 slack; a fan without a
        band covers only exact hits), then the mean over the issue ticks. NaN with no forecast.
    """
    targets = _forecast_targets(truth)
    n = truth.n_steps
    per_tick = {s: ([], []) for s in FORECAST_SERIES}
    for t, fans in sorted(issued.items()):
        steps = np.arange(1, n - t)
        if not steps.size:
            continue
        fans = dict(fans, demand_w={q: sum(np.asarray(fans[l][q], float) for l in load_series)
                                    for q in fans[load_series[0]]})
        for s in FORECAST_SERIES:
            y = targets[s][t + steps]
            fan = {q: np.asarray(v, float)[steps] for q, v in fans[s].items()}
            per_tick[s][0].append(np.mean(np.abs(fan[0.5] - y)))
            per_tick[s][1].append(np.mean((fan[0.1] - 1e-9 <= y) & (y <= fan[0.9] + 1e-9)))
    return {s: {"mae": float(np.mean(m)) if m else float("nan"),
                "coverage": float(np.mean(c)) if c else float("nan")} for s, (m, c) in per_tick.items()}


def check_overrides(overrides):
    """Raise ValueError for an ``MpcConfig`` override lab-feed days cannot take (``dt_s``: the
    feed's tick is fixed; ``error_scenario_days``: the feed tells no day before the edge saw it,
    so there are no past forecasts, :func:`picogrid.edge.sources.feedsource.feed_site`)."""
    if overrides and "dt_s" in overrides:
        raise ValueError(f"dt_s is the feed's tick ({TICK_S:g} s) on lab-feed days, not a setting")
    if overrides and overrides.get("error_scenario_days"):
        raise ValueError("error_scenario_days: lab-feed days have no past forecasts to take errors from")


def evaluate_feed(first_day="2013-07-01", n_days=30, warm_days=WARM_DAYS, overrides=None, progress=None,
                  compare=True, kind="real", seed=TEACHING_SEED):
    """Run the policies over ``n_days`` lab-feed days of ``kind`` (after ``warm_days``).

    Parameters
    ----------
    first_day : str
        ISO date of the first scored day (real data of :func:`generate_lab_days`; ignored for
        teaching days, whose first scored day is teaching day ``warm_days + 1``).
    n_days, warm_days : int
        Scored days (>= 1) and learning-only days before them (>= 0).
    overrides : dict, optional
        ``MpcConfig`` fields over the lab site file's (as ``picogrid evaluate --set``).
    progress : callable ``(profile, done, total)``, optional
    compare : bool
        Also run pymgrid's MPC on the same fans and on the true day
        (:func:`picogrid.edge.evaluation.evaluate.compared_runs`).
    kind : str
        ``'real'`` or ``'teaching'`` (:data:`FEED_KINDS`): the days the loopback feed serves.
    seed : int
        Seed of the teaching days.

    Returns
    -------
    dict
        ``kind``; ``costs``: policy -> [n_days] cost [c, feed scale]; ``shed_connected_j``,
        ``shortfall_j`` [J] and ``bill`` [c]: policy -> [n_days] (:func:`day_outcome`);
        ``unservable_j``: [n_days] demand the feed asked beyond the loads' ratings [J] (not in
        the scored day); ``jobs``: over the scored days, ``served`` (jobs the feed served),
        ``rejected``, ``refused``, ``normalised``, ``stated_j`` and ``removed_j`` (sums of
        :func:`client_jobs`'s), ``days_rejected`` (days whose whole ``/deferables`` the client's
        parser rejects: the edge saw no job); ``forecast``: per day the edge saw, from its first,
        :func:`forecast_quality` (the first ``warm_days`` are the learning-only days);
        ``client_warnings``: ``(count, first)`` of the feed client's warnings, held back
        (:class:`HeldBack`); ``days`` (dates or labels); ``sources`` (forecast source -> series-ticks, scored days);
        ``solve_ms``; ``statuses``; ``pymgrid_ms`` and ``pymgrid_statuses`` (with
        ``compare``); ``cfg``; ``learned`` (per scored day, ``(its lab day, the last lab day
        the learner had learnt at its first tick)``); ``seed`` (teaching) or None.

    Raises
    ------
    ValueError
        On ``n_days < 1`` or ``warm_days < 0``, an unknown kind, or an override of ``dt_s``
        (the feed's tick is fixed).
    """
    from picogrid.edge.sources.feedsource import FeedForecaster, feed_site, feed_source
    from picogrid.models.labfeed_server import serve_days

    if n_days < 1 or warm_days < 0:
        raise ValueError(f"need n_days >= 1 and warm_days >= 0, got {n_days}, {warm_days}")
    if kind not in FEED_KINDS:
        raise ValueError(f"unknown kind of feed day {kind!r}; known {FEED_KINDS}")
    check_overrides(overrides)
    site, _, _ = load_site("lab", overrides)      # validates the overrides
    site = feed_site(site)
    cfg = config_from_site(site)
    if overrides:
        cfg = MpcConfig.from_dict({**dataclasses.asdict(cfg), **overrides})
    cfg = cfg.replace(dt_s=TICK_S)
    start = None if kind == "teaching" else (_dt.date.fromisoformat(first_day)
                                             - _dt.timedelta(days=warm_days)).isoformat()
    clock = LeapingClock(DAY0 * 300.0)
    server = serve_days(start, warm_days + n_days, clock, day0=DAY0, kind=kind, seed=seed)
    days = server.days[1:]      # played on lab days DAY0, DAY0 + 1, ...
    policies_run = ("naive", "perfect_foresight", "mpc_perfect_forecast", "mpc_own") + (COMPARED if compare else ())
    costs = {p: [] for p in policies_run}
    outcomes = {p: [] for p in policies_run}
    unservable, quality = [], []
    jobs = dict.fromkeys(("served", "rejected", "refused", "normalised", "stated_j", "removed_j", "days_rejected"), 0)
    sources, solve_ms, statuses, learned = {}, [], {}, []
    pymgrid_ms, pymgrid_statuses = [], {}
    label = "labfeed" if kind == "real" else f"labfeed {kind}"
    held, client_log = HeldBack(), logging.getLogger("picogrid.edge.sources.labfeed")
    client_log.addFilter(held)
    try:
        # the evaluation plans on the feed's own 5 s tick (cfg.dt_s), whatever the site's bench tick
        src = feed_source(dict(site, bench=dict(site["bench"], tick_s=TICK_S)), LabFeed(server.url, timeout_s=2.0, clock=clock))
        forecaster = FeedForecaster(src)
        ctrl, ctrl_perfect = MpcController(cfg), perfect_controller(cfg)
        pm = PymgridMpc(cfg) if compare else None

        def at_tick(i, t):
            clock.t = (DAY0 + i) * 300.0 + t * TICK_S + 0.1 * TICK_S
            src.begin_tick(t)

        for i, day in enumerate(days):
            truth = _truth(day, src, cfg)
            issued = {}

            def fans_at(t, now, i=i, issued=issued, scored=i >= warm_days):
                at_tick(i, t)
                if t == 0 and scored:
                    learned.append((DAY0 + i, max(src.feed.learner.days, default=None)))
                fans = issued[t] = forecast_from_now(forecaster, src.history(t, 2 * src.n_ticks), now,
                                                     LOAD_SERIES, src.calendar(t), src.clearsky(t + 1, cfg.horizon))
                if scored:
                    for s in forecaster.source.values():
                        sources[s] = sources.get(s, 0) + 1
                return fans

            if i < warm_days:          # the edge only watches (and forecasts): the learner and the sun history fill
                for t in range(src.n_ticks):
                    fans_at(t, known_now(truth.window(t, 1, cfg)))
                quality.append(forecast_quality(issued, truth))
                continue
            results = baselines(truth, cfg)
            results["mpc_perfect_forecast"] = run_mpc(ctrl_perfect, perfect_forecast(None, i, truth, cfg), truth, cfg)
            fans = cached_fans(fans_at)
            results["mpc_own"] = run_mpc(ctrl, fans_forecast(fans, truth, cfg), truth, cfg, solve_ms, statuses)
            if pm is not None:
                results.update(compared_runs(pm, fans, truth, cfg, pymgrid_ms, pymgrid_statuses))
            quality.append(forecast_quality(issued, truth))
            for p in policies_run:
                costs[p].append(results[p].total_cost)
                outcomes[p].append(day_outcome(results[p], truth, cfg))
            unservable.append(float(TICK_S * np.sum(np.maximum(
                np.asarray(day["demand"], float) - np.asarray(truth.demand_w).sum(axis=1), 0.0))))
            read = client_jobs(day["deferables"], cfg)
            jobs["served"] += len(day["deferables"])
            for key in ("rejected", "refused", "normalised", "stated_j", "removed_j"):
                jobs[key] += read[key]
            try:
                parse("deferables", day["deferables"])
            except ValueError:
                jobs["days_rejected"] += 1
            if progress:
                progress(label, i - warm_days + 1, n_days)
    finally:
        server.close()
        client_log.removeFilter(held)
    per_policy = {key: {p: np.array([o[key] for o in v]) for p, v in outcomes.items()}
                  for key in ("shed_connected_j", "shortfall_j", "bill")}
    return {"kind": kind, "seed": seed if kind == "teaching" else None,
            "costs": {p: np.array(v) for p, v in costs.items()}, **per_policy,
            "unservable_j": np.array(unservable), "jobs": jobs, "forecast": quality,
            "client_warnings": (held.count, held.first),
            "days": [d["date"] for d in days[warm_days:]], "sources": sources,
            "solve_ms": np.array(solve_ms), "statuses": statuses, "pymgrid_ms": np.array(pymgrid_ms),
            "pymgrid_statuses": pymgrid_statuses, "pymgrid_solver": pm.solver_name if pm else None,
            "cfg": cfg, "learned": learned}


def _mean_quality(days):
    """Series -> ``{"mae", "coverage"}`` averaged over ``days`` (results of :func:`forecast_quality`)."""
    return {s: {m: float(np.mean([d[s][m] for d in days])) if days else float("nan") for m in ("mae", "coverage")}
            for s in FORECAST_SERIES}


def report(res, out):
    """Print one kind's costs, savings capture, energy shed and jobs short, bills, forecast
    sources and quality of :func:`evaluate_feed`'s result."""
    c, n = res["costs"], len(res["days"])
    if res["kind"] == "real":
        what = "real days"
        print(f"== labfeed: {n} lab-feed days {res['days'][0]} .. {res['days'][-1]} ({what}, served by the "
              f"loopback feed, read by the edge's client), N={res['cfg'].horizon}, dt={res['cfg'].dt_s:g} s",
              file=out)
    else:
        print(f"== labfeed {res['kind']}: {n} teaching-server days {res['days'][0]} .. {res['days'][-1]} "
              f"(synthetic, seed {res['seed']}; served by the loopback feed, read by the edge's client), "
              f"N={res['cfg'].horizon}, dt={res['cfg'].dt_s:g} s", file=out)
    for p, v in c.items():
        extra = "" if p in ("naive", "perfect_foresight") else f"  savings capture {100 * capture(c, p):6.1f} %"
        print(f"  {p:20s} cost {np.sum(v):12.5g} c (per day mean {np.mean(v):.5g}){extra}", file=out)
    med = np.nanmedian([economics.savings_capture(a, b, o) for a, b, o in zip(c["naive"], c["mpc_own"], c["perfect_foresight"])])
    print(f"  per-day capture (feed forecasts): median {100 * med:.1f} %", file=out)
    for key, what in (("shed_connected_j", "energy shed, grid connected"), ("shortfall_j", "deferrable shortfall")):
        v = res[key]
        print(f"  {what} [J] (target 0): " + ", ".join(
            f"{p} {np.sum(x):.2f}" + (f" ({np.count_nonzero(x > 1e-6)} d)" if np.sum(x) > 1e-6 else "")
            for p, x in v.items()), file=out)
    j = res["jobs"]
    print(f"  jobs: the feed served {j['served']} ({j['stated_j']:.1f} J); as the edge reads them, "
          f"{j['rejected']} rejected by the client's parser, {j['refused']} refused and {j['normalised']} "
          f"normalised (odd windows), {j['removed_j']:.1f} J of the stated energy refused or capped (not scored); "
          f"the whole /deferables rejected on {j['days_rejected']} of the {n} days; demand beyond the loads' "
          f"ratings {np.sum(res['unservable_j']):.2f} J (not scored)", file=out)
    count, first = res["client_warnings"]
    if count:
        print(f"  the feed client warned {count} times over the {len(res['forecast'])} days run (held back; the "
              f"first: {first[:150]})", file=out)
    bill = res["bill"]
    print(f"  bill (import - export): mpc_own {np.sum(bill['mpc_own']):.5g} c against naive "
          f"{np.sum(bill['naive']):.5g} c ({np.sum(bill['mpc_own']) - np.sum(bill['naive']):+.5g} c; "
          f"perfect_foresight {np.sum(bill['perfect_foresight']):.5g} c)", file=out)
    src = ", ".join(f"{k} x{v}" for k, v in sorted(res["sources"].items()))
    print(f"  forecasts: the feed's online learner and the sun seen; series-ticks by source: {src}", file=out)
    q, warm = res["forecast"], len(res["forecast"]) - n
    cols = [("day 1", q[:1]), ("day 2", q[1:2]), (f"scored days {warm + 1}-{warm + n}", q[warm:])]
    print("  forecast quality of the feed forecaster (issued every tick from the edge's start, day 1 = the "
          "first day it saw; P50 MAE over the steps left in the day, then over issue ticks; P10-P90 coverage):",
          file=out)
    print("    " + f"{'series':20s}" + "".join(f"{name:>26s}" for name, _ in cols), file=out)
    for s in FORECAST_SERIES:
        cells = []
        for _, days in cols:
            m = _mean_quality(days)[s] if days else None
            text = "-" if m is None else "MAE %.3g, cover %.0f %%" % (m["mae"], 100 * m["coverage"])
            cells.append(f"{text:>26s}")
        print(f"    {s:20s}" + "".join(cells), file=out)
    ms = res["solve_ms"]
    print(f"  MPC solve p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms; "
          f"statuses {res['statuses']}", file=out)
    report_compared(res, out)


def main(first_day, n_days, overrides, out, progress=None, compare=True, kinds=FEED_KINDS):
    """Run and report each kind of lab-feed day (the ``labfeed`` profile of ``picogrid
    evaluate``); returns kind -> result."""
    results = {}
    for kind in kinds:
        results[kind] = evaluate_feed(first_day, n_days, overrides=overrides, progress=progress, compare=compare,
                                      kind=kind)
        report(results[kind], out)
    return results
