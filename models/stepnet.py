"""Step-shared quantile network in numpy, and its export to one small ONNX graph.

For the series of :data:`models.features.STEP_ALIGNED` the features come per forecast step
(:func:`models.features.step_features`: the target's tick-of-day context from the last two days,
its hour and weekday, ...), so ONE small MLP maps each step's feature row [k] to that step's
P10/P50/P90 [3], with the same weights for every step:

    z_h = (x_h - mu) / sd
    u_h = [relu(z_h W1 + b1)[:n_relu], (z_h W1 + b1)[n_relu:]]
    y_{q,h} = mu_y + sd_y * (u_h W2 + b2)_q

trained with the pinball loss (Koenker & Bassett, Econometrica 1978) by Adam (Kingma & Ba,
ICLR 2015) with early stopping on validation windows. Sharing the weights over the steps gives
each weight every step's examples and lets the network place sharp daily patterns (a water
heater switching on at a tick of day) by the target's own hour instead of learning, per
output, how the start tick and the step combine. The export folds the standardisation into
the first layer; the graph is Reshape-MatMul-Relu-MatMul-Transpose plus the table of
calibration offsets gathered by the start tick (same contract as :mod:`models.qnet`).
"""

from __future__ import annotations

import numpy as np

from .qnet import TARGET_OPSET, fit_pinball, init_mlp, mlp_forward, pinball_loss, standardise


