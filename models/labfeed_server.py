"""A local server of the lab market feed API (docs/design.md section 2), serving real or teaching days.

For tests and offline demos: it answers ``GET /sun``, ``/price``, ``/demand``, ``/deferables``
and ``/yesterday`` on loopback exactly as specified (day index = ``int(unix_time / 300)``, tick =
position in the 300 s window x 60), from lab days generated from the real scenario
(:func:`generate_lab_days`, the default kind) or from a synthetic model of an independent
teaching server (:func:`generate_teaching_days`: noisy integer prices of 10-150 c/J, odd
deferrable windows), chosen by :func:`serve_days`'s ``kind``. Its clock is injected, so a test
can leap through days, and it can be made slow (``delay_s``) or failing (``failing``: HTTP 503
to everything; ``failing_endpoints``: HTTP 503 on those paths only) to exercise the client's
fallbacks.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

log = logging.getLogger(__name__)

DAY_S = 300.0
N_TICKS = 60
#: lab-feed price scale [c/J per EUR/MWh]: 10 x the scenario's, so integer cents keep resolution
LAB_PRICE_SCALE = 0.15
DEFERABLE_THRESHOLD_W = 0.3   # a laundry (load 2) cycle above this starts the deferrable window
DEFERABLE_WINDOW_TICKS = 20
#: the kinds of day the loopback feed serves: replayed real data, or a model of a teaching server
KINDS = ("real", "teaching")
#: PV power at 100 % sun of the lab bench [W] (``edge/sites/lab.toml`` ``[pv] capability_w``):
#: the teaching days' price level follows demand minus this share of the sun
TEACHING_PV_CAPABILITY_W = 3.87
#: the deferrable board's rating [W] (``edge/sites/lab.toml`` ``[deferrable] power_max_w``): a
#: job fits in its window when ``energy <= (end - start + 1) x TICK_S x`` this
TEACHING_DEFERRABLE_W = 1.0
TICK_S = DAY_S / N_TICKS
#: share of teaching days with one odd deferrable window, and the kinds of oddity
TEACHING_ODD_DAY_SHARE = 0.3
TEACHING_ODDITIES = ("start_after_end", "start_past_day", "energy_over_window")


def generate_lab_days(first_day: str, n_days: int) -> list[dict]:
    """Lab-feed days from real scenario days (:func:`models.scenario.build_bench_days`, 60 ticks).

    Per day: ``sun`` = PV availability [%] (int), ``demand`` = load1 + load2 + load3 at bench
    scale [W], ``sell_price`` = import and ``buy_price`` = export price at
    :data:`LAB_PRICE_SCALE` [c/J] rounded to int, and one deferrable: the first laundry cycle's
    energy [J, 5 s ticks] within :data:`DEFERABLE_WINDOW_TICKS` ticks of its start (none if the
    day has no cycle).

    Returns
    -------
    list of dict
        ``{'date', 'sun' [60] int, 'demand' [60] float, 'sell_price' [60] int,
        'buy_price' [60] int, 'deferables' list}``.
    """
    from . import scenario

    frame = scenario.build_bench_days(first_day, n_days, n_ticks=N_TICKS,
                                      bench={"cents_per_j_per_eur_per_mwh": LAB_PRICE_SCALE})
    days = []
    for date, d in frame.groupby("day", sort=True):
        load2 = d["load2_demand_w"].to_numpy()
        on = np.flatnonzero(load2 > DEFERABLE_THRESHOLD_W)
        deferables = []
        if on.size:
            start = int(on[0])
            end = min(start + DEFERABLE_WINDOW_TICKS, N_TICKS - 1)
            deferables.append({"start": start, "end": end,
                               "energy": float(load2[start:end + 1].sum() * DAY_S / N_TICKS)})
        days.append({
            "date": date,
            "sun": np.rint(d["sun"].to_numpy() * 100).astype(int).tolist(),
            "demand": (d["load1_demand_w"] + d["load2_demand_w"] + d["load3_demand_w"]).round(4).tolist(),
            "sell_price": np.rint(d["import_price_per_j"].to_numpy()).astype(int).tolist(),
            "buy_price": np.rint(d["export_price_per_j"].to_numpy()).astype(int).tolist(),
            "deferables": deferables,
        })
    return days


def _teaching_sun(rng) -> np.ndarray:
    """One teaching day's sun [60] in percent (float, before rounding)."""
    t = np.arange(N_TICKS)
    rise, set_ = rng.uniform(13.0, 17.0), rng.uniform(43.0, 47.0)
    peak = rng.uniform(40.0, 100.0)
    x = (t - rise) / (set_ - rise)
    sun = np.where((x > 0) & (x < 1), peak * np.sin(np.pi * np.clip(x, 0.0, 1.0)), 0.0)
    for _ in range(rng.integers(0, 4)):            # cloud dips: 1-4 ticks at 20-70 % less sun
        start, length = rng.integers(int(rise), int(set_) + 1), rng.integers(1, 5)
        sun[start:start + length] *= 1.0 - rng.uniform(0.2, 0.7)
    return np.clip(sun, 0.0, 100.0)


