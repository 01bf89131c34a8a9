"""Scenario form of the MPC QP: one copy of the model per forecast scenario, shared first steps.

The two-stage stochastic programme (Birge & Louveaux, "Introduction to Stochastic Programming",
2nd ed., Springer 2011, ch. 1 and 3) minimises the probability-weighted cost over ``S``
scenarios, each with its own plan, and ties them together through the first step, the one
decision that is applied now (non-anticipativity); ``MpcConfig.scenario_shared_steps`` ties the
storage and deferrable powers of the first few steps instead (a robust horizon). The scenarios
themselves are built on the forecast side (:mod:`picogrid.edge.forecasting.scenarios`).

The stacked QP keeps a fixed sparsity: ``A = [blkdiag(A_1..A_S); N]`` where the rows ``N`` set
every shared power column of scenario ``s > 0`` equal to the one of scenario 0, and
``P = blkdiag(w_s P_1)``. Per tick only ``q = [w_s q_s]``, ``l``, ``u`` change, as in
:class:`picogrid.edge.optimizer.qp_model.QpModel`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Power blocks of the QP the edge sets ahead of the scenario's outcome (shared over the
#: robust horizon): the storage setpoint and the deferrable jobs' power.
_DECIDED_AHEAD = ("p_ch", "p_dis", "p_def")


class ScenarioQp:
    """``S`` copies of a :class:`~picogrid.edge.optimizer.qp_model.QpModel` sharing their first steps.

    Parameters
    ----------
    model : QpModel
        The single-scenario model (its layout and scaling are reused for every copy).
    weights : sequence of float, shape [S]
        Scenario probabilities (> 0, summing to 1).
    shared_steps : int
        Steps whose storage and deferrable powers all scenarios share (>= 1; 1 = only the
        decision applied now, where every power is shared).
    main : int or None
        Index of the scenario whose plan is reported; ``None``: the likeliest.

    Raises
    ------
    ValueError
        If the weights are not positive or do not sum to 1 (within 1e-9), or ``shared_steps``
        is not in ``1..N``.
    """

    def __init__(self, model, weights, shared_steps=1, main=None):
        w = np.asarray(weights, float).ravel()
        if w.size < 1 or np.any(~(w > 0)) or abs(w.sum() - 1.0) > 1e-9:
            raise ValueError(f"scenario weights must be > 0 and sum to 1, got {tuple(w)}")
        if not 1 <= int(shared_steps) <= model.cfg.horizon:
            raise ValueError(f"shared_steps must be in 1..{model.cfg.horizon}, got {shared_steps!r}")
        self.model, self.weights = model, w
        s_count, n1, m1 = w.size, model.n, model.m
        # Step 0: every power column (p_ch .. p_load, p_def), the decision applied now on data
        # known now. Later shared steps: only what the edge decides ahead, storage and the
        # deferrable load; PV, the loads and the grid follow each scenario's weather and demand.
        steps = {b: 1 if b not in _DECIDED_AHEAD else int(shared_steps)
                 for b in model.cols.blocks if b.startswith("p_")}
        first = np.concatenate([model.cols[b][:k].ravel() for b, k in steps.items()])
        k = first.size
        rows = np.arange((s_count - 1) * k)
        s_of = np.repeat(np.arange(1, s_count), k)
        na = sp.csc_matrix(
            (np.concatenate([np.ones(rows.size), -np.ones(rows.size)]),
             (np.concatenate([rows, rows]),
              np.concatenate([s_of * n1 + np.tile(first, s_count - 1), np.tile(first, s_count - 1)]))),
            shape=(rows.size, s_count * n1))
        self.A = sp.vstack([sp.block_diag([model.A] * s_count), na], format="csc")
        self.P = sp.block_diag([wi * model.P for wi in w], format="csc")
        self.n = s_count * n1
        self.m = s_count * m1 + rows.size
        self.x_shift = np.concatenate([model.x_shift + s * n1 for s in range(s_count)])
        # a tying row's dual moves to the row of its column one step later (the last shared
        # step keeps its own), like the columns
        pos = np.full(n1, -1)
        pos[first] = np.arange(k)
        later = pos[model.x_shift[first]]
        src = np.where(later >= 0, later, np.arange(k))
        self.y_shift = np.concatenate([model.y_shift + s * m1 for s in range(s_count)]
                                      + [s_count * m1 + (s_of - 1) * k + np.tile(src, s_count - 1)])
        # the scenario whose plan is reported: the median one (the likeliest, unless told)
        self.main = int(np.argmax(w)) if main is None else int(main)

    @property
    def count(self):
        """Number of scenarios ``S``."""
        return self.weights.size

    def vectors(self, per_scenario):
        """Stack ``[(q_s, l_s, u_s)] * S`` from :meth:`QpModel.vectors` into the QP's ``(q, l, u)``."""
        n_na = self.m - self.count * self.model.m
        q = np.concatenate([wi * qs for wi, (qs, _, _) in zip(self.weights, per_scenario)])
        l = np.concatenate([ls for _, ls, _ in per_scenario] + [np.zeros(n_na)])
        u = np.concatenate([us for _, _, us in per_scenario] + [np.zeros(n_na)])
        return q, l, u

    def split(self, x):
        """The scaled solution of each scenario: list of ``S`` arrays of shape [model.n]."""
        n1 = self.model.n
        return [x[s * n1:(s + 1) * n1] for s in range(self.count)]
