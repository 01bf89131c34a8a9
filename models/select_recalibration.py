"""Choose the online recalibration rate on the validation days only (reproduces the choice of
:data:`models.recalibrate.LR_PER_DAY`).

``python -m picogrid.models.select_recalibration --profile lab|site [--lr-per-day 0.3 0.6 1.2]``

For every tracked series (:data:`models.recalibrate.TRACKED`) a network is trained as in
:func:`models.train.train_series` (same data, seed and sizes, early-stopped on the validation
days), its P10/P90 offsets are calibrated on the first half of the validation windows
(2013-01..03) and the tracker is run causally over the second half (2013-04..06), as the edge
would. Printed: coverage, tail miss rates and mean pinball loss, static vs each rate. The test
days are never read.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import features as F
from . import recalibrate
from .evaluate import fan_metrics, online_fans
from .qnet import QuantileNet, bucket_of, calibration_offsets


def main(argv=None) -> int:
    """Print the validation comparison; returns 0."""
    from threadpoolctl import threadpool_limits

    from . import train as T

    p = argparse.ArgumentParser(prog="python -m picogrid.models.select_recalibration",
                                description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(F.PROFILES), default="lab")
    p.add_argument("--lr-per-day", type=float, nargs="+", default=[0.3, 0.6, 1.2])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    threadpool_limits(1)
    d = F.profile_dims(args.profile)
    frame, split = T.build_frame(args.profile)
    starts = T.split_starts(frame["day"].to_numpy(), split, args.profile)
    half = len(starts["validation"]) // 2
    nb = T.N_BUCKETS[args.profile]
    for series in recalibrate.TRACKED:
        if series in F.STEP_ALIGNED:
            net, (Xva, Yva, tva), _ = T.fit_step_net(series, frame, starts, args.profile, args.seed)
        else:
            Xtr, Ytr, _ = T.windows(series, frame, starts["train"], args.profile)
            Xva, Yva, tva = T.windows(series, frame, starts["validation"], args.profile)
            lag_cols = np.arange(d["n_lags"])
            level = lag_cols[-d["n_ticks"]:] if series in T.DELEVEL else None
            n_relu, n_lin = T.HIDDEN[args.profile]
            net = QuantileNet(F.QUANTILES, lag_cols, level, n_relu=n_relu, n_linear=n_lin, seed=args.seed)
            net.fit(Xtr, Ytr, Xva, Yva, epochs=T.MAX_EPOCHS[args.profile])
        raw = net.predict(Xva)
        a, b = slice(0, half), slice(half, None)
        off = calibration_offsets(Yva[a], raw[a], tva[a], d["n_ticks"], nb, F.QUANTILES)
        static = F.postprocess(series, raw[b] + off[bucket_of(tva[b], nb, d["n_ticks"])])
        rows = [("static", fan_metrics(Yva[b], static))]
        for lr_day in args.lr_per_day:
            fans, _ = online_fans(series, static, starts["validation"][b], frame[series].to_numpy(), d["horizon"],
                                  lr_day / d["n_ticks"])
            rows.append((f"lr/day {lr_day:g}", fan_metrics(Yva[b], fans)))
        for name, m in rows:
            sys.stdout.write(f"{args.profile} {series:20s} {name:12s} cover {m['coverage_p10_p90']:.3f} "
                             f"(below {m['below_p10']:.3f}, above {m['above_p90']:.3f})  "
                             f"pinball {m['pinball_mean']:.4g}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
