"""EMHASS itself as a policy of ``picogrid evaluate``: its day-ahead plan and its naive MPC.

EMHASS (David HERNANDEZ et al., MIT; https://github.com/davidusb-geek/emhass) is the optimiser
most Home Assistant users run for their batteries and deferrable loads. This module runs its own
:class:`emhass.optimization.Optimization` (pinned ``emhass==0.18.7``, extra ``compare``) without
Home Assistant and without network: the three config dicts are built from its shipped
``data/config_defaults.json`` and ``data/associations.csv`` (``emhass.utils.build_config``,
``build_secrets(no_response=True)``, ``build_params``, ``get_yaml_parse``, as its own tests build
them), then the values below are set from our site's :class:`MpcConfig`. Two modes:

- ``dayahead`` (:func:`dayahead_policy`): one ``perform_dayahead_forecast_optim`` at tick 0 over
  the whole day, on the forecast window ``mpc_own`` plans on at tick 0 (or the true day); the
  plan's battery power and deferrable power are followed open loop, loads are served as they
  come, PV runs free except where the plan curtailed it, the grid balances
  (:func:`picogrid.edge.optimizer.policies.day_ahead_policy`, as ``dayahead_own``);
- ``mpc`` (:class:`EmhassMpc`): ``perform_naive_mpc_optim`` every tick over a fixed horizon of
  ``cfg.horizon`` steps (the window :func:`picogrid.edge.optimizer.policies.pad_day_end` pads
  past the day's end), its first step applied. The horizon never changes, so EMHASS keeps its
  compiled cvxpy problem and only re-sets its parameters (a changed horizon length rebuilds it).

Conventions of EMHASS that differ from ours, and how they are mapped:

- **Units.** EMHASS takes powers in W, battery capacity in Wh, the step as a whole number of
  seconds (``optimization_time_step``; it reads ``Timedelta.seconds``) and prices per kWh. Our
  prices are per J. The step is the site's tick when it is a whole number of minutes (site:
  300 s); otherwise (lab: 2.5 s, not a whole second) EMHASS runs on a nominal 60 s step and every
  energy (capacity, job energy) is multiplied and every price divided by ``s = 60 / dt_s``, an
  exact rescaling of the same LP (cost per step ``P · dt_s · price_per_j`` is unchanged).
  Prices: ``price_per_kwh = price_per_j · 3.6e6 / s``.
- **Battery power limits.** EMHASS bounds each of its limits twice
  (``optimization.py``: ``_initialize_decision_variables`` bounds the bus-side powers by
  ``battery_*_power_max``; ``_add_battery_constraints`` bounds discharge by ``eta_dis · max`` and
  charge by ``max / eta_ch``): the discharge limit then acts on the cell side (bus-side discharge
  ``<= eta_dis · max``) and the charge limit on the bus side (``<= max``). Ours are bus side, so
  they are passed as ``p_dis_max_w / eta_dis`` and ``p_ch_max_w``. (Passing the charge limit as
  ``p_ch_max_w · eta_ch``, the cell side, cut the lab's charge to 1.86 W of 2 W: measured, the
  lab's three perfect-forecast days then cost 0.13 c more than our LP.)
- **Day-end value.** ``soc_final`` defaults to ``soc_init`` (the plan must end where it began),
  with a penalty per Wh missed. Ours credits the energy left at the terminal value. Mapped:
  ``soc_final = e_min / e_max`` and ``battery_soc_final_reward_factor`` such that each Wh above
  it earns the (resolved) terminal value (EMHASS pays ``factor · last import price`` per kWh).
- **Storage bounds.** Its SoC bounds are hard (a start outside them is walked back in); ours are
  soft at a high penalty. The lab's ESR discharge cap (``p_dis_per_e_max_per_s``, discharge at
  most 0.1 W per stored J) has no EMHASS counterpart: the plant clips what the plan asks.
- **Loads.** EMHASS serves its one load always (no shedding, no value of lost load): the three
  loads are summed into it. The plant sheds only what the grid cannot cover.
- **Grid limits** are baked into its problem when it is built (constants, not parameters). A
  step whose import limit is 0 (an outage, or the padding past the day's end) enters instead as
  an import price of ``IMPORT_BLOCK_FACTOR`` times the dearest price of the window.
- **Import/export exclusivity and charge/discharge exclusivity** are binaries in EMHASS (a MILP);
  ours is an LP. Its default relative MIP gap is 1 % (``lp_solver_mip_rel_gap = 0.01``): kept in
  ``picogrid evaluate`` (as a user runs it), 0 in the equality test.
- **Battery to grid.** Its default ``set_nodischarge_to_grid = true`` forbids exporting stored
  energy; our plant allows it: set to false.
- **Curtailment** is off by default (``compute_curtailment = false``): set on, as ours curtails.
- **Deferrable loads.** EMHASS's deferrable load ``k`` runs ``operating_hours`` at its nominal
  power inside a window of steps, on/off at nominal power by default
  (``treat_deferrable_load_as_semi_cont = true``). Each of our job slots (``cfg.n_jobs``) is one
  EMHASS deferrable load of nominal power ``p_def_max_w``, its window the job's
  ``[start, end)`` and its energy the job's remaining energy (capped at what the window can still
  take), ``operating_hours = energy / nominal``. Ours is continuous from 0 to ``p_def_max_w``:
  ``semi_cont=False`` (default) maps that; ``semi_cont=True`` runs EMHASS's on/off default, with
  the energy rounded up to whole steps at nominal power. The jobs' windows do not overlap in the
  evaluation days, so the shared limit ``p_def_max_w`` holds. An unused slot gets an empty
  window (the load cannot run).
- **Cycling cost** is its ``weight_battery_charge`` / ``weight_battery_discharge`` per kWh of bus
  side power, = our ``cycle_cost_per_j``. EMHASS bakes these weights into its problem when it
  builds it, so they cannot follow each window's prices as ours do
  (:func:`picogrid.edge.optimizer.economics.resolve`): the MPC keeps the site file's value as
  stated (at its ``price_scale_per_j``); the day-ahead plan, built once a day, gets the value
  resolved for its tick-0 window. The terminal value is a parameter there (the reward above):
  resolved for each window, as ours.
- **Threads.** ``num_threads`` stays at its default 0 (HiGHS's own choice). Passing 1 makes every
  EMHASS solve fail (``Solver 'HIGHS' failed``, relaxed retry too) once our own highspy solves
  have started HiGHS's global thread scheduler in the same process (measured on the lab day).

Solve time is the wall-clock of the ``perform_*`` call plus the building of its input frame.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import time

import numpy as np
from picogrid.edge.optimizer import economics, policies
from picogrid.edge.optimizer.decision import Decision

log = logging.getLogger(__name__)

#: an import limit of 0 enters EMHASS as an import price this many times the window's dearest
IMPORT_BLOCK_FACTOR = 100.0
#: the pinned version (pyproject extra ``compare``)
EMHASS_VERSION = "0.18.7"
_LOAD_COST, _PROD_PRICE = "unit_load_cost", "unit_prod_price"


def _emhass_params(logger):
    """EMHASS's (retrieve_hass_conf, optim_conf, plant_conf) from its shipped defaults, offline."""
    import emhass
    from emhass import utils

    root = pathlib.Path(emhass.__file__).parent
    conf = {"data_path": root / "data", "root_path": root,
            "defaults_path": root / "data" / "config_defaults.json",
            "associations_path": root / "data" / "associations.csv"}

    async def build():
        config = await utils.build_config(conf, logger, conf["defaults_path"])
        _, secrets = await utils.build_secrets(conf, logger, no_response=True)
        return await utils.build_params(conf, secrets, config, logger)

    params = asyncio.run(build())
    params.pop("params_secrets", None)      # the placeholder Home Assistant URL and token: unused
    return utils.get_yaml_parse(params, logger), conf


