"""Soak test: the edge with its MPC on the HIL bench for a long time, under scripted faults.

``picogrid soak --minutes 60`` puts together what runs in the lab, each part a real process:
the lab market feed (real days, :mod:`picogrid.models.labfeed_server`) behind a proxy that
can answer garbage; the plant and six MicroPython boards, keyed, each behind a
:class:`~picogrid.hil.faults.LinkProxy`; and ``picogrid edge --resume --days 0`` as its own
process, on the feed, writing its SQLite store. A schedule of faults repeats every
:data:`CYCLE_S` seconds (:func:`default_schedule`):

* a board killed and restarted; byte corruption on a link; a grid outage;
* ``kill -9`` of the edge and its restart, which resumes the run from SQLite
  (:mod:`picogrid.edge.control.resume`);
* garbage from the feed (random bytes, deep JSON, huge numbers, HTTP errors, a dripping or
  closed socket) for a while;
* a full disk: the edge's file-size limit is set to 1 byte (``prlimit``), so every write of
  its store fails as on a full disk (EFBIG instead of ENOSPC), then lifted;
* attacks on the wire, injected by the proxies: setpoints and telemetry replayed (from the
  same session and from a session before an edge or board restart) and forged (a valid frame
  whose payload was changed, its tag left as it was, the CRC made good).

At the end it reads the store, the plant's truth log and what the proxies saw, and reports
(:func:`measure`): ticks without a decision (in and outside the edge's down time), bus-voltage
band violations, rows lost or duplicated, forged or replayed frames accepted. Zero is the
target for every one except the ticks the edge was dead for, which are counted and shown.
The measures and their limits are described in ``docs/soak.md``.
"""

import binascii
import json
import logging
import os
import pathlib
import random
import re
import resource
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from picogrid.edge.optimizer.mpc_config import config_from_site
from picogrid.edge.site import board_ids, load_site
from picogrid.firmware import protocol as P
from picogrid.hil.bench import Bench
from picogrid.hil.faults import Faults, PlantControl

log = logging.getLogger(__name__)

CYCLE_S = 120.0              # the fault schedule repeats with this period [s of wall time]
#: the bus band a soak holds the bus in: ±10 % of the reference, the band the HIL fault tests
#: assert (tests/test_faults.py); the storage board's own guard acts at 96 % / 106 %
BUS_BAND_FRACTION = 0.10
_FORGED_FLAGS = 0xA5A5       # the telemetry flags of a forged frame: no board ever sets them
_FORGED_VALUE = 0.4321       # the setpoint value of a forged frame [W]
_REPLAY_AGE_S = 4.0          # a replayed frame was captured at least this long before
_ACK_WINDOW_S = 3.0          # an ack of an injected frame's seq within this is an acceptance


def default_schedule():
    """One cycle of faults: ``[(at_s, action, args)]``, ``at_s`` from the cycle's start."""
    return [
        (5.0, "link", {"board": "load2", "corrupt_p": 0.02}),
        (15.0, "link", {"board": "load2"}),
        (12.0, "inject", {}),
        (20.0, "feed_garbage", {"on": True}),
        (35.0, "feed_garbage", {"on": False}),
        (30.0, "kill_board", {"board": "load3"}),
        (40.0, "restart_board", {"board": "load3"}),
        (45.0, "grid_outage", {"out": True}),
        (60.0, "grid_outage", {"out": None}),
        (62.0, "disk_full", {"on": True}),
        (74.0, "disk_full", {"on": False}),
        (80.0, "kill_edge", {}),
        (100.0, "inject", {}),      # the pre-restart frames are now another session's
        (110.0, "inject", {}),
    ]


# -- the feed, with garbage on demand ----------------------------------------------------
_GARBAGE = ("bytes", "deep", "bignum", "status500", "drip", "close", "wrong_types", "huge")


