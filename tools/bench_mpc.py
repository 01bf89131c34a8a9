"""Benchmark the MPC's warm-started solve time over a rolling synthetic day.

Runs :class:`picogrid.edge.optimize.MpcController` in closed loop (perfect forecasts, the
plant of :func:`picogrid.edge.policies.simulate_policy`) for the lab profile (N = 60,
dt = 2.5 s, watts and joules of the bench) and the site profile (N = 288, dt = 300 s, kW and
kWh-scale energies in J), and prints p50/p99 of the solve wall time, iteration counts, the
statuses seen and the savings capture against the naive policy and the perfect-foresight LP.

The day is synthetic on purpose (a solver benchmark, not a forecast test): a half-sine PV
shape, smooth load wiggles and a two-level tariff with an evening peak. Near the end of the
run the MPC's window is padded by repeating the last step (see ``DayTruth.window``), so it may
keep energy for a future that the whole-run oracle knows will not come: part of the gap to
the oracle is this end effect, not the solver.

Usage: ``python -m picogrid.tools.bench_mpc [--days 2] [--profile lab|site|both]``
"""

import argparse
import logging
import time

import numpy as np

from picogrid.edge import policies
from picogrid.edge.optimize import MpcConfig, MpcController

LAB = dict(horizon=60, dt_s=2.5, e_min_j=2.0, e_max_j=45.0, p_ch_max_w=3.0, p_dis_max_w=3.0,
           eta_ch=0.9, eta_dis=0.9, p_imp_max_w=6.0, p_exp_max_w=6.0, n_loads=3,
           voll_per_j=[50.0, 20.0, 5.0], cycle_cost_per_j=0.01)
_KWH = 3.6e6
# Site prices in cents/J: 30 c/kWh import is 8.3e-6 c/J.
SITE = dict(horizon=288, dt_s=300.0, e_min_j=1.0 * _KWH, e_max_j=10.0 * _KWH, p_ch_max_w=5000.0,
            p_dis_max_w=5000.0, eta_ch=0.95, eta_dis=0.95, p_imp_max_w=10000.0, p_exp_max_w=7000.0,
            n_loads=3, voll_per_j=[1e-4, 4e-5, 1e-5], cycle_cost_per_j=2e-7)


def synthetic_day(cfg, steps_per_day, days, pv_peak_w, load_w, price_low, price_high, seed=0):
    """``days`` days: PV half-sine [W], 3 loads [W], import/export price [price/J]."""
    rng = np.random.default_rng(seed)
    n_steps = steps_per_day * days
    phase = (np.arange(n_steps) % steps_per_day) / steps_per_day
    pv = pv_peak_w * np.clip(np.sin(np.pi * (phase - 0.25) / 0.5), 0, None) * rng.uniform(0.7, 1.0, n_steps)
    shapes = np.column_stack([0.6 + 0.1 * np.sin(2 * np.pi * phase),
                              0.5 + 0.4 * np.sin(2 * np.pi * (phase - 0.3)) ** 2,
                              0.3 + 0.6 * ((phase > 0.7) & (phase < 0.9))])
    demand = load_w * shapes * rng.uniform(0.9, 1.1, (n_steps, 3))
    price = np.where((phase > 0.7) & (phase < 0.9), price_high, price_low) * rng.uniform(0.9, 1.1, n_steps)
    return policies.DayTruth(pv, demand, price, 0.4 * price, e0_j=0.5 * (cfg.e_min_j + cfg.e_max_j))


def bench(name, cfg, truth):
    ctrl = MpcController(cfg)
    times, iters = [], []

    def timed(t, e_j):
        t0 = time.perf_counter()
        d = ctrl.solve(e_j, **truth.window(t, cfg.horizon, cfg))
        times.append(time.perf_counter() - t0)
        iters.append(d.iterations)
        return d

    mpc = policies.simulate_policy(timed, truth, cfg)
    naive = policies.simulate_policy(policies.naive_policy(truth, cfg), truth, cfg)
    oracle = policies.solve_oracle(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w,
                                   truth.import_price_per_j, truth.export_price_per_j)
    ms = 1e3 * np.array(times)
    statuses = {s: mpc.statuses.count(s) for s in sorted(set(mpc.statuses))}
    print(f"{name}: N={cfg.horizon} steps={truth.n_steps} solve p50={np.percentile(ms, 50):.2f} ms "
          f"p99={np.percentile(ms, 99):.2f} ms max={ms.max():.2f} ms "
          f"iterations p50={int(np.median(iters))} max={max(iters)} statuses={statuses}")
    print(f"{name}: cost naive={naive.total_cost:.6g} mpc={mpc.total_cost:.6g} "
          f"oracle={oracle.objective:.6g} savings capture="
          f"{policies.savings_capture(naive.total_cost, mpc.total_cost, oracle.objective):.4f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=2, help="length of the rolling run in days")
    ap.add_argument("--profile", choices=("lab", "site", "both"), default="both")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.profile in ("lab", "both"):
        cfg = MpcConfig.from_dict(LAB)
        # A lab "day" is 120 ticks of 2.5 s here; the horizon covers half of it.
        bench("lab", cfg, synthetic_day(cfg, 120, args.days, 4.0, 1.0, 1.0, 5.0))
    if args.profile in ("site", "both"):
        cfg = MpcConfig.from_dict(SITE)
        bench("site", cfg, synthetic_day(cfg, 288, args.days, 6000.0, 1500.0, 5e-6, 1.2e-5))


if __name__ == "__main__":
    main()