def time_scale(dt_s):
    """``(step_s, s)``: EMHASS's step [s] for our tick ``dt_s`` and the energy factor ``s``."""
    if dt_s >= 60 and float(dt_s) % 60 == 0:
        return int(dt_s), 1.0
    return 60, 60.0 / float(dt_s)


class EmhassPlanner:
    """One EMHASS :class:`~emhass.optimization.Optimization` for a site config and a horizon.

    Parameters
    ----------
    cfg : MpcConfig
    n_steps : int
        The horizon [steps] (fixed: a different length would rebuild EMHASS's problem).
    mip_gap : float or None
        ``lp_solver_mip_rel_gap``; ``None`` keeps EMHASS's default (0.01).
    semi_cont : bool
        EMHASS's on/off deferrable loads (its default) instead of our continuous one.
    threads : int
        ``num_threads`` of its solver (0, its default: HiGHS's choice; see the module docstring).
    cycle_cost_per_j : float or None
        Cycling cost [price/J of bus-side power] for its battery weights, which EMHASS bakes into
        its problem when it builds it; ``None``: the site file's ``cycle_cost_per_j`` as stated
        (at its ``price_scale_per_j``).
    limits_as_given : bool
        Pass our bus-side discharge limit unconverted, as a user reading it off a data sheet would
        (only to measure that convention, :func:`convention_effects`).
    """

    def __init__(self, cfg, n_steps, mip_gap=None, semi_cont=False, threads=0, cycle_cost_per_j=None,
                 limits_as_given=False):
        import pandas as pd
        from emhass.optimization import Optimization

        self._pd = pd
        self.config, self.n = cfg, int(n_steps)
        self.logger = logging.getLogger("picogrid.edge.evaluation.emhass")
        if not self.logger.level:
            self.logger.setLevel(logging.ERROR)
        (rh, oc, pc), self.emhass_conf = _emhass_params(self.logger)
        self.step_s, self.s = time_scale(cfg.dt_s)
        self.semi_cont = bool(semi_cont)
        n_jobs = max(int(cfg.n_jobs), 0)
        cycle = cfg.cycle_cost_per_j if cycle_cost_per_j is None else cycle_cost_per_j
        cycle_kwh = float(cycle) * 3.6e6 / self.s
        rh = dict(rh, optimization_time_step=pd.Timedelta(seconds=self.step_s), time_zone=rh["time_zone"])
        oc = dict(oc)
        oc.update({
            "costfun": "profit", "set_use_battery": True, "set_use_pv": True,
            "set_nodischarge_to_grid": False, "set_nocharge_from_grid": False, "set_total_pv_sell": False,
            "num_threads": int(threads), "number_of_deferrable_loads": n_jobs,
            "nominal_power_of_deferrable_loads": [float(cfg.p_def_max_w)] * n_jobs,
            "minimum_power_of_deferrable_loads": [0.0] * n_jobs,
            "cost_forecast_per_deferrable_load": [None] * n_jobs,
            "is_electric_load": [True] * n_jobs,
            "operating_hours_of_each_deferrable_load": [0] * n_jobs,
            "treat_deferrable_load_as_semi_cont": [self.semi_cont] * n_jobs,
            "set_deferrable_load_single_constant": [False] * n_jobs,
            "set_deferrable_startup_penalty": [0.0] * n_jobs,
            "deferrable_load_max_cost": [0.0] * n_jobs,
            "start_timesteps_of_each_deferrable_load": [0] * n_jobs,
            "end_timesteps_of_each_deferrable_load": [0] * n_jobs,
            "set_deferrable_max_startups": [0] * n_jobs,
            "def_minimum_on_time": [0] * n_jobs, "def_minimum_off_time": [0] * n_jobs,
            "weight_battery_charge": cycle_kwh, "weight_battery_discharge": cycle_kwh,
            "battery_soc_final_reward_factor": 1.0,   # set per solve (the terminal value)
            "delta_forecast_daily": pd.Timedelta(seconds=self.n * self.step_s),
        })
        if mip_gap is not None:
            oc["lp_solver_mip_rel_gap"] = float(mip_gap)
        self.mip_gap = float(oc["lp_solver_mip_rel_gap"])
        wh = self.s / 3600.0
        pc = dict(pc)
        pc.update({
            "maximum_power_from_grid": float(cfg.p_imp_max_w), "maximum_power_to_grid": float(cfg.p_exp_max_w),
            "inverter_is_hybrid": False, "compute_curtailment": True, "number_of_batteries": 1,
            "battery_discharge_power_max": float(cfg.p_dis_max_w / (1.0 if limits_as_given else cfg.eta_dis)),
            "battery_charge_power_max": float(cfg.p_ch_max_w),
            "battery_discharge_efficiency": float(cfg.eta_dis), "battery_charge_efficiency": float(cfg.eta_ch),
            "battery_nominal_energy_capacity": float(cfg.e_max_j * wh),
            "battery_minimum_state_of_charge": float(cfg.e_min_j / cfg.e_max_j),
            "battery_maximum_state_of_charge": 1.0,
            "battery_target_state_of_charge": float(cfg.e_min_j / cfg.e_max_j),
        })
        self.optim_conf, self.plant_conf = oc, pc
        self.opt = Optimization(rh, oc, pc, _LOAD_COST, _PROD_PRICE, "profit", self.emhass_conf, self.logger,
                                num_timesteps=self.n)
        self.index = pd.date_range("2013-07-01", periods=self.n, freq=pd.Timedelta(seconds=self.step_s),
                                   tz=rh["time_zone"])
        #: EMHASS's status of the last solve (``Optimal``, ``Optimal (Relaxed)``, ...)
        self.last_status = None

    def _jobs(self, jobs, p_def_max_w):
        """EMHASS's per-load (hours, start, end) of the open ``jobs`` (relative to step 0)."""
        cfg, n = self.config, self.n
        hours, start, end = [0.0] * cfg.n_jobs, [n] * cfg.n_jobs, [n] * cfg.n_jobs   # empty windows
        nominal = float(cfg.p_def_max_w)
        if not jobs or nominal <= 0:
            return hours, start, end
        lim = np.full(n, nominal) if p_def_max_w is None else np.minimum(np.asarray(p_def_max_w, float)[:n], nominal)
        for k, job in enumerate(list(jobs)[:cfg.n_jobs]):
            a, b = max(int(job["start"]), 0), min(int(job["end"]), n)
            room_j = float(np.sum(lim[a:b])) * cfg.dt_s if b > a else 0.0
            energy_j = min(float(job["energy"]), room_j)
            if energy_j <= 1e-9 * max(nominal * cfg.dt_s, 1e-12) or b <= a:
                continue
            steps = energy_j / (nominal * cfg.dt_s)
            if self.semi_cont:      # on/off at nominal power: whole steps
                steps = min(float(np.ceil(steps - 1e-9)), float(b - a))
            hours[k] = steps * self.step_s / 3600.0
            start[k], end[k] = a, b
        return hours, start, end

    def plan(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
             p_imp_max_w=None, jobs=None, p_def_max_w=None, mode="mpc"):
        """One EMHASS solve over ``n`` steps; ``(frame or None, solve_time_s)``.

        Arrays are our window's (length >= ``n``; ``demand_w`` [n, L]). ``mode``: ``'mpc'``
        (``perform_naive_mpc_optim``) or ``'dayahead'`` (``perform_dayahead_forecast_optim``).
        """
        pd, cfg, n = self._pd, self.config, self.n
        t0 = time.perf_counter()
        c_imp = np.asarray(import_price_per_j, float)[:n]
        c_exp = np.asarray(export_price_per_j, float)[:n]
        econ = economics.resolve(cfg, c_imp, c_exp)
        per_kwh = 3.6e6 / self.s
        load_cost = c_imp * per_kwh
        if p_imp_max_w is not None:
            blocked = np.asarray(p_imp_max_w, float)[:n] <= 0
            if blocked.any():
                load_cost = np.where(blocked, IMPORT_BLOCK_FACTOR * max(np.max(np.abs(load_cost)),
                                                                        np.max(np.abs(c_exp * per_kwh)), 1e-9),
                                     load_cost)
        prod_price = c_exp * per_kwh
        # EMHASS rewards each kWh above soc_final at factor x the last import price
        last = float(load_cost[-1])
        tv_kwh = float(econ.terminal_value_per_j) * per_kwh
        self.opt.optim_conf["battery_soc_final_reward_factor"] = tv_kwh / last if last > 0 and tv_kwh > 0 else 0.0
        pv = pd.Series(np.maximum(np.asarray(pv_avail_w, float)[:n], 0.0), index=self.index)
        load = pd.Series(np.maximum(np.asarray(demand_w, float).reshape(-1, cfg.n_loads)[:n], 0.0).sum(axis=1),
                         index=self.index)
        frame = pd.DataFrame({_LOAD_COST: load_cost, _PROD_PRICE: prod_price}, index=self.index)
        soc0 = float(np.clip(e0_j / cfg.e_max_j, cfg.e_min_j / cfg.e_max_j, 1.0))
        soc_final = cfg.e_min_j / cfg.e_max_j
        hours, start, end = self._jobs(jobs, p_def_max_w)
        self.opt.optim_conf["operating_hours_of_each_deferrable_load"] = hours
        self.opt.optim_conf["start_timesteps_of_each_deferrable_load"] = start
        self.opt.optim_conf["end_timesteps_of_each_deferrable_load"] = end
        try:
            if mode == "dayahead":
                res = self.opt.perform_dayahead_forecast_optim(frame, pv, load, soc_init=soc0, soc_final=soc_final)
            else:
                res = self.opt.perform_naive_mpc_optim(frame, pv, load, n, soc_init=soc0, soc_final=soc_final,
                                                       def_total_hours=hours, def_start_timestep=start,
                                                       def_end_timestep=end)
        except Exception as exc:     # noqa: BLE001  (any failure of the other project's code: no plan)
            log.warning("EMHASS %s solve raised %s: %s", mode, type(exc).__name__, exc)
            res = None
        self.last_status = getattr(self.opt, "optim_status", None)
        dt = time.perf_counter() - t0
        if res is None or len(res) == 0 or "P_batt" not in res or res["P_batt"].isna().any():
            return None, dt
        return res, dt

    def plan_arrays(self, res, demand_w):
        """Our plan dict (``p_dis``, ``p_ch``, ``p_imp``, ``p_exp``, ``p_pv``, ``p_load``, ``p_def``)
        of an EMHASS result frame."""
        n, cfg = self.n, self.config
        batt = res["P_batt"].to_numpy(float)
        defs = np.column_stack([res[f"P_deferrable{k}"].to_numpy(float) for k in range(cfg.n_jobs)]) \
            if cfg.n_jobs else np.zeros((n, 0))
        curt = res["P_PV_curtailment"].to_numpy(float) if "P_PV_curtailment" in res else np.zeros(n)
        return {"p_dis": np.maximum(batt, 0.0), "p_ch": np.maximum(-batt, 0.0),
                "p_imp": res["P_grid_pos"].to_numpy(float), "p_exp": -res["P_grid_neg"].to_numpy(float),
                "p_pv": res["P_PV"].to_numpy(float) - curt,
                "p_load": np.asarray(demand_w, float).reshape(-1, cfg.n_loads)[:n].copy(),
                "p_def": defs}


