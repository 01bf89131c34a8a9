"""Train, calibrate and export the multi-horizon quantile forecasters (``picogrid train``).

Per profile (``lab``: 60 ticks of 24 min, ``site``: 288 ticks of 5 min) and series, one
:class:`models.qnet.QuantileNet` gives P10/P50/P90 of the whole horizon in one call (load 3,
:data:`models.features.STEP_ALIGNED`: one :class:`models.stepnet.StepQuantileNet` shared by
all steps, on per-step features of the last two days). It is
fitted with the pinball loss on the training days (2012), early-stopped on the validation
days, and its outer quantiles are recalibrated (split conformal, per start-tick bucket and step)
on the validation days; then it is exported to ONNX and checked against the numpy network.
Test metrics come from :mod:`models.evaluate` (the exported graph, run by onnxruntime, on the
held-out test days, against seasonal-naive and persistence baselines computed in the same run).

Deterministic: the seed fixes the weather masking, the initialisation and the minibatch order.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

from . import features as F
from .qnet import QuantileNet, bucket_of, calibration_offsets
from .stepnet import StepQuantileNet

log = logging.getLogger(__name__)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: artefact directory of each profile (lab = the default the demo and the edge load)
PROFILE_DIRS = {"lab": ARTIFACTS, "site": ARTIFACTS / "site"}
DEFAULT_CARD_MD = Path(__file__).resolve().parent / "MODEL_CARD.md"
#: scaling of each profile (models.scenario.BENCH_DEFAULTS keys): the lab bench in watts and
#: bench c/J; the site as ``[scenario]`` of edge/sites/site.toml (6 kWp, 1.5 kW circuits, real c/J)
PROFILE_BENCH = {"lab": {}, "site": {"pv_capability_w": 6000.0, "load_rating_w": 1500.0,
                                     "grid_fee_eur_per_mwh": 150.0, "cents_per_j_per_eur_per_mwh": 2.7778e-8}}
#: window stride per profile (site windows overlap heavily: every 6th start tick, 30 min, suffices)
STRIDE = {"lab": 1, "site": 6}
#: calibration buckets of start ticks per day
N_BUCKETS = {"lab": 60, "site": 24}
#: hidden units per profile
HIDDEN = {"lab": (64, 32), "site": (32, 16)}
#: epoch budget per profile (early stopping on validation usually ends sooner)
MAX_EPOCHS = {"lab": 80, "site": 40}
#: step-shared network of the series of features.STEP_ALIGNED (models/stepnet.py): hidden ReLU
#: units, every how many of the STRIDE-spaced training windows it uses (validation keeps all), epoch
#: budget, learning rate, windows per minibatch, L2 weight decay. Chosen on the validation days
#: (lab load 3: MAE 0.733 x seasonal naive there, against 0.805 for the direct QuantileNet; weight
#: decay 1e-4 / 1e-3 / 3e-3: 0.743 / 0.733 / 0.750; 128 units 0.748; see MODEL_CARD.md). Site: 40
#: epochs ran into the cap with the validation loss still falling, so its budget is 80 (early
#: stopping ends it at ~46).
STEP_NET = {"lab": {"n_relu": 64, "train_stride": 1, "max_epochs": 40, "lr": 5e-4, "batch": 64,
                    "weight_decay": 1e-3},
            "site": {"n_relu": 64, "train_stride": 2, "max_epochs": 80, "lr": 5e-4, "batch": 64,
                     "weight_decay": 1e-3}}
WEATHER_MASK_FRACTION = 0.3
#: series whose level is removed before the network (the price level drifts between years)
DELEVEL = ("import_price_per_j",)


def build_frame(profile: str):
    """All scenario days (train + validation + test) of a profile, one row per tick."""
    from . import scenario

    dims = F.profile_dims(profile)
    split = scenario.split_days()
    days = split["train"] + split["validation"] + split["test"]
    return scenario.build_bench_days(days[0], len(days), n_ticks=dims["n_ticks"],
                                     bench=PROFILE_BENCH[profile]), split


def split_starts(days: np.ndarray, split: dict, profile: str) -> dict:
    """Window starts (every ``STRIDE`` ticks) whose lags of one day and whole target lie inside
    the data and whose target lies inside each split."""
    d = F.profile_dims(profile)
    first = max(d["n_lags"], d["n_ticks"])
    starts = np.arange(first, days.size - d["horizon"] + 1, STRIDE[profile])
    out = {}
    for name, members in split.items():
        inside = np.isin(days, list(members))
        out[name] = starts[inside[starts] & inside[starts + d["horizon"] - 1]]
    return out


def windows(series: str, frame, starts, profile: str, weather: bool = True):
    """(X, Y, start_tick) of ``series`` at ``starts``; PV gets past weather unless ``weather=False``."""
    d = F.profile_dims(profile)
    wx = {k: frame[k].to_numpy() for k in F.WEATHER_KEYS} if weather else None
    cs = frame["clearsky_ghi_w_m2"].to_numpy() if series in F.USES_CLEARSKY else None
    return F.training_windows(series, frame[series].to_numpy(), frame["tick"].to_numpy(),
                              frame["day_of_year"].to_numpy(), frame["weekday"].to_numpy(), d["n_ticks"],
                              cs, starts=starts, weather=wx, profile=profile)


def _mask_weather(X, series: str, profile: str, rng, fraction: float):
    """Zero the past-weather block (flag 0) of a random ``fraction`` of rows."""
    if series not in F.USES_WEATHER:
        return X
    X = X.copy()
    n = len(F.WEATHER_NAMES)
    rows = rng.random(X.shape[0]) < fraction
    X[rows, -n:] = 0.0
    return X


def run_onnx(model_bytes: bytes, X: np.ndarray, start_tick: np.ndarray) -> np.ndarray:
    """Run an exported graph; returns [M, 3, horizon] float32."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(["quantiles"], {"features": X.astype(np.float32),
                                    "start_tick": np.asarray(start_tick, np.int64)})[0]


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"numpy": np.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def train_series(series: str, frame, starts: dict, split: dict, profile: str, seed: int,
                 progress=None) -> tuple[bytes, dict]:
    """Fit, calibrate and export one series.

    Returns
    -------
    (bytes, dict)
        The ONNX graph and its model card (without test metrics: :mod:`models.evaluate`).
    """
    d = F.profile_dims(profile)
    if series in F.STEP_ALIGNED:
        return _train_step_series(series, frame, starts, split, profile, seed, progress)
    rng = np.random.default_rng(seed)
    Xtr, Ytr, _ = windows(series, frame, starts["train"], profile)
    Xva, Yva, tva = windows(series, frame, starts["validation"], profile)
    Xtr = _mask_weather(Xtr, series, profile, rng, WEATHER_MASK_FRACTION)
    # validation = with and without weather, as the edge may run either way
    Xva_nw = _mask_weather(Xva, series, profile, rng, 1.0)
    Xcal, Ycal, tcal = np.concatenate([Xva, Xva_nw]), np.concatenate([Yva, Yva]), np.concatenate([tva, tva])
    lag_cols = np.arange(d["n_lags"])
    level_cols = lag_cols[-d["n_ticks"]:] if series in DELEVEL else None
    n_relu, n_lin = HIDDEN[profile]
    net = QuantileNet(F.QUANTILES, lag_cols, level_cols, n_relu=n_relu, n_linear=n_lin, seed=seed)
    net.fit(Xtr, Ytr, Xcal, Ycal, epochs=MAX_EPOCHS[profile], progress=progress)
    raw_cal = net.predict(Xcal)
    offsets = calibration_offsets(Ycal, raw_cal, tcal, d["n_ticks"], N_BUCKETS[profile], F.QUANTILES)
    model = net.to_onnx(offsets, d["n_ticks"])
    blob = model.SerializeToString()
    # agreement of the graph (float32, folded) with the numpy network (float64 preprocessing)
    ref = net.predict(Xcal) + offsets[bucket_of(tcal, N_BUCKETS[profile], d["n_ticks"])]
    got = run_onnx(blob, Xcal, tcal)
    max_diff = float(np.max(np.abs(got - ref)))
    scale = float(np.max(np.abs(Ycal)))
    return blob, _card(series, profile, seed, blob, Xtr.shape[1], split, starts, max_diff, scale, {
        "type": "QuantileNet (numpy MLP, pinball loss) + split-conformal offsets, models/qnet.py",
        "hidden_relu": n_relu, "hidden_linear": n_lin, "delevel": series in DELEVEL,
        "epochs_run": len(net.history), "max_epochs": MAX_EPOCHS[profile], "validation_pinball": net.best_val_loss,
        "weather_mask_fraction_train": WEATHER_MASK_FRACTION if series in F.USES_WEATHER else None,
        "calibration": f"validation windows (with and without past weather), {N_BUCKETS[profile]} "
                       "start-tick buckets pooled +/-2, per step"})


