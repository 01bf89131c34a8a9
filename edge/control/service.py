"""The edge on real boards: links from the site file, the tick runner, the store.

This is what runs on the Raspberry Pi in the lab: ``picogrid edge --site FILE``. Each
``[boards.NAME]`` gives ``port = "/dev/ttyACM0"`` (USB serial) or ``link = {type = "tcp",
host = "...", port = N}`` (Pico W; its HMAC key comes from the secrets file, never from the
site file). Signals come from a replayed real day or from the lab market feed. There is no
second bench here, so the naive rule and the optimum are the model's, on the same day.
"""

import logging
import time

from picogrid.edge.control import estimate
from picogrid.edge.control import report
from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.boards.links import SerialLink, TcpLink
from picogrid.edge.control.resume import find_resumable
from picogrid.edge.control.runner import EdgeRunner
from picogrid.edge.site import board_ids, deferrable_board, load_secrets
from picogrid.edge.control.store import Store

log = logging.getLogger(__name__)

_HELLO_TIMEOUT_S = 10.0


def open_links(site, on_frame, secrets=None):
    """Board name -> link, from the site file.

    Raises
    ------
    ValueError if a board has neither ``port`` nor a TCP ``link``, or a TCP board has no key
    in the secrets; serial.SerialException if a port cannot be opened.
    """
    secrets = secrets if secrets is not None else load_secrets()[0]
    links = {}
    try:
        for name, b in site["boards"].items():
            link = b.get("link", {})
            key = secrets.get("boards", {}).get(name, {}).get("key_hex")
            if link.get("type") == "tcp":
                if not key:
                    raise ValueError("board %s is on TCP but the secrets file has no [boards.%s] key_hex"
                                     % (name, name))
                links[name] = TcpLink(name, "%s:%d" % (link["host"], int(link["port"])), on_frame,
                                      bytes.fromhex(key))
            elif b.get("port"):
                # a serial board flashed with a key (tools/flash.py writes the secrets file's
                # key_hex) authenticates every frame: its link needs the same key
                links[name] = SerialLink(name, b["port"], on_frame, bytes.fromhex(key) if key else None)
            else:
                raise ValueError("board %s has no port (e.g. port = \"/dev/ttyACM0\") and no TCP link"
                                 % name)
    except BaseException:
        for link in links.values():
            link.close()
        raise
    return links


class EdgeService:
    """The edge against the boards of a site file, one day after another.

    Parameters
    ----------
    site : dict, parsed site TOML with ports
    db_path : path of the SQLite store
    source : ScenarioSource or FeedSource
    forecaster : picogrid.edge.forecasting.forecast.Forecaster or FeedForecaster
    t0 : float, unix time [s] of tick 0, or a callable returning it (asked only when a new
        run starts: a resumed run has its own)
    secrets : dict or None (default: :func:`picogrid.edge.site.load_secrets`)
    resume : bool, carry on with the run the store holds ``running`` for this site's profile
        if its day is still under way (the edge died mid-day: :mod:`picogrid.edge.control.resume`);
        ``t0`` is then the run's own. Without such a run a new one starts at ``t0``.

    Attributes
    ----------
    resumed : picogrid.edge.control.resume.ResumePoint or None, the run taken back
    """

    def __init__(self, site, db_path, source, forecaster, t0, secrets=None, resume=False):
        self.site, self.source, self.forecaster = site, source, forecaster
        self.t0 = None if callable(t0) else float(t0)
        estimate.supercapacitor(site)     # a storage the edge cannot observe fails before any port opens
        self.fleet = Fleet(board_ids(site))
        self.links = open_links(site, self.fleet.on_frame, secrets)
        self.store = None
        self.resumed, self.first_tick = None, None
        try:
            for name, link in self.links.items():
                self.fleet.attach(name, link)
            self.store = Store(db_path)
            if resume:
                self.resumed = find_resumable(self.store.conn, site["profile"], time.time())
            if self.resumed is not None:
                self.store.resume_run(self.resumed.run_id)
                self.t0 = self.resumed.t0
                self._new_runner()
                self.first_tick = self.runner.resume(self.resumed)
            else:
                self.t0 = t0() if callable(t0) else self.t0
                self._start_run()
        except BaseException:
            self.stop(status="failed")
            raise

    def _start_run(self):
        """A new run in the store at :attr:`t0`, and its runner."""
        b = self.site["bench"]
        self.store.start_run(self.site["profile"], str(self.source.day), int(b["n_ticks"]), float(b["tick_s"]),
                             {"bench": b, "boards": {n: l.port for n, l in self.links.items()},
                              "deferrable_board": deferrable_board(self.site)[0], "t0": self.t0})
        for name, link in self.links.items():
            self.store.board(name, link=link.kind)
        self.store.commit()
        self._new_runner()
        self.runner.prepare()       # the error scenarios' past days, before tick 0
        self.first_tick = None

    def _new_runner(self):
        self.runner = EdgeRunner(self.site, self.source, self.fleet, self.store, self.forecaster, self.t0)

    def next_day(self):
        """Start the day after the one just run: tick 0 where the last day's time ended, a new
        run in the store, the same links and boards (their sessions carry on)."""
        b = self.site["bench"]
        self.t0 += int(b["n_ticks"]) * float(b["tick_s"])
        self._start_run()

    def wait_hello(self, timeout_s=_HELLO_TIMEOUT_S):
        """Ask every board who it is; returns the names that did not answer (they may come later)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.fleet.request_hello()
            missing = [n for n, s in self.fleet.snapshot().items() if s["role"] is None]
            if not missing:
                return []
            time.sleep(0.2)
        log.warning("no hello from %s", ", ".join(missing))
        return missing

    def run(self, on_tick=None):
        """The day's ticks, then the summary (naive rule and optimum on the model)."""
        try:
            self.runner.run_day(on_tick, self.first_tick)
            rows = [dict(r) for r in self.store.conn.execute(
                "SELECT * FROM dispatch WHERE run_id=? AND policy='mpc' ORDER BY tick", (self.store.run_id,))]
            truth = self.source.truth()
            rows = report.with_gaps_filled(rows, truth)     # a resumed run's ticks without the edge
            truth = {k: v[:len(rows)] for k, v in truth.items()}
            s, perfect_foresight = report.summary(rows, [], truth, self.runner.cfg, self.runner.start_energy_j,
                                       self.runner.solve_times_s, self.runner.statuses, self.runner.solve_cpu_s)
            for t, row in enumerate(report.baseline_rows(perfect_foresight, truth, self.runner.cfg.dt_s)):
                self.store.dispatch("perfect_foresight", t, row)
        except KeyboardInterrupt:      # the operator (or a supervisor's SIGINT) stopped the edge
            self.store.finish_run({}, status="stopped")
            raise
        except BaseException:
            self.store.finish_run({}, status="failed")
            raise
        self.store.finish_run(s)
        return s

    def stop(self, status=None):
        """Close the links and the store; ``status`` (e.g. ``"failed"``) ends a run left running."""
        if self.source is not None:
            self.source.close()      # a feed source keeps the days seen for the next run
        for link in self.links.values():
            link.close()
        if self.store is not None:
            if status is not None and self.store.run_id is not None:
                self.store.finish_run({}, status=status)
            self.store.close()