class FeedProxy:
    """An HTTP proxy in front of the lab feed; while :attr:`garbage` is set each request gets
    the next kind of bad answer of :data:`_GARBAGE` instead of the feed's."""

    def __init__(self, upstream_url):
        self.upstream = upstream_url.rstrip("/")
        self.garbage = False
        self.served = {"forwarded": 0, "garbage": 0}
        self._next = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="feed-proxy", daemon=True).start()

    def _send(self, h, status, body):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _answer(self, h):
        try:
            if not self.garbage:
                with urllib.request.urlopen(self.upstream + h.path, timeout=5) as r:
                    body = r.read()
                self.served["forwarded"] += 1
                return self._send(h, 200, body)
            kind = _GARBAGE[self._next % len(_GARBAGE)]
            self._next += 1
            self.served["garbage"] += 1
            if kind == "bytes":
                self._send(h, 200, os.urandom(300))
            elif kind == "deep":
                self._send(h, 200, b"[" * 100_000)
            elif kind == "bignum":
                self._send(h, 200, b'{"tick": 1' + b"0" * 400 + b', "sun": 5}')
            elif kind == "status500":
                self._send(h, 500, b'{"error": "soak"}')
            elif kind == "drip":
                h.send_response(200)
                h.send_header("Content-Length", "1000")
                h.end_headers()
                for _ in range(20):
                    h.wfile.write(b" ")
                    h.wfile.flush()
                    time.sleep(0.25)
            elif kind == "close":
                h.close_connection = True
                h.connection.shutdown(2)
            elif kind == "wrong_types":
                self._send(h, 200, b'{"tick": "x", "sun": [], "day": null, "demand": "NaN"}')
            else:       # huge
                self._send(h, 200, b'{"pad": "' + b"x" * 5_000_000 + b'"}')
        except Exception as exc:     # a client gone mid-answer is what garbage is for
            log.debug("feed proxy: %s", exc)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# -- what the proxies see on the wire ------------------------------------------------------
class WireWatch:
    """One board's link as its proxy forwards it (the bytes as sent, before any fault).

    Keeps the frames for replay and forgery, and tells an acceptance of an injected setpoint
    from a genuine ack: the board acks every setpoint it applies with the frame's seq; an ack
    of a seq the edge did not send just before, within :data:`_ACK_WINDOW_S` of injecting a
    frame with that seq, is an injected frame the board took.
    """

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self._buf = {"up": bytearray(), "down": bytearray()}
        self.setpoints = []     # (t, frame, seq, session_no) edge -> board, genuine
        self.telemetry = []     # (t, frame, seq, session_no) board -> edge, genuine
        self.session_no = {"down": 0, "up": 0}    # SESSION frames seen (edge restarts); OFFERs (board)
        self._genuine = {}      # seq -> genuine setpoints sent not acked yet
        self.injected = []      # (t, direction, kind, seq)
        self.accepted = []      # (t, kind, seq)
        self.unexplained_acks = 0

    def __call__(self, direction, data):
        with self.lock:
            buf = self._buf[direction]
            buf.extend(data)
            while True:
                i = buf.find(b"\x00")
                if i < 0:
                    break
                frame, buf[:] = bytes(buf[:i]), buf[i + 1:]
                if frame:
                    self._frame(direction, frame)
            if len(buf) > 4096:
                buf.clear()

    def _frame(self, direction, frame):
        try:
            body = P.cobs_decode(frame)
        except P.ProtocolError:
            return
        if len(body) < P.HEADER_LEN + P.CRC_LEN:
            return
        _, msg_type, _, flags, seq = struct.unpack_from("<BBBBI", body, 0)
        now = time.time()
        if direction == "down":
            if msg_type == P.MSG_SESSION:
                self.session_no["down"] += 1
            elif msg_type == P.MSG_SETPOINT:
                self.setpoints.append((now, frame + b"\x00", seq, self.session_no["down"]))
                self._genuine[seq] = self._genuine.get(seq, 0) + 1
                del self.setpoints[:-200]
            return
        if msg_type == P.MSG_OFFER:
            self.session_no["up"] += 1
        elif msg_type == P.MSG_TELEMETRY:
            self.telemetry.append((now, frame + b"\x00", seq, self.session_no["up"]))
            del self.telemetry[:-200]
        elif msg_type == P.MSG_ACK:
            end = len(body) - P.CRC_LEN - (P.TAG_LEN if flags & P.FRAME_FLAG_AUTH else 0)
            try:
                acked, _ = P.unpack_ack(body[P.HEADER_LEN:end])
            except P.ProtocolError:
                return
            if self._genuine.get(acked, 0) > 0:
                self._genuine[acked] -= 1
                return
            hits = [i for i in self.injected if i[1] == "down" and i[3] == acked and now - i[0] <= _ACK_WINDOW_S]
            if hits:
                self.accepted.append((now, hits[-1][2], acked))
                log.error("board %s acked injected %s frame seq %d", self.name, hits[-1][2], acked)
            else:
                self.unexplained_acks += 1

    def attacks(self, now):
        """Frames to inject now: ``[(direction, kind, frame, seq)]`` built from what was seen."""
        out = []
        with self.lock:
            for direction, seen, setpoint in (("down", self.setpoints, True), ("up", self.telemetry, False)):
                old = [f for f in seen if now - f[0] >= _REPLAY_AGE_S]
                if not old:
                    continue
                same = [f for f in old if f[3] == self.session_no[direction]]
                if same:
                    out.append((direction, "replay", same[-1][1], same[-1][2]))
                before = [f for f in old if f[3] < self.session_no[direction]]
                if before:
                    out.append((direction, "replay_old_session", before[-1][1], before[-1][2]))
                forged, seq = _forge(old[-1][1], setpoint)
                if forged:
                    out.append((direction, "forged", forged, seq))
            for direction, kind, _, seq in out:
                self.injected.append((now, direction, kind, seq))
        return out


