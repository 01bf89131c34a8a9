"""Client of the lab kit's market feed, with caching, and an online day-profile learner.

The feed (docs/design.md section 2) publishes one "day" of 60 ticks of 5 s, so a day lasts 300 s:
day index = ``int(unix_time / 300)``, tick = position in that 300 s window x 60. Endpoints:

=================  =========================================================  ================
``GET /sun``       ``{"tick": int, "sun": int}``                              percent of PV capability
``GET /price``     ``{"day", "tick", "sell_price": int, "buy_price": int}``   cents per joule
``GET /demand``    ``{"day", "tick", "demand": float}``                       watts
``GET /deferables`` ``[{"start": int, "end": int, "energy": float}, ...]``    ticks, joules
``GET /yesterday`` 60 x ``{"tick", "demand", "sell_price", "buy_price"}``     as above
=================  =========================================================  ================

``sell_price`` is what the grid sells to you (your import price), ``buy_price`` what it pays you
(export). The server can be slow or down: every request has a timeout, the last good answer of
each endpoint is cached, a server that does not answer (refused, timeout) is left alone for
``retry_after_s``, an endpoint that answers badly (HTTP error, bad JSON, spec violation) is left
alone for as long while the others are still asked, and :meth:`LabFeed.snapshot` then answers
from the cache (same day and tick) or from the online learner's forecast of the tick, and says
which in ``sources`` and ``status``. The server's own ``day``/``tick`` (``/price``,
``/demand``) is the authority over the edge's clock; a difference is logged.

No answer stops the edge (issue 27): a request has an overall deadline (wall time from
connect to the last body byte, not only the socket timeout: a server that drips a byte at a
time is cut off), a body above ``max_body_bytes`` is refused, JSON nested deeper than
:data:`MAX_JSON_DEPTH` or with number literals longer than :data:`MAX_NUMBER_CHARS` is refused
before the parser recurses or converts, and any exception of the transport or the parser is
a bad answer like an HTTP error, logged once per kind and endpoint until it answers again.

:class:`OnlineDayLearner` learns from the ``/yesterday`` days it has seen: a set of simple
day-profile predictors (yesterday, means of the last k days, exponentially weighted means,
shape of the recent mean at yesterday's level) and a set of decay rates of today's observed
gap to that profile are scored on every new day before it is learned from, and the choice
with the lowest mean absolute error so far is used (follow the leader over experts,
Cesa-Bianchi & Lugosi, "Prediction, Learning, and Games", 2006, ch. 4). Its P10/P90 are the
point forecast plus quantiles of its own errors on the days seen, each new day's errors taken
before the day is learned from (online split-conformal bands, Vovk et al., "Algorithmic
Learning in a Random World", 2005).

The feed tells no past sun: :class:`DaySunFit` learns the day's sun within the day, from the
ticks seen since midnight (a half-sine day curve, zero at night, weighed on a grid posterior),
for an edge that has not seen a whole day's sun yet.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import re
import reprlib
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

DAY_S = 300.0          # one lab day [s]
TICKS_PER_DAY = 60     # lab ticks per day
TICK_S = DAY_S / TICKS_PER_DAY
ENDPOINTS = ("sun", "price", "demand", "deferables", "yesterday")
LEARNED = ("demand", "sell_price", "buy_price")


class LabFeedError(RuntimeError):
    """The feed gave no usable answer and nothing cached or forecast can stand in."""


#: deepest JSON nesting accepted (the spec's deepest answer is a list of objects: 2)
MAX_JSON_DEPTH = 16
#: longest number literal accepted [characters] (a price or a tick needs far fewer)
MAX_NUMBER_CHARS = 40
#: largest body accepted [bytes] (/yesterday, the largest answer, is about 5 kB)
MAX_BODY_BYTES = 256 * 1024

_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _DeadlineExceeded(TimeoutError):
    """The request's overall deadline passed (a server too slow, or dripping bytes)."""


def _check_depth(body: bytes, max_depth: int = MAX_JSON_DEPTH):
    """Raise ValueError if the JSON text ``body`` nests deeper than ``max_depth`` (strings skipped)."""
    depth = 0
    for m in _JSON_TOKENS.finditer(body):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth}")
        elif c in (b"]", b"}"):
            depth -= 1


def _bounded_int(text):
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"JSON integer of {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _bounded_float(text):
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"JSON number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return float(text)


def _no_constant(text):
    raise ValueError(f"JSON constant {text} is not a number the spec allows")


def loads_bounded(body: bytes):
    """Parse a feed answer: UTF-8 JSON of bounded depth and number sizes.

    Raises
    ------
    ValueError
        Not UTF-8, not JSON, too deep, a number literal too long, NaN/Infinity.
    """
    _check_depth(body)
    try:
        return json.loads(body.decode("utf-8"), parse_int=_bounded_int, parse_float=_bounded_float,
                          parse_constant=_no_constant)
    except RecursionError as exc:     # the depth check should have caught it
        raise ValueError("JSON too deeply nested") from exc


class _DeadlineRaw(io.RawIOBase):
    """The socket's reads, each given what is left of the request's deadline (and no more
    than the per-read timeout); past the deadline a read raises :class:`_DeadlineExceeded`."""

    def __init__(self, sock, deadline, timeout_s):
        self._sock, self._deadline, self._timeout_s = sock, deadline, timeout_s

    def readable(self):
        return True

    def readinto(self, b):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded("timed out: the request's deadline passed")
        self._sock.settimeout(min(left, self._timeout_s))
        try:
            return self._sock.recv_into(b)
        except TimeoutError as exc:
            if time.monotonic() >= self._deadline:
                raise _DeadlineExceeded("timed out: the request's deadline passed") from exc
            raise


