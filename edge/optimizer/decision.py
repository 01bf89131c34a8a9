"""What the optimiser (or a rule) decides for one tick: :class:`Decision`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Decision:
    """Setpoints for the current step plus the plan behind them.

    Attributes
    ----------
    status : str
        ``'solved'``, ``'solved_inaccurate'`` (OSQP), ``'solved_exact'`` (the exact LP,
        :mod:`picogrid.edge.optimizer.simplex`), ``'fallback:<reason>'`` or ``'naive'``.
    solve_time_s : float
        Wall time of the solve or fallback [s].
    iterations : int
        Solver iterations: OSQP's ADMM iterations, plus the simplex pivots of an exact LP solve
        (0 for rule-based decisions).
    objective : float
        Model objective of the plan [price units], without the regularisation; NaN for
        rule-based decisions.
    p_storage_w : float
        First-step storage power, bus side [W]; + discharge, − charge.
    p_grid_w : float
        First-step grid power [W]; + import, − export.
    pv_cap_w : float
        First-step used PV [W], the curtailment cap sent to the pv board.
    load_served_w : ndarray, shape [L]
        First-step power to serve per load [W] (>= 0).
    plan : dict of ndarray
        Over the horizon: ``p_ch, p_dis, p_imp, p_exp, p_pv`` [N] (W, >= 0), ``p_load`` [N, L] (W),
        ``p_def`` [N, J] (W), ``e`` [N+1] (J, ``e[0]`` is the initial energy), slacks ``s_e``
        [N, 2] (J), ``s_def`` [J] (J), ``s_res`` [N] (J) and ``reserve_j`` [N] (J, the reserve
        asked for after each step; -inf where none).
    objective_terms : dict of float
        ``import_cost, export_revenue, shedding_cost, cycling_cost, terminal_value`` and
        ``violation_penalty``, ``deferrable_shortfall_cost``, ``reserve_penalty`` [price units];
        objective = import − export + shedding + cycling − terminal + violation + deferrable
        shortfall + reserve penalty.
    p_deferrable_w : float
        First-step power to the deferrable load for the jobs [W] (>= 0).
    deferrable_w : ndarray, shape [J']
        First-step delivery per job passed to the solve [W].
    binding : list of str
        Constraints holding at a bound, ``'<name>[t0:t1]'`` (see :meth:`picogrid.edge.optimizer.qp_model.QpModel.binding`).
    soft_violations : list of str
        Soft constraints the plan violates because nothing better was possible:
        ``storage_energy_min``, ``storage_energy_max``, ``deferrable_energy``, ``reserve``.
    reason : str
        Why a fallback happened, why the exact LP solved this tick (``'cold start: exact LP'``,
        an OSQP status), and which soft constraints were violated; '' if none of these.
    shed_rule : str
        Why the first step serves a load below its demand: ``'islanded'`` (no grid; the
        storage cannot cover it), ``'import_limit'`` (import at its limit, storage at its
        own), ``'storage_energy_min'`` (import at its limit and the store held at its
        floor), or ``'price'``, which the economics of :mod:`picogrid.edge.optimizer.economics` leave
        no room for (logged at WARNING as a defect if it ever happens); '' when every load
        is served.
    economics : dict
        The values the plan was priced with (:func:`picogrid.edge.optimizer.economics.resolve`):
        ``price_scale_per_j``, ``voll_per_j`` [L], ``voll_deferrable_per_j``,
        ``terminal_value_per_j``, ``cycle_cost_per_j`` [price/J]; empty for rule-based decisions.
    scenario_objectives : list of float
        With scenarios (:mod:`picogrid.edge.forecasting.scenarios`): each scenario's plan cost [price
        units], in the order of ``MpcConfig.plan_weights`` (the ``S`` quantile scenarios, then
        the ``K`` error scenarios); ``objective`` is their weighted mean and ``plan`` the plan
        of the most probable quantile scenario (the median one), whatever the error
        scenarios weigh. Empty otherwise.
    """

    status: str
    solve_time_s: float
    iterations: int
    objective: float
    p_storage_w: float
    p_grid_w: float
    pv_cap_w: float
    load_served_w: np.ndarray
    plan: dict = field(default_factory=dict)
    objective_terms: dict = field(default_factory=dict)
    p_deferrable_w: float = 0.0
    deferrable_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    binding: list = field(default_factory=list)
    soft_violations: list = field(default_factory=list)
    reason: str = ""
    shed_rule: str = ""
    economics: dict = field(default_factory=dict)
    scenario_objectives: list = field(default_factory=list)

    @property
    def ok(self):
        """True when the decision comes from the optimiser (any ``solved*`` status)."""
        return self.status.startswith("solved")