def _teaching_demand(rng) -> np.ndarray:
    """One teaching day's total demand [60] [W]: night base, morning and evening peaks, noise."""
    t = np.arange(N_TICKS)
    morning, evening = rng.uniform(16.0, 20.0), rng.uniform(44.0, 49.0)
    base = (0.6 + 0.5 * ((t > morning) & (t < evening))             # daytime activity
            + 1.0 * np.exp(-0.5 * ((t - morning) / 2.0) ** 2)
            + 1.5 * np.exp(-0.5 * ((t - evening) / 3.0) ** 2))
    demand = base * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.15, N_TICKS)
    return np.clip(demand, 0.0, 4.0)


def _teaching_jobs(rng) -> list[dict]:
    """One teaching day's deferrable jobs (feed format, inclusive deadline), some odd."""
    jobs = []
    for _ in range(rng.integers(1, 4)):
        start = int(rng.integers(0, 50))
        end = min(start + int(rng.integers(5, 20)), N_TICKS - 1)
        room_j = (end - start + 1) * TICK_S * TEACHING_DEFERRABLE_W
        # at most a third of its window: up to three jobs always fit together on the board
        jobs.append({"start": start, "end": end, "energy": round(float(rng.uniform(0.1, 0.33) * room_j), 2)})
    if rng.random() < TEACHING_ODD_DAY_SHARE:
        job = jobs[int(rng.integers(len(jobs)))]
        oddity = TEACHING_ODDITIES[int(rng.integers(len(TEACHING_ODDITIES)))]
        if oddity == "start_after_end":
            job["start"], job["end"] = job["end"], job["start"]
        elif oddity == "start_past_day":
            job["start"] = int(rng.integers(N_TICKS, N_TICKS + 10))
            job["end"] = job["start"] + int(rng.integers(0, 10))
        else:
            room_j = (job["end"] - job["start"] + 1) * TICK_S * TEACHING_DEFERRABLE_W
            job["energy"] = round(float(rng.uniform(1.2, 2.0) * room_j), 2)
    return jobs


