"""``picogrid evaluate --data FILE``: every policy on a user's own time series (issue 29 point 3).

The file (docs/own-data.md, read by :func:`picogrid.models.user_data.load_user_data`) becomes the
site's ticks (:func:`picogrid.models.user_data.tick_days`; a file coarser than the tick, e.g. a
15-minute meter at the home site's 5 minutes, holds each sample over its ticks, and the summary
says so); clear-sky GHI of each tick, which the PV forecaster reads, comes from the site's
location (``--latitude``, ``--longitude``; pvlib's Ineichen model, the ``data`` extra). The
last run of consecutive whole days is split in time:

- the first ``--history-days`` are history only: the forecasters' lags (2 days for the home
  profile) and, for the days after those, a warm-up the forecaster runs through unscored (its
  online recalibration), as :class:`~picogrid.edge.evaluation.evaluate.ProfileDays` does with
  its :data:`~picogrid.edge.evaluation.evaluate.WARM_DAYS`;
- the days after them are scored, each exactly as ``picogrid evaluate`` scores a replayed day
  (the same policies and plant: naive rule, perfect-foresight LP, the MPC on perfect forecasts,
  on the project's forecasts and the day-ahead plan, pymgrid's MPC unless ``--no-compare``).

Nothing is fitted on the file: the forecasters are the shipped models of the site's profile
(trained on the replayed 2012 days, models/MODEL_CARD.md). So the same run reports what they are
worth on this file next to the baselines a home could have without them: the MPC planning on
seasonal-naive forecasts (every series as the same tick yesterday: EMHASS's ``naive`` load
forecast) and on persistence (the last value held), and the forecast error of each on the scored
days (the P50's mean absolute error over the plan's steps 1..H). A site whose PV or loads are
sized unlike the models' training site is forecast at the models' scale (``--site``'s
``[pv] capability_w`` and load rating against the cards' ``bench_scaling``) and scaled back.
``--scale site`` scales the file itself to the site instead (PV by its 99.9th percentile to
``capability_w``, each load by its 99th to the load rating and clipped there, as the shipped
replay does, models/scenario.py), the factors taken from the history days only and printed.
"""

from __future__ import annotations

import collections
import tomllib

import numpy as np
from picogrid.edge.evaluation.evaluate import (
    merge_solver_records,
    COMPARED,
    FC_SERIES,
    DayData,
    ProfileDays,
    fans_forecast,
    forecast_fans,
    report,
    run_mpc,
    site_config,
    site_file,
)
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.models.user_scenario import clearsky_ghi, consecutive_tail, load_rating_w

#: the forecast baselines, each also planned on by the MPC (policy ``mpc_<name>``)
BASELINE_FORECASTS = ("seasonal_naive", "persistence")
PV_SCALE_QUANTILE = 0.999
LOAD_SCALE_QUANTILE = 0.99


class BaselineForecaster:
    """Seasonal naive or persistence for every series, in the :class:`Forecaster` interface."""

    def __init__(self, kind, n_ticks, horizon):
        if kind not in BASELINE_FORECASTS:
            raise ValueError(f"unknown baseline forecast {kind!r}; known {BASELINE_FORECASTS}")
        self.kind, self.n_ticks, self.horizon = kind, int(n_ticks), int(horizon)
        self.history_ticks = 2 * self.n_ticks
        self.source = {}

    def forecast(self, history, calendar, clearsky_ghi_w_m2):
        from picogrid.models import features as F

        out = {}
        for s in F.SERIES:
            h = np.asarray(history[s], float)
            p = F.seasonal_naive(h, self.n_ticks, self.horizon) if self.kind == "seasonal_naive" \
                else F.persistence(h, self.horizon)
            out[s] = {q: p.copy() for q in F.QUANTILES}
        self.source = {s: self.kind for s in F.SERIES}
        return out


class ScaledForecaster:
    """A forecaster fed at its models' scale: ``history[s] * factors[s]`` in, fans ``/ factors[s]`` out."""

    def __init__(self, inner, factors):
        self.inner, self.factors = inner, dict(factors)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forecast(self, history, calendar, clearsky_ghi_w_m2):
        f = self.factors
        fans = self.inner.forecast({k: np.asarray(v, float) * f.get(k, 1.0) for k, v in history.items()},
                                   calendar, clearsky_ghi_w_m2)
        return {s: {q: np.asarray(v) / f.get(s, 1.0) for q, v in fan.items()} for s, fan in fans.items()}


