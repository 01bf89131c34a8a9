"""Multi-horizon quantile network in numpy, and its export to one small ONNX graph.

One call maps a feature vector [F] to P10/P50/P90 of the whole horizon [3, H]:

    level = mean of the last n_ticks lags        (only when ``delevel``: price, whose level drifts)
    x'    = (x - level * lag_mask - mu_x) / sd_x
    h     = [relu(x' W1 + b1)[:n_relu], (x' W1 + b1)[n_relu:]]   (ReLU units + linear units)
    y_q   = level + mu_y + sd_y * (h W2 + b2)_q

trained with the pinball (quantile) loss averaged over the quantiles and steps (Koenker &
Bassett, Econometrica 1978) by Adam (Kingma & Ba, ICLR 2015) with early stopping on a
validation set. The linear units give the network a linear (ridge-like) path, the ReLU units let
the spread of the fan depend on the inputs (weather-dependent quantiles). The preprocessing is
affine, so export folds it into the first layer: the ONNX graph is Gemm-Relu-Gemm plus the
level and a table of calibration offsets gathered by the start tick.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

TARGET_OPSET = 17


def pinball_loss(y, q, tau) -> float:
    """Mean pinball loss of quantile forecast ``q`` at level ``tau`` for targets ``y``."""
    d = np.asarray(y, np.float64) - np.asarray(q, np.float64)
    return float(np.mean(np.maximum(tau * d, (tau - 1) * d)))


def mlp_forward(Z, W1, b1, W2, b2, n_relu):
    """One hidden layer of ``n_relu`` ReLU units then linear units: ``(pre, h, out)``."""
    pre = Z @ W1 + b1
    h = pre.copy()
    h[..., :n_relu] = np.maximum(pre[..., :n_relu], 0)
    return pre, h, h @ W2 + b2


def pinball_backward(xb, pre, h, out, yb, tau, W2, n_relu):
    """Gradients ``(W1, b1, W2, b2)`` of the mean pinball loss of :func:`mlp_forward`'s ``out``
    [B, n_out] for targets ``yb`` (broadcast to ``out``) at levels ``tau`` [n_out]."""
    diff = yb - out
    # d pinball / d out: -tau where y > q, (1 - tau) where y < q
    g_out = (np.where(diff > 0, -tau, 1 - tau) / diff.size).astype(np.float32)
    g_h = g_out @ W2.T
    g_h[:, :n_relu] *= pre[:, :n_relu] > 0
    return xb.T @ g_h, g_h.sum(axis=0), h.T @ g_out, g_out.sum(axis=0)


class Adam:
    """Adam updates in place (Kingma & Ba, ICLR 2015; beta 0.9/0.999, eps 1e-8) with L2
    weight decay on the matrices (ndim 2) of ``params``."""

    def __init__(self, params, lr, weight_decay):
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.step = 0

    def update(self, grads):
        self.step += 1
        for k, (p, g) in enumerate(zip(self.params, grads)):
            if p.ndim == 2:
                g = g + self.weight_decay * p
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            p -= (self.lr * (self.m[k] / (1 - 0.9 ** self.step))
                  / (np.sqrt(self.v[k] / (1 - 0.999 ** self.step)) + 1e-8)).astype(np.float32)


class EarlyStopping:
    """Keeps the parameters of the best validation loss; ``update`` says when to stop
    (``patience`` epochs without a relative improvement of 1e-6: targets range from W to
    1e-6 c/J)."""

    def __init__(self, params, patience):
        self.params, self.patience = params, patience
        self.best, self.best_params, self.bad = np.inf, [p.copy() for p in params], 0

    def update(self, val) -> bool:
        if val < self.best * (1 - 1e-6):
            self.best, self.bad = val, 0
            self.best_params = [p.copy() for p in self.params]
        else:
            self.bad += 1
        return self.bad >= self.patience


def standardise(A):
    """Column means and standard deviations of ``A`` [M, F] (float64), a constant column's
    deviation set to 1 so it standardises to 0 instead of dividing by 0."""
    A = np.asarray(A, np.float64)
    sd = A.std(axis=0)
    return A.mean(axis=0), np.where(sd > 1e-9, sd, 1.0)


def init_mlp(rng, n_in, n_hidden, n_out, b2):
    """Weights ``[W1, b1, W2, b2]`` (float32) of :func:`mlp_forward`: He-normal first layer
    (He et al., ICCV 2015), second layer of variance ``1 / n_hidden``, output bias ``b2``
    (the targets' quantiles, so training starts at the unconditional fan)."""
    return [(rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            np.zeros(n_hidden, np.float32),
            (rng.standard_normal((n_hidden, n_out)) * np.sqrt(1.0 / n_hidden)).astype(np.float32),
            np.asarray(b2, np.float32)]


def fit_pinball(net, params, n_rows, batch_of, val_loss, rng, epochs, batch, lr, weight_decay, patience,
                progress=None):
    """Minibatch Adam on the pinball loss of ``net``'s :func:`mlp_forward` with early stopping.

    ``params`` = ``[W1, b1, W2, b2]`` (updated in place, so ``net``'s forward pass sees them);
    ``batch_of(rows)`` gives ``(xb [B, F], yb, tau [n_out])`` of the shuffled ``rows`` (of
    ``n_rows``); ``val_loss()`` the validation pinball loss, appended with its epoch to
    ``net.history`` and passed to ``progress(epoch, val)``. The best epoch's parameters end
    in ``net.W1 .. net.b2``; returns its validation loss.
    """
    adam, stopper = Adam(params, lr, weight_decay), EarlyStopping(params, patience)
    for epoch in range(epochs):
        order = rng.permutation(n_rows)
        for i in range(0, len(order), batch):
            xb, yb, tau = batch_of(order[i:i + batch])
            pre, h, out = mlp_forward(xb, *params, net.n_relu)
            adam.update(pinball_backward(xb, pre, h, out, yb, tau, params[2], net.n_relu))
        val = val_loss()
        net.history.append((epoch, val))
        if progress is not None:
            progress(epoch, val)
        if stopper.update(val):
            break
    net.W1, net.b1, net.W2, net.b2 = stopper.best_params
    return stopper.best


class QuantileNet:
    """Small MLP with a linear path, fitted to several quantiles of a multi-step target.

    Parameters
    ----------
    quantiles : tuple of float
        Quantile levels, increasing.
    level_cols : array of int or None
        Feature columns whose mean is the level subtracted from ``lag_cols`` and the target
        (``None``: no de-levelling).
    lag_cols : array of int
        Columns of lagged target values.
    n_relu, n_linear : int
        Hidden ReLU and linear units.
    seed : int
        Seed of the initialisation and the minibatch order (results are deterministic).
    """

    def __init__(self, quantiles, lag_cols, level_cols=None, n_relu=64, n_linear=32, seed=0):
        self.quantiles = np.asarray(quantiles, np.float64)
        self.lag_cols = np.asarray(lag_cols, np.int64)
        self.level_cols = None if level_cols is None else np.asarray(level_cols, np.int64)
        self.n_relu, self.n_linear, self.seed = int(n_relu), int(n_linear), int(seed)
        self.history: list[tuple[int, float]] = []

    # -- preprocessing -------------------------------------------------------------------
    def _level(self, X):
        if self.level_cols is None:
            return np.zeros((X.shape[0], 1), np.float64)
        return X[:, self.level_cols].astype(np.float64).mean(axis=1, keepdims=True)

    def _xprep(self, X, level):
        Xd = X.astype(np.float64).copy()
        Xd[:, self.lag_cols] -= level
        return ((Xd - self.mu_x) / self.sd_x).astype(np.float32)

    def _forward(self, Xp):
        return mlp_forward(Xp, self.W1, self.b1, self.W2, self.b2, self.n_relu)

    # -- training ------------------------------------------------------------------------
    def fit(self, X, Y, X_val, Y_val, epochs=80, batch=256, lr=2e-3, weight_decay=1e-4, patience=6,
            progress=None):
        """Fit on (X [M, F], Y [M, H]) with early stopping on (X_val, Y_val).

        Parameters
        ----------
        progress : callable(epoch, val_loss), optional
            Called after every epoch (e.g. to advance a progress bar).

        Returns
        -------
        QuantileNet
            ``self``; ``history`` holds (epoch, validation pinball loss in target units).

        Raises
        ------
        ValueError
            Non-finite inputs or mismatched shapes.
        """
        if X.shape[0] != Y.shape[0] or X_val.shape[0] != Y_val.shape[0] or not np.isfinite(X).all() \
                or not np.isfinite(Y).all():
            raise ValueError("X/Y must be finite with matching rows")
        rng = np.random.default_rng(self.seed)
        n_q, H = len(self.quantiles), Y.shape[1]
        self.horizon = H
        lvl = self._level(X)
        Xd = X.astype(np.float64).copy()
        Xd[:, self.lag_cols] -= lvl
        self.mu_x, self.sd_x = standardise(Xd)
        Yd = Y - lvl
        self.mu_y = float(Yd.mean())
        self.sd_y = float(Yd.std()) or 1.0
        Xp = self._xprep(X, lvl)
        Yp = ((Yd - self.mu_y) / self.sd_y).astype(np.float32)
        Xv, lv = self._xprep(X_val, self._level(X_val)), self._level(X_val)
        params = init_mlp(rng, X.shape[1], self.n_relu + self.n_linear, n_q * H,
                          np.tile(np.quantile(Yp, self.quantiles)[:, None], (1, H)).ravel())
        self.W1, self.b1, self.W2, self.b2 = params
        tau = np.repeat(self.quantiles, H).astype(np.float32)
        self.best_val_loss = fit_pinball(
            self, params, Xp.shape[0], lambda idx: (Xp[idx], np.tile(Yp[idx], (1, n_q)), tau),
            lambda: self.val_loss(Xv, lv, Y_val), rng, epochs, batch, lr, weight_decay, patience, progress)
        return self

    def val_loss(self, Xv, lv, Y_val) -> float:
        out = self._forward(Xv)[2].astype(np.float64) * self.sd_y + self.mu_y
        q = out.reshape(-1, len(self.quantiles), self.horizon) + lv[:, :, None]
        return float(np.mean([pinball_loss(Y_val, q[:, i], t) for i, t in enumerate(self.quantiles)]))

    def predict(self, X) -> np.ndarray:
        """Raw quantiles [M, n_q, H] in target units (float64, before calibration/sorting)."""
        lvl = self._level(X)
        out = self._forward(self._xprep(X, lvl))[2].astype(np.float64) * self.sd_y + self.mu_y
        return out.reshape(-1, len(self.quantiles), self.horizon) + lvl[:, :, None]

    # -- export --------------------------------------------------------------------------
    def to_onnx(self, offsets: np.ndarray, n_ticks: int):
        """ONNX graph: inputs ``features`` float32 [batch, F], ``start_tick`` int64 [batch];
        output ``quantiles`` float32 [batch, n_q, H] = network + ``offsets[bucket(start_tick)]``.

        Parameters
        ----------
        offsets : array [n_buckets, n_q, H]
            Calibration offsets per bucket of start ticks (``bucket = tick * n_buckets // n_ticks``).
        n_ticks : int
            Ticks per day.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        F = self.W1.shape[0]
        n_q, H = len(self.quantiles), self.horizon
        # fold  x' = (x P - mu) / sd  into the first layer (P subtracts the level from the lags)
        P = np.eye(F)
        lv = np.zeros(F)
        if self.level_cols is not None:
            lv[self.level_cols] = 1.0 / len(self.level_cols)
            mask = np.zeros(F)
            mask[self.lag_cols] = 1.0
            P -= np.outer(lv, mask)
        A = P / self.sd_x[None, :]
        a = -self.mu_x / self.sd_x
        W1 = A @ self.W1.astype(np.float64)
        b1 = a @ self.W1.astype(np.float64) + self.b1
        W2 = self.sd_y * self.W2.astype(np.float64)
        b2 = self.sd_y * self.b2.astype(np.float64) + self.mu_y
        relu_mask = np.zeros(W1.shape[1])
        relu_mask[:self.n_relu] = 1.0
        n_buckets = offsets.shape[0]
        init = [numpy_helper.from_array(x.astype(np.float32), name) for x, name in (
            (W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"), (lv[:, None], "level_w"),
            (relu_mask, "relu_mask"), (1.0 - relu_mask, "lin_mask"), (offsets, "offsets"))]
        init += [numpy_helper.from_array(np.array(x, np.int64), name) for x, name in (
            ([-1, n_q, H], "out_shape"), (n_buckets, "n_buckets"), (n_ticks, "n_ticks"))]
        nodes = [
            helper.make_node("Gemm", ["features", "W1", "b1"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["pos"]),
            helper.make_node("Mul", ["pos", "relu_mask"], ["h_relu"]),
            helper.make_node("Mul", ["pre", "lin_mask"], ["h_lin"]),
            helper.make_node("Add", ["h_relu", "h_lin"], ["h"]),
            helper.make_node("Gemm", ["h", "W2", "b2"], ["flat"]),
            helper.make_node("MatMul", ["features", "level_w"], ["level"]),
            helper.make_node("Add", ["flat", "level"], ["flat_lvl"]),
            helper.make_node("Reshape", ["flat_lvl", "out_shape"], ["raw"]),
            helper.make_node("Mul", ["start_tick", "n_buckets"], ["tb"]),
            helper.make_node("Div", ["tb", "n_ticks"], ["bucket"]),
            helper.make_node("Gather", ["offsets", "bucket"], ["off"], axis=0),
            helper.make_node("Add", ["raw", "off"], ["quantiles"]),
        ]
        graph = helper.make_graph(
            nodes, "quantile_net",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, F]),
             helper.make_tensor_value_info("start_tick", TensorProto.INT64, [None])],
            [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [None, n_q, H])],
            initializer=init)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)],
                                  producer_name="picogrid.models.qnet")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def bucket_of(start_tick, n_buckets: int, n_ticks: int) -> np.ndarray:
    """Calibration bucket of each start tick (same integer maths as the ONNX graph)."""
    return (np.asarray(start_tick, np.int64) * n_buckets) // n_ticks


def calibration_offsets(y, q, start_tick, n_ticks: int, n_buckets: int, quantiles, pool: int = 2) -> np.ndarray:
    """Split-conformal recalibration of the outer quantiles, per (start-tick bucket, step).

    For the lower quantile level ``tau`` the offset is the ``tau``-quantile of ``y - q_tau`` on
    the calibration (validation) windows of the bucket and its ``pool`` neighbours on each
    side, so that a fraction ``tau`` of them falls below the corrected quantile (the one-sided
    version of conformalized quantile regression, Romano, Patterson & Candes, NeurIPS 2019).
    The median keeps offset 0.

    Parameters
    ----------
    y : array [M, H]
    q : array [M, n_q, H]
    start_tick : array [M]

    Returns
    -------
    numpy.ndarray [n_buckets, n_q, H], float32

    Raises
    ------
    ValueError
        A bucket without calibration windows.
    """
    bucket = bucket_of(start_tick, n_buckets, n_ticks)
    out = np.zeros((n_buckets, len(quantiles), y.shape[1]), np.float32)
    for b in range(n_buckets):
        dist = np.abs(((bucket - b) + n_buckets // 2) % n_buckets - n_buckets // 2)
        sel = dist <= pool
        if not sel.any():
            raise ValueError(f"no calibration windows for bucket {b}")
        for i, tau in enumerate(quantiles):
            if tau != 0.5:
                out[b, i] = np.quantile(y[sel] - q[sel, i], tau, axis=0)
    return out
