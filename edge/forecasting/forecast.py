"""Run-time forecasts on the edge: ONNX quantile models with a seasonal-naive fallback.

Loads the model card of every series by name (``<series>.json``) and the graph it names from an
artefact directory (default: the committed ``models/artifacts`` for the ``lab`` profile, 60
ticks; ``models/artifacts/site`` for the ``site`` profile, 288 five-minute ticks), checks each
graph's inputs and outputs against its card and against :mod:`models.features` at start-up
(a mismatch is a ``ValueError`` naming the file), and then serves P10/P50/P90 of the next
``horizon`` ticks per series, one onnxruntime call per series. A series without a usable model, or whose model raises,
falls back to seasonal naive (same tick yesterday, all three quantiles equal) and says so in
:attr:`Forecaster.source` and the log. Model details: ``models/MODEL_CARD.md``.

Online recalibration (default on): for the loads and the price the P10/P90 half-widths around
the P50 are rescaled from the forecaster's own realised misses (:mod:`models.recalibrate`,
adaptive conformal inference), so the band keeps ~80 % coverage when the series drifts away
from the validation days its static offsets were calibrated on. The forecaster tells the ticks
between calls from the calendar (one tick between calls in operation); a call that goes back in
time (a replay, another day) restarts the tracker. The P50 is never changed.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from picogrid.models import features as F
from picogrid.models import recalibrate

log = logging.getLogger(__name__)


def default_artifact_dir(profile: str = "lab") -> Path:
    """The artefacts committed with the package: ``picogrid/models/artifacts`` for the lab
    profile, ``.../artifacts/<profile>`` for the others."""
    F.profile_dims(profile)
    base = Path(str(resources.files("picogrid.models").joinpath("artifacts")))
    return base if profile == "lab" else base / profile


def _card_history_ticks(card: dict, n_ticks: int) -> int:
    """Past ticks a card's features read (its ``inputs[0].history_ticks``, else ``n_lags``)."""
    return int(card.get("inputs", [{}])[0].get("history_ticks", card.get("n_lags", n_ticks)))


