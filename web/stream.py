"""One poller of the store shared by every live viewer (the SSE stream behind ``/api/stream``).

With one poll per viewer, 20 projector tabs would run 20 x the store queries under the
edge's GIL (the demo serves the dashboard from the edge's own process). Instead one
:class:`Hub` per app polls the store's change key every ``poll_s`` and wakes the viewers when
it changes; each distinct event (what is new after a given ``run:tick``) is built once per
change and shared by every viewer that knows the same tick.

A store that cannot be read (missing, corrupt, locked, not the edge's) does not end the
stream: its events carry ``store_error`` (why) and the poller keeps trying every ``poll_s``;
the first readable poll is a change like any other.
"""

import collections
import logging
import os
import threading

from . import queries
from .db import StoreMissing, check_readable, open_readonly, snapshot, unreadable_reason

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
        self.error = None              # why the store cannot be read, None while it can
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
            self._drop_connection()
        if self._conn is None:
            self._conn = open_readonly(self.path)   # None until the edge creates the file
            self._file_id = file_id if self._conn is not None else None
        return self._conn

    def _read_key(self):
        """The store's change key; raises StoreUnavailable or sqlite3 errors when unreadable."""
        conn = self._connection()
        if conn is None:
            raise StoreMissing("the store file %s does not exist yet (the edge creates it when "
                               "it starts)" % os.path.basename(str(self.path)))
        check_readable(conn, queries.EDGE_COLUMNS)
        with snapshot(conn):
            return queries.change_key(conn) if queries.has_schema(conn) else None

    def _drop_connection(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._file_id = None

    def _poll_once(self):
        with self._db_lock:
            try:
                key = self._read_key()
                self.error = None
            except Exception as exc:
                reason = unreadable_reason(exc)
                if reason is None:
                    raise
                self._drop_connection()   # reopen next poll: the file may be replaced or repaired
                key = ("unreadable", reason)
                if reason != self.error:  # once per new reason, not every poll
                    log.warning("SSE hub: the store %s cannot be read: %s", self.path, reason)
                self.error = reason
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
                self._drop_connection()
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
            ``{"latest": ..., "reset": bool, "dispatch": columns after known_tick}``; while
            the store cannot be read, :func:`unreadable` (``store_error`` says why).
        """
        cache_key = (version, known_run, known_tick)
        with self._db_lock:
            if cache_key in self._cache:
                return self._cache[cache_key]
            if self.error is not None:
                return unreadable(self.error)
            try:
                conn = self._connection()
                if conn is None:
                    raise StoreMissing("the store file %s does not exist yet"
                                       % os.path.basename(str(self.path)))
                event = _build(conn, known_run, known_tick)
            except Exception as exc:
                # unreadable since the last poll: say so now; the next poll notices it too
                reason = unreadable_reason(exc)
                if reason is None:
                    raise
                self._drop_connection()
                return unreadable(reason)
            self._cache[cache_key] = event
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return event


def unreadable(reason):
    """The stream event while the store cannot be read: nothing new to show, and why.

    The page keeps what it shows (``latest.run`` is None) and tells the viewer ``store_error``.
    """
    return {"latest": WAITING["latest"], "reset": False, "dispatch": None, "store_error": reason}


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
