"""The MPC's QP solved as an exact LP by HiGHS dual simplex, set up once and warm-started.

The model's quadratic term is only the tiny strictly-convex regulariser ``reg_rel * I``
(:class:`picogrid.edge.optimizer.qp_model.QpModel`), so ``min qᵀx  s.t.  l <= Ax <= u`` is the same
problem without it. HiGHS (Huangfu & Hall, "Parallelizing the dual revised simplex method",
Math. Prog. Comp. 10, 2018; https://highs.dev) keeps the optimal basis of the last solve in its
``Highs`` object: after a receding-horizon tick changes only costs and bounds, the dual simplex
restarts from that basis and needs a few pivots. Measured with ``picogrid bench mpc`` (site
profile, N = 288): about 10 pivots and 1.8-2.5 ms a tick for the controller's whole solve
(HiGHS's ``run`` about 1.3 ms of it), against 150-2700 OSQP iterations for an iterate within
OSQP's tolerance.

The edge uses it where OSQP's ADMM is weakest (:class:`picogrid.edge.optimizer.optimize.MpcController`):
the cold start, and a solve OSQP ends without a solution; ``MpcConfig.solver = "highs"`` uses it
every tick.
"""

import functools
from types import SimpleNamespace

import highspy
import numpy as np
import scipy.sparse as sp

#: OSQP's ``info.status_val`` for a solved problem: results carry it so one code path reads both.
SOLVED = 1


class _QuietHighs(highspy.Highs):
    """``highspy.Highs`` with its log off from the start: ``Highs.__init__`` registers its
    callback hook before any option can be set, and that prints HiGHS's banner once per
    instance (highspy 1.16; one per controller in every log). No user callbacks here."""

    def __init__(self):
        super(highspy.Highs, self).__init__()
        self.setOptionValue("output_flag", False)
        self.callbacks = []
        self.enableCallbacks()