def _forge(frame, setpoint):
    """A captured frame with its payload changed (setpoint value :data:`_FORGED_VALUE`,
    telemetry flags :data:`_FORGED_FLAGS`), seq moved 1000 ahead, the old tag kept and the
    CRC made good: only the key can tell it. Returns ``(frame, seq)`` or ``(None, None)``."""
    try:
        body = bytearray(P.cobs_decode(frame[:-1]))
    except P.ProtocolError:
        return None, None
    seq = struct.unpack_from("<I", body, 4)[0] + 1000
    struct.pack_into("<I", body, 4, seq)
    if setpoint:
        struct.pack_into("<f", body, P.HEADER_LEN + 5, _FORGED_VALUE)
    else:
        struct.pack_into("<H", body, P.HEADER_LEN + 32, _FORGED_FLAGS)
    m = len(body) - P.CRC_LEN
    struct.pack_into("<I", body, m, binascii.crc32(bytes(body[:m])) & 0xFFFFFFFF)
    return P.cobs_encode(bytes(body)) + b"\x00", seq


# -- the soak --------------------------------------------------------------------------------
def _site_text(site_path, ports):
    """The site file with each board's ``port`` set to its proxy's pseudo-terminal."""
    text = pathlib.Path(site_path).read_text()
    for name, port in ports.items():
        text, n = re.subn(r"(?m)^\[boards\.%s\]\s*$" % re.escape(name),
                          '[boards.%s]\nport = "%s"' % (name, port), text)
        if n != 1:
            raise ValueError("site %s has no single [boards.%s] table" % (site_path, name))
    return text


