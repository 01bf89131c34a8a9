"""``picogrid evaluate``: the policies' cost over many real days, and savings capture.

For each profile (``lab``: ``edge/sites/lab.toml``, 60 ticks per day like the lab market feed;
``site``: ``edge/sites/site.toml``, 288 five-minute ticks, kW/kWh) and each real day of
:func:`picogrid.models.scenario.build_bench_days` (test split by default) it runs, in closed
loop on the plant of :func:`picogrid.edge.optimizer.policies.simulate_policy`:

- ``naive``: the rule PV → loads → storage → grid (no prices, no forecasts);
- ``mpc_own``: the OSQP MPC on the project's forecasts (:class:`picogrid.edge.forecasting.forecast.Forecaster`:
  the mean of the P10/P50/P90 fan, or, when the site's ``[optimizer]`` sets scenarios, the
  two-stage plan over the fan's scenarios of :mod:`picogrid.edge.forecasting.scenarios`; the lab feed tells
  the current demand, price and sun, so step 0 is known, and the forecast starts at the next
  tick from the history through now, :func:`picogrid.edge.forecasting.forecast.forecast_from_now`);
- ``mpc_own_reserve`` (site): the same with the risk-aware reserve on (P90 demand, P10 PV), on
  every ``--reserve-every``-th day (default 3, to keep the run near 5 minutes), compared with
  ``mpc_own`` on the same days;
- ``dayahead_own``: an EMHASS-style day-ahead plan (see below) on the project's forecasts;
- ``mpc_perfect_forecast``: the MPC with perfect forecasts (the true future);
- ``pymgrid_own`` and ``pymgrid_perfect``: pymgrid's own MPC (``pymgrid==1.2.2``,
  :mod:`picogrid.edge.evaluation.pymgrid_policy`) on the forecasts ``mpc_own`` plans on (the same fans, step
  for step) and on the true future (off with ``--no-compare``);
- ``emhass_dayahead_own`` and ``emhass_mpc_own`` (lab and site profiles): EMHASS itself
  (``emhass==0.18.7``, :mod:`picogrid.edge.evaluation.emhass_policy`) on the same forecasts: its
  day-ahead plan at tick 0 followed open loop, and its naive MPC re-planned every tick over the
  fixed horizon (off with ``--no-compare`` or ``--no-emhass``). ``dayahead_own`` below stays: it
  is the same day-ahead scheme in our own model, so the two differ only by EMHASS's conventions;
- ``perfect_foresight``: the perfect-foresight LP optimum of the whole day (HiGHS);

and prints the cost of each and the savings capture
``(cost_naive − cost_mpc) / (cost_naive − cost_perfect_foresight)`` over all days (docs/design.md §4).

``dayahead_own`` plans the way EMHASS's ``dayahead-optim`` action does: ONE linear programme
per day, over the whole day, on the forecasts available at the start of the day; the plan is
published and the home follows its battery power step by step, the grid taking whatever is left,
with no re-planning during the day (EMHASS's receding-horizon ``naive-mpc-optim`` is a separate
action the user must schedule) [1]_ [2]_. Here: the forecast window ``mpc_own`` gets at tick 0
(:func:`fans_forecast`: same series, same expected value of the fan, step 0 known, the day's
deferrable jobs) is solved for the whole day with :func:`policies.solve_perfect_foresight` (HiGHS LP, the
perfect-foresight model); the plant then follows the plan's storage power and job delivery open loop
(:func:`policies.day_ahead_policy`): loads are served as they come, PV runs free unless the
plan curtailed it, and the grid balances. It differs from ``perfect_foresight`` only in the data the LP
saw, and from ``mpc_own`` in planning once a day on one expected forecast (no re-planning, no
scenarios): the gap between the two is the measured value of re-planning every tick.

Day boundaries: every day starts with the storage half full and scores the energy left at the
end at the terminal value, like the perfect-foresight optimum. The MPC's fixed horizon reaches past the day's end;
there it sees no PV and no load, no import, and an export price that pays exactly the terminal
value (``(terminal + cycling) / eta_dis``), so it faces the day-end the perfect-foresight optimum faces.

Deferrable jobs (lab feed ``/deferables`` format): half of load3's real energy within two
windows of each day (ticks [n/4, n/2) and [n/2, 7n/8)) is taken out of its demand and offered
as a deferrable job of that energy, to be delivered in the window by the deferrable load
(``[deferrable]`` of the site file; a site file without it gets 2 job slots and the
deferrable-priority board's power limit). The shapes are real, only this split is ours.

Usage: ``picogrid evaluate [--days 30] [--profile all] [--feed-kind both] [--first-day 2013-07-01] [--plot dispatch.png]
[--reserve-every 3] [--workers 2] [--no-compare] [--no-emhass]``.
``--days 3`` is the fast path for tests.

References
----------
.. [1] EMHASS documentation, https://github.com/davidusb-geek/emhass: "An EMS based on Linear
   Programming" (EMHASS's docs/lpems.md): the perfect-forecast, day-ahead (on forecasted PV and load,
   over the next 24 hours) and naive MPC optimisations, all one LP each; the battery ends the
   day at a set ``soc_final`` there, where our LP credits the energy left at the terminal
   value. "Using Commercial Solvers" (EMHASS's docs/advanced_solvers.md): HiGHS is the default solver
   of current releases (early releases solved with PuLP's default CBC).
.. [2] Ibid., "Publish data to Home Assistant" (EMHASS's docs/publish_data.md):
   ``publish-data`` publishes the value of the latest optimisation result whose timestamp is
   closest to now (``sensor.p_batt_forecast``, ``sensor.p_deferrableX``) for automations to
   apply; "The forecast module" (EMHASS's docs/forecasts.md): load forecast methods ``typical``,
   ``naive`` (persistence of the last ``delta_forecast_daily``, 24 h by default) and
   ``mlforecaster``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import functools
import logging
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np

from picogrid.edge.optimizer import economics, policies
from picogrid.edge.forecasting.error_scenarios import forecast_errors
from picogrid.edge.forecasting.forecast import forecast_from_now
from picogrid.edge.optimizer.mpc_config import MpcConfig, config_from_site
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.edge.evaluation.pymgrid_policy import PymgridMpc
from picogrid.edge.evaluation import emhass_policy
from picogrid.edge.sources.signals import LOAD_SERIES, split_days
from picogrid.edge.forecasting.scenarios import forecast_inputs, planned_point

log = logging.getLogger(__name__)

PROFILES = ("lab", "site")
#: ``--profile`` names of several runs (``labfeed``: :mod:`picogrid.edge.evaluation.feed_evaluate`)
PROFILE_SETS = {"both": PROFILES, "all": PROFILES + ("labfeed",)}
#: the other project's controller run beside ours (pymgrid's MPC, own and perfect forecasts)
COMPARED = ("pymgrid_own", "pymgrid_perfect")
#: EMHASS itself beside ours (lab and site profiles): its day-ahead plan followed open loop and its
#: naive MPC, both on the forecasts ``mpc_own`` plans on (:mod:`picogrid.edge.evaluation.emhass_policy`)
EMHASS_COMPARED = ("emhass_dayahead_own", "emhass_mpc_own")
FC_SERIES = ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w", "import_price_per_j")
#: days the forecaster runs through before the first scored day, unscored, as on an edge that has
#: been running a week: its online recalibration carries state, and the error scenarios read the
#: forecasts of up to that many days before (more if ``error_scenario_days`` asks). The same for
#: every setting, so runs with and without error scenarios start alike.
WARM_DAYS = 7


def site_file(profile):
    """Path of the site TOML of a profile (``edge/sites/<profile>.toml``)."""
    return Path(str(resources.files("picogrid.edge").joinpath("sites", f"{profile}.toml")))


def load_site(profile, overrides=None):
    """Parsed site TOML of ``profile`` and its :class:`MpcConfig` ready for evaluation.

    ``overrides`` (mapping of :class:`MpcConfig` field -> value, e.g. from ``picogrid evaluate
    --set``) replace the site file's values, so a setting can be tried on validation days
    without editing the file.

    Returns
    -------
    (dict, MpcConfig, dict)
        Site, config (with job slots, see the module docstring), and the scenario scaling
        for :func:`build_bench_days`.

    Raises
    ------
    ValueError
        Unknown profile, an invalid site file, or an unknown or invalid override.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known {PROFILES}")
    with open(site_file(profile), "rb") as f:
        site = tomllib.load(f)
    return site_config(site, overrides)


