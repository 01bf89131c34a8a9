"""The edge's view of its boards: identity, latest telemetry, health, acks and events.

Frames arrive on the links' reader threads (:mod:`picogrid.edge.boards.links`); the tick thread
reads consistent copies through :meth:`Fleet.snapshot`. A board that stops talking is
reported as stale and the others keep running: nothing here blocks on one board.

On authenticated links the codec and the link run the session handshake of PROTOCOL.md
section 6 (recorded, replayed or reflected frames never arrive here); the fleet adds one
check of its own: telemetry whose uptime ``t_ms`` steps back within one boot of the board is
dropped from the board's state, counted per board and recorded as a fleet event
(``t_ms_regression``), which the runner stores with the other events.
"""

import collections
import logging
import threading
import time

from picogrid.firmware import protocol as P

log = logging.getLogger(__name__)

_ACKS_KEPT = 1024     # acks remembered per board (latency stats look back this far)
#: roles whose setpoint is a voltage [V] (the grid board's bus-voltage reference); every other
#: role's is a power [W] (PROTOCOL.md section 3)
VOLTAGE_SETPOINT_ROLES = ("grid",)


def setpoint_by_unit(role, value):
    """``(value_w, value_v)``: a setpoint ``value`` of a board of ``role`` under its unit, the
    other None (the wire's ``setpoint`` / ``value`` field carries either)."""
    return (None, value) if role in VOLTAGE_SETPOINT_ROLES else (value, None)
_U32 = 1 << 32
_EVENTS_KEPT = 1000   # events held between drains (the edge drains every tick)


class BoardState:
    """What the edge knows of one board. Times are the edge clock [s]."""

    def __init__(self, name, board_id):
        self.name = name
        self.board_id = board_id
        self.role = None
        self.firmware_version = None
        self.capabilities = 0
        self.boot_nonce = None
        # dict of protocol.TELEMETRY_FIELDS, the wire's ``setpoint`` split by its unit into
        # ``setpoint_w`` (power roles) and ``setpoint_v`` (grid), the other None
        self.telemetry = None
        self.last_seen_s = None
        self.seq_out = 0
        self.acks = {}                 # seq -> (status, t_s)
        self.snapshot = None           # (t_s, telemetry, acked seq) right after an ack: the tick boundary
        self._expect_snapshot = None   # seq of the ack whose snapshot is awaited
        self.failsafe_events = 0
        self.link = None
        self.authenticated = False     # session checks apply (set by Fleet.attach)
        self.last_t_ms = None          # uptime of the last accepted telemetry of this session [ms]
        self.replayed_hellos = 0
        self.t_ms_regressions = 0

    @property
    def failsafe(self):
        return bool(self.telemetry and self.telemetry["flags"] & P.FLAG_FAILSAFE)