class Soak:
    """One soak run; see the module docstring. Use as a context manager (every process stops).

    Parameters
    ----------
    site_path : path of the site TOML (default: the lab's)
    run_dir : folder for the store, logs, board folders and the report
    speed : float, the feed's clock speed-up (a feed tick lasts 5 s / speed)
    seed : int, seed of the board keys and the link noise
    """

    def __init__(self, site_path, run_dir, speed=2.0, seed=1):
        self.site_path = pathlib.Path(site_path)
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.speed = float(speed)
        self.tick_s = 5.0 / self.speed
        self.site = load_site(self.site_path, tick_s=self.tick_s)
        self.rng = random.Random(seed)
        self.keys = {n: bytes(self.rng.getrandbits(8) for _ in range(32)) for n in board_ids(self.site)}
        self.db = self.run_dir / "picogrid.sqlite"
        self.feed_server = self.proxy = self.bench = self.faults = self.edge = None
        self.watches = {}
        self.events = []            # (t, action, args)
        self.edge_down = []         # [t_killed, t_first_tick_after] of each kill -9
        self.edge_starts = 0
        self.realtime = None        # the plant's real-time record at the end (Bench.realtime)
        self._stop = threading.Event()

    # -- processes ---------------------------------------------------------------------------
    def start(self):
        from picogrid.models.labfeed_server import serve_days

        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(str(self.db) + suffix).unlink(missing_ok=True)
        self.feed_server = serve_days("2013-07-16", 14, clock=lambda: time.time() * self.speed)
        self.proxy = FeedProxy(self.feed_server.url)
        self.bench = Bench(self.site, self.run_dir / "bench", time.time(), self.tick_s, [0.0],
                           link_proxy=True, serial_keys=self.keys).start()
        self.faults = Faults(self.bench)
        for name, proxy in self.bench.proxies.items():
            self.watches[name] = WireWatch(name)
            proxy.taps.append(self.watches[name])
        (self.run_dir / "site.toml").write_text(_site_text(self.site_path, self.bench.ports))
        (self.run_dir / "secrets.toml").write_text("".join(
            '[boards.%s]\nkey_hex = "%s"\n' % (n, k.hex()) for n, k in self.keys.items()))
        threading.Thread(target=self._relay_sun, name="sun-relay", daemon=True).start()
        self.start_edge()
        return self

    def start_edge(self):
        cmd = [sys.executable, "-m", "picogrid", "edge", "--site", str(self.run_dir / "site.toml"),
               "--feed", self.proxy.url, "--feed-speed", "%g" % self.speed, "--run-dir", str(self.run_dir),
               "--days", "0", "--resume", "--port", "0", "--exit"]
        env = dict(os.environ, PICOGRID_SECRETS=str(self.run_dir / "secrets.toml"))
        # through a pipe: the disk-full fault limits the edge's file sizes, not its log's
        self.edge = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.edge_starts += 1
        log_path = self.run_dir / "edge.log"
        proc = self.edge

        def copy():
            with open(log_path, "ab") as f:
                for line in proc.stdout:
                    f.write(line)
                    f.flush()
        threading.Thread(target=copy, name="edge-log", daemon=True).start()

    def _relay_sun(self):
        """The PV emulator follows the feed's sun, as the lab's does (read from the feed itself,
        not through the proxy: the plant's sun does not turn to garbage)."""
        from picogrid.hil.plant import LAB_PLANT, irradiance_for_power_fraction
        p = dict(LAB_PLANT, **self.site.get("plant", {}))
        plant = PlantControl(self.bench.plant_port)
        while not self._stop.wait(self.tick_s / 2):
            try:
                with urllib.request.urlopen(self.feed_server.url + "/sun", timeout=2) as r:
                    frac = float(json.loads(r.read())["sun"]) / 100.0
                plant.command("sun", value=irradiance_for_power_fraction(
                    frac, p["pv_isc_a"], p["pv_voc_v"], p["pv_thermal_voltage_v"]))
            except Exception as exc:
                log.warning("sun relay: %s", exc)
        plant.close()

    def stop(self):
        self._stop.set()
        if self.edge is not None and self.edge.poll() is None:
            self.edge.send_signal(signal.SIGINT)
            try:
                self.edge.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.edge.kill()
                self.edge.wait()
        if self.faults is not None:
            self.faults.close()
        if self.bench is not None:
            self.bench.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.feed_server is not None:
            self.feed_server.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- faults ------------------------------------------------------------------------------
    def act(self, action, args):
        self.events.append((time.time(), action, dict(args)))
        log.info("soak: %s %s", action, args)
        if action == "kill_edge":
            killed = time.time()
            self.edge.send_signal(signal.SIGKILL)
            self.edge.wait()
            self.start_edge()
            self.edge_down.append([killed, None])
        elif action == "disk_full":
            limit = 1 if args["on"] else resource.RLIM_INFINITY
            hard = resource.prlimit(self.edge.pid, resource.RLIMIT_FSIZE)[1]
            resource.prlimit(self.edge.pid, resource.RLIMIT_FSIZE, (limit, hard))
        elif action == "feed_garbage":
            self.proxy.garbage = bool(args["on"])
        elif action == "inject":
            for name, watch in self.watches.items():
                for direction, kind, frame, seq in watch.attacks(time.time()):
                    self.bench.proxies[name].inject(direction, frame)
        elif action == "grid_outage":
            self.faults.grid_outage(args["out"])
        else:
            getattr(self.faults, action)(**args)

    def first_tick_time(self, timeout_s):
        """Unix time of the first tick any run of the store decided, waiting for it."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.edge.poll() is not None:
                raise RuntimeError("the edge exited (%s); see %s" % (self.edge.returncode, self.run_dir / "edge.log"))
            try:
                with sqlite3.connect(self.db, timeout=1) as conn:
                    row = conn.execute("SELECT r.config_json FROM decision d JOIN run r ON r.id = d.run_id"
                                       " ORDER BY d.run_id, d.tick LIMIT 1").fetchone()
                if row:
                    return json.loads(row[0])["t0"]
            except sqlite3.Error:
                pass
            time.sleep(0.5)
        raise RuntimeError("no decision within %.0f s; see %s" % (timeout_s, self.run_dir / "edge.log"))

    def run(self, duration_s, schedule=None, on_line=print):
        """Run the faults for ``duration_s`` [s] from the edge's first tick; returns
        :func:`measure`'s report (also written to ``run_dir/soak-report.json``)."""
        schedule = sorted(schedule or default_schedule(), key=lambda s: s[0])
        t_start = self.first_tick_time(timeout_s=30 + 70 * self.tick_s)
        on_line("soak: first tick at %s; faults for %.0f s" % (time.strftime("%H:%M:%S", time.localtime(t_start)),
                                                               duration_s))
        t_end = t_start + duration_s
        cycle = 0
        while True:
            for at_s, action, args in schedule:
                t = t_start + cycle * CYCLE_S + at_s
                if t >= t_end:
                    break
                if self._stop.wait(max(0.0, t - time.time())):
                    break
                self.act(action, args)
                on_line("  %6.0f s  %s %s" % (time.time() - t_start, action,
                                              " ".join("%s=%s" % kv for kv in args.items())))
            else:
                cycle += 1
                continue
            break
        time.sleep(max(0.0, t_end - time.time()))
        # lift any fault left on by a cut-off schedule, then let the edge finish its tick
        for action, args in (("disk_full", {"on": False}), ("feed_garbage", {"on": False})):
            self.act(action, args)
        time.sleep(2 * self.tick_s)
        try:
            self.realtime = self.bench.realtime()
        except Exception as exc:      # the plant gone: say so in the report
            self.realtime = {"kept": None, "error": str(exc)}
        self.stop()
        report = measure(self, t_start, t_end)
        (self.run_dir / "soak-report.json").write_text(json.dumps(report, indent=1))
        return report