def site_config(site, overrides=None):
    """:func:`load_site` of a parsed site TOML (a user's own site file too): ``(site, cfg, scaling)``."""
    cfg = config_from_site(site)
    if cfg.n_jobs == 0:
        rating = [b.get("limits", {}).get("power_max_w") for b in site["boards"].values()
                  if b.get("priority") == "deferrable"]
        cfg = cfg.replace(n_jobs=2, p_def_max_w=float(rating[0] if rating and rating[0] else 1.0))
    if overrides:   # from_dict rejects unknown keys, the constructor invalid values
        cfg = MpcConfig.from_dict({**dataclasses.asdict(cfg), **overrides})
    scaling = dict(site.get("scenario", {}))
    scaling.setdefault("pv_capability_w", float(site["pv"]["capability_w"]))
    return site, cfg, scaling


class DayData:
    """Scenario rows of one profile with the job split applied, indexed by (day, tick)."""

    def __init__(self, frame, n_ticks, dt_s):
        self.n_ticks = n_ticks
        self.days = list(dict.fromkeys(frame["day"]))
        import pandas as pd

        self.cols = {c: np.array(frame[c].to_numpy(float)) for c in frame.columns
                     if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}
        self.jobs = split_days(self.cols["load3_demand_w"], dt_s, n_ticks)

    def truth(self, i, cfg):
        """:class:`DayTruth` of day index ``i`` (storage half full at the start)."""
        sl = slice(i * self.n_ticks, (i + 1) * self.n_ticks)
        c = self.cols
        return policies.DayTruth(
            pv_avail_w=c["pv_available_w"][sl], demand_w=np.column_stack([c[k][sl] for k in LOAD_SERIES]),
            import_price_per_j=c["import_price_per_j"][sl], export_price_per_j=c["export_price_per_j"][sl],
            e0_j=0.5 * (cfg.e_min_j + cfg.e_max_j), jobs=self.jobs[i])


