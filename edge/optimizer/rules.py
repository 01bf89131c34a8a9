"""The rule-based dispatch: the naive policy and the optimiser's safe fallback.

:func:`naive_step` is the priority rule of rule-based EMSs (PV -> loads -> storage -> grid; a
deficit is met by storage, then import up to its limit, then shedding the lowest value of lost
load first), with no price awareness. It is both the baseline every plan is scored against and
what :class:`picogrid.edge.optimizer.optimize.MpcController` falls back to when no plan can be made.
"""

from __future__ import annotations

import math
import time

import numpy as np

from picogrid.edge.optimizer.decision import Decision


def storage_headroom(e_j, cfg):
    """Largest (charge, discharge) bus powers [W] the storage can take this step."""
    if not np.isfinite(e_j):  # unknown state of charge: leave the storage idle
        return 0.0, 0.0
    ch = min(cfg.p_ch_max_w, max(cfg.e_max_j - e_j, 0.0) / (cfg.eta_ch * cfg.dt_s))
    dis = min(cfg.p_dis_max_w, max(e_j - cfg.e_min_j, 0.0) * cfg.eta_dis / cfg.dt_s)
    if math.isfinite(cfg.p_dis_per_e_max_per_s):    # the ESR-loss limit (inf * 0 J would be NaN)
        dis = min(dis, cfg.p_dis_per_e_max_per_s * max(e_j, 0.0))
    return ch, dis


def shed_by_priority(served_w, deficit_w, voll_per_j):
    """Reduce ``served_w`` by ``deficit_w`` [W], lowest value of lost load first; returns the rest."""
    for k in np.argsort(np.asarray(voll_per_j), kind="stable"):
        cut = min(served_w[k], deficit_w)
        served_w[k] -= cut
        deficit_w -= cut
    return deficit_w


def naive_step(e_j, pv_w, demand_w, cfg, p_imp_max_w=None, p_exp_max_w=None, deferrable_w=0.0):
    """One step of the rule-based policy (no prices, no forecasts).

    Surplus: PV → loads → storage charge (power and energy limits) → export (limit) → curtail.
    Deficit: storage discharge → import (limit) → shed loads, lowest ``voll_per_j`` first.

    Parameters
    ----------
    e_j : float
        Stored energy now [J]; if not finite the storage is left idle.
    pv_w : float
        Available PV power [W].
    demand_w : array, shape [L]
        Demand per load [W].
    cfg : MpcConfig
        Limits, efficiencies, ``dt_s`` and ``voll_per_j`` (``horizon`` is ignored).
    p_imp_max_w, p_exp_max_w : float or None
        Grid limits now [W] (0 = outage); ``None`` uses the config.
    deferrable_w : float
        Power the deferrable jobs ask for now [W] (>= 0); served like a load whose value of
        lost load is ``cfg.voll_def_per_j``.

    Returns
    -------
    Decision
        ``status='naive'``, ``objective=nan``, one-step ``plan`` (``e`` has the 2 energies [J]),
        ``p_deferrable_w`` the deferrable power served.

    Raises
    ------
    ValueError
        If ``demand_w`` does not have ``cfg.n_loads`` values.
    """
    t0 = time.perf_counter()
    demand = np.maximum(np.asarray(demand_w, dtype=float).ravel(), 0.0)
    if demand.shape != (cfg.n_loads,):
        raise ValueError(f"demand_w must have shape ({cfg.n_loads},), got {demand.shape}")
    imp_max = cfg.p_imp_max_w if p_imp_max_w is None else max(float(p_imp_max_w), 0.0)
    exp_max = cfg.p_exp_max_w if p_exp_max_w is None else max(float(p_exp_max_w), 0.0)
    pv = max(float(pv_w), 0.0)
    ch_room, dis_room = storage_headroom(e_j, cfg)
    served = np.append(demand, max(float(deferrable_w), 0.0))
    voll = (*cfg.voll_per_j, cfg.voll_def_per_j)
    net = pv - served.sum()
    ch = dis = imp = exp = 0.0
    if net >= 0:
        ch = min(net, ch_room)
        exp = min(net - ch, exp_max)
        pv -= net - ch - exp  # curtail what nobody can take
    else:
        deficit = -net
        dis = min(deficit, dis_room)
        imp = min(deficit - dis, imp_max)
        shed_by_priority(served, deficit - dis - imp, voll)
    served, p_def = served[:-1], float(served[-1])
    e_next = e_j + cfg.dt_s * (cfg.eta_ch * ch - dis / cfg.eta_dis)
    plan = {"p_ch": np.array([ch]), "p_dis": np.array([dis]), "p_imp": np.array([imp]),
            "p_exp": np.array([exp]), "p_pv": np.array([pv]), "p_load": served[None, :],
            "p_def": np.array([[p_def]]), "e": np.array([e_j, e_next])}
    return Decision(status="naive", solve_time_s=time.perf_counter() - t0, iterations=0,
                    objective=float("nan"), p_storage_w=dis - ch, p_grid_w=imp - exp, pv_cap_w=pv,
                    load_served_w=served, plan=plan, p_deferrable_w=p_def,
                    deferrable_w=np.array([p_def]))