# -- the report -----------------------------------------------------------------------------
def measure(soak, t_start, t_end):
    """The soak's figures from the store, the plant's truth log and the wire watches.

    Returns a dict: ``ticks_due`` (ticks whose time fell in ``[t_start, t_end)``),
    ``ticks_without_decision`` and of them ``..._edge_down`` (while the edge was dead: from a
    ``kill -9`` to its next decision) and ``..._edge_up``; ``bus_band_violations`` (plant ticks
    whose bus voltage left ±:data:`BUS_BAND_FRACTION` of the reference); ``rows_lost``
    (dropped by the store's buffer or refused); ``rows_duplicated`` (telemetry rows stored
    twice, setpoint rows of one tick and board twice); ``forged_accepted`` and
    ``replayed_accepted`` (injected frames the far end took), with ``injected`` per kind;
    ``edge_restart_s`` (kill to the next decision, each).
    """
    conn = sqlite3.connect(soak.db)
    runs = conn.execute("SELECT id, n_ticks, tick_s, config_json FROM run ORDER BY id").fetchall()
    decided = {}
    due = []
    for run_id, n_ticks, tick_s, cfg in runs:
        t0 = json.loads(cfg).get("t0")
        if t0 is None:
            continue
        ticks = {t: ts for t, ts in conn.execute("SELECT tick, t_s FROM decision WHERE run_id=?", (run_id,))}
        for k in range(n_ticks):
            t = t0 + k * tick_s
            if t_start <= t < t_end:
                due.append((t, run_id, k))
                decided[(run_id, k)] = ticks.get(k)
    # each kill's down time: to the first decision after it
    decisions_at = sorted(t0_of(runs, r) + ts for (r, k), ts in decided.items() if ts is not None)
    restart_s = []
    for down in soak.edge_down:
        after = [t for t in decisions_at if t > down[0]]
        down[1] = after[0] if after else t_end
        restart_s.append(round(down[1] - down[0], 2))
    missing = [(t, r, k) for t, r, k in due if decided[(r, k)] is None]
    in_down = [m for m in missing if any(d0 - soak.tick_s <= m[0] < d1 for d0, d1 in soak.edge_down)]
    # bus band, from the plant's own log
    v_ref = float(soak.site["bench"]["bus_voltage_v"])
    lo, hi = v_ref * (1 - BUS_BAND_FRACTION), v_ref * (1 + BUS_BAND_FRACTION)
    band, plant_ticks, late_ticks = [], 0, 0
    truth = soak.run_dir / "bench" / "truth.jsonl"
    bench_t0, bench_tick = soak.bench.t0, soak.bench.tick_s
    rows = []
    for line in truth.read_text().splitlines() if truth.exists() else ():
        row = json.loads(line)
        t = bench_t0 + row["tick"] * bench_tick
        if t_start <= t < t_end:
            rows.append((t, row))
            plant_ticks += 1
            late_ticks += row.get("late_ms", 0) > 0
            if not (lo <= row["v_bus_min_v"] and row["v_bus_max_v"] <= hi):
                band.append(t)
    # a violation inside a grid outage in which the storage ran down to its floor had no source
    # left for the critical load (the bus then collapses: physics, not the controller), told apart
    e_floor_j = 1.05 * config_from_site(soak.site).e_min_j
    exhausted = 0
    for w0, w1 in _outages(soak.events, t_end):
        inside = [r for t, r in rows if w0 - bench_tick <= t <= w1 + bench_tick]
        if inside and min(r["storage_energy_j"] for r in inside) <= e_floor_j:
            exhausted += sum(1 for t in band if w0 - bench_tick <= t <= w1 + bench_tick)
    # rows lost: the store's own account of its outages, and rows SQLite refused
    dropped = sum(int(m.group(1)) for (d,) in conn.execute("SELECT detail FROM event WHERE kind='store_outage'")
                  for m in [re.search(r"(\d+) of them dropped", d or "")] if m)
    edge_log = (soak.run_dir / "edge.log").read_text(errors="replace") if (soak.run_dir / "edge.log").exists() else ""
    refused = edge_log.count("row refused and dropped")
    dup_tel = conn.execute(
        "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) n FROM telemetry GROUP BY run_id, board, seq,"
        " v_bus_v, v_port_v, i_port_a, p_bus_w, p_port_w, energy_bus_j HAVING n > 1)").fetchone()[0]
    dup_sp = conn.execute("SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) n FROM setpoint"
                          " GROUP BY run_id, tick, board HAVING n > 1)").fetchone()[0]
    forged_up = conn.execute("SELECT COUNT(*) FROM telemetry WHERE flags=?", (_FORGED_FLAGS,)).fetchone()[0]
    injected, acc_down = {}, {"forged": 0, "replay": 0}
    for w in soak.watches.values():
        for _, direction, kind, _ in w.injected:
            injected["%s_%s" % (direction, kind)] = injected.get("%s_%s" % (direction, kind), 0) + 1
        for _, kind, _ in w.accepted:
            acc_down["forged" if kind == "forged" else "replay"] += 1
    status = dict(conn.execute("SELECT status, COUNT(*) FROM run GROUP BY status").fetchall())
    conn.close()
    return {
        "duration_s": round(t_end - t_start, 1), "tick_s": soak.tick_s, "runs": status,
        "ticks_due": len(due), "ticks_without_decision": len(missing),
        "ticks_without_decision_edge_down": len(in_down),
        "ticks_without_decision_edge_up": len(missing) - len(in_down),
        "edge_kills": len(soak.edge_down), "edge_restart_s": restart_s,
        "plant_ticks": plant_ticks, "bus_band_violations": len(band),
        "bus_band_violations_storage_exhausted": exhausted,
        "bench_realtime": soak.realtime, "plant_ticks_late": late_ticks,
        "rows_lost": dropped + refused, "rows_duplicated": int(dup_tel + dup_sp),
        "forged_accepted": acc_down["forged"] + int(forged_up),
        # an accepted replayed telemetry frame is a second identical row (rows_duplicated)
        "replayed_accepted": acc_down["replay"] + int(dup_tel),
        "injected": injected,
        "acks_unexplained": sum(w.unexplained_acks for w in soak.watches.values()),
        "feed_answers": dict(soak.proxy.served),
        "faults": [[round(t - t_start, 1), a, args] for t, a, args in soak.events],
    }