def perfect_forecast(data, i, truth, cfg):
    """``forecast(t, delivered_j)`` for :func:`policies.mpc_policy`: the true day, day-end padding."""
    def fc(t, delivered_j=None):
        w = truth.window(t, cfg.horizon, cfg, delivered_j)
        return policies.pad_day_end(w, truth.n_steps - t, cfg)
    return fc


def known_now(window):
    """Step 0 of a true window (:meth:`DayTruth.window`): what the feed and meters tell now, in
    the ``now`` format of :func:`picogrid.edge.forecasting.scenarios.forecast_inputs`."""
    return {k: window[k][0] for k in ("pv_avail_w", "demand_w", "import_price_per_j", "export_price_per_j")}


def forecast_fans(data, i, forecaster, sources):
    """``fans(t, now)``: the forecaster's plan-aligned fans at tick ``t`` of day index ``i``.

    Causal: the history before the tick and ``now`` (what is known of it, as
    :func:`picogrid.edge.forecasting.forecast.forecast_from_now` takes it). Counts the forecast sources in
    ``sources``.
    """
    n_ticks, row0, c = data.n_ticks, i * data.n_ticks, data.cols

    def fans(t, now):
        r = row0 + t
        h = forecaster.history_ticks
        hist = {s: c[s][r - h:r] for s in FC_SERIES}
        for s in ("ghi_w_m2", "temp_air_c"):
            if s in c:
                hist[s] = c[s][r - h:r]
        cal = {"tick": int(t), "day_of_year": int(c["day_of_year"][r]), "weekday": int(c["weekday"][r]),
               "n_ticks": n_ticks}
        rows = np.minimum(np.arange(r + 1, r + 1 + forecaster.horizon), len(c["clearsky_ghi_w_m2"]) - 1)
        out = forecast_from_now(forecaster, hist, now, LOAD_SERIES, cal, c["clearsky_ghi_w_m2"][rows])
        for src in forecaster.source.values():
            sources[src.split(":")[0]] = sources.get(src.split(":")[0], 0) + 1
        return out
    return fans


def fans_forecast(fans_at, truth, cfg, calibration=None, reserve=False, errors_at=None):
    """``forecast(t, delivered_j)`` for :func:`policies.mpc_policy` from ``fans_at(t, now)``
    (plan-aligned fans, as :func:`forecast_fans` gives them): the true window's limits, jobs
    and step 0, the forecast's scenarios after it (:func:`forecast_inputs`, with the past
    forecast errors ``errors_at(t)`` for ``cfg.error_scenario_days``), day-end padding."""
    plan_cfg = cfg.replace(reserve=True) if reserve else cfg

    def fc(t, delivered_j=None):
        w = truth.window(t, cfg.horizon, cfg, delivered_j)        # limits, jobs, true values now
        now = known_now(w)
        w.update(forecast_inputs(fans_at(t, now), plan_cfg, LOAD_SERIES, now, calibration=calibration, tick=t,
                                 errors=errors_at(t) if errors_at else None))
        return policies.pad_day_end(w, truth.n_steps - t, cfg)
    return fc


def cached_fans(fans_at):
    """``fans_at(t, now)`` computed once per tick ``t`` of a day, then served again.

    Every policy planning on the project's forecasts that day gets the same fans step for step.
    Asking the forecaster twice would not: it is stateful (its online recalibration, the lab
    feed's learner) and would see the day's ticks a second time.
    """
    store = {}

    def fans(t, now):
        if t not in store:
            store[t] = fans_at(t, now)
        return store[t]
    return fans


def compared_runs(pm, fans, truth, cfg, solve_ms=None, statuses=None):
    """Closed-loop results of pymgrid's MPC ``pm`` (:class:`~picogrid.edge.evaluation.pymgrid_policy.PymgridMpc`)
    on the day's fans (``pymgrid_own``: the window ``mpc_own`` plans on, without its scenarios)
    and on the true day (``pymgrid_perfect``); solve times [ms] and statuses as :func:`run_mpc`."""
    one_plan = cfg.replace(scenario_weights=None, scenario_quantiles=None)
    return {"pymgrid_own": run_mpc(pm, fans_forecast(fans, truth, one_plan), truth, cfg, solve_ms, statuses),
            "pymgrid_perfect": run_mpc(pm, perfect_forecast(None, None, truth, cfg), truth, cfg,
                                       solve_ms, statuses)}