def generate_teaching_days(n_days: int, seed: int = 0) -> list[dict]:
    """Synthetic lab-feed days modelled on an independent teaching server (not real data).

    The project's own feed replays real days (:func:`generate_lab_days`); a teaching server
    publishes rather different ones (docs/design.md section 2: integer prices anywhere from about
    10 to a few hundred c/J jumping from tick to tick, demand of 0-4 W with noise, deferrable
    windows that need normalising). This is a model of such a server, to run the edge on: the
    shapes below are invented, only the format and the bench's ratings are the project's.

    Day ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so the days are
    deterministic for a seed and the first days of a longer run are those of a shorter one.
    Per day (60 ticks of 5 s; uniform draws unless said):

    - ``sun`` [%, int]: 0 at night; a half-sine between sunrise (tick 13-17) and sunset (tick
      43-47) with a peak of 40-100 %; 0-3 cloud dips, each 1-4 ticks at 20-70 % less sun.
    - ``demand`` [W, float, 3 decimals]: 0.6 W at night, +0.5 W by day, a morning peak
      (+1.0 W, tick 16-20, sd 2 ticks) and an evening peak (+1.5 W, tick 44-49, sd 3 ticks),
      times a day level of 0.85-1.15, plus independent normal noise (sd 0.15 W) per tick,
      clipped to 0..4 W; peaks reach about 2.8 W, so the total mostly stays within the three
      1 W loads (above 3 W it cannot be served).
    - ``sell_price`` (import) [c/J, int]: a level ``75 + 22 c/J per W x (demand - sun x``
      :data:`TEACHING_PV_CAPABILITY_W` ``)`` plus independent uniform noise of +-20 c/J per
      tick, rounded and clipped to 10..150 c/J. ``buy_price`` (export) [c/J, int]: import x a
      day's ratio of 0.4-0.7, rounded (>= 0, below import).
    - ``deferables``: 1-3 jobs ``{"start", "end", "energy"}`` (ticks, ``end`` the inclusive
      deadline; J): start tick 0-49, window 6-20 ticks (ending by tick 59), energy 10-33 % of
      what the deferrable board (:data:`TEACHING_DEFERRABLE_W`) can deliver in the window, so
      the ordinary jobs of a day always fit together. On :data:`TEACHING_ODD_DAY_SHARE` of the
      days one job is made odd, as a teaching server's can be (:data:`TEACHING_ODDITIES`):
      ``start_after_end`` (start and end swapped: the start 5-19 ticks after the end),
      ``start_past_day`` (start at tick 60-69, past the day's last tick 59, end 0-9 ticks
      later) or ``energy_over_window`` (energy 1.2-2x what the board can deliver in the window).
      They are served as they are: normalising them is the client's business.

    Parameters
    ----------
    n_days : int
        Days (>= 1).
    seed : int
        Seed of the days (>= 0).

    Returns
    -------
    list of dict
        As :func:`generate_lab_days`, ``date`` a label ``'teaching-0000'``, ``'teaching-0001'``, ...

    Raises
    ------
    ValueError
        On ``n_days < 1`` or a negative seed.
    """
    if n_days < 1 or seed < 0:
        raise ValueError(f"need n_days >= 1 and seed >= 0, got {n_days}, {seed}")
    days = []
    for i in range(n_days):
        rng = np.random.default_rng([seed, i])
        sun = np.rint(_teaching_sun(rng)).astype(int)
        demand = np.round(_teaching_demand(rng), 3)
        level = 75.0 + 22.0 * (demand - sun / 100.0 * TEACHING_PV_CAPABILITY_W)
        sell = np.clip(np.rint(level + rng.uniform(-20.0, 20.0, N_TICKS)), 10, 150).astype(int)
        buy = np.rint(sell * rng.uniform(0.4, 0.7)).astype(int)
        days.append({"date": f"teaching-{i:04d}", "sun": sun.tolist(), "demand": demand.tolist(),
                     "sell_price": sell.tolist(), "buy_price": buy.tolist(), "deferables": _teaching_jobs(rng)})
    return days


def _route(path: str) -> str:
    """An endpoint's path without query or trailing slash (``'/sun?x=1'`` -> ``'/sun'``)."""
    return path.split("?")[0].rstrip("/")


