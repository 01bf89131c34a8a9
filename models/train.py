"""Train, evaluate and export the multi-horizon quantile forecasters (``picogrid train``).

Model per series (first, deliberately simple): ``StandardScaler -> Ridge`` with 60 outputs
gives P50 for the next 60 ticks in one call. P10/P90 are P50 plus empirical residual quantiles
of the validation days, per (start tick of day, horizon step), pooled over the 5 neighbouring
start ticks; they are baked into the ONNX graph as two [60, 60] tables gathered by the input
``start_tick``. Ridge fits on the training days, its alpha is chosen on validation MAE, and
all metrics come from the exported ONNX graph run by onnxruntime on the held-out test days,
after the same post-processing as the edge (:func:`models.features.postprocess`).

Baselines: seasonal naive (same tick yesterday) and persistence (last value held).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

from . import features as F

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"
DEFAULT_CARD_MD = Path(__file__).resolve().parent / "MODEL_CARD.md"
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 3000.0, 10000.0)
_POOL = 2  # start ticks pooled on each side for the residual quantile tables
TARGET_OPSET = 17


def _split_starts(days: np.ndarray, names: dict) -> dict:
    """Window starts whose whole target horizon lies inside each split."""
    t = days.size
    starts = np.arange(F.N_LAGS, t - F.HORIZON + 1)
    out = {}
    for split, members in names.items():
        inside = np.isin(days, list(members))
        ok = inside[starts] & inside[starts + F.HORIZON - 1]
        out[split] = starts[ok]
    return out


def residual_quantile_tables(resid: np.ndarray, start_tick: np.ndarray, n_ticks: int,
                             quantiles=(0.1, 0.9)) -> np.ndarray:
    """Empirical residual quantiles per (start tick, horizon step).

    Parameters
    ----------
    resid : array [M, HORIZON]
        ``y - p50`` on validation windows [series unit].
    start_tick : array [M] int
    n_ticks : int

    Returns
    -------
    numpy.ndarray [len(quantiles), n_ticks, HORIZON], float32
    """
    out = np.zeros((len(quantiles), n_ticks, resid.shape[1]), dtype=np.float32)
    for s in range(n_ticks):
        dist = np.abs(((start_tick - s) + n_ticks // 2) % n_ticks - n_ticks // 2)
        pooled = resid[dist <= _POOL]
        if pooled.shape[0] == 0:
            raise ValueError(f"no validation windows near start tick {s}")
        out[:, s, :] = np.quantile(pooled, quantiles, axis=0)
    return out


def export_onnx(pipeline, n_features: int, tables: np.ndarray):
    """skl2onnx graph of the P50 pipeline plus the quantile offsets.

    Inputs ``features`` float32 [batch, n_features] and ``start_tick`` int64 [batch];
    output ``quantiles`` float32 [batch, 3, HORIZON] ordered P10, P50, P90.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(pipeline, initial_types=[("features", FloatTensorType([None, n_features]))],
                            target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3})
    graph = model.graph
    p50 = graph.output[0].name
    graph.initializer.extend([
        numpy_helper.from_array(tables[0].astype(np.float32), "offset_p10"),
        numpy_helper.from_array(tables[1].astype(np.float32), "offset_p90"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
    ])
    graph.input.append(helper.make_tensor_value_info("start_tick", TensorProto.INT64, [None]))
    graph.node.extend([
        helper.make_node("Gather", ["offset_p10", "start_tick"], ["off10"], axis=0),
        helper.make_node("Gather", ["offset_p90", "start_tick"], ["off90"], axis=0),
        helper.make_node("Add", [p50, "off10"], ["q10"]),
        helper.make_node("Add", [p50, "off90"], ["q90"]),
        helper.make_node("Unsqueeze", ["q10", "axis_1"], ["q10u"]),
        helper.make_node("Unsqueeze", [p50, "axis_1"], ["q50u"]),
        helper.make_node("Unsqueeze", ["q90", "axis_1"], ["q90u"]),
        helper.make_node("Concat", ["q10u", "q50u", "q90u"], ["quantiles"], axis=1),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [None, 3, F.HORIZON]))
    onnx.checker.check_model(model)
    return model


def run_onnx(model_bytes: bytes, X: np.ndarray, start_tick: np.ndarray) -> np.ndarray:
    """Run an exported graph; returns [M, 3, HORIZON] float32."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(["quantiles"], {"features": X.astype(np.float32),
                                    "start_tick": start_tick.astype(np.int64)})[0]


def _pinball(y, q, tau):
    d = y - q
    return float(np.mean(np.maximum(tau * d, (tau - 1) * d)))


def evaluate(y: np.ndarray, fan: np.ndarray, naive: np.ndarray, persist: np.ndarray) -> dict:
    """Test metrics: model fan [M, 3, H] vs baselines [M, H] on targets y [M, H]."""
    def point(pred):
        e = pred - y
        return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e ** 2)))}

    model = point(fan[:, 1])
    model["pinball_mean"] = float(np.mean([_pinball(y, fan[:, i], q) for i, q in enumerate(F.QUANTILES)]))
    model["coverage_p10_p90"] = float(np.mean((y >= fan[:, 0]) & (y <= fan[:, 2])))
    model["mae_at_step"] = {str(h): float(np.mean(np.abs(fan[:, 1, h - 1] - y[:, h - 1]))) for h in (1, 6, 30, 60)}
    out = {"model": model, "seasonal_naive": point(naive), "persistence": point(persist)}
    for base in ("seasonal_naive", "persistence"):
        out[base]["pinball_p50"] = out[base]["mae"] / 2
        out[base]["mae_at_step"] = {
            str(h): float(np.mean(np.abs((naive if base == "seasonal_naive" else persist)[:, h - 1] - y[:, h - 1])))
            for h in (1, 6, 30, 60)}
    out["mae_skill_vs_seasonal_naive"] = 1 - model["mae"] / out["seasonal_naive"]["mae"]
    out["mae_skill_vs_persistence"] = 1 - model["mae"] / out["persistence"]["mae"]
    return out


def _versions() -> dict:
    import onnx
    import onnxruntime
    import sklearn
    import skl2onnx

    return {"numpy": np.__version__, "scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def train_series(series: str, frame, windows: dict, split: dict, n_ticks: int, seed: int) -> tuple[bytes, dict, object]:
    """Fit, calibrate, export and evaluate one series; returns (onnx bytes, card, pipeline)."""
    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cs = frame["clearsky_ghi_w_m2"].to_numpy() if series in F.USES_CLEARSKY else None
    args = (series, frame[series].to_numpy(), frame["tick"].to_numpy(), frame["day_of_year"].to_numpy(),
            frame["weekday"].to_numpy(), n_ticks, cs)
    data = {k: F.training_windows(*args, starts=v) for k, v in windows.items()}
    Xtr, Ytr, _ = data["train"]
    Xva, Yva, tva = data["validation"]
    best = None
    for alpha in ALPHAS:
        # near-collinear lags make scipy warn about conditioning; alpha is what handles it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LinAlgWarning)
            pipe = make_pipeline(StandardScaler(), Ridge(alpha=alpha, random_state=seed)).fit(Xtr, Ytr)
        mae = float(np.mean(np.abs(F.postprocess(series, pipe.predict(Xva)[:, None, :])[:, 0] - Yva)))
        if best is None or mae < best[0]:
            best = (mae, alpha, pipe)
    val_mae, alpha, pipe = best
    tables = residual_quantile_tables(Yva - pipe.predict(Xva), tva, n_ticks)
    model = export_onnx(pipe, Xtr.shape[1], tables)
    blob = model.SerializeToString()

    Xte, Yte, tte = data["test"]
    raw = run_onnx(blob, Xte, tte)
    p50_sk = pipe.predict(Xte)
    ref = np.stack([p50_sk + tables[0][tte], p50_sk, p50_sk + tables[1][tte]], axis=1)
    max_diff = float(np.max(np.abs(raw - ref)))
    fan = F.postprocess(series, raw)
    v = frame[series].to_numpy()
    starts = windows["test"]
    naive = np.stack([F.seasonal_naive(v[s - F.N_LAGS:s], n_ticks) for s in starts])
    persist = np.repeat(v[starts - 1][:, None], F.HORIZON, axis=1)
    metrics = evaluate(Yte, fan, naive, persist)
    card = {
        "series": series,
        "unit": F.UNITS[series],
        "onnx_file": f"{series}.onnx",
        "onnx_sha256": hashlib.sha256(blob).hexdigest(),
        "horizon": F.HORIZON,
        "n_lags": F.N_LAGS,
        "n_ticks": n_ticks,
        "tick_duration_of_real_day_s": 86400 // n_ticks,
        "quantiles": list(F.QUANTILES),
        "inputs": [
            {"name": "features", "dtype": "float32", "shape": [None, Xtr.shape[1]],
             "feature_names": F.feature_names(series),
             "units": {"lag_*": F.UNITS[series], "calendar": "-", "clearsky_ghi_h*": "W/m2"},
             "built_by": "models.features.build_features"},
            {"name": "start_tick", "dtype": "int64", "shape": [None],
             "description": "tick of day of the first forecast step, 0..n_ticks-1"},
        ],
        "outputs": [{"name": "quantiles", "dtype": "float32", "shape": [None, 3, F.HORIZON],
                     "unit": F.UNITS[series], "order": list(F.QUANTILES),
                     "postprocess": "models.features.postprocess (clip >= 0 for PV/loads, sort)"}],
        "model": {"type": "StandardScaler + Ridge (multi-output), P10/P90 = P50 + residual quantile tables",
                  "ridge_alpha": alpha, "alphas_tried": list(ALPHAS), "validation_mae_p50": val_mae,
                  "quantile_tables": f"validation residuals per (start tick, step), pooled over +/-{_POOL} start ticks"},
        "data": {"scenario": "models.scenario.build_bench_days (see models/DATA.md)",
                 "split": {k: [v[0], v[-1]] for k, v in split.items()},
                 "n_windows": {k: int(len(v)) for k, v in windows.items()}},
        "metrics_test": metrics,
        "onnx_vs_sklearn_max_abs_diff": max_diff,
        "training": {"seed": seed, "trained_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "versions": _versions(), "opset": TARGET_OPSET},
    }
    return blob, card, pipe


def write_model_card_md(cards: list[dict], path: Path) -> None:
    """Human-readable summary of the JSON cards (generated, so it cannot drift)."""
    lines = ["# Forecaster model card", "",
             "Generated by `picogrid train` (`models/train.py`) from the JSON cards in "
             "`models/artifacts/`; do not edit by hand.", "",
             "- Task: P10/P50/P90 of the next 60 ticks (one tick = 24 min of a real day) per series.",
             "- Inputs: last 60 ticks of the series, calendar of the forecast start (tick-of-day and "
             "day-of-year sin/cos, weekday one-hot), and for PV the clear-sky GHI of the 60 horizon ticks "
             "(`models/features.py`).",
             "- Model: StandardScaler + multi-output Ridge for P50 (alpha chosen on validation MAE); "
             "P10/P90 = P50 + validation residual quantiles per (start tick, step), inside the ONNX graph.",
             "- Data: `models/DATA.md`. Split by time: " + ", ".join(
                 f"{k} {v[0]}..{v[-1]}" for k, v in cards[0]["data"]["split"].items()) + ".",
             "- Metrics: held-out test days, from the exported ONNX graph after clipping/sorting.", "",
             "| series | unit | alpha | MAE model | MAE seasonal naive | MAE persistence | RMSE model | "
             "RMSE s.naive | RMSE persist. | pinball (mean of 3) | P10-P90 coverage | ONNX vs sklearn max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cards:
        m = c["metrics_test"]
        lines.append(
            f"| {c['series']} | {c['unit']} | {c['model']['ridge_alpha']:g} | {m['model']['mae']:.4f} | "
            f"{m['seasonal_naive']['mae']:.4f} | {m['persistence']['mae']:.4f} | {m['model']['rmse']:.4f} | "
            f"{m['seasonal_naive']['rmse']:.4f} | {m['persistence']['rmse']:.4f} | "
            f"{m['model']['pinball_mean']:.4f} | {m['model']['coverage_p10_p90']:.3f} | "
            f"{c['onnx_vs_sklearn_max_abs_diff']:.2e} |")
    lines += ["", "Limitations: linear in the lags, so PV is a blend of yesterday and clear-sky rather than a "
              "cloud model; load 1 and 2 (kitchen, laundry) are spiky appliance cycles that no lag model "
              "predicts well, and their P10-P90 band is often [0, small]; prices are trained on 2015 and "
              "tested on 2018 (a higher price level); quantile tables are calibrated on the first half of "
              "2013 and may be off in other seasons (see the coverage column).", ""]
    path.write_text("\n".join(lines))


def plot_fans(frame, blobs: dict, day: str, path: Path, n_ticks: int) -> None:
    """Plot P10-P90 fans, P50, the truth and seasonal naive from midnight of ``day`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = int(np.flatnonzero(frame["day"].to_numpy() == day)[0])
    row = frame.iloc[start]
    cal = {"tick": int(row["tick"]), "day_of_year": int(row["day_of_year"]),
           "weekday": int(row["weekday"]), "n_ticks": n_ticks}
    cs = frame["clearsky_ghi_w_m2"].to_numpy()[start:start + F.HORIZON]
    fig, axes = plt.subplots(len(blobs), 1, figsize=(8, 2.2 * len(blobs)), sharex=True)
    axes = np.atleast_1d(axes)
    steps = np.arange(F.HORIZON)
    for ax, (series, blob) in zip(axes, blobs.items()):
        v = frame[series].to_numpy()
        x = F.build_features(series, v[:start], cal, cs)
        fan = F.postprocess(series, run_onnx(blob, x, np.array([cal["tick"]]))[0])
        ax.fill_between(steps, fan[0], fan[2], alpha=0.3, label="P10-P90")
        ax.plot(steps, fan[1], label="P50")
        ax.plot(steps, v[start:start + F.HORIZON], "k.", ms=3, label="actual")
        ax.plot(steps, F.seasonal_naive(v[:start], n_ticks), "--", lw=0.8, label="seasonal naive")
        ax.set_ylabel(f"{series}\n[{F.UNITS[series]}]", fontsize=7)
    axes[0].legend(fontsize=7, ncol=4)
    axes[-1].set_xlabel(f"tick of {day} (24 min each), forecast issued at midnight")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    """``picogrid train``: build the scenario, train every series, write artefacts + cards.

    Returns
    -------
    int
        Process exit code (0 on success).
    """
    from tqdm import tqdm

    from . import scenario

    p = argparse.ArgumentParser(prog="picogrid train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="artefact directory (.onnx + .json)")
    p.add_argument("--card-md", default=str(DEFAULT_CARD_MD),
                   help="Markdown model card to write ('' = do not write)")
    p.add_argument("--series", nargs="+", choices=F.SERIES, default=list(F.SERIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot-day", default="2013-10-02",
                   help="test day whose forecast fans go to <out>/forecast_fans.png ('' = no plot)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    np.random.seed(args.seed)

    n_ticks = F.HORIZON
    split = scenario.split_days()
    all_days = split["train"] + split["validation"] + split["test"]
    frame = scenario.build_bench_days(all_days[0], len(all_days), n_ticks=n_ticks)
    windows = _split_starts(frame["day"].to_numpy(), split)
    args.out.mkdir(parents=True, exist_ok=True)
    cards, blobs = [], {}
    for series in tqdm(args.series, desc="train", unit="series"):
        blob, card, _ = train_series(series, frame, windows, split, n_ticks, args.seed)
        (args.out / f"{series}.onnx").write_bytes(blob)
        (args.out / f"{series}.json").write_text(json.dumps(card, indent=1) + "\n")
        cards.append(card)
        blobs[series] = blob
        log.info("%s: test MAE %.4f (seasonal naive %.4f)", series, card["metrics_test"]["model"]["mae"],
                 card["metrics_test"]["seasonal_naive"]["mae"])
    if args.card_md:
        write_model_card_md(cards, Path(args.card_md))
    if args.plot_day:
        plot_fans(frame, blobs, args.plot_day, args.out / "forecast_fans.png", n_ticks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