def model_history_days(profile: str = "lab", artifact_dir=None) -> int:
    """Whole days of history the committed models of ``profile`` read (at least 2).

    For whoever prepares a forecaster's input (a replayed day's history, ``picogrid
    evaluate``) before a :class:`Forecaster` exists; reads the model cards only.
    """
    n_ticks = F.profile_dims(profile)["n_ticks"]
    ticks = [2 * n_ticks]
    for path in Path(artifact_dir or default_artifact_dir(profile)).glob("*.json"):
        card = json.loads(path.read_text())
        if card.get("series") in F.SERIES and card.get("n_ticks") == n_ticks:
            ticks.append(_card_history_ticks(card, n_ticks))
    return -(-max(ticks) // n_ticks)


def _dims(value_info) -> list:
    return [d if isinstance(d, int) else None for d in value_info.shape]


class Forecaster:
    """Multi-horizon quantile forecaster for the series of :data:`models.features.SERIES`.

    Parameters
    ----------
    artifact_dir : str or pathlib.Path, optional
        Directory with ``<series>.json`` model cards and the ``.onnx`` graphs they name.
        Default :func:`default_artifact_dir` of ``profile``. A missing or empty directory is
        allowed: every series then uses the seasonal-naive fallback.
    profile : str, optional
        ``'lab'`` (60 ticks/day, horizon 60) or ``'site'`` (288 five-minute ticks, horizon
        288); see :data:`models.features.PROFILES`. Default: the ``profile`` of the cards in
        ``artifact_dir``, else ``'lab'``.
    online_recalibration : bool, optional
        Rescale the P10/P90 band of the series in :data:`models.recalibrate.TRACKED` from the
        realised misses of earlier calls (default ``True``); ``False`` serves the ONNX fans as
        they are (static validation calibration).

    Attributes
    ----------
    series : tuple of str
        Series this forecaster answers for (all of :data:`models.features.SERIES`).
    profile : str
    horizon : int
        Forecast steps per call (ticks).
    history_ticks : int
        Past ticks :meth:`forecast` needs in ``history`` for every model to run (at least two
        days: seasonal naive reads one).
    models : dict
        Series -> card of the series that have a validated ONNX model.
    source : dict
        Series -> ``'onnx'`` or ``'seasonal_naive:<reason>'`` of the last :meth:`forecast`.
    trackers : dict
        Series -> :class:`models.recalibrate.OnlineBandTracker` (empty without online
        recalibration); ``trackers[s].log_factors`` are the current band scalings.
    energy_calibration : picogrid.edge.forecasting.energy_calibration.EnergyCalibration or None
        The scenario energy calibration fitted on these models (``scenario_energy.json`` in
        ``artifact_dir``), None without the file.

    Raises
    ------
    ValueError
        Unknown profile; a card of another series or profile, a graph the card names but that
        is missing, or a graph whose inputs/outputs do not match its card or the feature
        builder (checked at start-up, so a bad artefact stops the service before its first tick).
    """

    def __init__(self, artifact_dir=None, profile: str | None = None, online_recalibration: bool = True):
        if artifact_dir is None:
            artifact_dir = default_artifact_dir(profile or "lab")
        self.artifact_dir = Path(artifact_dir)
        cards = {}
        for series in F.SERIES:   # models are found by name: <series>.json names its graph
            path = self.artifact_dir / f"{series}.json"
            if path.is_file():
                cards[series] = (path, json.loads(path.read_text()))
        if profile is None:
            found = {c.get("profile", "lab") for _, c in cards.values()}
            if len(found) > 1:
                raise ValueError(f"{self.artifact_dir}: cards of several profiles {sorted(found)}")
            profile = found.pop() if found else "lab"
        dims = F.profile_dims(profile)
        self.profile = profile
        self.n_ticks = dims["n_ticks"]
        self.series = F.SERIES
        self.horizon = dims["horizon"]
        self.models: dict[str, dict] = {}
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.source: dict[str, str] = {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1   # graphs this small run fastest on one thread
        opts.inter_op_num_threads = 1
        for series, (card_path, card) in cards.items():
            if card.get("series") != series:
                raise ValueError(f"{card_path}: card is for series {card.get('series')!r}, not {series!r}")
            if card.get("profile", "lab") != profile:
                raise ValueError(f"{card_path}: card profile {card.get('profile', 'lab')!r} != {profile!r}")
            onnx_path = self.artifact_dir / card.get("onnx_file", f"{series}.onnx")
            if not onnx_path.is_file():
                raise ValueError(f"{card_path}: graph {onnx_path.name} not found")
            sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
            self._validate(card_path, card, sess, profile)
            self.models[series] = card
            self._sessions[series] = sess
        self.history_ticks = max([2 * self.n_ticks] + [_card_history_ticks(c, self.n_ticks)
                                                         for c in self.models.values()])
        self.trackers = {s: recalibrate.OnlineBandTracker(
            self.horizon, recalibrate.lr_per_tick(self.n_ticks), non_negative=s in F.NON_NEGATIVE)
                         for s in recalibrate.TRACKED} if online_recalibration else {}
        self._previous_calendar = None
        self.energy_calibration = self._load_energy_calibration()
        missing = [s for s in F.SERIES if s not in self.models]
        if missing:
            log.warning("no ONNX model for %s in %s: seasonal naive", missing, self.artifact_dir)

    def _load_energy_calibration(self):
        """The scenario energy calibration fitted on these models' errors, or None without one."""
        from picogrid.edge.forecasting.energy_calibration import FILE_NAME, EnergyCalibration

        path = self.artifact_dir / FILE_NAME
        if not path.is_file():
            return None
        cal = EnergyCalibration.load(path)
        if cal.n_ticks != self.n_ticks or cal.horizon != self.horizon:
            raise ValueError(f"{path}: fitted for {cal.n_ticks} ticks/day and horizon {cal.horizon}, "
                             f"the models have {self.n_ticks} and {self.horizon}")
        return cal

    @staticmethod
    def _validate(card_path: Path, card: dict, sess: ort.InferenceSession, profile: str) -> None:
        series = card["series"]
        dims = F.profile_dims(profile)
        n_feat = F.n_features(series, profile)
        if card.get("horizon") != dims["horizon"] or card.get("n_lags") != dims["n_lags"] \
                or card.get("n_ticks") != dims["n_ticks"]:
            raise ValueError(f"{card_path}: horizon/n_lags/n_ticks {card.get('horizon')}/{card.get('n_lags')}/"
                             f"{card.get('n_ticks')} != profile {profile!r} {dims}")
        names = card["inputs"][0].get("feature_names")
        if names != F.feature_names(series, profile):
            raise ValueError(f"{card_path}: feature names differ from models.features.feature_names")
        expected_in = {"features": [None, n_feat], "start_tick": [None]}
        got_in = {i.name: _dims(i) for i in sess.get_inputs()}
        card_in = {i["name"]: i["shape"] for i in card["inputs"]}
        expected_out = {"quantiles": [None, len(F.QUANTILES), dims["horizon"]]}
        got_out = {o.name: _dims(o) for o in sess.get_outputs()}
        card_out = {o["name"]: o["shape"] for o in card["outputs"]}
        for what, exp, got, crd in (("inputs", expected_in, got_in, card_in),
                                    ("outputs", expected_out, got_out, card_out)):
            if got != exp or crd != exp:
                raise ValueError(f"{card_path}: ONNX {what} {got}, card {crd}, expected {exp}")

    def forecast(self, history: dict, calendar: dict, clearsky_ghi_w_m2) -> dict:
        """P10/P50/P90 of the next :attr:`horizon` ticks for every series.

        Parameters
        ----------
        history : dict[str, array]
            Series -> past tick values, oldest first, last = most recent completed tick;
            at least ``max(n_lags, n_ticks)`` values. Units: W for PV/loads, c/J for price.
            Optional past weather ``ghi_w_m2`` [W/m2] and ``temp_air_c`` [degC] (>= n_ticks
            values) feed the PV model; without them it runs on its no-weather inputs.
        calendar : dict
            ``tick`` (tick of day of the first forecast step, 0..n_ticks-1), ``day_of_year``
            (1..366), ``weekday`` (0 = Monday), ``n_ticks`` (ticks per day).
        clearsky_ghi_w_m2 : array [horizon]
            Clear-sky GHI of the forecast ticks [W/m2].

        Returns
        -------
        dict[str, dict[float, numpy.ndarray [horizon]]]
            Series -> {0.1: P10, 0.5: P50, 0.9: P90}; PV and loads clipped at 0, quantiles
            sorted. :attr:`source` says where each came from.

        Raises
        ------
        ValueError
            A series missing from ``history``, or a history too short for seasonal naive.
        """
        n_ticks = int(calendar.get("n_ticks", 0))
        elapsed = None
        if self.trackers and {"day_of_year", "tick"} <= set(calendar):
            elapsed = recalibrate.calendar_elapsed(self._previous_calendar, calendar)
            self._previous_calendar = (int(calendar["day_of_year"]), int(calendar["tick"]), n_ticks)
        out: dict[str, dict[float, np.ndarray]] = {}
        source: dict[str, str] = {}
        for series in self.series:
            if series not in history:
                raise ValueError(f"history lacks series {series!r}")
            hist = np.asarray(history[series], dtype=np.float64).ravel()
            fan, reason = None, None
            card = self.models.get(series)
            if card is None:
                reason = "no model"
            elif card.get("n_ticks") != n_ticks:
                reason = f"model trained for n_ticks={card.get('n_ticks')}, calendar has {n_ticks}"
            else:
                try:
                    x = F.build_features(series, hist, calendar, clearsky_ghi_w_m2, weather=history,
                                         profile=self.profile)
                    raw = self._sessions[series].run(
                        ["quantiles"], {"features": x, "start_tick": np.array([calendar["tick"]], np.int64)})[0]
                    fan = F.postprocess(series, raw[0])
                    if not np.isfinite(fan).all():
                        fan, reason = None, "non-finite model output"
                except Exception as exc:  # noqa: BLE001 - any model failure must degrade, not stop the tick
                    reason = f"{type(exc).__name__}: {exc}"
            tracker = self.trackers.get(series)
            if fan is not None and tracker is not None:
                fan = tracker.adjust(fan, elapsed, hist)
            elif tracker is not None:
                tracker.reset()   # its stored fans were not served: start again with the model
            if fan is None:
                log.warning("%s: seasonal naive fallback (%s)", series, reason)
                point = F.seasonal_naive(hist, n_ticks, self.horizon)
                fan = F.postprocess(series, np.repeat(point[None, :], len(F.QUANTILES), axis=0))
                source[series] = f"seasonal_naive:{reason}"
            else:
                source[series] = "onnx"
            out[series] = {q: fan[i] for i, q in enumerate(F.QUANTILES)}
        self.source = source
        return out


def next_calendar(calendar: dict) -> dict:
    """The calendar of the tick after ``calendar``'s (``tick``, ``day_of_year``, ``weekday``,
    ``n_ticks``); past the day's last tick it is tick 0 of the next day (day 366 or 365 is
    followed by day 1: the year is not known here, and the features' day-of-year sin/cos hardly
    differ between the two)."""
    cal = dict(calendar)
    n_ticks = int(cal["n_ticks"])
    cal["tick"] = int(cal["tick"]) + 1
    if cal["tick"] >= n_ticks:
        cal["tick"] = 0
        if "day_of_year" in cal:
            cal["day_of_year"] = int(cal["day_of_year"]) + 1 if int(cal["day_of_year"]) < 365 else 1
        if "weekday" in cal:
            cal["weekday"] = (int(cal["weekday"]) + 1) % 7
    return cal


def forecast_from_now(forecaster, history: dict, now: dict, load_series, calendar: dict,
                      clearsky_next_ghi_w_m2) -> dict:
    """Fans over the plan's steps ``0..H-1`` when step 0's values are known.

    The models forecast ``H`` ticks from their calendar's start tick out of the history before
    it (:mod:`models.features`). The edge knows the current tick's demand, prices and sun (the
    lab feed and the meters tell them), so its freshest forecast starts at the NEXT tick, from
    the history through now: on 30 lab test days (``picogrid evaluate --profile lab --days 30
    --workers 1``) that raised the MPC's savings capture on its own forecasts from 49.1 % to
    52.3 %. The current tick's weather is not measured yet: past weather repeats its last value.

    Parameters
    ----------
    forecaster : Forecaster or FeedForecaster
        Anything with ``forecast(history, calendar, clearsky)`` and ``horizon``.
    history : mapping str -> array [T]
        Values before the current tick, oldest first (units of :meth:`Forecaster.forecast`).
    now : mapping
        What is known of the current tick, as :func:`picogrid.edge.forecasting.scenarios.forecast_inputs`
        takes it: ``pv_avail_w`` [W], ``demand_w`` [L] [W], ``import_price_per_j`` and
        optionally ``export_price_per_j`` [c/J]. A series of ``history`` it does not give
        repeats its last value.
    load_series : sequence of str
        History names of the ``L`` loads, in the order of ``now["demand_w"]``.
    calendar : dict
        Calendar of the current tick (``tick``, ``day_of_year``, ``weekday``, ``n_ticks``).
    clearsky_next_ghi_w_m2 : array [H]
        Clear-sky GHI of the ``H`` ticks after the current one [W/m2].

    Returns
    -------
    dict[str, dict[float, numpy.ndarray [H]]]
        Series -> quantile -> plan-aligned values: step 0 is the known value (every quantile)
        where ``now`` gives it, else the forecast's first step; step ``k >= 1`` is the forecast's
        step ``k - 1`` (its last step, ``H`` ticks ahead, lies beyond the plan).

    Raises
    ------
    ValueError
        As :meth:`Forecaster.forecast` (a missing series, a history too short).
    """
    known = {"pv_available_w": now["pv_avail_w"], "import_price_per_j": now["import_price_per_j"],
             **dict(zip(load_series, np.asarray(now["demand_w"], dtype=np.float64).ravel()))}
    if "export_price_per_j" in now:
        known["export_price_per_j"] = now["export_price_per_j"]
    through_now = {}
    for series, values in history.items():
        values = np.asarray(values, dtype=np.float64)
        last = float(known[series]) if series in known else (values[-1] if values.size else np.nan)
        through_now[series] = np.append(values[1:], last)
    fans = forecaster.forecast(through_now, next_calendar(calendar), clearsky_next_ghi_w_m2)
    out = {}
    for series, fan in fans.items():
        out[series] = {}
        for q, values in fan.items():
            values = np.asarray(values, dtype=np.float64)
            first = float(known[series]) if series in known else values[0]
            out[series][q] = np.concatenate([[first], values[:-1]])
    return out