class EmhassMpc:
    """EMHASS's naive MPC (``perform_naive_mpc_optim``) re-planned every tick, fixed horizon.

    The interface of :class:`picogrid.edge.optimizer.optimize.MpcController` that
    :func:`picogrid.edge.optimizer.policies.mpc_policy` uses (``reset``, ``solve``).
    """

    def __init__(self, cfg, mip_gap=None, semi_cont=False):
        if cfg.horizon < 5:
            raise ValueError(f"EMHASS's naive MPC returns nothing under 5 steps, horizon {cfg.horizon}")
        self.config = cfg
        self.planner = EmhassPlanner(cfg, cfg.horizon, mip_gap, semi_cont)

    def reset(self):
        """Nothing to forget: EMHASS keeps its compiled problem, no state between ticks."""

    def solve(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
              p_imp_max_w=None, p_exp_max_w=None, jobs=None, p_def_max_w=None, **_ignored):
        """Plan with EMHASS and return the first step as a :class:`Decision`.

        ``status`` ``'emhass'`` (its status ``Optimal``), ``'emhass_<status>'`` for another plan
        it returned (e.g. ``emhass_optimal (relaxed)``) or ``'emhass_failed'`` (no plan: the
        battery holds, loads as demanded, PV free, no deferrable power).
        """
        cfg = self.config
        demand = np.asarray(demand_w, float).reshape(cfg.horizon, -1)
        res, dt = self.planner.plan(e0_j, pv_avail_w, demand, import_price_per_j, export_price_per_j,
                                    p_imp_max_w, jobs, p_def_max_w, mode="mpc")
        pv0 = float(max(np.asarray(pv_avail_w, float)[0], 0.0))
        if res is None:
            log.warning("EMHASS MPC ended %s: battery held", self.planner.last_status)
            return Decision(status="emhass_failed", solve_time_s=dt, iterations=0, objective=np.nan,
                            p_storage_w=0.0, p_grid_w=float(demand[0].sum() - pv0), pv_cap_w=pv0,
                            load_served_w=demand[0].copy(), p_deferrable_w=0.0)
        plan = self.planner.plan_arrays(res, demand)
        st = str(self.planner.last_status or "")
        label = "emhass" if st == "Optimal" else f"emhass_{st.lower()}"
        p_sto = float(plan["p_dis"][0] - plan["p_ch"][0])
        p_def = float(plan["p_def"][0].sum()) if plan["p_def"].size else 0.0
        curtailed = plan["p_pv"][0] < pv0 - 1e-6 * max(pv0, 1e-9)
        pv_cap = float(plan["p_pv"][0]) if curtailed else pv0
        return Decision(status=label, solve_time_s=dt, iterations=0, objective=np.nan,
                        p_storage_w=p_sto, p_grid_w=float(demand[0].sum() + p_def - pv_cap - p_sto),
                        pv_cap_w=pv_cap, load_served_w=demand[0].copy(), p_deferrable_w=p_def)