class _DeadlineSocket:
    """A connected socket whose ``makefile`` reads under the deadline (what http.client reads
    the status line, headers and body through); anything else goes to the socket."""

    def __init__(self, sock, deadline, timeout_s):
        self._sock, self._deadline, self._timeout_s = sock, deadline, timeout_s

    def makefile(self, mode="rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineRaw(self._sock, self._deadline, self._timeout_s))

    def sendall(self, data, *args):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded("timed out: the request's deadline passed")
        self._sock.settimeout(min(left, self._timeout_s))
        return self._sock.sendall(data, *args)

    def close(self):
        """Left open: http.client closes the connection while the response is still read
        (``Connection: close``); :func:`fetch_bounded` closes the socket when done."""

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _DeadlineHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, deadline, timeout_s):
        super().__init__(host, port, timeout=max(1e-3, min(timeout_s, deadline - time.monotonic())))
        self._deadline, self._timeout_s = deadline, timeout_s

    def connect(self):
        super().connect()
        self.raw_sock = self.sock
        self.sock = _DeadlineSocket(self.sock, self._deadline, self._timeout_s)


class _DeadlineHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, deadline, timeout_s):
        super().__init__(host, port, timeout=max(1e-3, min(timeout_s, deadline - time.monotonic())))
        self._deadline, self._timeout_s = deadline, timeout_s

    def connect(self):
        super().connect()      # TCP and TLS handshakes under the connect timeout
        self.raw_sock = self.sock
        self.sock = _DeadlineSocket(self.sock, self._deadline, self._timeout_s)


def fetch_bounded(url: str, timeout_s: float, deadline_s: float, max_body_bytes: int = MAX_BODY_BYTES) -> bytes:
    """GET ``url``'s body within ``deadline_s`` of wall time, each socket operation within
    ``timeout_s``, the body at most ``max_body_bytes``.

    Raises
    ------
    urllib.error.HTTPError
        A status other than 200.
    TimeoutError
        The deadline passed (status line, headers or body still coming).
    ValueError
        A body (declared or read) above the cap.
    OSError, http.client.HTTPException
        Refused, reset, a bad status line, an incomplete body ...
    """
    deadline = time.monotonic() + deadline_s
    u = urllib.parse.urlsplit(url)
    cls = _DeadlineHTTPS if u.scheme == "https" else _DeadlineHTTP
    conn = cls(u.hostname, u.port, deadline, timeout_s)
    try:
        conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""),
                     headers={"Accept": "application/json", "Connection": "close"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise urllib.error.HTTPError(url, resp.status, resp.reason, resp.headers, None)
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > max_body_bytes:
            raise ValueError(f"body of {int(length)} bytes declared (at most {max_body_bytes})")
        chunks, size = [], 0
        while True:
            chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_body_bytes:
                raise ValueError(f"body above {max_body_bytes} bytes")
            chunks.append(chunk)
        if length is not None and length.strip().isdigit() and size < int(length):
            raise http.client.IncompleteRead(b"".join(chunks), int(length) - size)
        return b"".join(chunks)
    finally:
        conn.close()
        raw = getattr(conn, "raw_sock", None)
        if raw is not None:
            raw.close()


def day_tick(unix_time_s: float) -> tuple[int, int]:
    """Lab day index and tick of a Unix time (docs/design.md section 2).

    Returns
    -------
    (int, int)
        ``int(t / 300)`` and ``int((t mod 300) / 300 * 60)`` (0..59).
    """
    t = float(unix_time_s)
    day = int(t // DAY_S)
    return day, min(int((t - day * DAY_S) / DAY_S * TICKS_PER_DAY), TICKS_PER_DAY - 1)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40


def _short(value):
    """A bounded repr of a value from the wire (any depth, any size) for a message."""
    try:
        return _REPR.repr(value)[:200]
    except Exception:       # noqa: BLE001 - a message must not fail
        return f"<{type(value).__name__}>"


def _need(payload, keys, what):
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise ValueError(f"/{what}: expected an object with {list(keys)}, got {_short(payload)}")
    return payload


def _as_float(v, key, what):
    """A JSON number as a float; an int past the float range is a ValueError, not an OverflowError."""
    try:
        return float(v)
    except OverflowError:
        raise ValueError(f"/{what}: {key} is past the float range ({_short(v)})") from None


def _number(p, key, what, lo=-math.inf, hi=math.inf):
    """``p[key]`` as a float: a JSON number (not a bool, null or string), finite, in [lo, hi]."""
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"/{what}: {key} must be a finite number, got {_short(v)}")
    f = _as_float(v, key, what)
    if not math.isfinite(f):
        raise ValueError(f"/{what}: {key} must be a finite number, got {_short(v)}")
    if not lo <= f <= hi:
        raise ValueError(f"/{what}: {key} must be in {lo:g}..{hi:g}, got {_short(v)}")
    return f


def _json_number(p, key, what):
    """``p[key]`` as a float: a JSON number (not a bool, null or string), any value."""
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"/{what}: {key} must be a number, got {_short(v)}")
    return _as_float(v, key, what)


def _whole(v):
    """A tick as an int when it is a whole number, else the float as it was."""
    return int(v) if math.isfinite(v) and v.is_integer() else v


def _integer(p, key, what, lo=0, hi=math.inf):
    """``p[key]`` as an int: a whole JSON number in [lo, hi] (ticks and days index arrays)."""
    v = _number(p, key, what, lo, hi)
    if not v.is_integer():
        raise ValueError(f"/{what}: {key} must be a whole number, got {p[key]}")
    return int(v)


