"""Benchmark the MPC solve: OSQP (set up once, warm-started) vs cvxpy vs HiGHS on the same instances.

``picogrid bench mpc`` builds real days of the site profile (``edge/sites/site.toml``: kW, kWh,
5-minute ticks; :func:`picogrid.models.scenario.build_bench_days` with its ``[scenario]``
scaling, deferrable jobs split from load3 as in :mod:`picogrid.edge.evaluation.evaluate`; one forecast
scenario, whatever the site file plans over) and, for each
horizon N = 60, 96, 288, 1440 steps, rolls the horizon over ``--ticks`` consecutive ticks. The
instances are built first (the stored energy follows the exact LP plan); then each solver runs
alone over the same list, as on the edge, where one solver runs per tick:

- ``osqp``: :class:`picogrid.edge.optimizer.optimize.MpcController` (one OSQP set-up, ``update`` + warm start
  from its previous solution shifted one step) with the site's OSQP settings; its first tick is the
  exact LP (``cold_start_exact``), and a tick OSQP ends unsolved too (counted in its statuses);
- ``lp_warm``: the same controller with ``solver='highs'``: the same matrices as an exact LP,
  HiGHS dual simplex set up once and restarted from its last basis
  (:class:`picogrid.edge.optimizer.simplex.WarmSimplex`); the time is the whole ``solve`` call, as for osqp;
- ``cvxpy``: an independent formulation of the same model written with cvxpy ``Parameter``s
  (compiled once, DPP), re-solved each tick by Clarabel; the time is the whole ``solve`` call;
- ``highs``: the exact LP built and solved from scratch (:func:`picogrid.edge.optimizer.policies.solve_perfect_foresight`:
  model vectors + HiGHS through ``scipy.optimize.linprog``), the reference optimum;
- ``pymgrid``: pymgrid 1.2.2's own MPC (:class:`picogrid.edge.evaluation.pymgrid_policy.PymgridMpc`: its
  cvxpy LP compiled once, re-solved each tick) on the first ``--cvxpy-ticks`` instances, for
  N <= :data:`PYMGRID_MAX_N` (it builds its inequality matrix dense: [8N, 7N]). Its model is
  simpler (one load, one efficiency, no jobs, no soft bounds), so only its time is compared.

It prints p50/p99 of the wall time per solve, the speed ratios, the warm LP's floor (an
instance solved again at once: no pivot, HiGHS's fixed cost per run and our code around it),
and the gap of OSQP's plan cost
(and cvxpy's) to the exact optimum, in % of the instance's gross cost (import + export + shedding
+ cycling, the money that moves) and in % of |optimum|. cvxpy runs on the first ``--cvxpy-ticks``
ticks only (it is slow); its p50/p99 are over those.

Usage: ``picogrid bench mpc [--ticks 200] [--cvxpy-ticks 20] [--horizons 60,96,288,1440]``
"""

import argparse
import datetime as _dt
import logging
import time

import numpy as np

from picogrid.edge.evaluation import evaluate
from picogrid.edge.optimizer import policies
from picogrid.edge.sources.deferrable import JobLedger
from picogrid.edge.optimizer.optimize import MpcController, reserve_energy_j
from picogrid.edge.evaluation.pymgrid_policy import PymgridMpc
from picogrid.edge.sources.signals import LOAD_SERIES

log = logging.getLogger(__name__)

HORIZONS = (60, 96, 288, 1440)
#: instances the warm LP solves twice in a row to time its floor (nothing changed, no pivot)
REPEAT_TICKS = 50
#: largest horizon pymgrid's MPC is timed at: its dense [8N, 7N] block matrix is 0.9 GB at N = 1440
PYMGRID_MAX_N = 288


