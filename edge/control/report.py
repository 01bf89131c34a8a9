"""End-of-day report: the MPC and the naive rule as measured on the bench, against the optimum.

Both policies ran on identical benches at the same time; their figures are the boards'
energy counters, costed with the optimiser's objective terms: import cost - export revenue
+ value of lost load x shed energy + cycling cost - terminal value of the stored energy
+ the deferrable value of job energy not delivered in its window (jobs whose window closed
within the run). The perfect-foresight optimum is the same model solved on the day's true data
(:mod:`picogrid.edge.optimizer.policies`) from the storage energy the bench started with; the naive
rule on that model is reported too, to show how far the model is from the bench.
"""

from dataclasses import dataclass, field

import numpy as np

from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer import policies
from picogrid.edge.sources.deferrable import JobLedger
from picogrid.edge.sources.signals import LOADS


@dataclass
class Deferrable:
    """The deferrable load of a run: its board, rating [W] and the day's jobs (lab feed format)."""

    board: str | None = None
    rating_w: float = 0.0
    jobs: list = field(default_factory=list)

    def closed_jobs(self, n_ticks):
        """Jobs whose window closed within ``n_ticks``: the ones a run of that length is scored on."""
        return [j for j in self.jobs if j["end"] <= n_ticks] if self.board else []


def _jobs_delivered(rows, deferrable, dt):
    """(power that went to jobs per tick [W] (NaN-free), shortfall of the closed jobs [J])."""
    jobs_w = np.nan_to_num(_col(rows, "deferrable_w")) if rows and "deferrable_w" in rows[0] else np.zeros(len(rows))
    ledger = JobLedger(deferrable.closed_jobs(len(rows)))
    for t, w in enumerate(jobs_w):
        ledger.deliver(t, w * dt, dt)
    return jobs_w, ledger.shortfall_j()


def _col(rows, name, sign=1.0):
    """A dispatch column as floats; a tick without a measurement is NaN, never 0."""
    return np.array([sign * r[name] if r[name] is not None else np.nan for r in rows], float)


def with_gaps_filled(rows, truth):
    """``rows`` (dispatch rows by tick) with a row for every tick up to the last: a tick that
    was never metered (the edge was down: a resumed run) gets the day's demand and prices from
    ``truth`` and no measurement (None), so it counts as unmetered, never as free."""
    if not rows:
        return rows
    by_tick = {int(r["tick"]): r for r in rows}
    out = []
    for t in range(max(by_tick) + 1):
        if t in by_tick:
            out.append(by_tick[t])
            continue
        row = {c: None for c in rows[0]}
        row["tick"] = t
        for c in ("pv_available_w", "load1_demand_w", "load2_demand_w", "load3_demand_w",
                  "import_price_per_j", "export_price_per_j"):
            if c in truth:
                row[c] = float(truth[c][t])
        out.append(row)
    return out


def incomplete_ticks(rows):
    """Ticks whose energy is unknown on some board (a missed ack, a reboot)."""
    keys = ("grid_w", "storage_w", "pv_w") + tuple(l + "_w" for l in LOADS)
    return [r["tick"] for r in rows if any(r[k] is None for k in keys)]


def measured_costs(rows, cfg, deferrable=None):
    """Cost terms of a measured day from its dispatch rows.

    A term is NaN when a tick lacks the measurement it needs: an unmetered tick is never
    counted as free (or as fully shed), so a bench that missed acks cannot look better.
    ``deferrable`` (:class:`Deferrable`): the deferrable board's energy that went to jobs is
    not served demand, and job energy not delivered costs the deferrable value of lost load.
    The values are ``cfg``'s resolved for the day's prices (:func:`picogrid.edge.optimizer.economics.resolve`).
    """
    deferrable = deferrable or Deferrable()
    dt = cfg.dt_s
    grid = _col(rows, "grid_w")
    imp = _col(rows, "import_price_per_j")
    exp = _col(rows, "export_price_per_j")
    demand = np.stack([_col(rows, l + "_demand_w") for l in LOADS], axis=1)
    served = np.stack([_col(rows, l + "_w", -1.0) for l in LOADS], axis=1)
    jobs_w, shortfall_j = _jobs_delivered(rows, deferrable, dt)
    if deferrable.board:
        served[:, LOADS.index(deferrable.board)] -= jobs_w
    # the day's values of lost load and of stored energy, on the prices the day had
    econ = economics.resolve(cfg, imp, exp)
    return economics.day_costs(econ, grid, _col(rows, "storage_w"), demand, served, rows[-1]["storage_energy_j"],
                               shortfall_j, imp, exp)


