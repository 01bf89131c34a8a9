"""Scale-free economics: a site's price-dependent values, set for the prices the edge sees.

A site file states its values of lost load, deferrable shortfall value, terminal value of stored
energy, cycling cost and penalties for one price scale, ``MpcConfig.price_scale_per_j`` (the mean
import price they were chosen for). Sources do not share a scale: the replayed lab days average
2.8 c/J, a teaching server's integer prices 10-150 c/J, a home tariff 5e-6 c/J (18 c/kWh). Before
every plan, :func:`resolve` multiplies those values by the source's own price scale over the
plan's window (the mean import price of the prices seen now and forecast) divided by the site's,
so the same site plans alike on any scale: every term of the objective is homogeneous of degree
one in the prices, and the plan does not move when all prices are multiplied by a constant.

A load is never shed to save money while the grid can supply it. Serving a joule costs at most
its marginal value on the bus, which is no more than the dearest price in the window, plus the
cycling it may save, over the storage round trip (a joule stored now and sold later):
``(top + 2 cycle) / (eta_ch eta_dis)``. :func:`resolve` keeps the lowest value of lost load
(deferrable jobs included) :data:`VOLL_HEADROOM` times above that, raising every class by the
same factor so their priority order stays, whatever the site file says. Then the optimiser sheds
only where the physics leaves no choice (islanded with the storage empty, the import limit), and
by priority class.
"""

from __future__ import annotations

import numpy as np

#: how far the lowest value of lost load stays above the largest marginal value of energy in a
#: plan's window: a margin over the LP's degenerate ties, not a tuned number
VOLL_HEADROOM = 1.25


def price_scale_per_j(import_price_per_j, export_price_per_j=None):
    """The price scale of a window: the mean absolute import price [price/J].

    Falls back to the mean absolute export price when every import price is zero, and returns
    0.0 when both are (a window with nothing to pay or earn). Non-finite values are ignored.

    Parameters
    ----------
    import_price_per_j, export_price_per_j : array_like [N]
        Prices over the window [price/J].
    """
    for prices in (import_price_per_j, export_price_per_j):
        if prices is None:
            continue
        p = np.abs(np.asarray(prices, float).ravel())
        p = p[np.isfinite(p)]
        if p.size and p.mean() > 0:
            return float(p.mean())
    return 0.0


def resolve(cfg, import_price_per_j, export_price_per_j, more_prices=()):
    """``cfg`` with its price-dependent values in absolute units for this window's prices.

    Parameters
    ----------
    cfg : picogrid.edge.optimizer.mpc_config.MpcConfig
        With ``price_scale_per_j`` set, its values of lost load, ``voll_deferrable_per_j``,
        ``terminal_value_per_j``, ``cycle_cost_per_j``, ``reserve_penalty_per_j`` and
        ``soft_penalty_per_j`` are taken as stated for that scale and multiplied by
        ``price_scale_per_j(import, export) / cfg.price_scale_per_j``; with ``None`` they are
        absolute already (factor 1).
    import_price_per_j, export_price_per_j : array_like [N]
        The window's expected prices [price/J]: they set the scale.
    more_prices : iterable of array_like
        Other prices the plan may meet (scenarios' import and export prices): they count for the
        value-of-lost-load floor only.

    Returns
    -------
    MpcConfig
        ``price_scale_per_j`` None (absolute), ``price_ref_per_j`` None (the solver's objective
        unit follows the resolved values, so it scales with the prices too), the values scaled,
        and every value of lost load at least ``VOLL_HEADROOM x (top + 2 cycle) / (eta_ch
        eta_dis)`` (``top`` = the largest price in the window, any sign, or the terminal value),
        all classes raised by one factor. Idempotent: resolving a resolved config for the same
        prices returns the same values.
    """
    factor = 1.0
    if cfg.price_scale_per_j is not None:
        scale = price_scale_per_j(import_price_per_j, export_price_per_j)
        factor = scale / cfg.price_scale_per_j if scale > 0 else 1.0
    cycle = cfg.cycle_cost_per_j * factor
    terminal = cfg.terminal_value_per_j * factor
    voll = np.asarray(cfg.voll_per_j, float) * factor
    voll_def = cfg.voll_def_per_j * factor
    reserve_pen = None if cfg.reserve_penalty_per_j is None else cfg.reserve_penalty_per_j * factor
    top = terminal
    for prices in (import_price_per_j, export_price_per_j, *more_prices):
        p = np.abs(np.asarray(prices, float).ravel())
        p = p[np.isfinite(p)]
        if p.size:
            top = max(top, float(p.max()))
    floor = VOLL_HEADROOM * (top + 2.0 * cycle) / (cfg.eta_ch * cfg.eta_dis)
    values = np.append(voll, voll_def) if cfg.n_jobs else voll
    lowest = float(values.min())
    if lowest < floor:
        # one factor for every class keeps their order; a class valued 0 takes the floor and
        # the valued ones a factor more above it, so it stays the first to go
        positive = values[values > 0]
        raise_by = floor / lowest if lowest > 0 else (
            VOLL_HEADROOM * floor / positive.min() if positive.size else 1.0)
        voll, voll_def = np.maximum(voll * raise_by, floor), max(voll_def * raise_by, floor)
        if reserve_pen is not None:
            reserve_pen *= raise_by
    return cfg.replace(
        voll_per_j=tuple(float(v) for v in voll), voll_deferrable_per_j=float(voll_def),
        terminal_value_per_j=float(terminal), cycle_cost_per_j=float(cycle),
        reserve_penalty_per_j=reserve_pen,
        soft_penalty_per_j=None if cfg.soft_penalty_per_j is None else cfg.soft_penalty_per_j * factor,
        price_scale_per_j=None, price_ref_per_j=None)


