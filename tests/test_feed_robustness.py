"""Issue 27 point 3, the feed: no answer of the lab feed stops the edge.

A real loopback HTTP server (http.server in a thread) answers one endpoint badly: a body of
100,000 ``[``, a 400-digit integer, a body above the size cap, bytes dripped slower than the
deadline, random garbage. The client must give a cached or forecast snapshot and never raise.
The only wall-clock bound is the deadline itself, checked with a wide margin.
"""

import http.server
import json
import logging
import random
import socket
import threading
import time

import pytest
from picogrid.edge.sources import labfeed as L
from clocks import Clock

DAY0 = 5_900_000
TICK = 3


def good_answers(tick):
    return {
        "/sun": {"tick": tick, "sun": 40},
        "/price": {"day": DAY0, "tick": tick, "sell_price": 3, "buy_price": 1},
        "/demand": {"day": DAY0, "tick": tick, "demand": 0.75},
        "/deferables": [],
        "/yesterday": [{"tick": k, "demand": 0.5, "sell_price": 3, "buy_price": 1} for k in range(60)],
    }


class FeedServer:
    """A loopback feed whose answers a test sets per path: ``bad[path]`` is a bytes body, or
    a callable ``(handler) -> None`` that writes the whole response itself."""

    def __init__(self):
        self.tick = TICK
        self.bad = {}
        self.stop = threading.Event()        # ends a dripping answer when the test is done
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                bad = server.bad.get(self.path)
                if callable(bad):
                    bad(self)
                    return
                body = bad if bad is not None else json.dumps(good_answers(server.tick)[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.feed = self
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feed():
    server = FeedServer()
    clock = Clock(DAY0 * 300 + TICK * 5 + 1.0)
    client = L.LabFeed(server.url, timeout_s=0.5, deadline_s=0.5, clock=clock)
    yield server, client, clock
    server.close()


def drip(total_s, every_s=0.4, where="body"):
    """A response that sends one byte every ``every_s`` for ``total_s`` (headers or body)."""
    def answer(handler):
        body = json.dumps(good_answers(TICK)["/demand"]).encode().ljust(int(total_s / every_s) + 1)
        try:
            if where == "headers":
                head = b"HTTP/1.0 200 OK\r\n" + b"X-Slow: " + b"a" * int(total_s / every_s) + b"\r\n\r\n"
                data = head + body
            else:
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.flush()
                data = body
            for i in range(len(data)):
                handler.wfile.write(data[i:i + 1])
                handler.wfile.flush()
                if handler.server.feed.stop.wait(every_s):
                    return
        except OSError:
            pass        # the client hung up: what it should do
    return answer


def first_snapshot_then(server, client, clock, path, bad):
    """A good snapshot at tick 3 (the cache), then the bad answer on ``path`` at the same tick."""
    assert client.snapshot().sources["demand"] == "live"
    server.bad[path] = bad
    clock.t += 0.5                 # same tick: the cached value is about it
    client._endpoint_retry.clear()
    client._down_until = -float("inf")


HOSTILE_BODIES = {
    "100k_open_brackets": b"[" * 100_000,
    "100k_nested_objects": b'{"a":' * 100_000,
    "400_digit_integer": json.dumps({"day": DAY0, "tick": TICK}).encode()[:-1] + b', "demand": ' + b"9" * 400 + b"}",
    "huge_exponent": b'{"day": %d, "tick": 3, "demand": 1e999999}' % DAY0,
    "nan": b'{"day": %d, "tick": 3, "demand": NaN}' % DAY0,
    "not_utf8": b'{"day": \xff\xfe}',
    "truncated": b'{"day": 5900000, "tick": 3, "dem',
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_a_hostile_body_gives_the_cached_value_not_an_exception(feed, name):
    server, client, clock = feed
    first_snapshot_then(server, client, clock, "/demand", HOSTILE_BODIES[name])
    snap = client.snapshot()
    assert snap.sources["demand"] == "cached" and snap.demand_w == pytest.approx(0.75)
    assert "/demand" in snap.status and snap.sources["price"] == "live"


def test_a_body_above_the_cap_is_refused(feed):
    server, client, clock = feed
    client.max_body_bytes = 4096
    first_snapshot_then(server, client, clock, "/demand", b" " * 10_000 + b"{}")
    snap = client.snapshot()
    assert snap.sources["demand"] == "cached" and "at most 4096" in snap.status


def test_a_body_above_the_cap_without_a_length_is_cut(feed):
    server, client, clock = feed
    client.max_body_bytes = 4096

    def endless(handler):
        handler.wfile.write(b"HTTP/1.0 200 OK\r\n\r\n")
        try:
            for _ in range(100):
                handler.wfile.write(b"[" * 1000)
        except OSError:
            pass
    first_snapshot_then(server, client, clock, "/demand", endless)
    snap = client.snapshot()
    assert snap.sources["demand"] == "cached" and "above 4096" in snap.status


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_server_is_cut_at_the_deadline(feed, where):
    """One byte every 0.4 s (each under the 0.5 s socket timeout) for 20 s: the request ends at
    its 0.5 s deadline; the whole snapshot well before 20 s, with the cached value."""
    server, client, clock = feed
    first_snapshot_then(server, client, clock, "/demand", drip(20.0, where=where))
    t = time.monotonic()
    snap = client.snapshot()
    took = time.monotonic() - t
    assert took < 10.0, took          # the deadline is 0.5 s; the server would take 20 s
    assert snap.sources["demand"] == "cached" and "deadline" in snap.status


def test_a_server_that_accepts_and_says_nothing_is_cut(feed):
    """A listener that never answers: the socket timeout, well before the test's margin."""
    server, client, clock = feed
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        client.base_url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        t = time.monotonic()
        snap = client.snapshot()
        assert time.monotonic() - t < 10.0
        assert snap.sources["demand"] in ("none", "cached") and "timed out" in snap.status
    finally:
        silent.close()


def test_a_broken_status_line_and_a_reset_are_bad_answers(feed):
    server, client, clock = feed

    def garbage_status(handler):
        handler.wfile.write(b"SPAM/9 what\r\n\r\n")

    def reset(handler):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        handler.connection.close()

    def short(handler):
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: 500\r\n\r\n{\"day\"")

    for bad in (garbage_status, reset, short):
        server.bad.pop("/demand", None)
        client._endpoint_retry.clear()
        client._down_until = -float("inf")
        first_snapshot_then(server, client, clock, "/demand", bad)
        snap = client.snapshot()
        assert snap.sources["demand"] == "cached", (bad.__name__, snap.status)


def test_random_garbage_never_escapes(feed):
    """Random bytes and random JSON-ish fragments on every endpoint, many rounds: every
    snapshot comes back, each endpoint live, cached or none, never an exception."""
    server, client, clock = feed
    rng = random.Random(27)
    assert client.snapshot().sources["demand"] == "live"
    pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b":", b",", b"1e309", b"-", b"9" * 50, b"null",
              b"NaN", b"true", b'"tick"', b'"day"', b"\x00", b"\xff", b" "]
    for round_ in range(150):
        for path in ("/sun", "/price", "/demand", "/deferables", "/yesterday"):
            kind = rng.random()
            if kind < 0.3:
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
            elif kind < 0.8:
                body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 80)))
            else:
                body = None     # a good answer now and then
            server.bad[path] = body
            if body is None:
                del server.bad[path]
        client._endpoint_retry.clear()
        client._down_until = -float("inf")
        snap = client.snapshot()
        assert set(snap.sources.values()) <= {"live", "cached", "forecast", "none"}


