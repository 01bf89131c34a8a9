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
    """One day of the edge against the boards of a site file.

    Parameters
    ----------
    site : dict, parsed site TOML with ports
    db_path : path of the SQLite store
    source : ScenarioSource or FeedSource
    forecaster : picogrid.edge.forecasting.forecast.Forecaster or FeedForecaster
    t0 : float, unix time [s] of tick 0
    secrets : dict or None (default: :func:`picogrid.edge.site.load_secrets`)
    """

    def __init__(self, site, db_path, source, forecaster, t0, secrets=None):
        self.site, self.source, self.t0 = site, source, t0
        estimate.supercapacitor(site)     # a storage the edge cannot observe fails before any port opens
        self.fleet = Fleet(board_ids(site))
        self.links = open_links(site, self.fleet.on_frame, secrets)
        self.store = None
        try:
            for name, link in self.links.items():
                self.fleet.attach(name, link)
            self.store = Store(db_path)
            b = site["bench"]
            self.store.start_run(site["profile"], str(source.day), int(b["n_ticks"]), float(b["tick_s"]),
                                 {"bench": b, "boards": {n: l.port for n, l in self.links.items()},
                                  "deferrable_board": deferrable_board(site)[0]})
            for name, link in self.links.items():
                self.store.board(name, link=link.kind)
            self.store.commit()
            self.runner = EdgeRunner(site, source, self.fleet, self.store, forecaster, t0)
            self.runner.prepare()       # the error scenarios' past days, before tick 0
        except BaseException:
            self.stop(status="failed")
            raise

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
            self.runner.run_day(on_tick)
            rows = [dict(r) for r in self.store.conn.execute(
                "SELECT * FROM dispatch WHERE run_id=? AND policy='mpc' ORDER BY tick", (self.store.run_id,))]
            truth = {k: v[:len(rows)] for k, v in self.source.truth().items()}
            s, perfect_foresight = report.summary(rows, [], truth, self.runner.cfg, self.runner.start_energy_j,
                                       self.runner.solve_times_s, self.runner.statuses, self.runner.solve_cpu_s)
            for t, row in enumerate(report.baseline_rows(perfect_foresight, truth, self.runner.cfg.dt_s)):
                self.store.dispatch("perfect_foresight", t, row)
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