def day_costs(econ, grid_w, storage_w, demand_w, served_w, e_end_j, shortfall_j,
              import_price_per_j, export_price_per_j):
    """Cost terms of a realised day (simulated or measured) [price units], the terms the
    optimiser's objective prices (:meth:`picogrid.edge.optimizer.qp_model.QpModel.objective_terms`).

    Parameters
    ----------
    econ : MpcConfig
        Resolved for the day's prices (:func:`resolve`); its ``dt_s`` is the step [s].
    grid_w, storage_w : array [T]
        Grid power (+ import) and storage power (+ discharge), bus side [W].
    demand_w, served_w : array [T, L]
        Demand and served power per load [W]; shed = demand − served (negative read as 0).
    e_end_j : float or None
        Energy stored at the end [J]; None: unknown (its term is NaN).
    shortfall_j : float
        Deferrable job energy not delivered in its window [J].
    import_price_per_j, export_price_per_j : array [T]

    Returns
    -------
    dict
        ``import_cost, export_revenue, shedding_cost, cycling_cost, terminal_value,
        deferrable_shortfall_cost`` and ``total`` = import − export + shedding + cycling −
        terminal + shortfall (NaN where an input is).
    """
    dt = econ.dt_s
    grid = np.asarray(grid_w, float)
    shed = np.maximum(np.asarray(demand_w, float) - np.asarray(served_w, float), 0.0)
    costs = {
        "import_cost": float(dt * np.sum(np.asarray(import_price_per_j, float) * np.maximum(grid, 0))),
        "export_revenue": float(dt * np.sum(np.asarray(export_price_per_j, float) * np.maximum(-grid, 0))),
        "shedding_cost": float(dt * np.sum(np.asarray(econ.voll_per_j)[None, :] * shed)),
        "cycling_cost": float(dt * econ.cycle_cost_per_j * np.sum(np.abs(storage_w))),
        "terminal_value": float(econ.terminal_value_per_j * e_end_j) if e_end_j is not None else float("nan"),
        "deferrable_shortfall_cost": float(econ.voll_def_per_j * shortfall_j),
    }
    costs["total"] = (costs["import_cost"] - costs["export_revenue"] + costs["shedding_cost"]
                      + costs["cycling_cost"] - costs["terminal_value"] + costs["deferrable_shortfall_cost"])
    return costs


def bill(grid_energy_j, import_price_per_j, export_price_per_j):
    """Energy bill of grid energy [price units], per element: import paid at the import price,
    export (negative energy) earned at the export price.

    Parameters
    ----------
    grid_energy_j : float or array [T]
        Grid energy into the bus per tick [J] (+ import, - export).
    import_price_per_j, export_price_per_j : float or array [T]
        [price/J].
    """
    g = np.asarray(grid_energy_j, float)
    out = np.where(g >= 0, g * np.asarray(import_price_per_j, float), g * np.asarray(export_price_per_j, float))
    return float(out) if out.ndim == 0 else out


def savings_capture(cost_naive, cost, cost_perfect_foresight):
    """Share of the naive -> perfect-foresight saving a policy achieves (docs/design.md §4).

    ``(cost_naive - cost) / (cost_naive - cost_perfect_foresight)``; 1 = as good as perfect
    foresight, 0 = no better than the naive rule, < 0 = worse. NaN when perfect foresight saves
    nothing (``|cost_naive - cost_perfect_foresight| <= 1e-12``) or an input is missing (None/NaN).
    """
    if cost_naive is None or cost is None or cost_perfect_foresight is None:
        return float("nan")
    gap = cost_naive - cost_perfect_foresight
    if not abs(gap) > 1e-12:
        return float("nan")
    return float((cost_naive - cost) / gap)