class CvxpyMpc:
    """The MPC model of docs/design.md §4 in cvxpy with parameters, compiled once (Clarabel).

    Written from the model's statement, not from :mod:`picogrid.edge.optimizer.optimize`: hard power
    limits, soft energy bounds with an L1 penalty, deferrable jobs with an undelivered-energy
    slack, optional reserve with a shortfall slack. Powers are in units of the largest power
    limit ``pu`` [W], energies in ``eu = dt * pu`` [J] and costs in ``cu = eu * max(voll)``, so
    that Clarabel sees numbers of order one at the site's kW/kWh scale.
    """

    def __init__(self, cfg, penalty_per_j):
        import cvxpy as cp

        self.cp = cp
        n, nl, nj, dt = cfg.horizon, cfg.n_loads, max(cfg.n_jobs, 1), cfg.dt_s
        self.cfg = cfg
        pu = self.pu = max(cfg.p_ch_max_w, cfg.p_dis_max_w, cfg.p_imp_max_w, cfg.p_exp_max_w)
        eu = self.eu = dt * pu
        pr = self.pr = max(cfg.voll_per_j)           # price unit [price/J]
        self.cu = eu * pr
        p = self.par = {
            "e0": cp.Parameter(), "pv": cp.Parameter(n, nonneg=True),
            "dem": cp.Parameter((n, nl), nonneg=True), "c_imp": cp.Parameter(n), "c_exp": cp.Parameter(n),
            "imp_max": cp.Parameter(n, nonneg=True), "exp_max": cp.Parameter(n, nonneg=True),
            "def_max": cp.Parameter((n, nj), nonneg=True), "need": cp.Parameter(nj, nonneg=True),
            "reserve": cp.Parameter(n), "def_tot": cp.Parameter(n, nonneg=True),
        }
        v = self.var = {k: cp.Variable(n, nonneg=True) for k in ("ch", "dis", "imp", "exp", "pv")}
        v["load"] = cp.Variable((n, nl), nonneg=True)
        v["def"] = cp.Variable((n, nj), nonneg=True)
        v["e"] = cp.Variable(n + 1)
        v["short"] = cp.Variable(nj, nonneg=True)
        v["res"] = cp.Variable(n, nonneg=True)
        # energy [eu] after a step of powers [pu]: e' = e + eta_ch*ch - dis/eta_dis
        cons = [
            v["pv"] + v["dis"] + v["imp"] - v["ch"] - v["exp"] - cp.sum(v["load"], axis=1)
            - cp.sum(v["def"], axis=1) == 0,
            v["e"][0] == p["e0"],
            v["e"][1:] == v["e"][:-1] + cfg.eta_ch * v["ch"] - v["dis"] / cfg.eta_dis,
            v["ch"] <= cfg.p_ch_max_w / pu, v["dis"] <= cfg.p_dis_max_w / pu,
            v["imp"] <= p["imp_max"], v["exp"] <= p["exp_max"], v["pv"] <= p["pv"], v["load"] <= p["dem"],
            v["def"] <= p["def_max"], cp.sum(v["def"], axis=1) <= p["def_tot"],
            cp.sum(v["def"], axis=0) + v["short"] >= p["need"],
        ]
        if np.isfinite(cfg.p_dis_per_e_max_per_s):   # ESR-loss limit: dis [pu] <= r * e [J] / pu
            cons.append(v["dis"] <= cfg.p_dis_per_e_max_per_s * dt * v["e"][:-1])
        voll = np.asarray(cfg.voll_per_j) / pr
        e_min, e_max = cfg.e_min_j / eu, cfg.e_max_j / eu
        cost = (p["c_imp"] @ v["imp"] - p["c_exp"] @ v["exp"]
                + cp.sum(cp.multiply(voll[None, :], p["dem"] - v["load"]))
                + cfg.cycle_cost_per_j / pr * cp.sum(v["ch"] + v["dis"])
                - cfg.terminal_value_per_j / pr * v["e"][n]
                + penalty_per_j / pr * cp.sum(cp.pos(e_min - v["e"][1:]) + cp.pos(v["e"][1:] - e_max))
                + cfg.voll_def_per_j / pr * cp.sum(v["short"]))
        if cfg.reserve:
            cons.append(v["e"][1:] + v["res"] >= p["reserve"])
            pen = max(cfg.voll_per_j) if cfg.reserve_penalty_per_j is None else cfg.reserve_penalty_per_j
            cost = cost + pen / pr * cp.sum(v["res"])
        self.prob = cp.Problem(cp.Minimize(cost), cons)

    def solve(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j, p_imp_max_w,
              p_exp_max_w, jobs=(), p_def_max_w=None, reserve_j=None):
        """Solve one instance; returns the optimal cost [price units] (raises if not optimal)."""
        cfg, p, n, pu, eu, pr = self.cfg, self.par, self.cfg.horizon, self.pu, self.eu, self.pr
        p["e0"].value = float(e0_j) / eu
        p["pv"].value, p["dem"].value = np.asarray(pv_avail_w, float) / pu, np.asarray(demand_w, float) / pu
        p["c_imp"].value = np.asarray(import_price_per_j, float) / pr
        p["c_exp"].value = np.asarray(export_price_per_j, float) / pr
        p["imp_max"].value, p["exp_max"].value = np.asarray(p_imp_max_w) / pu, np.asarray(p_exp_max_w) / pu
        def_max = (np.full(n, cfg.p_def_max_w) if p_def_max_w is None else np.asarray(p_def_max_w, float)) / pu
        mask = np.zeros(p["def_max"].shape)
        need = np.zeros(p["need"].shape)
        steps = np.arange(n)
        live = [j for j in jobs if j["start"] < n and j["end"] > 0 and j["energy"] > 0]
        for j, job in enumerate(live):
            mask[:, j] = (steps >= job["start"]) & (steps < job["end"])
            # what can still go in after the horizon is not required within it
            need[j] = max(job["energy"] / eu - max(job["end"] - n, 0) * def_max.max(), 0.0)
        p["def_max"].value = mask * def_max[:, None]
        p["def_tot"].value = def_max
        p["need"].value = need
        none = -1e3 * cfg.e_max_j / eu   # "no reserve": a bound that never binds
        p["reserve"].value = np.full(n, none) if reserve_j is None else np.where(
            np.isfinite(reserve_j), np.asarray(reserve_j) / eu, none)
        self.prob.solve(solver=self.cp.CLARABEL)
        if self.prob.status != self.cp.OPTIMAL:
            raise RuntimeError(f"cvxpy status {self.prob.status}")
        return float(self.prob.value) * self.cu


