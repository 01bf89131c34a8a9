"""Fit the scenario energy calibration (:mod:`picogrid.edge.forecasting.energy_calibration`).

``python -m picogrid.edge.evaluation.energy_calibration_fit [--profile lab]``: every tick of
the calibration days issues the edge's own forecast and its errors against the true day are
kept; their quantiles per bucket and step are the calibration file the edge loads. ``picogrid
train`` refits it after training new models (:func:`train_main`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

import numpy as np

from picogrid.edge.forecasting.energy_calibration import (CALIBRATION_DAYS, CALIBRATION_FIRST_DAY, FILE_NAME,
                                                          MIN_SAMPLES, N_BUCKETS, PV_SERIES, EnergyCalibration,
                                                          bucket, net, widths)
from picogrid.edge.forecasting.scenarios import SWANSON_MEGILL_QUANTILES


def quantile_table(errors, horizon, quantiles, min_samples=MIN_SAMPLES):
    """``z`` [B, N, Q] from the errors ``errors[b][k]`` (lists of ``z_k``; see the module).

    A step with fewer than ``min_samples`` errors repeats the previous step's quantiles (zero
    at step 1). Raises ValueError if a bucket has no step with enough errors.
    """
    table = np.zeros((len(errors), horizon, len(quantiles)))
    for b, per_step in enumerate(errors):
        enough = False
        for k in range(1, horizon):
            if len(per_step[k]) >= min_samples:
                table[b, k] = np.quantile(per_step[k], quantiles)
                enough = True
            else:
                table[b, k] = table[b, k - 1]
        if not enough:
            raise ValueError(f"bucket {b}: no step with {min_samples} errors")
    return table


def fit(profile="lab", first_day=CALIBRATION_FIRST_DAY, n_days=CALIBRATION_DAYS, n_buckets=N_BUCKETS,
        quantiles=SWANSON_MEGILL_QUANTILES, progress=None, artifact_dir=None):
    """Fit the calibration on ``n_days`` real days from ``first_day`` (time order, causal), for
    the models in ``artifact_dir`` (default: the profile's committed ones).

    Every tick of every day issues the edge's own forecast (:func:`picogrid.edge.evaluation.evaluate.
    forecast_fans`, the one ``picogrid evaluate`` plans on) and its errors against the true day
    are kept for the steps inside that day.

    Returns
    -------
    EnergyCalibration
    """
    from picogrid.edge.evaluation import evaluate as E
    from picogrid.edge.forecasting.forecast import Forecaster
    from picogrid.models.scenario import build_bench_days

    site, cfg, scaling = E.load_site(profile)
    n_ticks, n = int(site["bench"]["n_ticks"]), cfg.horizon
    forecaster = Forecaster(artifact_dir, profile=profile)
    hist_days = -(-forecaster.history_ticks // n_ticks)
    start = _dt.date.fromisoformat(first_day)
    frame = build_bench_days((start - _dt.timedelta(days=hist_days)).isoformat(), n_days + hist_days + 1,
                             n_ticks, scaling)
    data = E.DayData(frame, n_ticks, cfg.dt_s)
    names = [PV_SERIES, *E.LOAD_SERIES]
    errors = [[[] for _ in range(n)] for _ in range(n_buckets)]
    for d in range(n_days):
        i = d + hist_days
        truth = data.truth(i, cfg)
        fans_at = E.forecast_fans(data, i, forecaster, {})
        for t in range(n_ticks):
            w = truth.window(t, n, cfg)
            fans = fans_at(t, E.known_now(w))
            true_net = w["demand_w"].sum(axis=1) - w["pv_avail_w"]
            err = np.cumsum((true_net - net(fans, names, 0.5, n))[1:])
            cum_w = np.cumsum(sum(widths(fans, names, n).values())[1:])
            b = bucket(t, n_buckets, n_ticks)
            for k in range(1, min(n_ticks - t, n)):
                errors[b][k].append(err[k - 1] / max(cum_w[k - 1], 1e-12))
        if progress:
            progress(d + 1, n_days)
    meta = {"profile": profile, "first_day": first_day, "n_days": n_days, "n_buckets": n_buckets,
            "command": f"python -m picogrid.edge.evaluation.energy_calibration_fit --profile {profile}",
            "samples_step_1": [len(e[1]) for e in errors]}
    return EnergyCalibration(quantile_table(errors, n, quantiles), quantiles, n_ticks, meta)


def main(argv=None):
    """``python -m picogrid.edge.evaluation.energy_calibration_fit [--profile lab]``: fit and write the file."""
    from picogrid.edge.forecasting.forecast import default_artifact_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="lab", choices=("lab", "site"))
    ap.add_argument("--first-day", default=CALIBRATION_FIRST_DAY)
    ap.add_argument("--days", type=int, default=CALIBRATION_DAYS)
    ap.add_argument("--out", default=None, help="file to write (default: next to the model cards)")
    args = ap.parse_args(argv)
    cal = fit(args.profile, args.first_day, args.days,
              progress=lambda d, n: print(f"\r  day {d}/{n}", end="", file=sys.stderr, flush=True))
    out = Path(args.out) if args.out else default_artifact_dir(args.profile) / FILE_NAME
    cal.save(out)
    print(f"\nwrote {out}: z of {cal.z.shape[0]} buckets x {cal.horizon} steps x quantiles {cal.quantiles}")
    return 0


def train_main(argv=None):
    """``picogrid train``: train the forecasters (:func:`picogrid.models.train.main`), refit the
    scenario energy calibration of the artefact folder if it has one (it was fitted on the old
    models' errors), then evaluate them on the test days (:func:`picogrid.models.evaluate.main`)."""
    from picogrid.models import evaluate, train

    def refit(profile, out):
        if (out / FILE_NAME).exists():
            fit(profile, artifact_dir=out).save(out / FILE_NAME)

    return train.main(argv, after_training=refit, evaluate=evaluate.main)


if __name__ == "__main__":
    sys.exit(main())
