"""A local server of the lab market feed API (DESIGN.md section 2), serving real days.

For tests and offline demos: it answers ``GET /sun``, ``/price``, ``/demand``, ``/deferables``
and ``/yesterday`` on loopback exactly as specified (day index = ``int(unix_time / 300)``, tick =
position in the 300 s window x 60), from lab days generated from the real scenario
(:func:`generate_lab_days`). Its clock is injected, so a test can leap through days, and it can
be made slow (``delay_s``) or failing (``failing``: HTTP 503 to everything; ``failing_endpoints``:
HTTP 503 on those paths only) to exercise the client's fallbacks.
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


def _route(path: str) -> str:
    """An endpoint's path without query or trailing slash (``'/sun?x=1'`` -> ``'/sun'``)."""
    return path.split("?")[0].rstrip("/")


class LabFeedServer:
    """The feed on ``127.0.0.1`` (a free port), serving ``days`` cyclically from ``day0``.

    Parameters
    ----------
    days : list of dict
        From :func:`generate_lab_days`.
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


def serve_days(first_day: str, n_days: int, clock=time.time, day0: int | None = None) -> LabFeedServer:
    """A :class:`LabFeedServer` playing ``n_days`` real days from ``first_day``, the first on lab
    day ``day0`` (default: the clock's current day).

    The real day before ``first_day`` is served first, on lab day ``day0 - 1``, so that the first
    day's ``/yesterday`` is that day: the days repeat cyclically, and that answer would otherwise
    be the last day, a future one, which the edge's learner would learn from. After the last day
    the cycle (from the day before) repeats. ``server.days[1:]`` are the ``n_days`` days. Raises
    ValueError as :func:`generate_lab_days`.
    """
    before = (_dt.date.fromisoformat(first_day) - _dt.timedelta(days=1)).isoformat()
    try:
        days = generate_lab_days(before, n_days + 1)
    except ValueError as exc:
        raise ValueError(f"serving from {first_day} needs the real day before it, {before}: {exc}") from exc
    first = int(clock() // DAY_S) if day0 is None else int(day0)
    return LabFeedServer(days, clock, day0=first - 1)