def instances(cfg, n_ticks, days, scaling):
    """Rolling instances ``(t, window kwargs)`` over real site days (jobs split from load3)."""
    from picogrid.models.scenario import build_bench_days

    per_day = 288
    frame = build_bench_days("2013-07-01", days, per_day, scaling)
    data = evaluate.DayData(frame, per_day, cfg.dt_s)
    c = data.cols
    jobs = [{"start": j["start"] + d * per_day, "end": j["end"] + d * per_day, "energy": j["energy"]}
            for d in range(days) for j in data.jobs[d]]
    truth = policies.DayTruth(pv_avail_w=c["pv_available_w"],
                              demand_w=np.column_stack([c[k] for k in LOAD_SERIES]),
                              import_price_per_j=c["import_price_per_j"],
                              export_price_per_j=c["export_price_per_j"],
                              e0_j=0.5 * (cfg.e_min_j + cfg.e_max_j), jobs=jobs)
    return truth


def gross_cost(terms):
    return (terms["import_cost"] + terms["export_revenue"] + terms["shedding_cost"] + terms["cycling_cost"])


def bench_horizon(base_cfg, n, ticks, cvx_ticks, scaling):
    def add_gap(solver, objective, optimum, scale):
        """A plan's cost gap to the exact optimum, per gross cost and per |optimum|."""
        gaps[solver].append((objective - optimum) / scale)
        gaps[solver + "_abs"].append((objective - optimum) / abs(optimum))

    # job slots: two jobs a day, for every day the horizon touches; one scenario: the model of
    # docs/design.md §4 that cvxpy states (a site's scenario plan is S copies of it, S times the size)
    cfg = base_cfg.replace(horizon=n, n_jobs=2 * (int(np.ceil(n / 288)) + 1), scenario_weights=None,
                           scenario_quantiles=None, scenario_energy_spread=None)
    days = int(np.ceil((ticks + n) / 288)) + 1
    truth = instances(cfg, ticks, days, scaling)
    # The rolling instances and their exact optima first, then each solver alone over the same
    # list: the edge runs one solver, and interleaving them let each evict the others' caches
    # (lp_warm measured 4.4 ms p50 interleaved, 2.4 ms alone, N = 288).
    times = {"osqp": [], "lp_warm": [], "lp_warm_again": [], "cvxpy": [], "highs": [], "pymgrid": []}
    runs, exacts = [], []
    e = truth.e0_j
    ledger = JobLedger(truth.jobs)
    for t in range(ticks):
        w = truth.window(t, n, cfg, ledger.delivered_j)
        t0 = time.perf_counter()
        exact = policies.solve_perfect_foresight(cfg, e, **w)
        times["highs"].append(time.perf_counter() - t0)
        runs.append((e, w))
        exacts.append((exact.objective, gross_cost(exact.objective_terms)))
        # advance along the exact plan, and the jobs with it
        e = float(exact.plan["e"][1])
        ledger.deliver(t, float(exact.plan["p_def"][0].sum()) * cfg.dt_s, cfg.dt_s)
    gaps = {k: [] for k in ("osqp", "osqp_abs", "lp_warm", "lp_warm_abs", "cvxpy", "cvxpy_abs")}
    counts = {}
    for solver, key in (("osqp", "osqp"), ("highs", "lp_warm")):
        ctrl = MpcController(cfg.replace(solver=solver))    # the site file may pick either
        iters, statuses = [], {}
        for (e, w), (optimum, scale) in zip(runs, exacts):
            t0 = time.perf_counter()
            d = ctrl.solve(e, **w)
            times[key].append(time.perf_counter() - t0)
            iters.append(d.iterations)
            statuses[d.status.split(":")[0]] = statuses.get(d.status.split(":")[0], 0) + 1
            if d.ok:
                add_gap(key, d.objective, optimum, scale)
        counts[key] = iters, statuses
    # the warm LP's floor: an instance solved again at once (its basis already optimal, nothing
    # changed, no pivot), i.e. HiGHS's fixed cost per run plus our code around it
    again_pivots = []
    for e, w in runs[:REPEAT_TICKS]:
        ctrl.solve(e, **w)
        t0 = time.perf_counter()
        again_pivots.append(ctrl.solve(e, **w).iterations)
        times["lp_warm_again"].append(time.perf_counter() - t0)
    cvx, model = None, ctrl.model      # the same QpModel in either solver mode
    for (e, w), (optimum, scale) in zip(runs[:cvx_ticks], exacts):
        first = cvx is None
        if first:
            t_build = time.perf_counter()
            cvx = CvxpyMpc(cfg, model.penalty_per_j(w["import_price_per_j"], w["export_price_per_j"]))
        t0 = time.perf_counter()
        v = cvx.solve(e, **w)
        if first:   # the first solve compiles the DPP problem: reported apart
            t_build = time.perf_counter() - t_build
        else:
            times["cvxpy"].append(time.perf_counter() - t0)
        add_gap("cvxpy", v, optimum, scale)
    if n <= PYMGRID_MAX_N:
        pm = PymgridMpc(cfg)
        for e, w in runs[:cvx_ticks]:
            t0 = time.perf_counter()
            pm.solve(e, **w)
            times["pymgrid"].append(time.perf_counter() - t0)
    ms = {k: 1e3 * np.array(v) for k, v in times.items()}
    pct = lambda a, q: float(np.percentile(a, q))
    print(f"N={n:5d} ({n * cfg.dt_s / 3600:g} h), {ticks} ticks (cvxpy {min(cvx_ticks, ticks)}; "
          f"its build + first solve with DPP compile {t_build:.1f} s not in its p50/p99)")
    for k in ("osqp", "lp_warm", "cvxpy", "highs") + (("pymgrid",) if len(ms["pymgrid"]) else ()):
        print(f"  {k:7s} p50 {pct(ms[k], 50):9.2f} ms  p99 {pct(ms[k], 99):9.2f} ms")
    for k in ("osqp", "lp_warm"):
        extra = (f"   pymgrid/{k} {pct(ms['pymgrid'], 50) / pct(ms[k], 50):6.1f}x" if len(ms["pymgrid"]) else "")
        print(f"  ratio p50: cvxpy/{k} {pct(ms['cvxpy'], 50) / pct(ms[k], 50):6.1f}x   "
              f"highs/{k} {pct(ms['highs'], 50) / pct(ms[k], 50):6.2f}x{extra}")
    iters, statuses = counts["osqp"]
    print(f"  osqp iterations p50 {int(np.median(iters))} max {max(iters)}; statuses {statuses}")
    pivots, statuses = counts["lp_warm"]
    print(f"  lp_warm simplex pivots p50 {int(np.median(pivots))} max {max(pivots)}; statuses {statuses}")
    print(f"  lp_warm floor: the same instance solved again p50 {pct(ms['lp_warm_again'], 50):.2f} ms "
          f"over {len(ms['lp_warm_again'])} instances (pivots max {max(again_pivots)})")
    for k in ("osqp", "lp_warm", "cvxpy"):
        g, ga = 100 * np.abs(gaps[k]), 100 * np.abs(gaps[k + "_abs"])
        print(f"  {k:7s} gap to exact: median {np.median(g):.4f} % p99 {pct(g, 99):.4f} % max {g.max():.4f} % "
              f"of gross cost; median {np.median(ga):.4f} % max {ga.max():.4f} % of |optimum|")
    return {"ms": ms, "gaps": gaps, "iters": counts["osqp"][0]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="picogrid bench mpc", description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=200, help="rolling ticks per horizon (default 200)")
    ap.add_argument("--cvxpy-ticks", type=int, default=20, help="of which solved by cvxpy too (default 20)")
    ap.add_argument("--horizons", default=",".join(map(str, HORIZONS)), help="comma-separated N")
    ap.add_argument("--eps", type=float, default=None, help="override the site's OSQP eps_abs = eps_rel")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    # one warning per inaccurate solve would bury the table (the counts are in 'statuses')
    logging.getLogger("picogrid.edge.optimizer.optimize").setLevel(logging.ERROR)
    site, cfg, scaling = evaluate.load_site("site")
    # the site's values as absolute prices: the cvxpy statement prices every tick alike (the
    # home tariff stays far below its values of lost load, so the floor never moves them)
    cfg = cfg.replace(price_scale_per_j=None)
    if args.eps:
        cfg = cfg.replace(eps_abs=args.eps, eps_rel=args.eps)
    print(f"site profile (its solver: {cfg.solver}), dt={cfg.dt_s:g} s, OSQP eps_abs={cfg.eps_abs:g} eps_rel={cfg.eps_rel:g} "
          f"rho={cfg.rho:g} check_termination={cfg.check_termination}, {cfg.n_jobs} job slots, "
          f"reserve {'on' if cfg.reserve else 'off'}")
    t0 = time.perf_counter()
    for n in (int(x) for x in args.horizons.split(",")):
        bench_horizon(cfg, n, args.ticks, args.cvxpy_ticks, scaling)
    print(f"bench took {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    main()
