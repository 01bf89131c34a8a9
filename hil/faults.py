"""Fault injection on the HIL bench, scriptable from a scenario.

Three places where faults are injected, each as real as the bench allows:

* the board process: kill it (a board losing power) and restart it (:meth:`Faults.kill_board`,
  :meth:`Faults.restart_board`);
* the link: a :class:`LinkProxy` sits between the board's pseudo-terminal and a second one that
  the edge opens, and forwards bytes on a thread; it can drop, delay or corrupt them;
* the plant: a JSON control channel to the plant simulator (:class:`PlantControl`, see
  :mod:`picogrid.hil.plant_server`) for sensor bias, stuck sensor, garbage sensor (the board
  reports a peripheral fault), PV irradiance drop, load
  spike and grid outage.

A scenario is a list of ``{"at_s": seconds after start, "fault": name, ...arguments}`` run by
:meth:`Faults.run_script`; names and arguments are those of the :class:`Faults` methods, e.g.
``{"at_s": 2.0, "fault": "link", "board": "load2", "corrupt_p": 0.05}``.
"""

import json
import logging
import os
import random
import select
import socket
import threading
import time
import tty

log = logging.getLogger(__name__)

_CHUNK = 512


class LinkProxy:
    """Byte proxy between a board's pseudo-terminal and the edge's, with injectable faults.

    The board keeps the master side of pair A (its stdin/stdout); the proxy holds A's slave
    and B's master; the edge opens B's slave (:attr:`path`) with pyserial, as it would open
    the board directly. Faults apply per direction (``"up"``: board -> edge, ``"down"``:
    edge -> board, ``"both"``).

    Parameters
    ----------
    name : str, board name (for logs and the thread's name)
    board_fd : int, slave fd of the board's pseudo-terminal (pair A)
    seed : int, seed of the fault generator (faults are reproducible)

    Attributes
    ----------
    path : str, the pseudo-terminal the edge opens
    stats : dict, bytes forwarded / dropped / corrupted per direction
    """

    def __init__(self, name, board_fd, seed=0):
        self.name = name
        self._board_fd = board_fd
        self._edge_master, self._edge_slave = os.openpty()
        tty.setraw(self._edge_slave)
        self.path = os.ttyname(self._edge_slave)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults = {"up": self._no_fault(), "down": self._no_fault()}
        self._queue = []            # (due_s, fd, bytes) for delayed data
        self.stats = {d: {"bytes": 0, "dropped": 0, "corrupted": 0} for d in ("up", "down")}
        self.taps = []              # callables(direction, bytes): the bytes as sent, before any fault
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proxy-" + name, daemon=True)
        self._thread.start()

    @staticmethod
    def _no_fault():
        return {"drop_p": 0.0, "corrupt_p": 0.0, "delay_s": 0.0}

    def set_fault(self, direction="both", drop_p=0.0, corrupt_p=0.0, delay_s=0.0):
        """Set the link fault of one or both directions; all zeros clears it.

        Parameters
        ----------
        direction : "up", "down" or "both"
        drop_p : float, probability that a byte is dropped [0..1]
        corrupt_p : float, probability that a byte gets one random bit flipped [0..1]
        delay_s : float [s], extra latency of every chunk of bytes

        Raises
        ------
        ValueError on an unknown direction or a probability outside 0..1.
        """
        dirs = {"up": ("up",), "down": ("down",), "both": ("up", "down")}.get(direction)
        if dirs is None:
            raise ValueError("direction must be up, down or both, got %r" % (direction,))
        for name, p in (("drop_p", drop_p), ("corrupt_p", corrupt_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError("%s must be within 0..1, got %r" % (name, p))
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        with self._lock:
            for d in dirs:
                self._faults[d] = {"drop_p": float(drop_p), "corrupt_p": float(corrupt_p),
                                   "delay_s": float(delay_s)}
        log.info("link %s %s: drop %.3g corrupt %.3g delay %.3g s", self.name, direction,
                 drop_p, corrupt_p, delay_s)

    def _mangle(self, data, f, st):
        if not (f["drop_p"] or f["corrupt_p"]):
            return data
        out = bytearray()
        rng = self._rng
        for b in data:
            if f["drop_p"] and rng.random() < f["drop_p"]:
                st["dropped"] += 1
                continue
            if f["corrupt_p"] and rng.random() < f["corrupt_p"]:
                b ^= 1 << rng.randrange(8)
                st["corrupted"] += 1
            out.append(b)
        return bytes(out)

    def _forward(self, src, dst, direction):
        try:
            data = os.read(src, _CHUNK)
        except OSError:
            return   # the board's side has no reader/writer yet (restart): nothing to forward
        if not data:
            return
        with self._lock:
            f = dict(self._faults[direction])
            st = self.stats[direction]
            st["bytes"] += len(data)
            for tap in self.taps:
                tap(direction, data)
            data = self._mangle(data, f, st)
            if f["delay_s"] > 0 or self._queue:
                self._queue.append((time.monotonic() + f["delay_s"], dst, data))
                return
        self._write(dst, data)

    def inject(self, direction, data):
        """Put ``data`` on the wire as if the far end sent it: ``"down"`` to the board, ``"up"``
        to the edge (an attacker on the cable). It goes between two forwarded chunks, after
        the ones already delayed; a 0x00 first ends any frame cut in half (that frame is lost,
        as on a noisy line)."""
        dst = {"down": self._board_fd, "up": self._edge_master}.get(direction)
        if dst is None:
            raise ValueError("direction must be up or down, got %r" % (direction,))
        with self._lock:
            if self._queue:
                self._queue.append((time.monotonic(), dst, b"\x00" + bytes(data)))
                return
            self._write(dst, b"\x00" + bytes(data))

    @staticmethod
    def _write(fd, data):
        try:
            os.write(fd, data)
        except OSError as exc:   # the far end is gone: the bytes are lost, as on a cable
            log.debug("proxy write failed: %s", exc)

    def _flush_due(self):
        now = time.monotonic()
        with self._lock:
            due = [q for q in self._queue if q[0] <= now]
            self._queue = [q for q in self._queue if q[0] > now]
        for _, fd, data in due:
            self._write(fd, data)

    def _run(self):
        fds = [self._board_fd, self._edge_master]
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(fds, [], [], 0.005)
            except (OSError, ValueError):
                return
            for fd in ready:
                if fd == self._board_fd:
                    self._forward(self._board_fd, self._edge_master, "up")
                else:
                    self._forward(self._edge_master, self._board_fd, "down")
            self._flush_due()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=1.0)
        for fd in (self._edge_master, self._edge_slave):
            try:
                os.close(fd)
            except OSError:
                pass


class PlantControl:
    """Client of the plant simulator's JSON control channel (UDP on loopback).

    Parameters
    ----------
    port : int, the plant server's UDP port (``Bench.plant_port``)
    timeout_s : float [s], how long to wait for the reply

    Raises
    ------
    RuntimeError (from :meth:`command`) if the plant refuses a command or does not answer.
    """

    def __init__(self, port, timeout_s=1.0):
        self._addr = ("127.0.0.1", int(port))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(timeout_s)
        self._lock = threading.Lock()

    def command(self, cmd, **args):
        msg = dict(args, cmd=cmd)
        with self._lock:
            self._sock.sendto(json.dumps(msg).encode("utf-8"), self._addr)
            try:
                reply = json.loads(self._sock.recv(65536).decode("utf-8"))
            except socket.timeout:
                raise RuntimeError("plant did not answer %r" % (msg,))
        if not reply.pop("ok", False):
            raise RuntimeError("plant refused %r: %s" % (msg, reply.get("error")))
        return reply

    def state(self):
        """The true bench state now (dict, SI units; see ``PlantServer.state``)."""
        return self.command("state")

    def mark(self):
        """Restart the window of the bus min/max that :meth:`state` reports."""
        self.command("mark")

    def close(self):
        self._sock.close()


class Faults:
    """Scriptable fault injection on a running :class:`picogrid.hil.bench.Bench`.

    Link faults need the bench started with ``link_proxy=True``. Every injected fault is
    logged and appended to :attr:`log` as ``(time_s, fault, arguments)``.
    """

    def __init__(self, bench):
        self.bench = bench
        self.plant = PlantControl(bench.plant_port)
        self.log = []

    def _note(self, fault, **args):
        self.log.append((time.time(), fault, args))
        log.info("fault %s %s", fault, args)

    # -- boards and links -------------------------------------------------------------
    def kill_board(self, board):
        self._note("kill_board", board=board)
        self.bench.kill_board(board)

    def restart_board(self, board):
        self._note("restart_board", board=board)
        self.bench.start_board(board)

    def link(self, board, direction="both", drop_p=0.0, corrupt_p=0.0, delay_s=0.0):
        """Drop, corrupt or delay bytes on one board's link (all zeros clears)."""
        proxy = self.bench.proxies.get(board)
        if proxy is None:
            raise ValueError("no link proxy for %r: start the Bench with link_proxy=True" % (board,))
        self._note("link", board=board, direction=direction, drop_p=drop_p, corrupt_p=corrupt_p,
                   delay_s=delay_s)
        proxy.set_fault(direction, drop_p, corrupt_p, delay_s)

    # -- plant ------------------------------------------------------------------------
    def sensor_bias(self, board, bias):
        """Add ``bias`` = (v_port_v, i_port_a, v_bus_v, i_bus_a) to a board's readings; None clears."""
        self._note("sensor_bias", board=board, bias=bias)
        self.plant.command("sensor_bias", role=board, bias=None if bias is None else list(bias))

    def sensor_stuck(self, board, stuck=True):
        """Freeze a board's sensor readings at their present values (False releases them)."""
        self._note("sensor_stuck", board=board, stuck=stuck)
        self.plant.command("sensor_stuck", role=board, stuck=bool(stuck))

    def sensor_garbage(self, board, garbage=True):
        """Make a board's sensors read garbage (NaN): its firmware reports a peripheral fault."""
        self._note("sensor_garbage", board=board, garbage=garbage)
        self.plant.command("sensor_garbage", role=board, garbage=bool(garbage))

    def irradiance(self, value):
        """Override the PV irradiance (0..1 of rating); None returns to the scenario's."""
        self._note("irradiance", value=value)
        self.plant.command("sun", value=value)

    def load_spike(self, power_w):
        """An unmodelled load drawn from the bus [W]; 0 ends the spike."""
        self._note("load_spike", power_w=power_w)
        self.plant.command("extra_load", power_w=power_w)

    def grid_outage(self, out=True):
        """Disconnect the grid supply (False reconnects, None returns to the scenario)."""
        self._note("grid_outage", out=out)
        self.plant.command("grid", connected=None if out is None else not out)

    # -- scenarios --------------------------------------------------------------------
    def run_script(self, script, t_start=None, stop=None):
        """Run a fault script: ``[{"at_s": float, "fault": name, ...args}, ...]``.

        Blocks until the last step is done (or ``stop``, a threading.Event, is set).

        Raises
        ------
        ValueError on an unknown fault name (checked before anything is injected).
        """
        steps = sorted(script, key=lambda s: s["at_s"])
        names = ("kill_board", "restart_board", "link", "sensor_bias", "sensor_stuck", "sensor_garbage",
                 "irradiance", "load_spike", "grid_outage")
        bad = [s.get("fault") for s in steps if s.get("fault") not in names]
        if bad:
            raise ValueError("unknown fault(s) %s; known: %s" % (bad, ", ".join(names)))
        t_start = time.time() if t_start is None else t_start
        for s in steps:
            wait = t_start + s["at_s"] - time.time()
            if wait > 0 and stop is not None and stop.wait(wait):
                return
            if wait > 0 and stop is None:
                time.sleep(wait)
            args = {k: v for k, v in s.items() if k not in ("at_s", "fault")}
            getattr(self, s["fault"])(**args)

    def close(self):
        self.plant.close()