class StepQuantileNet:
    """MLP shared by all forecast steps, fitted to several quantiles.

    Parameters
    ----------
    quantiles : tuple of float
        Quantile levels, increasing.
    n_step_features : int
        Features per step ``k``; inputs are ``[M, horizon * k]``, step-major.
    n_relu, n_linear : int
        Hidden ReLU and linear units.
    seed : int
        Seed of the initialisation and the minibatch order (results are deterministic).
    """

    def __init__(self, quantiles, n_step_features: int, n_relu: int = 64, n_linear: int = 0, seed: int = 0):
        self.quantiles = np.asarray(quantiles, np.float64)
        self.k = int(n_step_features)
        self.n_relu, self.n_linear, self.seed = int(n_relu), int(n_linear), int(seed)
        self.history: list[tuple[int, float]] = []

    def _steps(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] % self.k:
            raise ValueError(f"X must be [M, horizon * {self.k}], got {X.shape}")
        return X.reshape(X.shape[0], -1, self.k)

    def _prep(self, X3) -> np.ndarray:
        return ((X3 - self.mu_x) / self.sd_x).astype(np.float32)

    def _forward(self, Z):
        return mlp_forward(Z, self.W1, self.b1, self.W2, self.b2, self.n_relu)

    def fit(self, X, Y, X_val, Y_val, epochs=40, batch=64, lr=5e-4, weight_decay=1e-4, patience=5,
            progress=None):
        """Fit on (X [M, H*k], Y [M, H]) with early stopping on (X_val, Y_val).

        Parameters
        ----------
        batch : int
            Windows per minibatch (each contributes its H steps).
        progress : callable(epoch, val_loss), optional
            Called after every epoch.

        Returns
        -------
        StepQuantileNet
            ``self``; ``history`` holds (epoch, validation pinball loss in target units).

        Raises
        ------
        ValueError
            Non-finite inputs or mismatched shapes.
        """
        X3, Xv3 = self._steps(X), self._steps(X_val)
        Y, Y_val = np.asarray(Y, np.float64), np.asarray(Y_val, np.float64)
        if Y.shape != X3.shape[:2] or Y_val.shape != Xv3.shape[:2] or not np.isfinite(X3).all() \
                or not np.isfinite(Y).all():
            raise ValueError("X/Y must be finite, X [M, H*k] with Y [M, H]")
        rng = np.random.default_rng(self.seed)
        n_q, k = len(self.quantiles), self.k
        self.horizon = Y.shape[1]
        self.mu_x, self.sd_x = standardise(X3.reshape(-1, k))
        self.mu_y = float(Y.mean())
        self.sd_y = float(Y.std()) or 1.0
        Zp = self._prep(X3)
        Yp = ((Y - self.mu_y) / self.sd_y).astype(np.float32)
        Zv = self._prep(Xv3)
        params = init_mlp(rng, k, self.n_relu + self.n_linear, n_q, np.quantile(Yp, self.quantiles))
        self.W1, self.b1, self.W2, self.b2 = params
        tau = self.quantiles.astype(np.float32)
        # each window's H steps are rows of one minibatch
        self.best_val_loss = fit_pinball(
            self, params, Zp.shape[0], lambda idx: (Zp[idx].reshape(-1, k), Yp[idx].reshape(-1, 1), tau),
            lambda: self._loss(Zv, Y_val), rng, epochs, batch, lr, weight_decay, patience, progress)
        return self

    def _loss(self, Z, Y) -> float:
        q = self._forward(Z)[2].astype(np.float64) * self.sd_y + self.mu_y     # [M, H, n_q]
        return float(np.mean([pinball_loss(Y, q[..., i], t) for i, t in enumerate(self.quantiles)]))

    def predict(self, X) -> np.ndarray:
        """Raw quantiles [M, n_q, H] in target units (float64, before calibration/sorting)."""
        out = self._forward(self._prep(self._steps(X)))[2].astype(np.float64) * self.sd_y + self.mu_y
        return np.moveaxis(out, -1, 1)

    def to_onnx(self, offsets: np.ndarray, n_ticks: int):
        """ONNX graph: inputs ``features`` float32 [batch, H*k], ``start_tick`` int64 [batch];
        output ``quantiles`` float32 [batch, n_q, H] = network + ``offsets[bucket(start_tick)]``
        (``bucket = tick * n_buckets // n_ticks``, as :func:`models.qnet.bucket_of`).

        Parameters
        ----------
        offsets : array [n_buckets, n_q, H]
            Calibration offsets per bucket of start ticks.
        n_ticks : int
            Ticks per day.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        n_q, H, k = len(self.quantiles), self.horizon, self.k
        W1 = self.W1.astype(np.float64) / self.sd_x[:, None]
        b1 = self.b1 - (self.mu_x / self.sd_x) @ self.W1.astype(np.float64)
        W2 = self.sd_y * self.W2.astype(np.float64)
        b2 = self.sd_y * self.b2.astype(np.float64) + self.mu_y
        relu_mask = np.zeros(W1.shape[1])
        relu_mask[:self.n_relu] = 1.0
        init = [numpy_helper.from_array(np.asarray(x, np.float32), name) for x, name in (
            (W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"), (relu_mask, "relu_mask"),
            (1.0 - relu_mask, "lin_mask"), (offsets, "offsets"))]
        init += [numpy_helper.from_array(np.array(x, np.int64), name) for x, name in (
            ([-1, H, k], "step_shape"), (offsets.shape[0], "n_buckets"), (n_ticks, "n_ticks"))]
        nodes = [
            helper.make_node("Reshape", ["features", "step_shape"], ["steps"]),
            helper.make_node("MatMul", ["steps", "W1"], ["pre0"]),
            helper.make_node("Add", ["pre0", "b1"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["pos"]),
            helper.make_node("Mul", ["pos", "relu_mask"], ["h_relu"]),
            helper.make_node("Mul", ["pre", "lin_mask"], ["h_lin"]),
            helper.make_node("Add", ["h_relu", "h_lin"], ["h"]),
            helper.make_node("MatMul", ["h", "W2"], ["out0"]),
            helper.make_node("Add", ["out0", "b2"], ["out"]),
            helper.make_node("Transpose", ["out"], ["raw"], perm=[0, 2, 1]),
            helper.make_node("Mul", ["start_tick", "n_buckets"], ["tb"]),
            helper.make_node("Div", ["tb", "n_ticks"], ["bucket"]),
            helper.make_node("Gather", ["offsets", "bucket"], ["off"], axis=0),
            helper.make_node("Add", ["raw", "off"], ["quantiles"]),
        ]
        graph = helper.make_graph(
            nodes, "step_quantile_net",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, H * k]),
             helper.make_tensor_value_info("start_tick", TensorProto.INT64, [None])],
            [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [None, n_q, H])],
            initializer=init)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)],
                                  producer_name="picogrid.models.stepnet")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
