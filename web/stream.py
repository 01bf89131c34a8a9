"""One poller of the store shared by every live viewer (the SSE stream behind ``/api/stream``).

With one poll per viewer, 20 projector tabs would run 20 x the store queries under the
edge's GIL (the demo serves the dashboard from the edge's own process). Instead one
:class:`Hub` per app polls the store's change key every ``poll_s`` and wakes the viewers when
it changes; each distinct event (what is new after a given ``run:tick``) is built once per
change and shared by every viewer that knows the same tick.
"""

import collections
import logging
import os
import threading

from . import queries
from .db import open_readonly, snapshot

log = logging.getLogger(__name__)

WAITING = {"latest": {"run": None, "bus_voltage_v": None, "boards": [], "decision": None},
           "reset": True, "dispatch": None}
_CACHE_SIZE = 8     # distinct (version, known run, known tick) events kept per change


class Hub:
    """Polls the store at ``path`` for changes and builds stream events for the viewers.

    Parameters
    ----------
    path : str, the edge's SQLite store (it need not exist yet)
    poll_s : float, poll period [s]
    stop : threading.Event, set when the app stops; the poller thread then ends

    The poller thread starts with the first viewer and ends with ``stop``.
    """

    def __init__(self, path, poll_s, stop):
        self.path = path
        self.poll_s = poll_s
        self.stop = stop
        self.version = 0               # bumped at every change of the store's change key
        self._key = object()           # differs from every key: the first poll is a change
        self._changed = threading.Condition()
        self._conn = None
        self._file_id = None           # (device, inode) of the file the connection reads
        self._db_lock = threading.Lock()   # one connection, used by one thread at a time
        self._cache = collections.OrderedDict()
        self._thread = None
        self._start_lock = threading.Lock()

    def _ensure_thread(self):
        with self._start_lock:
            if self._thread is None:
                self._poll_once()      # the first viewer sees the current state at once
                self._thread = threading.Thread(target=self._run, name="picogrid-sse-hub", daemon=True)
                self._thread.start()

    def _connection(self):
        # a store deleted and made anew (each `picogrid demo` starts a fresh one) is another
        # file: the old connection would go on reading the deleted one
        try:
            st = os.stat(self.path)
            file_id = (st.st_dev, st.st_ino)
        except OSError:
            file_id = None
        if self._conn is not None and file_id != self._file_id:
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = open_readonly(self.path)   # None until the edge creates the file
            self._file_id = file_id if self._conn is not None else None
        return self._conn

    def _poll_once(self):
        with self._db_lock:
            conn = self._connection()
            if conn is None:
                key = None
            else:
                with snapshot(conn):
                    key = queries.change_key(conn) if queries.has_schema(conn) else None
        if key != self._key:
            with self._changed:
                self._key = key
                self.version += 1
                self._changed.notify_all()

    def _run(self):
        try:
            while not self.stop.wait(self.poll_s):
                try:
                    self._poll_once()
                except Exception:      # a locked or half-written store: try again next poll
                    log.exception("SSE hub: polling the store failed")
        finally:
            with self._db_lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            with self._changed:
                self._changed.notify_all()
            log.debug("SSE hub stopped")

    def wait(self, seen_version, timeout_s):
        """Block until the version differs from ``seen_version``, the app stops, or the timeout.

        Returns the current version.
        """
        self._ensure_thread()
        with self._changed:
            if self.version == seen_version and not self.stop.is_set():
                self._changed.wait(timeout_s)
            return self.version

    def event(self, version, known_run, known_tick):
        """The event for a viewer who has seen ``known_run:known_tick``, or WAITING before a run.

        Returns
        -------
        dict
            ``{"latest": ..., "reset": bool, "dispatch": columns after known_tick}``.
        """
        cache_key = (version, known_run, known_tick)
        with self._db_lock:
            if cache_key in self._cache:
                return self._cache[cache_key]
            conn = self._connection()
            event = WAITING if conn is None else _build(conn, known_run, known_tick)
            self._cache[cache_key] = event
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return event


def _build(conn, known_run, known_tick):
    with snapshot(conn):
        if not queries.has_schema(conn) or queries.latest_run_id(conn) is None:
            return WAITING
        state = queries.latest_state(conn)
        run = state["run"]
        reset = run["id"] != known_run
        return {
            "latest": state,
            "reset": reset,
            "dispatch": queries.dispatch_series(
                conn, run["id"], queries.LIVE_POLICY, after_tick=None if reset else known_tick),
        }