def model_baselines(truth, cfg, e0_j, deferrable=None):
    """Naive rule and perfect-foresight optimum on the model (``policies.DayResult`` each),
    with the deferrable jobs of :class:`Deferrable` delivered by its board's headroom."""
    deferrable = deferrable or Deferrable()
    n = len(truth["pv_available_w"])
    demand = np.stack([truth[l + "_demand_w"] for l in LOADS], axis=1)
    jobs = deferrable.closed_jobs(n)
    def_limit = (np.maximum(deferrable.rating_w - demand[:, LOADS.index(deferrable.board)], 0.0)
                 if jobs else None)
    day = policies.DayTruth(pv_avail_w=truth["pv_available_w"], demand_w=demand,
                            import_price_per_j=truth["import_price_per_j"],
                            export_price_per_j=truth["export_price_per_j"], e0_j=e0_j,
                            jobs=jobs or None, p_def_max_w=def_limit)
    day_cfg = cfg.replace(horizon=n, n_jobs=max(cfg.n_jobs, len(jobs)))
    naive = policies.simulate_policy(policies.naive_policy(day, day_cfg), day, day_cfg)
    perfect_foresight_plan = policies.solve_perfect_foresight(day_cfg, e0_j, day.pv_avail_w, demand,
                                        day.import_price_per_j, day.export_price_per_j,
                                        jobs=jobs or None, p_def_max_w=def_limit)
    perfect_foresight = policies.simulate_policy(policies.perfect_foresight_policy(perfect_foresight_plan), day, day_cfg)
    return naive, perfect_foresight


def baseline_rows(result, truth, dt_s):
    """Dispatch rows (store schema) of a simulated policy, for the dashboard; ``dt_s`` [s]."""
    rows = []
    for t in range(len(result.grid_w)):
        row = {"pv_w": result.pv_w[t], "storage_w": result.storage_w[t], "grid_w": result.grid_w[t],
               "storage_energy_j": result.e_j[t + 1],
               "pv_available_w": truth["pv_available_w"][t],
               "import_price_per_j": truth["import_price_per_j"][t],
               "export_price_per_j": truth["export_price_per_j"][t]}
        for k, l in enumerate(LOADS):
            row[l + "_w"] = -result.load_served_w[t, k]
            row[l + "_demand_w"] = truth[l + "_demand_w"][t]
        row["cost"] = economics.bill(result.grid_w[t] * dt_s, truth["import_price_per_j"][t],
                                     truth["export_price_per_j"][t])
        row["deferrable_w"] = result.deferrable_w[t] if result.deferrable_w is not None else 0.0
        rows.append({k: float(v) for k, v in row.items()})
    return rows