def fit_step_net(series: str, frame, starts: dict, profile: str, seed: int, progress=None):
    """Fit the :class:`models.stepnet.StepQuantileNet` of a :data:`models.features.STEP_ALIGNED`
    series on the training windows (every ``STEP_NET[profile]['train_stride']``-th start from the
    third day on), early-stopped on the validation windows.

    Returns
    -------
    (StepQuantileNet, (X_val, Y_val, start_tick_val), int)
        The network, the validation windows and the number of features per window.
    """
    d = F.profile_dims(profile)
    cfg = STEP_NET[profile]
    first = F.STEP_HISTORY_DAYS * d["n_ticks"]     # the per-step features read two days back
    train_starts = starts["train"][starts["train"] >= first][::cfg["train_stride"]]
    Xtr, Ytr, _ = windows(series, frame, train_starts, profile)
    val = windows(series, frame, starts["validation"], profile)
    net = StepQuantileNet(F.QUANTILES, len(F.STEP_FEATURE_NAMES), n_relu=cfg["n_relu"], seed=seed)
    net.fit(Xtr, Ytr, val[0], val[1], epochs=cfg["max_epochs"], batch=cfg["batch"], lr=cfg["lr"],
            weight_decay=cfg["weight_decay"], progress=progress)
    return net, val, Xtr.shape[1]