class Fleet:
    """All boards of a site, keyed by name.

    Parameters
    ----------
    boards : mapping name -> board_id
    clock : callable returning the time [s]; injected so tests can control it
    """

    def __init__(self, boards, clock=time.time):
        self.clock = clock
        self.boards = {name: BoardState(name, bid) for name, bid in boards.items()}
        self._by_id = {bid: name for name, bid in boards.items()}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.telemetry_log = []        # (t_s, name, role, seq, telemetry dict), drained by the edge
        self.events = collections.deque(maxlen=_EVENTS_KEPT)   # (t_s, name, kind, detail)
        self.events_dropped = 0        # events pushed out of a full queue before a drain
        self._dropped_reported = 0
        self.foreign_frames = 0

    def attach(self, name, link, authenticated=None):
        """Attach the link of board ``name``.

        Parameters
        ----------
        name : str, a board of this fleet
        link : a :mod:`picogrid.edge.boards.links` link (anything with ``send``)
        authenticated : bool or None
            Whether the link only delivers frames whose HMAC tag checked; the replay and
            ``t_ms`` checks of PROTOCOL.md section 6 run only then. None: true when the link
            was given a key (every TCP link; a serial link only if provisioned with one).

        Raises
        ------
        KeyError if ``name`` is not a board of this fleet.
        """
        b = self.boards[name]
        if authenticated is None:
            # a keyed decoder drops every untagged or badly tagged frame (protocol.Decoder)
            authenticated = bool(getattr(link, "authenticated", False))
        with self._lock:
            b.link = link
            b.authenticated = bool(authenticated)
        if hasattr(link, "on_event"):
            link.on_event = self.link_event     # e.g. frames failing authentication

    def link_event(self, name, kind, detail):
        """Record an event a link reports about itself (``auth_failure``), from its thread."""
        with self._lock:
            self._event((self.clock(), name, kind, detail))

    # -- receiving (link threads) --------------------------------------------------
    def on_frame(self, link_name, msg_type, board_id, seq, payload):
        now = self.clock()
        name = self._by_id.get(board_id)
        if name != link_name:
            # a board on the wrong port, or a corrupted id that passed the CRC: never trust it
            with self._lock:
                self.foreign_frames += 1
                n = self.foreign_frames
                if n & (n - 1) == 0:    # the 1st, 2nd, 4th, 8th ...: said, without a flood
                    self._event((now, link_name, "foreign_frame", "%d frame(s) with board id %d on %s's link"
                                 % (n, board_id, link_name)))
            return
        b = self.boards[name]
        try:
            self._dispatch(b, now, msg_type, seq, payload)
        except P.ProtocolError as exc:
            with self._lock:
                self._event((now, name, "bad_payload", str(exc)))

    def _dispatch(self, b, now, msg_type, seq, payload):
        with self._cond:
            # screen first: a frame dropped as a replay does not make a dead board look alive
            if msg_type == P.MSG_TELEMETRY:
                t = dict(zip(P.TELEMETRY_FIELDS, P.unpack_telemetry(payload)))
                # issue 27: a physically absurd report is a bad-data event and is not used
                from picogrid.edge.boards import plausibility
                if not plausibility.screen(self, b, now, seq, t):
                    return
                if b.authenticated and not self._t_ms_continues(b, now, seq, t["t_ms"]):
                    return
                t["setpoint_w"], t["setpoint_v"] = setpoint_by_unit(b.role or b.name, t.pop("setpoint"))
            elif msg_type == P.MSG_HELLO:
                hello = P.unpack_hello(payload)
                if b.authenticated and not self._new_or_current_session(b, now, seq, hello[3]):
                    return
            b.last_seen_s = now
            if msg_type == P.MSG_TELEMETRY:
                b.telemetry = t
                self.telemetry_log.append((now, b.name, b.role, seq, t))
                if b._expect_snapshot is not None:
                    b.snapshot = (now, t, b._expect_snapshot)
                    b._expect_snapshot = None
            elif msg_type == P.MSG_ACK:
                acked, status = P.unpack_ack(payload)
                b.acks[acked] = (status, now)
                if len(b.acks) > _ACKS_KEPT:      # only recent acks matter
                    del b.acks[next(iter(b.acks))]
                b._expect_snapshot = acked
            elif msg_type == P.MSG_HELLO:
                b.role, b.firmware_version, b.capabilities, b.boot_nonce = hello
                self._event((now, b.name, "hello", "%s fw %s" % (b.role, b.firmware_version)))
            elif msg_type == P.MSG_EVENT:
                code, detail = P.unpack_event(payload)
                kind = _EVENT_NAMES.get(code, "event_%d" % code)
                if code == P.EV_FAILSAFE_ENTER:
                    b.failsafe_events += 1
                self._event((now, b.name, kind, detail))
                log.info("board %s: %s %s", b.name, kind, detail)
            self._cond.notify_all()

    def _new_or_current_session(self, b, now, seq, nonce):
        """Session bookkeeping for an authenticated HELLO (lock held); True = use it.

        On a keyed link a HELLO travels under the key of a session both sides opened with
        fresh nonces (PROTOCOL.md section 6), so a recorded HELLO cannot arrive here: the
        board's current ``boot_nonce`` is a re-announcement (a new session of the same boot:
        the answer to :meth:`request_hello`, or a new TCP connection), any other a reboot,
        whose uptime starts again. ``replayed_hellos`` stays 0 (kept for the store's schema).
        """
        if nonce != b.boot_nonce:
            b.last_t_ms = None     # the new boot's uptime starts again
        return True

    def _t_ms_continues(self, b, now, seq, t_ms):
        """Check telemetry uptime continuity within the session (lock held); False = dropped.

        ``t_ms`` is a u32 that wraps after 2**32 ms (49.7 days): a step back by more than
        half the u32 range is read as a wrap, i.e. a step forward.
        """
        if b.last_t_ms is not None:
            back_ms = (b.last_t_ms - t_ms) % _U32
            if 0 < back_ms <= _U32 // 2:
                b.t_ms_regressions += 1
                detail = "seq %d: t_ms %d after %d in session 0x%08x" % (
                    seq, t_ms, b.last_t_ms, b.boot_nonce if b.boot_nonce is not None else 0)
                self._event((now, b.name, "t_ms_regression", detail))
                log.warning("board %s: telemetry going back in time dropped, %s", b.name, detail)
                return False
        b.last_t_ms = t_ms
        return True

    # -- sending (tick thread) -----------------------------------------------------
    def request_hello(self):
        for b in self.boards.values():
            if b.link is not None:
                b.seq_out += 1
                b.link.send(P.MSG_HELLO, b.board_id, b.seq_out, b"")

    def send_setpoint(self, name, tick, mode, value):
        """Send a setpoint; returns its sequence number, or None if the board has no link or
        the write failed (the link logged why): nothing will ack it, so nobody waits for it."""
        b = self.boards[name]
        if b.link is None:
            return None
        b.seq_out += 1
        with self._lock:
            b.snapshot = None
        if not b.link.send(P.MSG_SETPOINT, b.board_id, b.seq_out, P.pack_setpoint(tick, mode, value)):
            return None
        return b.seq_out

    def wait_acks(self, sent, timeout_s):
        """Wait until every board in ``sent`` (name -> seq) acked and sent its snapshot.

        Returns name -> (status, ack_time_s) for the boards that answered in time.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                # acked, and the snapshot that followed *this* ack (not a late one of an older tick)
                done = {n: self.boards[n].acks[s] for n, s in sent.items()
                        if s is not None and s in self.boards[n].acks and self.boards[n].snapshot
                        and self.boards[n].snapshot[2] == s}
                left = deadline - time.monotonic()
                if len(done) == len([s for s in sent.values() if s is not None]) or left <= 0:
                    return done
                self._cond.wait(left)

    # -- reading (tick thread) -----------------------------------------------------
    def snapshot(self):
        """A consistent copy: name -> dict(telemetry, last_seen_s, snapshot, failsafe, role,
        firmware_version, boot_nonce, replayed_hellos, t_ms_regressions)."""
        with self._lock:
            return {n: {"telemetry": dict(b.telemetry) if b.telemetry else None,
                        "last_seen_s": b.last_seen_s, "snapshot": b.snapshot,
                        "failsafe": b.failsafe, "role": b.role,
                        "firmware_version": b.firmware_version, "boot_nonce": b.boot_nonce,
                        "replayed_hellos": b.replayed_hellos,
                        "t_ms_regressions": b.t_ms_regressions}
                    for n, b in self.boards.items()}

    def telemetry_peek(self):
        """Telemetry received since the last drain, without draining it."""
        with self._lock:
            return list(self.telemetry_log)

    def drain_telemetry(self):
        with self._lock:
            rows, self.telemetry_log = self.telemetry_log, []
        return rows

    def _event(self, row):
        """Queue an event (lock held); one pushed out of the full queue is counted."""
        if len(self.events) == self.events.maxlen:
            self.events_dropped += 1
        self.events.append(row)

    def drain_events(self):
        """The queued events, oldest first, and one ``events_dropped`` event when some were
        pushed out since the last drain (the queue holds ``_EVENTS_KEPT``)."""
        with self._lock:
            rows = list(self.events)
            self.events.clear()
            lost = self.events_dropped - self._dropped_reported
            self._dropped_reported = self.events_dropped
        if lost:
            rows.append((self.clock(), None, "events_dropped", "%d event(s) lost: more than %d between drains"
                         % (lost, _EVENTS_KEPT)))
        return rows

    def stale(self, max_age_s):
        """Names of boards not heard from within ``max_age_s`` (never heard counts as stale)."""
        now = self.clock()
        with self._lock:
            return [n for n, b in self.boards.items()
                    if b.last_seen_s is None or now - b.last_seen_s > max_age_s]


_EVENT_NAMES = {P.EV_BOOT: "boot", P.EV_FAILSAFE_ENTER: "failsafe_enter",
                P.EV_FAILSAFE_EXIT: "failsafe_exit", P.EV_LIMIT: "limit", P.EV_FAULT: "fault",
                P.EV_DECODE_ERROR: "decode_error", P.EV_PERIPHERAL_FAULT: "peripheral_fault",
                P.EV_PERIPHERAL_OK: "peripheral_ok"}