def scale_to_site(frame, n_ticks, history_days, pv_w, load_w):
    """Scale PV to ``pv_w`` by its 99.9th percentile and each load to ``load_w`` by its 99th
    (clipped there) over the first ``history_days`` days only; returns the lines that say so."""
    hist = frame.iloc[: history_days * n_ticks]
    lines = []
    p = float(np.quantile(hist["pv_available_w"], PV_SCALE_QUANTILE))
    if p <= 0:
        raise ValueError("--scale site: no PV in the history days to scale by")
    frame["pv_available_w"] *= pv_w / p
    lines.append(f"PV x {pv_w / p:.4g} (its {100 * PV_SCALE_QUANTILE:g}th percentile {p:.5g} W -> {pv_w:g} W)")
    for k in (1, 2, 3):
        c = f"load{k}_demand_w"
        q = float(np.quantile(hist[c], LOAD_SCALE_QUANTILE))
        if q > 0:
            frame[c] = np.clip(frame[c] * (load_w / q), 0.0, load_w)
            lines.append(f"{c} x {load_w / q:.4g} (its {100 * LOAD_SCALE_QUANTILE:g}th percentile {q:.5g} W -> "
                         f"{load_w:g} W, clipped there)")
    return ["scaled to the site, factors from the history days only: " + "; ".join(lines)]


def prepare(path, site, latitude, longitude, history_days=None, n_days=None, currency_factor=1.0,
            scale=None, kind="home", altitude=None):
    """The file's days for :class:`UserDays`: ``(frame, history_days, n_days, notes)``.

    Raises
    ------
    picogrid.models.user_data.DataError
        The file does not pass the format's checks.
    ValueError
        Too few whole consecutive days for the history asked and one scored day, a history
        shorter than the forecasters' lags, or a tick the file cannot give.
    """
    from picogrid.edge.forecasting.forecast import model_history_days
    from picogrid.models import user_data

    n_ticks = int(site["bench"]["n_ticks"])
    profile = forecaster_profile(site)
    lag_days = max(2, model_history_days(profile))
    data = user_data.load_user_data(path, kind, currency_factor)
    frame, dropped = user_data.tick_days(data, n_ticks, hold=True)
    notes = [f"{len(data.frame)} samples of {data.step_s:g} s; " + "; ".join(data.conversions)]
    if data.step_s > 86400 / n_ticks:
        notes.append(f"the file's {data.step_s:g} s samples are held over the site's {86400 / n_ticks:g} s ticks: "
                     f"the MPC's current tick and the forecasters' last ticks carry the sample's mean, up to "
                     f"{data.step_s - 86400 / n_ticks:g} s ahead of the tick (give {86400 / n_ticks:g} s data "
                     f"for a strict evaluation)")
    days = list(dict.fromkeys(frame["day"]))
    kept, skipped = consecutive_tail(days)
    if dropped or skipped:
        notes.append(f"days left out: {[f'{d} ({why})' for d, why in dropped] + [f'{d} (before a missing day)' for d in skipped]}")
    frame = frame[frame["day"].isin(kept)].reset_index(drop=True)
    default_hist = lag_days + 7
    if history_days is None:
        history_days = default_hist
    if history_days < lag_days:
        raise ValueError(f"--history-days {history_days}: the {profile!r} forecasters read {lag_days} days of lags; "
                         f"give at least {lag_days}")
    if len(kept) < history_days + 1:
        raise ValueError(
            f"{path}: {len(kept)} whole consecutive day(s) at {n_ticks} ticks per day, but {history_days} history "
            f"day(s) + at least 1 scored day are needed (the {profile!r} forecasters read {lag_days} days of lags, "
            f"the default adds {default_hist - lag_days} warm-up days). Pass --history-days N with "
            f"{lag_days} <= N <= {len(kept) - 1} (e.g. --history-days {max(lag_days, min(len(kept) - 1, len(kept) // 2 + 1))}: "
            f"a shorter warm-up of the forecasters' online recalibration), or give a longer file")
    available = len(kept) - history_days
    if n_days is None:
        n_days = available
    elif n_days > available:
        raise ValueError(f"--days {n_days}: the file has {available} day(s) after its {history_days} history day(s)")
    frame = frame.iloc[: (history_days + n_days) * n_ticks].reset_index(drop=True)
    if scale == "site":
        notes += scale_to_site(frame, n_ticks, history_days, float(site["pv"]["capability_w"]), load_rating_w(site))
    frame["clearsky_ghi_w_m2"] = clearsky_ghi(list(dict.fromkeys(frame["day"])), n_ticks, data.frame.index.tz,
                                              latitude, longitude, altitude)
    notes.append(f"clear-sky GHI: pvlib Ineichen at {latitude:g} N, {longitude:g} E"
                 + (f", {altitude:g} m" if altitude is not None else ""))
    return frame, history_days, n_days, notes