def emhass_runs(em, fans, window0, truth, cfg, out):
    """Closed-loop results of EMHASS on the day's fans: ``emhass_mpc_own`` (its naive MPC ``em``,
    :class:`~picogrid.edge.evaluation.emhass_policy.EmhassMpc`, on the window ``mpc_own`` plans on,
    without its scenarios) and ``emhass_dayahead_own`` (its day-ahead plan on ``window0``, the
    window ``mpc_own`` got at tick 0). Solve times [ms] and statuses go to ``out``
    (``emhass_ms``, ``emhass_statuses``, ``emhass_dayahead_ms``)."""
    one_plan = cfg.replace(scenario_weights=None, scenario_quantiles=None)
    res = {"emhass_mpc_own": run_mpc(em, fans_forecast(fans, truth, one_plan), truth, cfg,
                                     out["emhass_ms"], out["emhass_statuses"])}
    pol, plan, dt = emhass_policy.dayahead_policy(window0, truth, cfg)
    out["emhass_dayahead_ms"] = [1e3 * dt]
    kind = plan.status if plan is not None else "emhass_failed"
    out["emhass_dayahead_statuses"] = {kind: 1}
    res["emhass_dayahead_own"] = policies.simulate_policy(pol, truth, cfg)
    return res


def energy_short(result, truth, cfg):
    """``(shed_j, deferrable_shortfall_j)`` of a closed-loop result: load energy not served and
    job energy not delivered in its window [J]."""
    from picogrid.edge.sources.deferrable import JobLedger

    demand = np.asarray(truth.demand_w, float).reshape(truth.n_steps, cfg.n_loads)
    shed = float(np.sum(np.maximum(demand - result.load_served_w, 0.0)) * cfg.dt_s)
    short = 0.0
    if truth.jobs and result.deferrable_w is not None:
        ledger = JobLedger(truth.jobs)
        for t in range(truth.n_steps):
            ledger.deliver(t, float(result.deferrable_w[t]) * cfg.dt_s, cfg.dt_s)
        short = float(ledger.shortfall_j())
    return shed, short


def perfect_controller(cfg):
    """The MPC for perfect forecasts: one plan (a perfect forecast has no spread, its scenarios
    would be copies of one)."""
    return MpcController(cfg.replace(scenario_weights=None, scenario_quantiles=None))


def baselines(truth, cfg):
    """Closed-loop results of the naive rule and of the perfect-foresight LP on ``truth``."""
    perfect_foresight = policies.solve_perfect_foresight(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w,
                                   truth.import_price_per_j, truth.export_price_per_j, jobs=truth.jobs)
    return {"naive": policies.simulate_policy(policies.naive_policy(truth, cfg), truth, cfg),
            "perfect_foresight": policies.simulate_policy(policies.perfect_foresight_policy(perfect_foresight), truth, cfg)}


def run_mpc(ctrl, fc, truth, cfg, solve_ms=None, statuses=None):
    """Closed-loop result of ``ctrl`` (reset first) on ``fc(t, delivered_j)``; each tick's solve
    time [ms] and status kind are added to ``solve_ms`` and ``statuses`` when given."""
    ctrl.reset()
    pol = policies.mpc_policy(ctrl, fc)

    def timed(t, e_j, delivered_j=None):
        d = pol(t, e_j, delivered_j)
        if solve_ms is not None:
            solve_ms.append(1e3 * d.solve_time_s)
            statuses[d.status.split(":")[0]] = statuses.get(d.status.split(":")[0], 0) + 1
        return d
    return policies.simulate_policy(timed, truth, cfg)


def keep_first_window(fc, store):
    """``fc`` that also keeps the window it returns at step 0 in ``store["window"]``.

    The day-ahead plan must see exactly the forecast ``mpc_own`` saw at tick 0; a live
    forecaster (the lab feed's learner) is stateful, so asking it a second time would change both.
    """
    def wrapped(t, delivered_j=None):
        w = fc(t, delivered_j)
        if t == 0:
            store["window"] = w
        return w
    return wrapped


def dayahead_policy(window, truth, cfg):
    """EMHASS-style day-ahead policy: one LP over the day on the tick-0 forecast, followed open loop.

    Parameters
    ----------
    window : dict
        Forecast of the day made at tick 0, keyword arguments of ``MpcController.solve``
        (arrays of >= ``T`` steps, ``demand_w`` [N, L]; ``jobs`` and ``p_def_max_w`` with
        deferrable jobs), as :func:`fans_forecast` or :func:`perfect_forecast` return for
        ``t = 0``. Scenario and reserve inputs are ignored: the plan is one deterministic LP.
    truth : DayTruth
        The real day (``T`` steps); its ``e0_j`` is the measured stored energy at tick 0 [J].
    cfg : MpcConfig

    Returns
    -------
    (callable, Decision)
        The ``policy_fn`` of :func:`policies.day_ahead_policy` and the day's plan.

    Raises
    ------
    ValueError
        If the forecast window is shorter than the day (the plan could not cover it).
    """
    n = truth.n_steps
    got = np.asarray(window["pv_avail_w"]).shape[0]
    if got < n:
        raise ValueError(f"a day-ahead plan needs a forecast of the whole day ({n} steps), got {got}")
    w = {k: np.asarray(window[k], float)[:n] for k in ("pv_avail_w", "demand_w", "import_price_per_j",
                                                      "export_price_per_j", "p_imp_max_w", "p_exp_max_w")}
    def_max = window.get("p_def_max_w")
    plan = policies.solve_perfect_foresight(cfg, truth.e0_j, w["pv_avail_w"], w["demand_w"], w["import_price_per_j"],
                                 w["export_price_per_j"], w["p_imp_max_w"], w["p_exp_max_w"],
                                 jobs=window.get("jobs"),
                                 p_def_max_w=None if def_max is None else np.asarray(def_max, float)[:n])
    return policies.day_ahead_policy(plan, truth, cfg, w["pv_avail_w"]), plan