def summary(rows, naive_rows, truth, cfg, e0_j, solve_times_s, statuses, solve_cpu_s=(), deferrable=None,
            mpc_perfect_forecast_rows=None, mpc_perfect_forecast_statuses=()):
    """The end-of-day summary: energies [J], costs [price units], solve times [ms].

    ``rows`` and ``naive_rows`` are the measured dispatch rows of the MPC and naive benches;
    ``mpc_perfect_forecast_rows`` those of the MPC with perfect forecasts (a third bench) or ``None``, and
    ``mpc_perfect_forecast_statuses`` its decisions' statuses (a tick not ``solved*`` makes
    ``savings_capture_vs_mpc_perfect_forecast`` NaN: that bench is then no reference);
    ``deferrable`` (:class:`Deferrable`) the run's deferrable load and jobs.
    Returns (summary dict with unit-suffixed keys, perfect_foresight DayResult).
    """
    dt = cfg.dt_s
    deferrable = deferrable or Deferrable()
    naive_model, perfect_foresight = model_baselines(truth, cfg, e0_j, deferrable)
    mpc = measured_costs(rows, cfg, deferrable)
    jobs_w, shortfall_j = _jobs_delivered(rows, deferrable, dt)
    s = {"deferrable_jobs": len(deferrable.closed_jobs(len(rows))),
         "deferrable_energy_j": float(dt * jobs_w.sum()), "deferrable_shortfall_j": shortfall_j}
    # energies over the ticks each board measured: a missed ack or a reboot is neither served
    # nor shed load, nor free import (ticks_incomplete_mpc says how many ticks lack a reading)
    for l in LOADS:
        served_w = _col(rows, l + "_w", -1.0)
        metered = ~np.isnan(served_w)
        served = float(dt * served_w[metered].sum())
        if l == deferrable.board:
            served -= float(dt * jobs_w[metered].sum())
        demand = float(dt * _col(rows, l + "_demand_w")[metered].sum())
        s[l + "_served_energy_j"] = served
        s[l + "_shed_energy_j"] = max(demand - served, 0.0)
    grid = _col(rows, "grid_w")
    s["import_energy_j"] = float(dt * np.nansum(np.maximum(grid, 0)))
    s["export_energy_j"] = float(dt * np.nansum(np.maximum(-grid, 0)))
    s["pv_energy_j"] = float(dt * np.nansum(_col(rows, "pv_w")))
    s["pv_available_energy_j"] = float(dt * np.sum(truth["pv_available_w"]))
    s["storage_throughput_j"] = float(dt * np.nansum(np.abs(_col(rows, "storage_w"))))
    s["cost_mpc"] = mpc["total"]
    s["bill_mpc"] = mpc["import_cost"] - mpc["export_revenue"]
    if len(naive_rows) == len(rows):
        naive = measured_costs(naive_rows, cfg, deferrable)
        s["cost_naive"] = naive["total"]
        s["bill_naive"] = naive["import_cost"] - naive["export_revenue"]
    else:   # the comparison bench did not finish the day: no measured naive figure
        s["cost_naive"] = s["bill_naive"] = float("nan")
    s["cost_naive_model"] = naive_model.costs["total"]
    s["cost_perfect_foresight"] = perfect_foresight.costs["total"]
    s["bill_perfect_foresight"] = perfect_foresight.costs["import_cost"] - perfect_foresight.costs["export_revenue"]
    # headline: both policies measured, against the model's optimum (the only optimum there is);
    # the all-model figure beside it shows how much of that is the bench, not the policy
    s["savings_capture"] = economics.savings_capture(s["cost_naive"], s["cost_mpc"], s["cost_perfect_foresight"])
    s["savings_capture_vs_model_naive"] = economics.savings_capture(
        s["cost_naive_model"], s["cost_mpc"], s["cost_perfect_foresight"])
    if mpc_perfect_forecast_rows is not None:
        # all three measured: the bench's own losses are in every cost, not only in two of three
        s["cost_mpc_perfect_forecast"] = s["bill_mpc_perfect_forecast"] = float("nan")
        if len(mpc_perfect_forecast_rows) == len(rows):
            perfect = measured_costs(mpc_perfect_forecast_rows, cfg, deferrable)
            s["cost_mpc_perfect_forecast"] = perfect["total"]
            s["bill_mpc_perfect_forecast"] = perfect["import_cost"] - perfect["export_revenue"]
        s["ticks_incomplete_mpc_perfect_forecast"] = len(incomplete_ticks(mpc_perfect_forecast_rows))
        s["ticks_fallback_mpc_perfect_forecast"] = sum(1 for st in mpc_perfect_forecast_statuses
                                                        if not st.startswith("solved"))
        # a tick decided otherwise (no true future, or the solver's fallback) leaves that bench
        # no reference: its costs stay as measured, the capture against it is NaN
        s["savings_capture_vs_mpc_perfect_forecast"] = float("nan") if s["ticks_fallback_mpc_perfect_forecast"] else \
            economics.savings_capture(s["cost_naive"], s["cost_mpc"], s["cost_mpc_perfect_forecast"])
    s["ticks_incomplete_mpc"] = len(incomplete_ticks(rows))
    s["ticks_incomplete_naive"] = len(incomplete_ticks(naive_rows))
    ms = 1e3 * np.asarray(solve_times_s)
    s["solve_time_p50_ms"] = float(np.percentile(ms, 50))
    s["solve_time_p99_ms"] = float(np.percentile(ms, 99))
    if len(solve_cpu_s):
        cpu = 1e3 * np.asarray(solve_cpu_s)
        s["solve_cpu_p50_ms"] = float(np.percentile(cpu, 50))
        s["solve_cpu_p99_ms"] = float(np.percentile(cpu, 99))
    s["ticks_solved"] = sum(1 for st in statuses if st.startswith("solved"))
    s["ticks_fallback"] = sum(1 for st in statuses if not st.startswith("solved"))
    res = [abs(r["balance_residual_j"]) for r in rows if r["balance_residual_j"] is not None]
    s["balance_residual_max_j"] = max(res) if res else float("nan")
    s["ticks_metered"] = len(res)
    return s, perfect_foresight