def _tick(p, what, key="tick"):
    return _integer(p, key, what, 0, TICKS_PER_DAY - 1)


def parse(endpoint: str, payload):
    """Check one endpoint's JSON against the spec and convert it to project units.

    Every field must be a JSON number (a bool, null or string is a violation), finite; ticks
    are whole numbers in 0..59 and days >= 0, since they index the edge's day arrays. The
    values of a ``/deferables`` job are the exception: any number, normalised per job later.

    Returns
    -------
    dict or list
        ``sun``: ``{'tick', 'sun_fraction'}`` [0..1]; ``price``: ``{'day', 'tick',
        'import_price_per_j', 'export_price_per_j'}`` [c/J]; ``demand``: ``{'day', 'tick',
        'demand_w'}`` [W]; ``deferables``: list of ``{'start_tick', 'end_tick', 'energy_j'}``
        (window ``start_tick <= t < end_tick``: the feed's inclusive deadline ``end`` plus one;
        each a JSON number, its value as stated: a window no tick can serve is left to
        :func:`picogrid.edge.sources.deferrable.normalise_jobs`, one job's oddity does not spoil the others);
        ``yesterday``: ``{'demand_w', 'sell_price', 'buy_price'}`` arrays [60] ordered by tick.

    Raises
    ------
    ValueError
        A payload that does not follow the spec.
    """
    if endpoint == "sun":
        p = _need(payload, ("tick", "sun"), endpoint)
        return {"tick": _tick(p, endpoint), "sun_fraction": _number(p, "sun", endpoint, 0, 100) / 100.0}
    if endpoint == "price":
        p = _need(payload, ("day", "tick", "sell_price", "buy_price"), endpoint)
        return {"day": _integer(p, "day", endpoint), "tick": _tick(p, endpoint),
                "import_price_per_j": _number(p, "sell_price", endpoint),
                "export_price_per_j": _number(p, "buy_price", endpoint)}
    if endpoint == "demand":
        p = _need(payload, ("day", "tick", "demand"), endpoint)
        return {"day": _integer(p, "day", endpoint), "tick": _tick(p, endpoint),
                "demand_w": _number(p, "demand", endpoint, lo=0.0)}
    if endpoint == "deferables":
        if not isinstance(payload, list):
            raise ValueError(f"/deferables: expected a list, got {_short(payload)}")
        out = []
        for d in payload:
            _need(d, ("start", "end", "energy"), endpoint)
            start, end, energy = (_json_number(d, k, endpoint) for k in ("start", "end", "energy"))
            # the feed's "end" is the deadline tick, inclusive (its deadlines run up to tick 59,
            # the day's last); the project's windows end exclusive, so convert once, here. Odd
            # values (a start after its end or past the day, energy that cannot be delivered)
            # are the job's own business, not the answer's: normalise_jobs says what it did
            out.append({"start_tick": _whole(start), "end_tick": _whole(end + 1), "energy_j": energy})
        return out
    if endpoint == "yesterday":
        if not isinstance(payload, list) or len(payload) != TICKS_PER_DAY:
            raise ValueError(f"/yesterday: expected {TICKS_PER_DAY} records, got {_short(payload)}")
        rows = {}
        for r in payload:
            _need(r, ("tick", "demand", "sell_price", "buy_price"), endpoint)
            rows[_tick(r, endpoint)] = (_number(r, "demand", endpoint, lo=0.0),
                                        _number(r, "sell_price", endpoint), _number(r, "buy_price", endpoint))
        if len(rows) != TICKS_PER_DAY:
            raise ValueError("/yesterday: ticks must be 0..59 once each")
        cols = np.array([rows[t] for t in range(TICKS_PER_DAY)])
        return {"demand_w": cols[:, 0], "sell_price": cols[:, 1], "buy_price": cols[:, 2]}
    raise ValueError(f"unknown endpoint {endpoint!r}; known {ENDPOINTS}")


def pooled_quantiles(errors, quantiles, window: int, min_samples: int) -> np.ndarray:
    """Quantiles of errors per tick of day, each pooling the ticks within ``window`` of it.

    Parameters
    ----------
    errors : array [samples, ..., n_ticks]
        Errors by target tick of day (last axis), NaN where there is none [series unit].
    quantiles : sequence of float
    window : int
        Ticks either side pooled (not across midnight).
    min_samples : int
        Fewer finite errors in a pool give NaN there.

    Returns
    -------
    numpy.ndarray [len(quantiles), ..., n_ticks]
        Linear-interpolation quantiles (numpy's default) over the samples and the window.
    """
    errors = np.asarray(errors, np.float64)
    n = errors.shape[-1]
    padded = np.full(errors.shape[:-1] + (n + 2 * window,), np.nan)
    padded[..., window:window + n] = errors
    pool = np.concatenate([padded[..., s:s + n] for s in range(2 * window + 1)], axis=0)
    # sorted, NaN last: the quantiles of each pool's finite values by index (faster than nanquantile)
    pool.sort(axis=0)
    count = np.isfinite(pool).sum(axis=0)
    out = np.full((len(quantiles),) + errors.shape[1:], np.nan)
    enough = count >= min_samples
    for j, q in enumerate(quantiles):
        pos = q * (np.maximum(count, 1) - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, np.maximum(count, 1) - 1)
        a = np.take_along_axis(pool, lo[None], axis=0)[0]
        b = np.take_along_axis(pool, hi[None], axis=0)[0]
        out[j] = np.where(enough, a + (b - a) * (pos - lo), np.nan)
    return out