def test_each_kind_of_failure_is_logged_once_per_endpoint(feed, caplog):
    server, client, clock = feed
    first_snapshot_then(server, client, clock, "/demand", b"[" * 100_000)
    with caplog.at_level(logging.DEBUG, logger="picogrid.edge.sources.labfeed"):
        for _ in range(5):
            client._endpoint_retry.clear()
            client.snapshot()
        warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "/demand" in r.getMessage()]
        assert len(warned) == 1 and "ValueError" in warned[0].getMessage()
        assert client.failures[("demand", "ValueError")] == 5
        del server.bad["/demand"]
        client._endpoint_retry.clear()
        assert client.snapshot().sources["demand"] == "live"
        assert any("answers again" in r.getMessage() for r in caplog.records)
    assert not any(k[0] == "demand" for k in client.failures)


def test_without_a_cache_the_learner_stands_in(feed):
    """A fresh client whose /demand answers a bomb from the start, with a day learned: the
    forecast, not an exception."""
    server, client, clock = feed
    server.bad["/demand"] = b"[" * 100_000
    snap = client.snapshot()          # learns /yesterday on the way
    assert snap.sources["demand"] == "forecast" and snap.demand_w == pytest.approx(0.5)


@pytest.mark.parametrize("body,ok", [
    (b"[" * (L.MAX_JSON_DEPTH + 1) + b"]" * (L.MAX_JSON_DEPTH + 1), False),
    (b"[" * L.MAX_JSON_DEPTH + b"]" * L.MAX_JSON_DEPTH, True),
    (b'["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]', True),       # brackets inside a string
    (b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', True),
    (b"1" + b"0" * L.MAX_NUMBER_CHARS, False),
    (b"1" + b"0" * (L.MAX_NUMBER_CHARS - 2), True),
    (b"1.5e3", True),
    (b"Infinity", False),
])
def test_loads_bounded(body, ok):
    if ok:
        L.loads_bounded(body)
    else:
        with pytest.raises(ValueError):
            L.loads_bounded(body)


def late(delay_s, path):
    """A good answer of ``path``, sent whole after ``delay_s``."""
    def answer(handler):
        if handler.server.feed.stop.wait(delay_s):
            return
        body = json.dumps(good_answers(TICK)[path]).encode()
        try:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass
    return answer


def test_a_snapshot_has_one_budget_for_all_its_requests(feed):
    """Every endpoint answering in 3 s, each within its own 5 s deadline, would hold the tick
    for 15 s: the snapshot's budget (0.8 s) ends it, with the cached values."""
    server, client, clock = feed
    client.deadline_s, client.snapshot_deadline_s = 5.0, 0.8
    first_snapshot_then(server, client, clock, "/sun", late(3.0, "/sun"))
    for p in ("/price", "/demand", "/deferables", "/yesterday"):
        server.bad[p] = late(3.0, p)
    t = time.monotonic()
    snap = client.snapshot()
    assert time.monotonic() - t < 10.0
    assert {snap.sources[e] for e in ("sun", "price", "demand", "deferables")} == {"cached"}, snap.status


def test_an_endpoint_after_the_budget_is_not_asked(feed):
    server, client, clock = feed
    client.snapshot()
    client._until = time.monotonic() - 1.0       # as inside a snapshot whose budget is spent
    with pytest.raises(L.LabFeedError, match="spent"):
        client.get("demand")
    client._until = None
    assert client.get("demand")["demand_w"] == 0.75


def _nested(depth):
    v = []
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("endpoint,payload", [
    ("sun", _nested(5000)),                                   # fuzz finding F1: repr recursed
    ("yesterday", [_nested(5000)] * 60),
    ("sun", {"tick": 0, "sun": 10 ** 400}),                   # fuzz finding F2: float() overflowed
    ("price", {"day": 10 ** 400, "tick": 0, "sell_price": 1, "buy_price": 1}),
    ("demand", {"day": 1, "tick": 0, "demand": -10 ** 400}),
    ("deferables", [{"start": 10 ** 400, "end": 1, "energy": 1}]),
    ("sun", {"tick": 0, "sun": {"x": _nested(5000)}}),
])
def test_parse_raises_only_value_error(endpoint, payload):
    with pytest.raises(ValueError):
        L.parse(endpoint, payload)