class LabFeedServer:
    """The feed on ``127.0.0.1`` (a free port), serving ``days`` cyclically from ``day0``.

    Parameters
    ----------
    days : list of dict
        From :func:`generate_lab_days` or :func:`generate_teaching_days`; served as they are
        (odd deferrable windows too).
    clock : callable
        Unix time [s].
    day0 : int, optional
        Lab day index served as ``days[0]``; default the clock's current day.

    Attributes
    ----------
    url : str
    delay_s : float
        Sleep before every answer [s] (a slow server), or only before those of
        ``slow_endpoints`` when that set is not empty (e.g. ``{"/yesterday"}``).
    failing : bool
        Answer HTTP 503 to everything (a broken server).
    failing_endpoints : set of str
        Paths (e.g. ``{"/yesterday"}``) answered HTTP 503 while the rest work.
    requests : int
        Requests answered (or refused) so far.
    """

    def __init__(self, days: list[dict], clock=time.time, day0: int | None = None):
        if not days:
            raise ValueError("need at least one day")
        self.days, self.clock = days, clock
        self.day0 = int(clock() // DAY_S) if day0 is None else int(day0)
        self.delay_s, self.failing, self.requests = 0.0, False, 0
        self.failing_endpoints: set[str] = set()
        self.slow_endpoints: set[str] = set()
        self.bad_answers: dict[str, object] = {}   # path -> body served with 200 instead (spec tests)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):   # keep test output quiet
                pass

            def do_GET(self):   # noqa: N802 - http.server API
                server.requests += 1
                if server.delay_s and (not server.slow_endpoints or _route(self.path) in server.slow_endpoints):
                    time.sleep(server.delay_s)
                status, body = server.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _day(self, index: int) -> dict:
        return self.days[(index - self.day0) % len(self.days)]

    def answer(self, path: str):
        """(HTTP status, JSON body) for ``path`` at the current clock."""
        path = _route(path)
        if self.failing or path in self.failing_endpoints:
            return 503, {"error": "unavailable"}
        if path in self.bad_answers:
            return 200, self.bad_answers[path]
        t = self.clock()
        day = int(t // DAY_S)
        tick = min(int((t - day * DAY_S) / DAY_S * N_TICKS), N_TICKS - 1)
        d = self._day(day)
        if path == "/sun":
            return 200, {"tick": tick, "sun": d["sun"][tick]}
        if path == "/price":
            return 200, {"day": day, "tick": tick, "sell_price": d["sell_price"][tick], "buy_price": d["buy_price"][tick]}
        if path == "/demand":
            return 200, {"day": day, "tick": tick, "demand": d["demand"][tick]}
        if path == "/deferables":
            return 200, d["deferables"]
        if path == "/yesterday":
            y = self._day(day - 1)
            return 200, [{"tick": k, "demand": y["demand"][k], "sell_price": y["sell_price"][k],
                          "buy_price": y["buy_price"][k]} for k in range(N_TICKS)]
        return 404, {"error": f"no endpoint {path}"}

    def close(self) -> None:
        """Stop serving and free the port (afterwards connections are refused)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def feed_days(kind: str, n_days: int, first_day: str | None = None, seed: int = 0) -> list[dict]:
    """The day before the first and ``n_days`` days of a kind, ``n_days + 1`` days in all.

    Parameters
    ----------
    kind : str
        ``'real'`` (:func:`generate_lab_days` from the real day before ``first_day``) or
        ``'teaching'`` (:func:`generate_teaching_days` of ``seed``: its day 0 is the day before).
    n_days : int
        Days after the day before (>= 1).
    first_day : str, optional
        ISO date of the first real day (needed for, and only for, ``'real'``).
    seed : int
        Seed of the teaching days (ignored for ``'real'``).

    Raises
    ------
    ValueError
        An unknown kind, a missing or needless ``first_day``, or as the generators.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of day {kind!r}; known {KINDS}")
    if kind == "teaching":
        if first_day is not None:
            raise ValueError("teaching days have no date: give no first day")
        return generate_teaching_days(n_days + 1, seed)
    if first_day is None:
        raise ValueError("real days need the first day's date")
    before = (_dt.date.fromisoformat(first_day) - _dt.timedelta(days=1)).isoformat()
    try:
        return generate_lab_days(before, n_days + 1)
    except ValueError as exc:
        raise ValueError(f"serving from {first_day} needs the real day before it, {before}: {exc}") from exc


def serve_days(first_day: str | None, n_days: int, clock=time.time, day0: int | None = None,
               kind: str = "real", seed: int = 0) -> LabFeedServer:
    """A :class:`LabFeedServer` playing ``n_days`` days of ``kind`` (:func:`feed_days`: real days
    from ``first_day``, or teaching days of ``seed``), the first on lab day ``day0`` (default:
    the clock's current day).

    The day before the first (the real day before ``first_day``; teaching day 0) is served
    first, on lab day ``day0 - 1``, so that the first day's ``/yesterday`` is that day: the days
    repeat cyclically, and that answer would otherwise be the last day, a future one, which the
    edge's learner would learn from. After the last day the cycle (from the day before) repeats.
    ``server.days[1:]`` are the ``n_days`` days. Raises ValueError as :func:`feed_days`.
    """
    days = feed_days(kind, n_days, first_day, seed)
    first = int(clock() // DAY_S) if day0 is None else int(day0)
    return LabFeedServer(days, clock, day0=first - 1)
