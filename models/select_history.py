"""Does weekly history help the per-step load networks? A check on the validation days only.

``python -m picogrid.models.select_history --profile lab|site [--series ...] [--seeds 0 1] [--days 15]``

Household routines are weekly, so for each load series a :class:`models.stepnet.StepQuantileNet`
(sizes, learning rate, weight decay and epoch budget of :data:`models.train.STEP_NET`) is trained
on the production per-step features (:func:`models.features.step_features`, two days of history)
and on those plus :data:`WEEKLY_FEATURE_NAMES` (:func:`weekly_step_features`, ``--days`` days of
history), both on the SAME training windows: those whose ``--days`` days of lags lie inside the
data (earlier windows are dropped, never filled). Printed: the validation MAE of the P50
(clipped at 0) over the MAE of seasonal naive (same tick yesterday), per series, variant and seed.
The test days are never read. The production networks stay on two days of history unless the
weekly variant wins here (see ``models/MODEL_CARD.md`` for the figures).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import features as F

#: weekly per-step features: the target's tick of day 7 and 14 days before (and +-48 min means
#: around them), median / mean of the same tick over the last 7 and 14 days, mean over the last
#: 7 days of the +-48 min windows (and their median), median of (1, 7, 14) days before, 7-day mean
WEEKLY_FEATURE_NAMES = (
    "same_tick_7d", "around_tick_7d_mean", "same_tick_median_7d", "same_tick_mean_7d",
    "around_tick_mean_7d", "around_tick_median_7d", "last_7d_mean",
    "same_tick_14d", "around_tick_14d_mean", "same_tick_median_14d", "same_tick_mean_14d",
    "same_tick_median_1_7_14d")


def weekly_step_features(history, n_ticks: int, horizon: int) -> np.ndarray:
    """Per-step weekly features (:data:`WEEKLY_FEATURE_NAMES`) of windows with 15 days of history.

    Step ``h`` of a window targets the tick ``h`` after its start; "``j`` days before" is the
    value ``j * n_ticks`` ticks before that target, always in the past for ``h < n_ticks``.

    Parameters
    ----------
    history : array [M, >= 15 * n_ticks]
        Past values before each window's start, oldest first [series unit].
    n_ticks : int
        Ticks per day.
    horizon : int
        Forecast steps, 1 .. n_ticks.

    Returns
    -------
    numpy.ndarray [M, horizon, len(WEEKLY_FEATURE_NAMES)], float32

    Raises
    ------
    ValueError
        Fewer than 15 days of history or ``horizon`` outside 1..n_ticks.
    """
    hist = np.asarray(history, dtype=np.float64)
    n = int(n_ticks)
    if hist.ndim != 2 or hist.shape[1] < 15 * n or not 1 <= horizon <= n:
        raise ValueError(f"need history [M, >= {15 * n}] and 1 <= horizon <= {n}, got {hist.shape}, {horizon}")
    L, h, k = hist.shape[1], np.arange(horizon), max(n // 30, 1)

    def at(j: int) -> np.ndarray:            # [M, horizon]: the target's tick of day j days before
        return hist[:, L + h - j * n]

    def around(j: int) -> np.ndarray:        # [M, horizon]: +-k ticks around it, clipped to the past
        idx = np.clip((L + h - j * n)[:, None] + np.arange(-k, k + 1), 0, L - 1)
        return hist[:, idx].mean(-1)

    same7 = np.stack([at(j) for j in range(1, 8)], -1)
    around7 = np.stack([around(j) for j in range(1, 8)], -1)
    same14 = np.stack([at(j) for j in range(1, 15)], -1)
    M = hist.shape[0]
    parts = [at(7), around(7), np.median(same7, -1), same7.mean(-1), around7.mean(-1), np.median(around7, -1),
             np.broadcast_to(hist[:, -7 * n:].mean(1)[:, None], (M, horizon)),
             at(14), around(14), np.median(same14, -1), same14.mean(-1),
             np.median(np.stack([at(1), at(7), at(14)], -1), -1)]
    return np.stack(parts, -1).astype(np.float32)


def main(argv=None) -> int:
    """Print the validation comparison; returns 0."""
    from threadpoolctl import threadpool_limits

    from . import train as T
    from .stepnet import StepQuantileNet

    p = argparse.ArgumentParser(prog="python -m picogrid.models.select_history",
                                description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(F.PROFILES), default="lab")
    p.add_argument("--series", nargs="+", default=list(F.STEP_ALIGNED),
                   choices=[s for s in F.SERIES if s.startswith("load")])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--days", type=int, default=15, help="days of history of the weekly variant (>= 15)")
    args = p.parse_args(argv)
    if args.days < 15:
        p.error("--days must be >= 15 (the features read 14 days before the target)")
    threadpool_limits(1)
    d = F.profile_dims(args.profile)
    n, H = d["n_ticks"], d["horizon"]
    cfg = T.STEP_NET[args.profile]
    frame, split = T.build_frame(args.profile)
    starts = T.split_starts(frame["day"].to_numpy(), split, args.profile)
    first = args.days * n
    tr = starts["train"][starts["train"] >= first][::cfg["train_stride"]]
    va = starts["validation"]
    cal = {c: frame[c].to_numpy() for c in ("tick", "day_of_year", "weekday")}
    print(f"profile {args.profile}: {len(tr)} training windows (>= {args.days} days of history), "
          f"{len(va)} validation windows; MAE ratio vs seasonal naive on the validation days")
    for series in args.series:
        v = frame[series].to_numpy().astype(np.float64)

        def feats(st, weekly: bool) -> np.ndarray:
            hist = v[st[:, None] + np.arange(-first, 0)]
            x = F.step_features(hist[:, -2 * n:], cal["tick"][st], cal["day_of_year"][st], cal["weekday"][st], n, H)
            if weekly:
                x = np.concatenate([x, weekly_step_features(hist, n, H)], -1)
            return x

        Ytr, Yva = v[tr[:, None] + np.arange(H)], v[va[:, None] + np.arange(H)]
        naive = np.abs(np.maximum(v[va[:, None] - n + np.arange(H) % n], 0) - Yva).mean()
        for weekly in (False, True):
            Xtr, Xva = feats(tr, weekly), feats(va, weekly)
            k = Xtr.shape[-1]
            for seed in args.seeds:
                net = StepQuantileNet(F.QUANTILES, k, n_relu=cfg["n_relu"], seed=seed)
                net.fit(Xtr.reshape(len(tr), -1), Ytr, Xva.reshape(len(va), -1), Yva, epochs=cfg["max_epochs"],
                        batch=cfg["batch"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
                p50 = np.maximum(net.predict(Xva.reshape(len(va), -1))[:, 1], 0)
                print(f"{series:16s} {'two days + weekly' if weekly else 'two days (production)':22s} "
                      f"{k:3d} features/step  seed {seed}  epochs {len(net.history):2d}  "
                      f"MAE ratio {np.abs(p50 - Yva).mean() / naive:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