def _train_step_series(series: str, frame, starts: dict, split: dict, profile: str, seed: int,
                       progress=None) -> tuple[bytes, dict]:
    """:func:`train_series` for a series of :data:`models.features.STEP_ALIGNED`
    (:class:`models.stepnet.StepQuantileNet` on the per-step features)."""
    d = F.profile_dims(profile)
    cfg = STEP_NET[profile]
    net, (Xva, Yva, tva), n_feat = fit_step_net(series, frame, starts, profile, seed, progress)
    raw = net.predict(Xva)
    offsets = calibration_offsets(Yva, raw, tva, d["n_ticks"], N_BUCKETS[profile], F.QUANTILES)
    blob = net.to_onnx(offsets, d["n_ticks"]).SerializeToString()
    ref = raw + offsets[bucket_of(tva, N_BUCKETS[profile], d["n_ticks"])]
    max_diff = float(np.max(np.abs(run_onnx(blob, Xva, tva) - ref)))
    scale = float(np.max(np.abs(Yva)))
    return blob, _card(series, profile, seed, blob, n_feat, split, starts, max_diff, scale, {
        "type": "StepQuantileNet (numpy MLP shared by all steps on per-step features, pinball loss) + "
                "split-conformal offsets, models/stepnet.py",
        "hidden_relu": cfg["n_relu"], "hidden_linear": 0, "delevel": False,
        "n_step_features": len(F.STEP_FEATURE_NAMES), "step_feature_names": list(F.STEP_FEATURE_NAMES),
        "epochs_run": len(net.history), "max_epochs": cfg["max_epochs"], "learning_rate": cfg["lr"],
        "weight_decay": cfg["weight_decay"],
        "batch_windows": cfg["batch"], "train_window_stride_ticks": STRIDE[profile] * cfg["train_stride"],
        "validation_pinball": net.best_val_loss, "weather_mask_fraction_train": None,
        "calibration": f"validation windows, {N_BUCKETS[profile]} start-tick buckets pooled +/-2, per step"})