class OnlineDayLearner:
    """Forecasts the lab day's demand and prices from the days seen so far.

    Two things are learned online, each scored on every new day *before* that day is learned
    from: the day profile (which expert of :attr:`EXPERTS`) and how fast the gap between today's
    observed values and that profile decays over the steps ahead (``rho`` of :attr:`RHOS`;
    the forecast of step ``h`` ahead is ``profile + gap * rho**h``, the gap being the mean error
    of the profile over the last :attr:`GAP_TICKS` observed ticks of today).

    Parameters
    ----------
    n_ticks : int
        Ticks per day (60 on the lab feed).
    max_days : int
        Days kept.

    Notes
    -----
    Until two days have been scored it answers exactly "same tick yesterday" (no correction).
    """

    #: (name, kind, parameter): 'last' = mean of the last k days, 'ewm' = exponentially
    #: weighted mean with this half-life [days], 'shape' = mean of the last k days shifted to
    #: yesterday's daily mean
    EXPERTS = (("yesterday", "last", 1), ("mean2", "last", 2), ("mean3", "last", 3), ("mean5", "last", 5),
               ("mean7", "last", 7), ("ewm1", "ewm", 1.0), ("ewm2", "ewm", 2.0), ("ewm4", "ewm", 4.0),
               ("shape3", "shape", 3), ("shape7", "shape", 7))
    RHOS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98)
    GAP_TICKS = 1
    #: error quantiles: the errors of forecasts issued up to ``BAND_TICKS`` ticks before the
    #: one asked for, of targets within ``BAND_TICKS`` of each target tick, are pooled
    BAND_TICKS = 2
    #: a pool with fewer errors than this gives no band there (the point forecast)
    BAND_MIN_SAMPLES = 10
    #: days of errors before there is a band: one day's errors are one draw of a day's shape,
    #: and bands from them held 38-54 % of the next days' values, from three on about 80 %
    BAND_MIN_DAYS = 3

    def __init__(self, n_ticks: int = TICKS_PER_DAY, max_days: int = 28):
        self.n_ticks = int(n_ticks)
        self.max_days = int(max_days)
        self.days: list[int] = []
        self.data: dict[str, list[np.ndarray]] = {k: [] for k in LEARNED}
        self.loss: dict[str, dict[str, list[float]]] = {k: {e[0]: [] for e in self.EXPERTS} for k in LEARNED}
        self.rho_loss: dict[str, dict[float, list[float]]] = {k: {r: [] for r in self.RHOS} for k in LEARNED}
        # per day seen after the first: errors [issue tick, target tick] (NaN before the issue tick)
        self.errors: dict[str, list[np.ndarray]] = {k: [] for k in LEARNED}
        self._bands: dict[str, np.ndarray | None] = {k: None for k in LEARNED}

    def _predict(self, series: str, expert) -> np.ndarray:
        _, kind, par = expert
        past = np.asarray(self.data[series])
        if kind == "last":
            return past[-int(par):].mean(axis=0)
        if kind == "ewm":
            w = 0.5 ** (np.arange(len(past))[::-1] / par)
            return (w[:, None] * past).sum(axis=0) / w.sum()
        mean = past[-int(par):].mean(axis=0)
        return mean - mean.mean() + past[-1].mean()

    def _profile(self, series: str) -> np.ndarray:
        name = self.best_expert(series)
        return self._predict(series, next(e for e in self.EXPERTS if e[0] == name))

    def _corrected(self, profile, today, horizon: int, rho: float) -> np.ndarray:
        """Forecast of ``horizon`` steps from tick ``len(today)`` (wrapping over midnight)."""
        t = len(today)
        steps = (t + np.arange(horizon)) % self.n_ticks
        out = profile[steps].copy()
        if t and rho > 0:
            seen = np.flatnonzero(np.isfinite(today))[-self.GAP_TICKS:]
            if seen.size:
                gap = float(np.mean(today[seen] - profile[seen]))
                out += gap * rho ** (t - seen[-1] + np.arange(horizon))
        return out

    def observe_day(self, day: int, series: dict) -> None:
        """Learn one finished day (e.g. from ``/yesterday``); a day already seen is ignored.

        Parameters
        ----------
        day : int
            Lab day index of the data.
        series : dict
            ``demand_w`` [W], ``sell_price`` and ``buy_price`` [c/J], arrays [n_ticks].

        Raises
        ------
        ValueError
            Wrong length or non-finite values.
        """
        if day in self.days:
            return
        arrays = {}
        for key in LEARNED:
            a = np.asarray(series["demand_w" if key == "demand" else key], np.float64).ravel()
            if a.size != self.n_ticks or not np.isfinite(a).all():
                raise ValueError(f"{key}: need {self.n_ticks} finite values, got {a.size}")
            arrays[key] = a
        for key, a in arrays.items():
            if self.data[key]:
                # the errors of the forecasts it would have issued at each tick today (the bands')
                profile, rho = self._profile(key), self.best_rho(key)
                today = np.full((self.n_ticks, self.n_ticks), np.nan)
                for t in range(self.n_ticks):
                    today[t, t:] = a[t:] - self._corrected(profile, a[:t], self.n_ticks - t, rho)
                self.errors[key] = (self.errors[key] + [today])[-self.max_days:]
                self._bands[key] = None
                # score before learning: what would each choice have said today?
                for expert in self.EXPERTS:
                    self.loss[key][expert[0]].append(float(np.mean(np.abs(self._predict(key, expert) - a))))
                profile = self._profile(key)
                for rho in self.RHOS:
                    err = [np.mean(np.abs(self._corrected(profile, a[:t], self.n_ticks - t, rho) - a[t:]))
                           for t in range(1, self.n_ticks)]
                    self.rho_loss[key][rho].append(float(np.mean(err)))
            self.data[key] = (self.data[key] + [a])[-self.max_days:]
        self.days = (self.days + [day])[-self.max_days:]

    def best_expert(self, series: str) -> str:
        """Name of the day-profile expert used for ``series`` (``'yesterday'`` until 2 days are scored)."""
        scored = {n: np.mean(v) for n, v in self.loss[series].items() if len(v) >= 2}
        return min(scored, key=scored.get) if scored else "yesterday"

    def best_rho(self, series: str) -> float:
        """Decay of today's gap used for ``series`` (0 = none, until 2 days are scored)."""
        scored = {r: np.mean(v) for r, v in self.rho_loss[series].items() if len(v) >= 2}
        return min(scored, key=scored.get) if scored else 0.0

    def _band_table(self, series: str) -> np.ndarray:
        """``[n_ticks (issue), 2 (P10, P90), n_ticks (target)]`` error quantiles, NaN where a pool
        is too small; cached until the next day is learned."""
        if self._bands[series] is None:
            n, w = self.n_ticks, self.BAND_TICKS
            err = np.stack(self.errors[series])                      # [days, issue, target]
            # the forecasts issued at ticks k - w .. k (none before tick 0) pool for issue tick k
            issued = np.full((w + 1,) + err.shape, np.nan)
            for a in range(w + 1):
                issued[a][:, a:] = err[:, :n - a]
            issued = issued.reshape((-1, n, n))                      # [samples, issue, target]
            self._bands[series] = np.moveaxis(
                pooled_quantiles(issued, (0.1, 0.9), w, self.BAND_MIN_SAMPLES), 0, 1)
        return self._bands[series]

    def band(self, series: str, tick: int, horizon: int | None = None):
        """Offsets of P10 and P90 from :meth:`forecast` issued at ``tick`` (``today`` holding
        ticks 0..tick-1), from its errors on the days seen.

        Returns
        -------
        (numpy.ndarray [horizon], numpy.ndarray [horizon]) or None
            P10 offset <= 0 <= P90 offset [series unit]; zero where too few errors were seen (a
            target past midnight takes the errors of the day-start forecast of that tick).
            None before ``BAND_MIN_DAYS`` days have been scored.
        """
        if series not in LEARNED:
            raise ValueError(f"unknown series {series!r}; known {LEARNED}")
        if len(self.errors[series]) < self.BAND_MIN_DAYS:
            return None
        n, k = self.n_ticks, int(tick)
        if not 0 <= k < n:
            raise ValueError(f"tick {tick} outside 0..{n - 1}")
        table = self._band_table(series)
        target = k + np.arange(horizon or n)
        q = np.where((target < n)[None, :], table[k][:, np.minimum(target, n - 1)], table[0][:, target % n])
        q = np.nan_to_num(q)
        return np.minimum(q[0], 0.0), np.maximum(q[1], 0.0)

    def forecast(self, series: str, today=None, horizon: int | None = None) -> np.ndarray:
        """Forecast of ``series`` from the tick after ``today``'s last value.

        Parameters
        ----------
        series : str
            ``'demand'`` [W], ``'sell_price'`` or ``'buy_price'`` [c/J].
        today : array [t], optional
            Values of today's ticks 0..t-1 seen so far (NaN where unknown); default none (t = 0).
        horizon : int, optional
            Steps; default ``n_ticks``. Steps past midnight use the same day profile.

        Returns
        -------
        numpy.ndarray [horizon]

        Raises
        ------
        ValueError
            Unknown series, no day observed yet, or ``today`` longer than a day.
        """
        if series not in LEARNED:
            raise ValueError(f"unknown series {series!r}; known {LEARNED}")
        if not self.data[series]:
            raise ValueError("no day observed yet")
        seen = np.asarray([] if today is None else today, np.float64).ravel()
        if seen.size >= self.n_ticks:
            raise ValueError(f"today has {seen.size} values; a day has {self.n_ticks} ticks")
        return self._corrected(self._profile(series), seen, horizon or self.n_ticks, self.best_rho(series))