class ProfileDays:
    """One profile's run: the site's config, the real days, the controllers, and the day's plan.

    Built alike in the process that forecasts and in every worker that plans days
    (:func:`evaluate_profile`), from the same arguments, so both see the same days.

    Parameters
    ----------
    profile : str
        ``lab`` or ``site``.
    first_day : str
        ISO date of the first scored day.
    n_days : int
        Scored days.
    overrides : dict or None
        See :func:`load_site`.
    compare : bool
        Also run pymgrid's MPC (:func:`compared_runs`).
    emhass : bool
        With ``compare``, also run EMHASS (:func:`emhass_runs`).

    Raises
    ------
    ValueError
        If the forecaster's or the MPC's horizon is shorter than the day.
    """

    def __init__(self, profile, first_day, n_days, overrides=None, compare=True, emhass=True):
        from picogrid.edge.forecasting.forecast import Forecaster
        from picogrid.models import features as F
        from picogrid.models.scenario import build_bench_days

        self.site, cfg, scaling = load_site(profile, overrides)
        self.profile, self.cfg, self.compare = profile, cfg, compare
        n_ticks = int(self.site["bench"]["n_ticks"])
        start = _dt.date.fromisoformat(first_day)
        self.forecaster_profile = profile if profile in F.PROFILES else "lab"
        self.forecaster = Forecaster(profile=self.forecaster_profile)
        # the forecaster first runs through the warm-up days before the first one (WARM_DAYS)
        self.warm_days = max(WARM_DAYS, cfg.error_days)
        # the history the models read before the first day, one day of clear-sky/forecast room after
        self.hist_days = -(-self.forecaster.history_ticks // n_ticks) + self.warm_days
        frame = build_bench_days((start - _dt.timedelta(days=self.hist_days)).isoformat(),
                                 n_days + self.hist_days + 1, n_ticks, scaling)
        self._points = collections.deque(maxlen=cfg.error_days)   # past days' point forecasts, per tick
        self._warm = False
        self.data = DayData(frame, n_ticks, cfg.dt_s)
        if self.forecaster.horizon < n_ticks or cfg.horizon < n_ticks:
            raise ValueError(f"{profile}: forecaster horizon {self.forecaster.horizon} / MPC horizon "
                             f"{cfg.horizon} shorter than the day ({n_ticks} ticks): no day-ahead plan possible")
        self.policies = ["naive", "perfect_foresight", "mpc_perfect_forecast", "mpc_own", "dayahead_own"] + (
            ["mpc_own_reserve"] if profile == "site" else []) + (list(COMPARED) if compare else []) + (
            list(EMHASS_COMPARED) if compare and emhass else [])
        self.calibration = getattr(self.forecaster, "energy_calibration", None)

    @functools.cached_property
    def controllers(self):
        """``{policy: controller}`` of the MPC runs, built where days are planned."""
        cfg, out = self.cfg, {"mpc_perfect_forecast": perfect_controller(self.cfg), "mpc_own": MpcController(self.cfg)}
        if "mpc_own_reserve" in self.policies:
            out["mpc_own_reserve"] = MpcController(cfg.replace(reserve=True))
        if self.compare:
            out["pymgrid"] = PymgridMpc(cfg)
        if "emhass_mpc_own" in self.policies:
            out["emhass_mpc"] = emhass_policy.EmhassMpc(cfg)
        return out

    def forecast_day(self, d, sources):
        """The forecaster's fans at every tick of scored day ``d`` and the past forecast errors
        for the error scenarios, in tick order: ``(fans, errors)``, lists over the ticks of
        ``{series: {quantile: array [H]}}`` and of ``[K]`` :func:`forecast_errors` (most recent
        day first; empty without error scenarios). The forecaster is stateful (its online
        recalibration), so the days must be forecast in order, each once (the first call also
        runs it through the :data:`WARM_DAYS` days before the first day, unscored)."""
        if d == 0 and not self._warm:
            for w in range(-self.warm_days, 0):
                self._forecast(w, {})
            self._warm = True
        return self._forecast(d, sources)

    def _forecast(self, d, sources):
        i = d + self.hist_days
        cfg, data, nt = self.cfg, self.data, self.data.n_ticks
        truth = data.truth(i, cfg)
        fans_at = forecast_fans(data, i, self.forecaster, sources)
        fans = [fans_at(t, known_now(truth.window(t, cfg.horizon, cfg))) for t in range(truth.n_steps)]
        errors = []
        for t in range(truth.n_steps):
            now_row = i * nt + t
            errors.append([])
            for k, points in enumerate(reversed(self._points), start=1):
                rows = np.arange(now_row - k * nt, min(now_row - k * nt + cfg.horizon, now_row))  # past only
                errors[t].append(forecast_errors(points[t], {s: data.cols[s][rows] for s in points[t]}))
        if self.cfg.error_days:
            self._points.append([planned_point(f, LOAD_SERIES, cfg.demand_p90_weight) for f in fans])
        return fans, errors

    def run_day(self, d, day_fans, day_errors, reserve_stride=1):
        """Every policy on scored day ``d`` with the fans and errors of :meth:`forecast_day`.

        Returns
        -------
        dict
            ``costs`` (policy -> total cost [c], NaN for the reserve run on a day without it),
            ``solve_ms``, ``statuses``, ``pymgrid_ms``, ``pymgrid_statuses``, ``dayahead_ms``,
            ``results`` (policy -> closed-loop result) and, with ``compare``, ``pymgrid_solver``.
        """
        cfg, i = self.cfg, d + self.hist_days
        truth = self.data.truth(i, cfg)
        out = {"solve_ms": [], "statuses": {}, "pymgrid_ms": [], "pymgrid_statuses": {}}
        results = baselines(truth, cfg)
        tick0, ctrl = {}, self.controllers
        fans = lambda t, now: day_fans[t]  # noqa: E731  (fans_forecast's fans_at(t, now))
        own = dict(calibration=self.calibration, errors_at=day_errors.__getitem__)
        for name, fc in (("mpc_perfect_forecast", perfect_forecast(self.data, i, truth, cfg)),
                         ("mpc_own", keep_first_window(fans_forecast(fans, truth, cfg, **own), tick0)),
                         ("mpc_own_reserve", fans_forecast(fans, truth, cfg, reserve=True, **own))):
            if name not in ctrl or (name == "mpc_own_reserve" and d % reserve_stride):
                continue
            results[name] = run_mpc(ctrl[name], fc, truth, cfg, out["solve_ms"], out["statuses"])
        if self.compare:
            pm = ctrl["pymgrid"]
            results.update(compared_runs(pm, fans, truth, cfg, out["pymgrid_ms"], out["pymgrid_statuses"]))
            out["pymgrid_solver"] = pm.solver_name
        dayahead, plan = dayahead_policy(tick0["window"], truth, cfg)
        out["dayahead_ms"] = [1e3 * plan.solve_time_s]
        results["dayahead_own"] = policies.simulate_policy(dayahead, truth, cfg)
        if "emhass_mpc_own" in self.policies:
            out.update(emhass_ms=[], emhass_statuses={})
            results.update(emhass_runs(ctrl["emhass_mpc"], fans, tick0["window"], truth, cfg, out))
        out["short"] = {p: energy_short(results[p], truth, cfg) for p in self.policies if p in results}
        out["costs"] = {p: results[p].total_cost if p in results else np.nan for p in self.policies}
        out["results"] = results
        return out


_worker_days = None


def _start_worker(args):
    global _worker_days
    _worker_days = ProfileDays(*args)


def _run_worker_day(d, day_fans, day_errors, reserve_stride):
    out = _worker_days.run_day(d, day_fans, day_errors, reserve_stride)
    if d:   # only day 0's closed-loop results are kept (the plot): the rest stay in the worker
        del out["results"]
    return out



def merge_solver_records(merged, parts, times, counters):
    """Into ``merged``, the parts' (one per worker) solve-time lists under ``times``
    concatenated in order and their status counts under ``counters`` summed."""
    for key in times:
        merged[key] = np.array([v for r in parts for v in r[key]])
    for key in counters:
        merged[key] = collections.Counter()
        for r in parts:
            merged[key].update(r[key])
        merged[key] = dict(merged[key])

def evaluate_profile(profile, first_day, n_days, progress=None, reserve_stride=1, overrides=None,
                     compare=True, workers=1, emhass=True):
    """Run every policy over ``n_days`` real days of ``profile``.

    One forecaster runs through the days in order, as on an edge that runs on (its online
    recalibration carries weeks of state); ``workers`` processes plan the forecast days. So the
    result does not depend on ``workers``.

    ``reserve_stride``: the reserve run (site) is made on every ``reserve_stride``-th day only,
    counted from ``first_day`` (it costs as much time as the plain MPC run). ``overrides``: see
    :func:`load_site`. ``compare``: also run pymgrid's MPC (:func:`compared_runs`) and, with
    ``emhass``, EMHASS (:func:`emhass_runs`).

    Returns
    -------
    dict
        ``costs``: policy -> [n_days] total cost [c] (``mpc_own_reserve``: NaN on days without
        the reserve run); ``days``; ``sources`` (forecast source -> count); ``solve_ms`` (MPC
        solve times); ``dayahead_ms`` (day-ahead LP solve times [ms], one a day); ``statuses``;
        ``example`` (results of day 0 for the plot); ``cfg``.

    Raises
    ------
    ValueError
        If ``n_days`` < 1, or as :class:`ProfileDays`.
    """
    if n_days < 1:
        raise ValueError(f"n_days must be >= 1, got {n_days!r}")
    run = ProfileDays(profile, first_day, n_days, overrides, compare, emhass)
    sources, parts = {}, []
    workers = max(1, min(int(workers), n_days))
    if workers == 1:
        for d in range(n_days):
            out = run.run_day(d, *run.forecast_day(d, sources), reserve_stride)
            if d:       # as in the workers: only day 0's closed-loop results are kept (the plot)
                del out["results"]
            parts.append(out)
            if progress:
                progress(profile, d + 1, n_days)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, initializer=_start_worker,
                                 initargs=((profile, first_day, n_days, overrides, compare, emhass),)) as pool:
            pending = []
            try:
                for d in range(n_days):
                    # a site day's fans are ~10 MB: keep only a few days ahead of the planners
                    while len(pending) >= 2 * workers:
                        parts.append(pending.pop(0).result())
                        if progress:
                            progress(profile, len(parts), n_days)
                    pending.append(pool.submit(_run_worker_day, d, *run.forecast_day(d, sources), reserve_stride))
                for f in pending:
                    parts.append(f.result())
                    if progress:
                        progress(profile, len(parts), n_days)
            except BaseException:   # a failed day (or Ctrl-C): do not plan the queued ones first
                pool.shutdown(cancel_futures=True)
                raise
    merged = {"costs": {p: np.array([r["costs"][p] for r in parts]) for p in run.policies},
              "days": run.data.days[run.hist_days:run.hist_days + n_days], "sources": sources,
              "example": (run.data.days[run.hist_days], run.data.truth(run.hist_days, run.cfg), parts[0]["results"]),
              "cfg": run.cfg, "forecaster_profile": run.forecaster_profile,
              "forecaster_models": sorted(run.forecaster.models),
              "pymgrid_solver": parts[-1].get("pymgrid_solver")}
    merge_solver_records(merged, parts, ("solve_ms", "dayahead_ms", "pymgrid_ms"), ("statuses", "pymgrid_statuses"))
    if "emhass_mpc_own" in run.policies:
        merge_solver_records(merged, parts, ("emhass_ms", "emhass_dayahead_ms"),
                             ("emhass_statuses", "emhass_dayahead_statuses"))
    merged["short"] = {p: np.array([r["short"][p] for r in parts if p in r["short"]]).reshape(-1, 2).sum(axis=0)
                       for p in run.policies}
    return merged