def _card(series: str, profile: str, seed: int, blob: bytes, n_feat: int, split: dict, starts: dict,
          max_diff: float, scale: float, model: dict) -> dict:
    """Model card of one exported series (test metrics are added by :mod:`models.evaluate`)."""
    d = F.profile_dims(profile)
    step = series in F.STEP_ALIGNED
    units = ({"h*_same_tick_*, h*_around_*, h*_last*, h*_*_mean, h*_block_mean_*": F.UNITS[series],
              "other h*_*": "-"} if step else
             {"lag_*": F.UNITS[series], "calendar": "-", "clearsky_ghi_h*": "W/m2",
              "wx_available": "-", "ghi_mean_*": "W/m2 (past)", "temp_mean_last_day_c": "degC (past)"})
    card = {
        "series": series,
        "profile": profile,
        "unit": F.UNITS[series],
        "onnx_file": f"{series}.onnx",
        "onnx_sha256": hashlib.sha256(blob).hexdigest(),
        "horizon": d["horizon"],
        "n_lags": d["n_lags"],
        "n_ticks": d["n_ticks"],
        "tick_duration_of_real_day_s": 86400 // d["n_ticks"],
        "bench_scaling": PROFILE_BENCH[profile] or "models.scenario.BENCH_DEFAULTS",
        "quantiles": list(F.QUANTILES),
        "inputs": [
            {"name": "features", "dtype": "float32", "shape": [None, n_feat],
             "feature_names": F.feature_names(series, profile), "units": units,
             "history_ticks": F.STEP_HISTORY_DAYS * d["n_ticks"] if step else d["n_lags"],
             "built_by": f"models.features.build_features(..., profile={profile!r})"},
            {"name": "start_tick", "dtype": "int64", "shape": [None],
             "description": "tick of day of the first forecast step, 0..n_ticks-1"},
        ],
        "outputs": [{"name": "quantiles", "dtype": "float32", "shape": [None, len(F.QUANTILES), d["horizon"]],
                     "unit": F.UNITS[series], "order": list(F.QUANTILES),
                     "postprocess": "models.features.postprocess (clip >= 0 for PV/loads, sort)"}],
        "model": model,
        "data": {"scenario": "models.scenario.build_bench_days (see models/DATA.md)",
                 "split": {k: [v[0], v[-1]] for k, v in split.items()},
                 "window_stride_ticks": STRIDE[profile],
                 "n_windows": {k: int(len(v)) for k, v in starts.items()}},
        "onnx_vs_numpy_max_abs_diff": max_diff,
        "onnx_vs_numpy_max_abs_diff_rel_to_scale": max_diff / scale if scale else None,
        "training": {"command": f"picogrid train --profile {profile} --seed {seed}",
                     "seed": seed,
                     "trained_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "versions": _versions(), "opset": 17},
    }
    return card


def main(argv=None, after_training=None, evaluate=None) -> int:
    """Train every series of a profile and write the artefacts and cards.

    ``after_training(profile, out_dir)`` runs once they are written; ``evaluate`` (the
    ``main`` of :mod:`models.evaluate`, given by ``picogrid train``, which this module does not
    import: evaluation reads its helpers) then scores them on the test days unless
    ``--no-evaluate``.

    Returns
    -------
    int
        Process exit code (0 on success).
    """
    from tqdm import tqdm

    p = argparse.ArgumentParser(prog="picogrid train", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(F.PROFILES), default="lab")
    p.add_argument("--out", type=Path, default=None, help="artefact directory (default per profile)")
    p.add_argument("--series", nargs="+", choices=F.SERIES, default=list(F.SERIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-evaluate", action="store_true", help="skip the test evaluation")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    out = args.out or PROFILE_DIRS[args.profile]
    # the matrices are small: one BLAS thread is faster, and far faster on a loaded machine
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    frame, split = build_frame(args.profile)
    starts = split_starts(frame["day"].to_numpy(), split, args.profile)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(args.series, desc=f"train {args.profile}", unit="series")
    for series in bar:
        def progress(epoch, val, _s=series):
            bar.set_postfix_str(f"{_s} epoch {epoch} val pinball {val:.4g}")

        blob, card = train_series(series, frame, starts, split, args.profile, args.seed, progress)
        (out / f"{series}.onnx").write_bytes(blob)
        (out / f"{series}.json").write_text(json.dumps(card, indent=1) + "\n")
    if after_training is not None:     # e.g. refit what was fitted on the old models' errors
        after_training(args.profile, out)
    if args.no_evaluate or evaluate is None:
        return 0
    return evaluate(["--profile", args.profile, "--artifacts", str(out), "--write"], frame=frame, split=split)


if __name__ == "__main__":
    sys.exit(main())