def forecaster_profile(site):
    """The forecaster profile whose models run at the site's ticks per day."""
    from picogrid.models import features as F

    n_ticks = int(site["bench"]["n_ticks"])
    for p in (site.get("profile"), *F.PROFILES):
        if p in F.PROFILES and F.PROFILES[p]["n_ticks"] == n_ticks:
            return p
    raise ValueError(f"no forecaster for {n_ticks} ticks per day: the models run at "
                     f"{ {p: d['n_ticks'] for p, d in F.PROFILES.items()} } (tick_s 300 for a home)")


def model_factors(site, forecaster):
    """Series -> factor to the models' training scale (their cards' ``bench_scaling``), only those != 1."""
    cards = [c.get("bench_scaling", {}) for c in forecaster.models.values()]
    if not cards:
        return {}
    ref = cards[0]
    out = {}
    if ref.get("pv_capability_w"):
        out["pv_available_w"] = float(ref["pv_capability_w"]) / float(site["pv"]["capability_w"])
    if ref.get("load_rating_w"):
        for k in (1, 2, 3):
            out[f"load{k}_demand_w"] = float(ref["load_rating_w"]) / load_rating_w(site)
    return {k: v for k, v in out.items() if abs(v - 1.0) > 1e-9}


class UserDays(ProfileDays):
    """:class:`ProfileDays` over a ready-made frame of a user's days (:func:`prepare`): the first
    ``history_days`` days history and warm-up, the next ``n_days`` scored; plus the MPC on each
    of :data:`BASELINE_FORECASTS` and the forecasts' errors on the scored days."""

    def __init__(self, site, cfg, frame, history_days, n_days, compare=True, label="data"):
        from picogrid.edge.forecasting.forecast import Forecaster

        self.site, self.cfg, self.compare, self.profile = site, cfg, compare, label
        n_ticks = int(site["bench"]["n_ticks"])
        self.forecaster_profile = forecaster_profile(site)
        inner = Forecaster(profile=self.forecaster_profile)
        self.factors = model_factors(site, inner)
        self.forecaster = ScaledForecaster(inner, self.factors) if self.factors else inner
        lag_days = -(-inner.history_ticks // n_ticks)
        self.hist_days, self.warm_days = history_days, history_days - lag_days
        if self.warm_days < cfg.error_days:
            raise ValueError(f"the site's error scenarios read {cfg.error_days} past days of forecasts: "
                             f"--history-days must be >= {lag_days + cfg.error_days}")
        self._points = collections.deque(maxlen=cfg.error_days)
        self._warm = False
        self.data = DayData(frame, n_ticks, cfg.dt_s)
        if inner.horizon < n_ticks or cfg.horizon < n_ticks:
            raise ValueError(f"forecaster horizon {inner.horizon} / MPC horizon {cfg.horizon} shorter than "
                             f"the day ({n_ticks} ticks): no day-ahead plan possible")
        self.policies = (["naive", "perfect_foresight", "mpc_perfect_forecast", "mpc_own", "dayahead_own"]
                         + [f"mpc_{b}" for b in BASELINE_FORECASTS] + (list(COMPARED) if compare else []))
        self.calibration = getattr(inner, "energy_calibration", None)
        self.baselines = {b: BaselineForecaster(b, n_ticks, inner.horizon) for b in BASELINE_FORECASTS}
        self._baseline_fans = {}
        #: forecaster -> series -> [sum of |P50 - truth|, count] over the scored days
        self.abs_errors = {k: {s: [0.0, 0] for s in FC_SERIES} for k in ("own", *BASELINE_FORECASTS)}

    def forecast_day(self, d, sources):
        fans, errors = super().forecast_day(d, sources)
        i = d + self.hist_days
        truth = self.data.truth(i, self.cfg)
        from picogrid.edge.evaluation.evaluate import known_now
        nows = [known_now(truth.window(t, self.cfg.horizon, self.cfg)) for t in range(truth.n_steps)]
        self._baseline_fans[d] = {b: [forecast_fans(self.data, i, f, {})(t, nows[t]) for t in range(truth.n_steps)]
                                  for b, f in self.baselines.items()}
        self._score(i, {"own": fans, **self._baseline_fans[d]})
        return fans, errors

    def _score(self, i, by_forecaster):
        c, nt = self.data.cols, self.data.n_ticks
        total = len(c["pv_available_w"])
        for name, day in by_forecaster.items():
            for t, fan in enumerate(day):
                r = i * nt + t
                for s in FC_SERIES:
                    p50 = np.asarray(fan[s][0.5])[1:]
                    n = min(len(p50), total - r - 1)
                    if n > 0:
                        acc = self.abs_errors[name][s]
                        acc[0] += float(np.abs(p50[:n] - c[s][r + 1:r + 1 + n]).sum())
                        acc[1] += n

    def run_day(self, d, day_fans, day_errors, reserve_stride=1):
        out = super().run_day(d, day_fans, day_errors, reserve_stride)
        i = d + self.hist_days
        truth = self.data.truth(i, self.cfg)
        one_plan = self.cfg.replace(scenario_weights=None, scenario_quantiles=None)
        if not hasattr(self, "_baseline_ctrl"):
            self._baseline_ctrl = MpcController(one_plan)
        for b, fans in self._baseline_fans.pop(d).items():
            fc = fans_forecast(lambda t, now, fans=fans: fans[t], truth, one_plan)
            res = run_mpc(self._baseline_ctrl, fc, truth, self.cfg, out["solve_ms"], out["statuses"])
            out["results"][f"mpc_{b}"] = res
            out["costs"][f"mpc_{b}"] = res.total_cost
        return out

    def skill(self):
        """Series -> forecaster -> MAE of the P50 over the plan's steps 1..H on the scored days."""
        return {s: {k: (v[s][0] / v[s][1] if v[s][1] else np.nan) for k, v in self.abs_errors.items()}
                for s in FC_SERIES}


def load_site_file(path=None, overrides=None):
    """``(site, cfg, path)`` of a site TOML (default: the shipped home site, ``edge/sites/site.toml``)."""
    path = path or site_file("site")
    with open(path, "rb") as f:
        site = tomllib.load(f)
    site, cfg, _ = site_config(site, overrides)
    return site, cfg, path


def evaluate_data(path, latitude, longitude, site_path=None, history_days=None, n_days=None, currency_factor=1.0,
                  scale=None, overrides=None, compare=True, progress=None, altitude=None):
    """Every policy on the scored days of a user's file; the result of
    :func:`picogrid.edge.evaluation.evaluate.evaluate_profile` plus ``notes``, ``skill``,
    ``factors``, ``history_days`` and ``history``."""
    site, cfg, site_path = load_site_file(site_path, overrides)
    frame, history_days, n_days, notes = prepare(path, site, latitude, longitude, history_days, n_days,
                                                 currency_factor, scale,
                                                 "home" if forecaster_profile(site) == "site" else "bench", altitude)
    run = UserDays(site, cfg, frame, history_days, n_days, compare, label=str(path))
    sources, parts = {}, []
    for d in range(n_days):
        out = run.run_day(d, *run.forecast_day(d, sources))
        if d:
            del out["results"]
        parts.append(out)
        if progress:
            progress(str(path), d + 1, n_days)
    days = run.data.days
    merged = {"costs": {p: np.array([r["costs"][p] for r in parts]) for p in run.policies},
              "days": days[history_days:history_days + n_days], "history": days[:history_days],
              "sources": sources, "example": (days[history_days], run.data.truth(history_days, cfg), parts[0]["results"]),
              "cfg": cfg, "forecaster_profile": run.forecaster_profile,
              "forecaster_models": sorted(run.forecaster.models), "pymgrid_solver": parts[-1].get("pymgrid_solver"),
              "notes": notes, "skill": run.skill(), "factors": run.factors, "history_days": history_days,
              "site_path": str(site_path)}
    merge_solver_records(merged, parts, ("solve_ms", "dayahead_ms", "pymgrid_ms"), ("statuses", "pymgrid_statuses"))
    return merged


def report_data(res, out):
    """:func:`report` of a :func:`evaluate_data` result, with the split, the notes and the forecast errors."""
    print(f"data: site {res['site_path']}; history (lags and warm-up, unscored) {res['history'][0]} .. "
          f"{res['history'][-1]} ({res['history_days']} days); nothing fitted on the file (the shipped "
          f"{res['forecaster_profile']!r} models)", file=out)
    for n in res["notes"]:
        print(f"  {n}", file=out)
    if res["factors"]:
        print(f"  forecast at the models' scale: {res['factors']} (the site's ratings against the models' "
              f"training site), fans scaled back", file=out)
    report("data", res, out)
    print("  forecast error on the scored days, MAE of the P50 over the plan's steps 1..H (own | seasonal naive | "
          "persistence; skill = 1 - own/seasonal naive):", file=out)
    for s, m in res["skill"].items():
        sk = 1 - m["own"] / m["seasonal_naive"] if m["seasonal_naive"] else np.nan
        print(f"    {s:20s} {m['own']:.4g} | {m['seasonal_naive']:.4g} | {m['persistence']:.4g}  skill {sk:+.2f}",
              file=out)