def _capture_on(costs, on):
    c = {p: float(np.sum(np.asarray(v)[on])) for p, v in costs.items()}
    return economics.savings_capture(c["naive"], c["mpc_own"], c["perfect_foresight"])


def capture(costs, policy):
    """Savings capture of ``policy`` over all days (sums of costs)."""
    on = np.isfinite(costs[policy])
    c = {p: float(np.sum(np.asarray(v)[on])) for p, v in costs.items()}
    return economics.savings_capture(c["naive"], c[policy], c["perfect_foresight"])


def plot_day(example, cfg, path):
    """PNG of one day's dispatch (power balance, stored energy, price) of the MPC on own forecasts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    day, truth, results = example
    r = results["mpc_own"]
    # a step is 24 h / n_steps of the real day (the lab bench runs it in 2.5-5 s per tick)
    hour = 24.0 / truth.n_steps
    t = np.arange(truth.n_steps) * hour
    fig, ax = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax[0].plot(t, truth.pv_avail_w, color="gold", lw=1, ls="--", label="PV available")
    ax[0].plot(t, r.pv_w, color="orange", label="PV used")
    ax[0].plot(t, r.storage_w, color="green", label="storage (+ discharge)")
    ax[0].plot(t, r.grid_w, color="black", label="grid (+ import)")
    ax[0].plot(t, r.load_served_w.sum(axis=1), color="tab:blue", label="loads served")
    if r.deferrable_w is not None:
        ax[0].plot(t, r.deferrable_w, color="purple", label="deferrable jobs")
    ax[0].set_ylabel("power [W]")
    ax[0].legend(fontsize=7, ncol=3)
    for name, style in (("mpc_own", "-"), ("dayahead_own", "-."), ("pymgrid_own", (0, (5, 1, 1, 1))),
                        ("perfect_foresight", "--"), ("naive", ":")):
        if name not in results:     # pymgrid_own: not with --no-compare
            continue
        ax[1].plot(np.arange(truth.n_steps + 1) * hour, results[name].e_j, ls=style, label=name)
    ax[1].axhline(cfg.e_min_j, color="grey", lw=0.5)
    ax[1].axhline(cfg.e_max_j, color="grey", lw=0.5)
    ax[1].set_ylabel("stored energy [J]")
    ax[1].legend(fontsize=7)
    ax[2].step(t, truth.import_price_per_j, where="post", label="import")
    ax[2].step(t, truth.export_price_per_j, where="post", label="export")
    ax[2].set_ylabel("price [c/J]")
    ax[2].set_xlabel("hour of the real day")
    ax[2].legend(fontsize=7)
    costs = {p: results[p].total_cost for p in results}
    fig.suptitle(f"{day}: cost naive {costs['naive']:.4g}, MPC {costs['mpc_own']:.4g}, "
                 f"perfect_foresight {costs['perfect_foresight']:.4g} [c]")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(profile, res, out):
    c = res["costs"]
    n = len(res["days"])
    print(f"== {profile}: {n} real days {res['days'][0]} .. {res['days'][-1]}, N={res['cfg'].horizon}, "
          f"dt={res['cfg'].dt_s:g} s", file=out)
    for p, v in c.items():
        if p == "mpc_own_reserve":
            continue
        extra = "" if p in ("naive", "perfect_foresight") else f"  savings capture {100 * capture(c, p):6.1f} %"
        print(f"  {p:20s} cost {np.sum(v):12.5g} c (per day mean {np.mean(v):.5g}){extra}", file=out)
    if "mpc_own_reserve" in c:
        on = np.isfinite(c["mpc_own_reserve"])
        with_r, without = np.sum(c["mpc_own_reserve"][on]), np.sum(c["mpc_own"][on])
        print(f"  reserve (1 h islanded critical load, P90/P10) on {on.sum()} of the days: cost "
              f"{with_r:.5g} c vs {without:.5g} c without, reserve cost {with_r - without:+.5g} c; "
              f"capture {100 * capture(c, 'mpc_own_reserve'):.1f} % vs {100 * _capture_on(c, on):.1f} %",
              file=out)
    med = {p: 100 * np.nanmedian([economics.savings_capture(a, b, o) for a, b, o in zip(c["naive"], c[p], c["perfect_foresight"])])
           for p in ("mpc_own", "dayahead_own")}
    print(f"  per-day capture (own forecasts): median {med['mpc_own']:.1f} % (MPC), "
          f"{med['dayahead_own']:.1f} % (day-ahead plan)", file=out)
    src = ", ".join(f"{k} x{v}" for k, v in sorted(res["sources"].items()))
    print(f"  forecasts: profile {res['forecaster_profile']!r}, ONNX models for {res['forecaster_models']}; "
          f"series-ticks by source: {src}", file=out)
    ms = res["solve_ms"]
    print(f"  MPC solve p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms; "
          f"statuses {res['statuses']}; day-ahead LP (HiGHS, whole day) p50 "
          f"{np.percentile(res['dayahead_ms'], 50):.1f} ms", file=out)
    report_compared(res, out)
    report_emhass(res, out)


def report_emhass(res, out):
    """EMHASS's modes beside ours from the same run: savings capture, energy shed, deferrable
    shortfall, solve time p50/p99 (nothing without an EMHASS run)."""
    if "emhass_ms" not in res:
        return
    c, short, kwh = res["costs"], res["short"], 3.6e6
    rows = (("mpc_own", "ours: MPC, every tick", res["solve_ms"]),
            ("dayahead_own", "ours: day-ahead LP, open loop", res["dayahead_ms"]),
            ("emhass_mpc_own", f"EMHASS {emhass_policy.EMHASS_VERSION} naive MPC, every tick", res["emhass_ms"]),
            ("emhass_dayahead_own", f"EMHASS {emhass_policy.EMHASS_VERSION} day-ahead, open loop",
             res["emhass_dayahead_ms"]))
    print("  EMHASS beside ours (same days, forecasts and plant; shed / shortfall in kWh of the real day "
          "for site, J for lab):", file=out)
    lab = res["cfg"].dt_s < 60
    for p, label, ms in rows:
        shed, miss = (0.0 if 0 <= v < 1e-6 else v for v in short.get(p, (np.nan, np.nan)))   # [J]
        unit = 1.0 if lab else kwh
        print(f"    {label:42s} capture {100 * capture(c, p):6.1f} %, shed {shed / unit:9.4g}, "
              f"deferrable shortfall {miss / unit:9.4g}, solve p50 {np.percentile(ms, 50):8.2f} ms, "
              f"p99 {np.percentile(ms, 99):8.2f} ms", file=out)
    print(f"  EMHASS statuses: MPC {res['emhass_statuses']}, day-ahead {res['emhass_dayahead_statuses']}", file=out)


def report_compared(res, out):
    """The pymgrid line of a result with ``pymgrid_ms`` (nothing without a pymgrid run)."""
    ms = res.get("pymgrid_ms")
    if ms is not None and len(ms):
        print(f"  pymgrid 1.2.2 MPC (cvxpy, solved by {res['pymgrid_solver']}) solve p50 {np.percentile(ms, 50):.2f} ms, "
              f"p99 {np.percentile(ms, 99):.2f} ms; statuses {res['pymgrid_statuses']}", file=out)
