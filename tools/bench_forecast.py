"""Benchmark: edge forecast latency, all series, whole horizon (``picogrid bench forecast``).

Times :meth:`picogrid.edge.forecast.Forecaster.forecast` (feature building, five onnxruntime
calls, post-processing) on real scenario days for the ``site`` profile (288-step horizon, the
issue's target: <= 2 ms p50 on this machine) and the ``lab`` profile (60 steps), and, in the same
run, the seasonal-naive baseline for the same five series, so the ratio does not depend on the
machine. Prints p50/p90/p99 and the ratio; returns 1 when the site p50 misses the target.
"""

import argparse
import sys
import time

import numpy as np

TARGET_P50_MS = 2.0


def _inputs(profile):
    from picogrid.models import features as F
    from picogrid.models import scenario
    from picogrid.models.train import PROFILE_BENCH

    d = F.profile_dims(profile)
    days = scenario.build_bench_days("2013-07-09", 3, n_ticks=d["n_ticks"], bench=PROFILE_BENCH[profile])
    start = 2 * d["n_ticks"] + d["n_ticks"] // 3
    history = {s: days[s].to_numpy()[:start] for s in F.SERIES}
    row = days.iloc[start]
    calendar = {"tick": int(row["tick"]), "day_of_year": int(row["day_of_year"]),
                "weekday": int(row["weekday"]), "n_ticks": d["n_ticks"]}
    cs = days["clearsky_ghi_w_m2"].to_numpy()
    cs = np.concatenate([cs, cs[-d["n_ticks"]:]])[start:start + d["horizon"]]
    return history, calendar, cs


def _time(fn, n):
    fn()  # warm-up
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def main(argv=None):
    from picogrid.edge.forecast import Forecaster
    from picogrid.models import features as F

    p = argparse.ArgumentParser(prog="picogrid bench forecast", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args(argv)
    status = 0
    for profile in ("site", "lab"):
        fc = Forecaster(profile=profile)
        history, calendar, cs = _inputs(profile)
        fc.forecast(history, calendar, cs)
        onnx_series = [s for s, src in fc.source.items() if src == "onnx"]
        model = _time(lambda: fc.forecast(history, calendar, cs), args.calls)
        base = _time(lambda: [F.seasonal_naive(history[s], calendar["n_ticks"], fc.horizon) for s in F.SERIES],
                     args.calls)
        p50 = float(np.median(model))
        sys.stdout.write(
            f"{profile}: {len(F.SERIES)} series x {fc.horizon} steps, ONNX for {len(onnx_series)}/{len(F.SERIES)}: "
            f"p50 {p50:.3f} ms  p90 {np.percentile(model, 90):.3f} ms  p99 {np.percentile(model, 99):.3f} ms "
            f"| seasonal naive p50 {np.median(base):.4f} ms | ratio {p50 / np.median(base):.0f}x"
            + (f" | target p50 <= {TARGET_P50_MS} ms: {'met' if p50 <= TARGET_P50_MS else 'MISSED'}"
               if profile == "site" else "") + "\n")
        if profile == "site" and (p50 > TARGET_P50_MS or len(onnx_series) < len(F.SERIES)):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
