"""``picogrid plan --site FILE``: one tick planned from a site file, for a user's quick check.

The site's optimiser (:func:`picogrid.edge.optimizer.mpc_config.config_from_site`, its own solver and
economics) plans one tick on conditions held flat over the horizon, given on the command line or
taken from the site itself (storage half full, PV at half its capability, each load at half its
rating, the import price at the site's ``price_scale_per_j`` and export at a third of it), and
the setpoints each board would get are printed with the reasons the plan gives. No board,
dataset or forecaster is needed: it runs on a plain ``pip install`` of the package.
"""

from __future__ import annotations

import numpy as np

from picogrid.edge.control import dispatch
from picogrid.edge.optimizer.mpc_config import config_from_site
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.edge.sources.signals import LOADS
from picogrid.edge.site import deferrable_board
from picogrid.firmware import protocol as P

_MODES = {P.MODE_NORMAL: "normal", P.MODE_SHED: "shed", P.MODE_ISLAND: "island"}


def tick_inputs(site, energy_j=None, pv_w=None, demand_w=None, import_price_per_j=None,
                export_price_per_j=None):
    """The flat conditions of :func:`plan_tick`, each from its argument or the site's default.

    Returns
    -------
    dict
        ``energy_j`` [J], ``pv_w`` [W], ``demand_w`` [L] [W], ``import_price_per_j``,
        ``export_price_per_j`` [price/J].

    Raises
    ------
    ValueError
        If ``demand_w`` does not give one value per load board, or a value is negative or not finite.
    """
    cfg = config_from_site(site)
    ratings = [float(site["boards"][name].get("limits", {}).get("power_max_w", site.get("loads", {}).get(
        "rating_w", 1.0))) for name in LOADS[:cfg.n_loads]]
    scale = cfg.price_scale_per_j or max(cfg.voll_per_j) / 10
    out = {"energy_j": 0.5 * (cfg.e_min_j + cfg.e_max_j) if energy_j is None else float(energy_j),
           "pv_w": 0.5 * float(site["pv"]["capability_w"]) if pv_w is None else float(pv_w),
           "demand_w": np.array([0.5 * r for r in ratings] if demand_w is None else demand_w, float),
           "import_price_per_j": scale if import_price_per_j is None else float(import_price_per_j),
           "export_price_per_j": scale / 3 if export_price_per_j is None else float(export_price_per_j)}
    if out["demand_w"].shape != (cfg.n_loads,):
        raise ValueError(f"give one demand per load board ({cfg.n_loads}), got {out['demand_w'].tolist()}")
    values = [out["energy_j"], out["pv_w"], *out["demand_w"]]
    if not all(np.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"energy, PV and demand must be finite and >= 0, got {values}")
    return out


def plan_tick(site, inputs, islanded=False):
    """Plan one tick of ``site`` on ``inputs`` (:func:`tick_inputs`) held over the horizon.

    Returns
    -------
    (Decision, dict)
        The decision and the setpoints ``name -> (mode, value)`` the boards would get
        (:func:`picogrid.edge.control.dispatch.setpoints`).
    """
    cfg = config_from_site(site)
    n = cfg.horizon
    limit = np.full(n, 0.0) if islanded else None
    decision = MpcController(cfg).solve(
        inputs["energy_j"], np.full(n, inputs["pv_w"]), np.tile(inputs["demand_w"], (n, 1)),
        np.full(n, inputs["import_price_per_j"]), np.full(n, inputs["export_price_per_j"]),
        p_imp_max_w=limit, p_exp_max_w=limit)
    board, _ = deferrable_board(site)
    sp = dispatch.setpoints(decision, inputs["pv_w"], float(site["bench"]["bus_voltage_v"]), islanded,
                            inputs["demand_w"], deferrable_load=board)
    return decision, sp


def format_plan(site, inputs, decision, setpoints, islanded=False):
    """The plan of one tick as text lines for the terminal."""
    unit = {"grid": "V (bus voltage reference)", "pv": "W cap (-1: no cap)"}
    lines = [f"site profile {site.get('profile', '?')}: storage {inputs['energy_j']:.4g} J, PV {inputs['pv_w']:.4g} W, "
             f"demand {', '.join(f'{d:.4g}' for d in inputs['demand_w'])} W, import {inputs['import_price_per_j']:.4g} "
             f"/ export {inputs['export_price_per_j']:.4g} per J" + (", islanded" if islanded else ""),
             f"status {decision.status} in {1e3 * decision.solve_time_s:.2f} ms" +
             (f": {decision.reason}" if decision.reason else ""),
             "setpoints:"]
    for name, (mode, value) in setpoints.items():
        lines.append(f"  {name:8s} {_MODES.get(mode, mode):7s} {value:10.4g} {unit.get(name, 'W')}")
    lines.append(f"storage {decision.p_storage_w:+.4g} W (+ discharge), grid {decision.p_grid_w:+.4g} W (+ import)")
    if decision.binding:
        lines.append("binding: " + ", ".join(decision.binding))
    if decision.shed_rule:
        lines.append(f"shed because: {decision.shed_rule}")
    if decision.economics:
        e = decision.economics
        lines.append("priced with: value of lost load " + ", ".join(f"{v:.4g}" for v in e["voll_per_j"])
                     + f", terminal value {e['terminal_value_per_j']:.4g}, cycling {e['cycle_cost_per_j']:.4g} per J "
                     f"(price scale {e['price_scale_per_j']:.4g})")
    return lines