def dayahead_plan(window, truth, cfg, mip_gap=None, semi_cont=False, **planner_kw):
    """EMHASS's day-ahead plan of the day on the tick-0 ``window``: ``(Decision or None, solve_time_s)``.

    A new :class:`EmhassPlanner` of ``truth.n_steps`` steps (its cycling weights resolved for the
    window's prices; built once a day, as the plan is); its build is counted in the solve time.
    The :class:`Decision` has ``plan`` (our plan dict); ``None`` if EMHASS returned no plan.
    """
    n = truth.n_steps
    import emhass.optimization  # noqa: F401  (its import, seconds once, is not solve time)

    t0 = time.perf_counter()
    econ = economics.resolve(cfg, np.asarray(window["import_price_per_j"], float)[:n],
                             np.asarray(window["export_price_per_j"], float)[:n])
    planner = EmhassPlanner(cfg, n, mip_gap, semi_cont, cycle_cost_per_j=econ.cycle_cost_per_j, **planner_kw)
    demand = np.asarray(window["demand_w"], float).reshape(-1, cfg.n_loads)[:n]
    res, _ = planner.plan(truth.e0_j, np.asarray(window["pv_avail_w"], float)[:n], demand,
                          window["import_price_per_j"], window["export_price_per_j"],
                          window.get("p_imp_max_w"), window.get("jobs"), window.get("p_def_max_w"),
                          mode="dayahead")
    dt = time.perf_counter() - t0
    if res is None:
        log.warning("EMHASS day-ahead returned no plan (%s)", planner.last_status)
        return None, dt
    plan = planner.plan_arrays(res, demand)
    st = str(planner.last_status or "")
    return Decision(status="emhass" if st == "Optimal" else f"emhass_{st.lower()}", solve_time_s=dt,
                    iterations=0, objective=np.nan, p_storage_w=float(plan["p_dis"][0] - plan["p_ch"][0]),
                    p_grid_w=float(plan["p_imp"][0] - plan["p_exp"][0]), pv_cap_w=float(plan["p_pv"][0]),
                    load_served_w=plan["p_load"][0].copy(), plan=plan,
                    p_deferrable_w=float(plan["p_def"][0].sum()) if plan["p_def"].size else 0.0), dt