def _outages(events, t_end):
    """``[(start, end)]`` [unix s] of the grid outages the soak injected."""
    out, start = [], None
    for t, action, args in events:
        if action == "grid_outage" and args.get("out") is True and start is None:
            start = t
        elif action == "grid_outage" and args.get("out") is not True and start is not None:
            out.append((start, t))
            start = None
    return out + ([(start, t_end)] if start is not None else [])


def t0_of(runs, run_id):
    for r, _, _, cfg in runs:
        if r == run_id:
            return json.loads(cfg).get("t0", 0.0)
    return 0.0


def report_lines(r):
    """The report as the command prints it."""
    return [
        "Soak: %.0f s of faults, tick %.2f s, %d ticks due; runs %s" % (
            r["duration_s"], r["tick_s"], r["ticks_due"], r["runs"]),
        "  ticks without a decision      %d  (%d while the edge was dead after %d kill -9; restart %s s)" % (
            r["ticks_without_decision"], r["ticks_without_decision_edge_down"], r["edge_kills"],
            ", ".join("%.1f" % s for s in r["edge_restart_s"]) or "-"),
        "  ... with the edge running     %d" % r["ticks_without_decision_edge_up"],
        "  bus-voltage band violations   %d  (of %d plant ticks, band ±%.0f %%; %d in grid outages that emptied "
        "the storage)" % (r["bus_band_violations"], r["plant_ticks"], 100 * BUS_BAND_FRACTION,
                          r["bus_band_violations_storage_exhausted"]),
        "  bench kept real time          %s  (%d plant ticks with a gap > 50 ms; longest gaps %s ms)" % (
            "yes" if (r["bench_realtime"] or {}).get("kept") else "NO", r["plant_ticks_late"],
            (r["bench_realtime"] or {}).get("max_gap_ms")),
        "  rows lost                     %d" % r["rows_lost"],
        "  rows duplicated               %d" % r["rows_duplicated"],
        "  forged frames accepted        %d" % r["forged_accepted"],
        "  replayed frames accepted      %d" % r["replayed_accepted"],
        "  injected: %s" % ", ".join("%s %d" % kv for kv in sorted(r["injected"].items())),
        "  feed answers: %s" % r["feed_answers"],
    ]


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="picogrid soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="time under faults, from the first tick")
    p.add_argument("--site", default=str(pathlib.Path(__file__).resolve().parent.parent / "edge" / "sites" / "lab.toml"))
    p.add_argument("--run-dir", default=str(pathlib.Path(__file__).resolve().parent.parent / "var" / "soak"))
    p.add_argument("--speed", type=float, default=2.0, help="the feed's clock speed-up (tick = 5 s / speed)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with Soak(args.site, args.run_dir, speed=args.speed, seed=args.seed) as soak:
        report = soak.run(60.0 * args.minutes)
    for line in report_lines(report):
        print(line)
    print("report: %s" % (pathlib.Path(args.run_dir) / "soak-report.json"))
    keys = ("ticks_without_decision_edge_up", "bus_band_violations", "rows_lost", "rows_duplicated",
            "forged_accepted", "replayed_accepted")
    return 1 if any(report[k] for k in keys) else 0