class WarmSimplex:
    """``min qᵀx  s.t.  l <= Ax <= u`` for a fixed ``A``, solved by HiGHS from its last basis.

    Rows of ``A`` with a single coefficient 1 (the model's ``bound_*`` identity rows) become
    column bounds, the form the simplex method handles without extra rows.

    Parameters
    ----------
    A : scipy.sparse matrix, shape [m, n]
        Constraint matrix, constant over the solves (OSQP's ``A``).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> lp = WarmSimplex(sp.csc_matrix([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    >>> r = lp.solve(np.array([1.0, 2.0]), np.array([1.0, 0.0, 0.0]), np.array([9.0, 5.0, 5.0]))
    >>> r.info.status, [float(round(v, 6)) + 0.0 for v in r.x], [float(round(v, 6)) + 0.0 for v in r.y]
    ('optimal', [1.0, 0.0], [-1.0, 0.0, -1.0])
    """

    def __init__(self, A):
        a = sp.csr_matrix(A)
        a.sum_duplicates()
        self.m, self.n = a.shape
        starts = np.minimum(a.indptr[:-1], a.nnz - 1)     # each row's first entry
        single = (np.diff(a.indptr) == 1) & (a.data[starts] == 1.0)
        cols = a.indices[starts]
        # one bound row per column at most; a second one stays a row
        _, keep = np.unique(cols[single], return_index=True)
        bound_rows = np.flatnonzero(single)[np.sort(keep)]
        self._bound_rows, self._bound_cols = bound_rows, cols[bound_rows].astype(np.int32)
        is_core = np.ones(self.m, bool)
        is_core[bound_rows] = False
        self._core_rows = np.flatnonzero(is_core)
        core = a[self._core_rows].tocsc()
        self._h = h = _QuietHighs()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n, core.shape[0]
        lp.col_cost_ = np.zeros(self.n)
        # columns without a bound row are free; the others start at the held zeros below
        lo, hi = np.full(self.n, -highspy.kHighsInf), np.full(self.n, highspy.kHighsInf)
        lo[self._bound_cols] = hi[self._bound_cols] = 0.0
        lp.col_lower_, lp.col_upper_ = lo, hi
        lp.row_lower_, lp.row_upper_ = np.zeros(core.shape[0]), np.zeros(core.shape[0])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = core.indptr, core.indices, core.data
        h.passModel(lp)
        # the data HiGHS holds: each solve passes only the entries that changed (a tick moves
        # the prices, PV and demand bounds; most of the model stays)
        k = bound_rows.size
        self._held = {"cost": np.zeros(self.n), "col_lo": np.zeros(k), "col_hi": np.zeros(k),
                      "row_lo": np.zeros(core.shape[0]), "row_hi": np.zeros(core.shape[0])}

    def reset(self):
        """Forget the basis: the next solve starts from HiGHS's crash basis."""
        self._h.clearSolver()

    def solve(self, q, l, u, time_limit_s=None):
        """Solve for these vectors (``q`` [n], ``l``/``u`` [m], ±inf allowed) within
        ``time_limit_s`` [s] of wall time (``None``: no limit).

        Returns
        -------
        object
            In OSQP's result form, so the controller reads one shape: ``x`` [n], ``y`` [m] (OSQP's
            dual sign: ``q + Aᵀy = 0``, ``y > 0`` at an upper bound), ``info`` with ``status``
            (HiGHS model status, ``'optimal'`` when solved), ``status_val`` (``SOLVED`` = 1 when
            optimal, else -1), ``iter`` (simplex pivots), ``obj_val`` and ``prim_res`` (0.0).
        """
        # OSQP's ±1e30 "infinite" bounds are infinite to HiGHS too (its infinite_bound, 1e20)
        l, u = np.asarray(l, float), np.asarray(u, float)
        h, held = self._h, self._held
        new = {"cost": np.array(q, float), "col_lo": l[self._bound_rows], "col_hi": u[self._bound_rows],
               "row_lo": l[self._core_rows], "row_hi": u[self._core_rows]}

        def changed(lo, hi=None):
            diff = new[lo] != held[lo]
            if hi is not None:
                diff |= new[hi] != held[hi]
            return np.flatnonzero(diff).astype(np.int32)

        i = changed("cost")
        if i.size:
            h.changeColsCost(i.size, i, new["cost"][i])
        i = changed("col_lo", "col_hi")
        if i.size:
            h.changeColsBounds(i.size, self._bound_cols[i], new["col_lo"][i], new["col_hi"][i])
        i = changed("row_lo", "row_hi")
        if i.size:
            h.changeRowsBounds(i.size, i, new["row_lo"][i], new["row_hi"][i])
        self._held = new
        # HiGHS's time limit is on the instance's accumulated run time, not this run's
        h.setOptionValue("time_limit", float("inf") if time_limit_s is None
                         else h.getRunTime() + float(time_limit_s))
        h.run()
        status = h.getModelStatus()
        ok = status == highspy.HighsModelStatus.kOptimal
        info = SimpleNamespace(
            status=h.modelStatusToString(status).lower(), status_val=SOLVED if ok else -1,
            stopped_at_limit=status in (highspy.HighsModelStatus.kTimeLimit,
                                        highspy.HighsModelStatus.kIterationLimit),
            iter=int(h.getInfo().simplex_iteration_count), obj_val=np.nan, prim_res=0.0)
        res = _Result(self, h.getSolution() if ok else None, info)
        if ok:
            info.obj_val = float(np.dot(q, res.x))
        return res


class _Result:
    """A solve in OSQP's result form (``x``, ``y``, ``info``). ``y`` is built on first use:
    in ``solver = 'highs'`` mode nothing reads it, and the duals' copy out of HiGHS is a
    quarter of the wrapper's time (0.13 of 0.55 ms, N = 288)."""

    def __init__(self, lp, sol, info):
        self._lp, self._sol, self.info = lp, sol, info
        self.x = np.full(lp.n, np.nan) if sol is None else np.array(sol.col_value)

    @functools.cached_property
    def y(self):
        lp, y = self._lp, np.zeros(self._lp.m)
        if self._sol is not None:
            # HiGHS: q - Aᵀ row_dual - col_dual = 0, so OSQP's y is their negation
            y[lp._core_rows] = -np.asarray(self._sol.row_dual)
            y[lp._bound_rows] = -np.asarray(self._sol.col_dual)[lp._bound_cols]
        return y