def dayahead_policy(window, truth, cfg, mip_gap=None, semi_cont=False, **planner_kw):
    """``(policy_fn, plan_or_None, solve_time_s)``: EMHASS's day-ahead plan (:func:`dayahead_plan`)
    followed open loop (:func:`picogrid.edge.optimizer.policies.day_ahead_policy`), or, without a
    plan, the naive rule (what a home runs when its planner returned nothing)."""
    plan, dt = dayahead_plan(window, truth, cfg, mip_gap, semi_cont, **planner_kw)
    if plan is None:
        return policies.naive_policy(truth, cfg), None, dt
    pv_planned = np.maximum(np.asarray(window["pv_avail_w"], float)[:truth.n_steps], 0.0)
    follow = policies.day_ahead_policy(plan, truth, cfg, pv_planned)

    def policy(t, e_j, delivered_j=None):
        return dataclasses.replace(follow(t, e_j, delivered_j), status=plan.status)
    return policy, plan, dt


#: the variants of :func:`convention_effects`: name -> keyword arguments of :func:`dayahead_policy`
VARIANTS = {"mapped, MIP gap 0": {"mip_gap": 0.0},
            "its default MIP gap 1 %": {},
            "on/off deferrables (its default)": {"mip_gap": 0.0, "semi_cont": True},
            "bus-side discharge limit as given": {"mip_gap": 0.0, "limits_as_given": True}}


def convention_effects(truth, cfg):
    """Each convention's effect on one day with perfect forecasts: ``{variant: cost}`` of
    EMHASS's day-ahead plan followed on the day it was planned on (:data:`VARIANTS`), and
    ``"ours: perfect-foresight LP"``, our optimum of the same day. With the mapping of this module
    and MIP gap 0 the two are equal unless a convention without an EMHASS counterpart binds
    (the lab's ESR discharge cap, our soft storage bounds)."""
    pf = policies.solve_perfect_foresight(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w,
                                          truth.import_price_per_j, truth.export_price_per_j, jobs=truth.jobs)
    out = {"ours: perfect-foresight LP": policies.simulate_policy(policies.perfect_foresight_policy(pf), truth,
                                                                  cfg).total_cost}
    window = truth.window(0, truth.n_steps, cfg)
    for name, kw in VARIANTS.items():
        pol, _, _ = dayahead_policy(window, truth, cfg, **kw)
        out[name] = policies.simulate_policy(pol, truth, cfg).total_cost
    return out