@dataclass
class FeedSnapshot:
    """What the feed says about one tick, in project units, and where each value came from."""

    day: int
    tick: int
    sun_fraction: float | None
    demand_w: float | None
    import_price_per_j: float | None
    export_price_per_j: float | None
    deferables: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)   # field -> 'live' | 'cached' | 'forecast' | 'none'
    status: str = "ok"


class LabFeed:
    """HTTP client of the lab market feed.

    Parameters
    ----------
    base_url : str
        e.g. ``'http://127.0.0.1:8080'``.
    timeout_s : float
        Timeout of each socket operation [s]; keep it well below the 5 s tick.
    deadline_s : float, optional
        Overall wall time of one request, connect to last byte [s]; default twice
        ``timeout_s``. A server that drips its answer is cut off here.
    max_body_bytes : int
        Longer answers are refused (a bad answer).
    snapshot_deadline_s : float, optional
        Wall time all the requests of one :meth:`snapshot` may take together [s]; default
        twice ``deadline_s``. An endpoint asked after it is spent is not asked (cache or
        forecast), so a server that answers each request just in time cannot stretch a tick.
    retry_after_s : float
        After a failure, the server is not asked again for this long [s] (the tick goes on
        with cached/forecast values instead of waiting on a dead server every call).
    clock : callable, optional
        Unix time [s]; default :func:`time.time` (injected so tests can leap days).
    learner : OnlineDayLearner, optional
        Learns from ``/yesterday``; its forecast stands in when the feed is down.
    """

    def __init__(self, base_url: str, timeout_s: float = 0.5, retry_after_s: float = TICK_S, clock=None,
                 learner: OnlineDayLearner | None = None, deadline_s: float | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, snapshot_deadline_s: float | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be http(s)://..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s) if deadline_s is not None else 2.0 * self.timeout_s
        self.max_body_bytes = int(max_body_bytes)
        self.snapshot_deadline_s = (float(snapshot_deadline_s) if snapshot_deadline_s is not None
                                    else 2.0 * self.deadline_s)
        self._until = None          # monotonic end of the snapshot under way (None: none)
        self.failures: dict[tuple[str, str], int] = {}   # (endpoint, exception kind) -> count
        self.retry_after_s = float(retry_after_s)
        self.clock = clock or time.time
        self.learner = learner if learner is not None else OnlineDayLearner()
        self.cache: dict[str, tuple[float, object]] = {}
        self._down_until = -np.inf                 # the whole server (it did not answer)
        self._endpoint_retry: dict[str, float] = {}  # one endpoint (it answered badly)
        self.last_error: str | None = None
        self.clock_skew_ticks = 0                  # server tick - local tick, last seen
        self._today_day = None
        self.today = {k: np.full(TICKS_PER_DAY, np.nan) for k in LEARNED}

    def get(self, endpoint: str):
        """Fetch and parse one endpoint, or raise :class:`LabFeedError` (timeout, refused,
        HTTP error, bad JSON or spec violation); a success refreshes the cache."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known {ENDPOINTS}")
        now = self.clock()
        if now < self._down_until:
            raise LabFeedError(f"/{endpoint}: feed marked down ({self.last_error}); retry after "
                               f"{self._down_until - now:.1f} s")
        if now < self._endpoint_retry.get(endpoint, -np.inf):
            raise LabFeedError(f"/{endpoint}: left alone after a bad answer; retry after "
                               f"{self._endpoint_retry[endpoint] - now:.1f} s")
        deadline_s = self.deadline_s
        if self._until is not None:
            deadline_s = min(deadline_s, self._until - time.monotonic())
            if deadline_s <= 0:
                raise LabFeedError(f"/{endpoint}: not asked, this tick's {self.snapshot_deadline_s:g} s "
                                   "for the feed are spent")
        url = f"{self.base_url}/{endpoint}"
        try:
            value = parse(endpoint, loads_bounded(fetch_bounded(url, self.timeout_s, deadline_s,
                                                                self.max_body_bytes)))
        except (OSError, http.client.RemoteDisconnected) as exc:
            if isinstance(exc, urllib.error.HTTPError):     # it answered, with an error status
                self._bad_answer(endpoint, now, exc)
            # no answer: refused, unreachable, reset, a timeout or the deadline
            self.last_error = f"/{endpoint}: {type(exc).__name__}: {exc}"
            self._failed(endpoint, exc)
            self._down_until = now + self.retry_after_s
            raise LabFeedError(self.last_error) from exc
        except Exception as exc:   # noqa: BLE001 - it answered badly: HTTP protocol, size, JSON, spec, anything else
            self._bad_answer(endpoint, now, exc)
        if self.failures:
            self._recovered(endpoint)
        self.cache[endpoint] = (now, value)
        return value

    def _bad_answer(self, endpoint, now, exc):
        """An answer that cannot be used: this endpoint is left alone for ``retry_after_s``."""
        self.last_error = f"/{endpoint}: {type(exc).__name__}: {str(exc)[:200]}"
        self._failed(endpoint, exc)
        self._endpoint_retry[endpoint] = now + self.retry_after_s
        raise LabFeedError(self.last_error) from exc

    def _failed(self, endpoint, exc):
        """Count a failure; log it the first time this kind of failure hits this endpoint."""
        key = (endpoint, type(exc).__name__)
        n = self.failures[key] = self.failures.get(key, 0) + 1
        if n == 1:
            log.warning("lab feed %s (logged once until /%s answers again)", self.last_error, endpoint)

    def _recovered(self, endpoint):
        gone = {k: n for k, n in self.failures.items() if k[0] == endpoint}
        if gone:
            for k in gone:
                del self.failures[k]
            log.warning("lab feed /%s answers again after %s", endpoint,
                        ", ".join(f"{n} x {k[1]}" for k, n in gone.items()))

    def _cached(self, endpoint: str, day: int, tick: int | None):
        """Cached value if it is still about this day (and tick, when the payload has one)."""
        if endpoint not in self.cache:
            return None
        t, value = self.cache[endpoint]
        d, k = day_tick(t)
        if d != day or (tick is not None and isinstance(value, dict) and value.get("tick", k) != tick):
            return None
        return value

    def update_history(self, day: int | None = None) -> bool:
        """Fetch ``/yesterday`` once per lab day (``day``: default the clock's) and teach the
        learner; False if unavailable."""
        if day is None:
            day, _ = day_tick(self.clock())
        if self.learner.days and self.learner.days[-1] == day - 1:
            return True
        try:
            self.learner.observe_day(day - 1, self.get("yesterday"))
            return True
        except LabFeedError as exc:
            log.debug("no /yesterday for day %d: %s", day - 1, exc)
            return False

    def snapshot(self) -> FeedSnapshot:
        """Everything the edge needs for the current tick; never raises because the server is
        slow or down: fields then come from the cache or the learner, and ``status`` says so.
        All its requests together take at most ``snapshot_deadline_s`` of wall time."""
        self._until = time.monotonic() + self.snapshot_deadline_s
        try:
            return self._snapshot()
        finally:
            self._until = None

    def _snapshot(self) -> FeedSnapshot:
        day, tick = day_tick(self.clock())
        notes, live = [], {}
        snap = FeedSnapshot(day, tick, None, None, None, None)
        for endpoint in ("sun", "price", "demand", "deferables"):
            try:
                value, how = self.get(endpoint), "live"
            except LabFeedError as exc:
                value = self._cached(endpoint, day, tick if endpoint != "deferables" else None)
                how = "cached" if value is not None else "none"
                notes.append(f"{exc} -> {how}")
            if endpoint == "sun" and value is not None:
                snap.sun_fraction = value["sun_fraction"]
            elif endpoint == "price" and value is not None:
                snap.import_price_per_j, snap.export_price_per_j = value["import_price_per_j"], value["export_price_per_j"]
            elif endpoint == "demand" and value is not None:
                snap.demand_w = value["demand_w"]
            elif endpoint == "deferables" and value is not None:
                snap.deferables = value
            snap.sources[endpoint] = how
            if how == "live":
                live[endpoint] = value
        day, tick = snap.day, snap.tick = self._server_day_tick(live, day, tick)
        # history after the live values: a slow /yesterday must not cost this tick its live data
        if not self.update_history(day):
            notes.append(f"no /yesterday history ({self.last_error})")
        if self._today_day != day:
            self._today_day = day
            for a in self.today.values():
                a[:] = np.nan
        if snap.sources["demand"] == "live":
            self.today["demand"][tick] = snap.demand_w
        if snap.sources["price"] == "live":
            self.today["sell_price"][tick] = snap.import_price_per_j
            self.today["buy_price"][tick] = snap.export_price_per_j
        if self.learner.data["demand"] and self.learner.days[-1] == day - 1:
            # no live or cached value: the learner's forecast of this tick from what today showed
            if snap.demand_w is None:
                snap.demand_w = float(self.learner.forecast("demand", self.today["demand"][:tick], 1)[0])
                snap.sources["demand"] = "forecast"
            if snap.import_price_per_j is None:
                snap.import_price_per_j = float(self.learner.forecast("sell_price", self.today["sell_price"][:tick], 1)[0])
                snap.export_price_per_j = float(self.learner.forecast("buy_price", self.today["buy_price"][:tick], 1)[0])
                snap.sources["price"] = "forecast"
        if notes:
            snap.status = "degraded: " + "; ".join(notes)
            # each kind of failure was logged once where it happened (LabFeed.get), not every tick
            log.debug("lab feed day %d tick %d %s", day, tick, snap.status)
        return snap

    def _server_day_tick(self, live, day, tick):
        """The (day, tick) the server's live ``/price`` or ``/demand`` states, else the local one.

        A request near a 5 s boundary, or an edge clock off from the server's, would otherwise
        file the values under the wrong tick; a change of the offset is logged.
        """
        stated = [(v["day"], v["tick"]) for k, v in live.items() if k in ("price", "demand")]
        if not stated:
            return day, tick
        server = max(stated)   # the two can straddle a boundary: the later one is current
        skew = (server[0] - day) * TICKS_PER_DAY + server[1] - tick
        if skew != self.clock_skew_ticks:
            log.warning("feed server says day %d tick %d, the edge clock day %d tick %d (%+d ticks)",
                        server[0], server[1], day, tick, skew)
            self.clock_skew_ticks = skew
        return server


class DaySunFit:
    """The sun of a day no earlier day tells about, learnt from the ticks seen so far today.

    The feed publishes the sun now, no history of it; an edge's first day on a feed has only
    what it saw since midnight. The day's clear sun is modelled as a clear-sky-like day curve,
    a half-sine between sunrise ``r`` and sunset ``s`` scaled to a peak ``a`` (fraction of PV
    capability), zero at night:

    .. math:: m(t) = a \\, \\sin\\big(\\pi (t - r) / (s - r)\\big) \\quad (r < t < s), \\quad 0 \\text{ else}.

    On a horizontal surface the extraterrestrial irradiance follows ``cos(zenith) = cos(phi)
    cos(delta) (cos(omega) - cos(omega_s))`` between sunrise and sunset (Duffie & Beckman,
    "Solar Engineering of Thermal Processes", 4th ed., 2013, sec. 1.6 and 1.10), which at the
    equinox is exactly this half-sine of the time since sunrise; a lab teaching server's sun is
    this half-sine too (in the server code lab teams copy: sunrise at tick 15, 30 ticks of
    daylight; noon far from mid-day would take more ticks to learn). Clouds only take sun away:
    a tick is clear with probability ``1 - CLOUD_P`` (``m`` with a relative spread
    :attr:`SIGMA_CLEAR`) or clouded, anywhere between 0 and ``m`` (uniform), so a cloud dip is
    not read as an early sunset (a robust mixture likelihood).

    ``(r, s, a)`` are not fitted once but weighed on a grid (a grid approximation of the
    posterior, Gelman et al., "Bayesian Data Analysis", 3rd ed., 2013, sec. 3.7): uniform over
    sunrise ticks :attr:`RISE_TICKS`, sunset ticks :attr:`SET_TICKS` (at least
    :attr:`MIN_DAY_TICKS` apart) and peaks :attr:`PEAKS`, with solar noon ``(r + s) / 2`` a
    priori near the middle of the lab day (normal, sd :attr:`NOON_SD_TICKS`: the feed's day
    runs midnight to midnight). The forecast is the posterior predictive: quantiles over the
    curves drawn from the posterior, each clear or clouded as above (night stays zero). Before
    sunrise every curve that has not risen yet weighs as before (zeros until the sun rises,
    then a wide band); each tick of daylight seen narrows the curves to the day's.

    Parameters
    ----------
    n_ticks : int
        Ticks per day.
    """

    RISE_TICKS = np.arange(-10.0, 36.0)
    SET_TICKS = np.arange(25.0, 71.0)
    MIN_DAY_TICKS = 10.0
    PEAKS = np.linspace(0.04, 1.0, 25)
    NOON_SD_TICKS = 4.0
    CLOUD_P = 0.25
    SIGMA_CLEAR = 0.08
    SIGMA_ABS = 0.01          # [fraction] the feed's integer percent, and a sun that is not quite 0
    #: curves drawn from the posterior, and the clear (normal quantiles) and clouded (uniform
    #: quantiles) outcomes of each, in proportion to CLOUD_P, for the predictive quantiles
    DRAWS = 200
    CLEAR_Z = (-1.64, -1.04, -0.67, -0.39, -0.13, 0.13, 0.39, 0.67, 1.04, 1.64)

    def __init__(self, n_ticks: int = TICKS_PER_DAY):
        self.n_ticks = int(n_ticks)
        r, s = np.meshgrid(self.RISE_TICKS, self.SET_TICKS, indexing="ij")
        ok = s - r >= self.MIN_DAY_TICKS
        self.rise, self.set = r[ok], s[ok]
        t = np.arange(self.n_ticks)[None, :]
        phase = (t - self.rise[:, None]) / (self.set - self.rise)[:, None]
        self.curves = np.where((phase > 0) & (phase < 1), np.sin(np.pi * np.clip(phase, 0, 1)), 0.0)  # [C, T]
        noon = 0.5 * (self.rise + self.set) - 0.5 * (self.n_ticks - 1)
        self.log_prior = -0.5 * (noon / self.NOON_SD_TICKS) ** 2                # [C]
        n_cloud = round(self.CLOUD_P / (1 - self.CLOUD_P) * len(self.CLEAR_Z))
        cloud = (np.arange(n_cloud) + 0.5) / n_cloud
        self.factors = np.concatenate([1.0 + self.SIGMA_CLEAR * np.asarray(self.CLEAR_Z), cloud])
        self._seen, self._logp = {}, None     # the ticks summed into the log-posterior so far

    def _loglik(self, tick, y):
        """Log-likelihood [peaks, curves] of seeing sun ``y`` [fraction] at ``tick``."""
        m = self.PEAKS[:, None] * self.curves[None, :, tick]                       # [A, C]
        sd = self.SIGMA_ABS + self.SIGMA_CLEAR * m
        clear = np.exp(-0.5 * ((y - m) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd)
        top = m + self.SIGMA_ABS
        return np.log((1 - self.CLOUD_P) * clear + self.CLOUD_P * (y <= top) / top + 1e-300)

    def posterior(self, sun_today):
        """Weights [peaks, curves] of each ``(a, r, s)`` given today's sun [n_ticks or fewer]
        (fraction of PV capability, NaN where not seen), summing to 1.

        The log-likelihood is a sum over the ticks seen: the ticks of the previous call are kept
        and only the new ones added (one tick per call on a feed), unless one of them changed.
        """
        y = np.asarray(sun_today, float)[: self.n_ticks]
        seen = {int(t): float(y[t]) for t in np.flatnonzero(np.isfinite(y))}
        if any(seen.get(t) != v for t, v in self._seen.items()):
            self._seen, self._logp = {}, None
        if self._logp is None:
            self._logp = np.broadcast_to(self.log_prior, (len(self.PEAKS), len(self.rise))).copy()
        for t, v in seen.items():
            if t not in self._seen:
                self._logp += self._loglik(t, v)
                self._seen[t] = v
        w = np.exp(self._logp - self._logp.max())
        return w / w.sum()

    def fan(self, sun_today, tick, horizon, quantiles=(0.1, 0.5, 0.9)):
        """Quantiles of the sun at ticks ``tick .. tick + horizon - 1`` (past midnight: the
        same curve) from today's sun so far.

        Parameters
        ----------
        sun_today : array [<= n_ticks]
            Today's sun by tick [fraction of PV capability], NaN where not seen.
        tick : int
            First tick forecast.
        horizon : int
            Ticks forecast.

        Returns
        -------
        dict float -> numpy.ndarray [horizon]
            Quantile -> sun [fraction of PV capability, 0..1], P10 <= P50 <= P90.
        """
        w = self.posterior(sun_today).ravel()
        # systematic resampling: DRAWS curves, each as often as its weight says (deterministic)
        picks = np.searchsorted(np.cumsum(w), (np.arange(self.DRAWS) + 0.5) / self.DRAWS)
        a_i, c_i = np.unravel_index(np.minimum(picks, w.size - 1), (len(self.PEAKS), len(self.rise)))
        steps = (int(tick) + np.arange(horizon)) % self.n_ticks
        curves = self.PEAKS[a_i, None] * self.curves[c_i][:, steps]            # [D, H]
        draws = np.clip(curves[:, None, :] * self.factors[None, :, None], 0.0, 1.0).reshape(-1, horizon)
        return {q: v for q, v in zip(quantiles, np.quantile(draws, quantiles, axis=0))}
