"""The edge's side of the session handshake and its session checks (PROTOCOL.md section 6).

A real :class:`TcpLink` (keyed) connects to a real listening socket on the loopback; the test
plays the board (offering sessions, framing with the shared codec) and an eavesdropper who
recorded its frames and replays them byte for byte. A real :class:`SerialLink` on a
pseudo-terminal is the unkeyed case, where the document says no check is made.
"""

import os
import socket
import time
import tty

import pytest

from picogrid.edge.boards.fleet import Fleet
from picogrid.edge.boards.links import SerialLink, TcpLink
from picogrid.firmware import protocol as P

KEY = b"picogrid-test-key-0123456789abcd"     # the PROTOCOL.md test key
STORAGE_ID = 2


class Clock:
    """The fleet's injected clock [s], set by the test."""

    def __init__(self):
        self.t_s = 0.0

    def __call__(self):
        return self.t_s


class Board:
    """The test's side of the link: frames as the storage board would send them."""

    def __init__(self, write, key, read=None):
        self.write = write
        self.key = key
        self.read = read
        self.dec = P.Decoder(key=key, side=P.SIDE_BOARD)
        self.seq = 0
        self.received = []

    def handshake(self, nonce):
        """Offer a session and wait for the edge's answer (keyed links)."""
        self.dec.offer(nonce)
        self.write(self.dec.encode(P.MSG_OFFER, STORAGE_ID, 0, P.pack_offer(nonce)))
        assert _wait(lambda: self._pump() or (self.dec.session and self.dec.offered is None))

    def _pump(self):
        try:
            self.received += self.dec.feed(self.read(256))
        except (TimeoutError, socket.timeout):
            pass
        return False

    def wait_frame(self, pred):
        return _wait(lambda: self._pump() or any(pred(f) for f in self.received))

    def send(self, msg_type, payload):
        """Send one frame with the next sequence number; returns its bytes (for replays)."""
        self.seq += 1
        frame = self.dec.encode(msg_type, STORAGE_ID, self.seq, payload)
        self.write(frame)
        return frame

    def hello(self, nonce):
        return self.send(P.MSG_HELLO, P.pack_hello("storage", "1.0.0", 2, nonce))

    def telemetry(self, t_ms):
        return self.send(P.MSG_TELEMETRY, P.pack_telemetry(t_ms, 7.0, 9.0, 0.1, 0.9, 0.9, 3.0, 1.0, 0))

    def reboot(self):
        self.seq = 0
        self.dec.reset()


def _wait(cond, timeout_s=3.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


def _events(fleet, kind):
    return [e for e in fleet.events if e[2] == kind]


@pytest.fixture
def tcp_board():
    """Fleet + keyed TcpLink for ``storage``, connected to the test's board socket, session open."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5.0)
    clock = Clock()
    fleet = Fleet({"storage": STORAGE_ID, "load1": 4}, clock=clock)
    link = TcpLink("storage", "127.0.0.1:%d" % server.getsockname()[1], fleet.on_frame, KEY)
    fleet.attach("storage", link)
    conn, _ = server.accept()
    conn.settimeout(0.05)
    assert _wait(lambda: link.connected)
    board = Board(conn.sendall, KEY, conn.recv)
    board.handshake(0x1234)
    yield board, fleet, link, clock, conn
    link.close()
    conn.close()
    server.close()


def _state(fleet):
    return fleet.snapshot()["storage"]


def test_link_with_a_key_is_checked_one_without_is_not(tcp_board):
    _, fleet, link, _, _ = tcp_board
    assert fleet.boards["storage"].authenticated and not fleet.boards["load1"].authenticated
    assert link.sessions_answered == 1


def _keyed_storage_link():
    """A loopback server standing in for the storage board, and the edge's keyed TCP link to it
    attached to a one-board fleet: ``(server, fleet, link)``."""
    server = socket.create_server(("127.0.0.1", 0))
    fleet = Fleet({"storage": STORAGE_ID})
    link = TcpLink("storage", "127.0.0.1:%d" % server.getsockname()[1], fleet.on_frame, KEY)
    fleet.attach("storage", link)
    return server, fleet, link


def test_edge_sends_nothing_but_the_request_before_a_session():
    server, fleet, link = _keyed_storage_link()
    try:
        conn, _ = server.accept()
        assert _wait(lambda: link.connected)
        assert fleet.send_setpoint("storage", 1, P.MODE_NORMAL, 1.0) is None   # no session
        fleet.request_hello()
        conn.settimeout(2.0)
        dec = P.Decoder(key=KEY, side=P.SIDE_BOARD)
        got = []
        assert _wait(lambda: got.extend(dec.feed(conn.recv(256))) or got)
        assert [(f[0], f[3]) for f in got] == [(P.MSG_HELLO, b"")]
        conn.close()
    finally:
        link.close()
        server.close()


def test_reannounced_hello_is_accepted(tcp_board):
    board, fleet, link, _, _ = tcp_board
    board.hello(0xA0A0A0A0)
    board.telemetry(1000)
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 1000)
    # the edge asks again (as after a restart); the board offers a new session and announces
    # itself in it with the same boot nonce
    fleet.request_hello()
    assert board.wait_frame(lambda f: f[0] == P.MSG_HELLO and f[3] == b"")
    board.handshake(0x5678)
    board.hello(0xA0A0A0A0)
    board.telemetry(1500)
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 1500)
    s = _state(fleet)
    assert s["boot_nonce"] == 0xA0A0A0A0 and s["role"] == "storage"
    assert s["t_ms_regressions"] == 0
    assert len(_events(fleet, "hello")) == 2
    assert link.errors["auth_errors"] == link.errors["replay_errors"] == 0
    assert link.decoder.sessions == 2


def test_recorded_session_replayed_in_a_new_one_is_dropped(tcp_board):
    board, fleet, link, clock, _ = tcp_board
    clock.t_s = 10.0
    recorded = board.hello(0x11111111)            # an eavesdropper records the first session
    recorded += board.telemetry(60_000)
    assert _wait(lambda: _state(fleet)["telemetry"] is not None)
    board.reboot()
    clock.t_s = 20.0
    board.handshake(0x9999)
    board.hello(0x22222222)
    board.telemetry(150)
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 150)
    clock.t_s = 30.0
    board.write(recorded)                         # same bytes, tags of the old session's key
    assert _wait(lambda: link.errors["auth_errors"] == 2)
    s = _state(fleet)
    assert s["boot_nonce"] == 0x22222222 and s["telemetry"]["t_ms"] == 150
    assert s["last_seen_s"] == 20.0               # a replay is no sign of life
    # the link says so, as an event the runner stores with the others
    assert any(k == "auth_failure" and n == "storage" for _, n, k, _ in fleet.drain_events())
    # the genuine board goes on in its session
    board.telemetry(400)
    assert _wait(lambda: _state(fleet)["telemetry"]["t_ms"] == 400)
    assert _state(fleet)["t_ms_regressions"] == 0


def test_replayed_frames_of_the_current_session_are_dropped(tcp_board):
    board, fleet, link, _, _ = tcp_board
    board.hello(0x10101010)
    frame = board.telemetry(700)
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 700)
    board.write(frame)
    assert _wait(lambda: link.errors["replay_errors"] == 1)
    assert [row[4]["t_ms"] for row in fleet.drain_telemetry()] == [700]


def test_reboot_with_a_new_nonce_starts_a_new_session(tcp_board):
    board, fleet, _, _, _ = tcp_board
    board.hello(0x33333333)
    board.telemetry(90_000)
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 90_000)
    board.reboot()
    board.handshake(0x4444)
    board.hello(0x44444444)
    board.telemetry(200)                          # uptime restarted with the new boot
    assert _wait(lambda: _state(fleet)["telemetry"]["t_ms"] == 200)
    s = _state(fleet)
    assert s["boot_nonce"] == 0x44444444
    assert s["replayed_hellos"] == 0 and s["t_ms_regressions"] == 0
    assert [row[4]["t_ms"] for row in fleet.drain_telemetry()] == [90_000, 200]


def test_t_ms_regression_is_counted_and_not_used(tcp_board):
    board, fleet, _, clock, _ = tcp_board
    board.hello(0x55555555)
    clock.t_s = 1.0
    board.telemetry(5000)
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 5000)
    clock.t_s = 2.0
    board.telemetry(4000)                         # higher seq, older uptime
    assert _wait(lambda: _state(fleet)["t_ms_regressions"] == 1)
    s = _state(fleet)
    assert s["telemetry"]["t_ms"] == 5000 and s["last_seen_s"] == 1.0
    (event,) = _events(fleet, "t_ms_regression")
    assert "t_ms 4000 after 5000" in event[3]
    board.telemetry(6000)
    assert _wait(lambda: _state(fleet)["telemetry"]["t_ms"] == 6000)
    assert [row[4]["t_ms"] for row in fleet.drain_telemetry()] == [5000, 6000]
    assert _state(fleet)["t_ms_regressions"] == 1


def test_t_ms_u32_wrap_is_not_a_regression(tcp_board):
    board, fleet, _, _, _ = tcp_board
    board.hello(0x66666666)
    board.telemetry(2**32 - 300)                  # 49.7 days of uptime
    assert _wait(lambda: (_state(fleet)["telemetry"] or {}).get("t_ms") == 2**32 - 300)
    board.telemetry(200)                          # 500 ms later, after the wrap
    assert _wait(lambda: _state(fleet)["telemetry"]["t_ms"] == 200)
    board.telemetry(2**32 - 100)                  # back across the wrap: a regression
    assert _wait(lambda: _state(fleet)["t_ms_regressions"] == 1)
    assert _state(fleet)["telemetry"]["t_ms"] == 200


def test_wrong_key_is_reported():
    """A board flashed with another key: its OFFERs fail at the edge, no session opens, and the
    fleet records an ``auth_failure`` event."""
    server, fleet, link = _keyed_storage_link()
    try:
        conn, _ = server.accept()
        board = Board(conn.sendall, bytes(32), conn.recv)
        board.dec.offer(1)
        board.write(board.dec.encode(P.MSG_OFFER, STORAGE_ID, 0, P.pack_offer(1)))
        assert _wait(lambda: _events(fleet, "auth_failure"))
        assert not link.session and link.sessions_answered == 0
        conn.close()
    finally:
        link.close()
        server.close()


def test_unauthenticated_link_has_no_session_checks():
    # PROTOCOL.md section 6: no checks without a key (nothing to protect)
    master, slave = os.openpty()
    tty.setraw(slave)
    fleet = Fleet({"storage": STORAGE_ID})
    link = SerialLink("storage", os.ttyname(slave), fleet.on_frame)
    fleet.attach("storage", link)
    try:
        board = Board(lambda data: os.write(master, data), None)
        board.hello(0x77777777)
        board.hello(0x88888888)
        board.hello(0x77777777)
        board.telemetry(5000)
        frame = board.telemetry(4000)
        board.write(frame)
        assert _wait(lambda: link.errors["frames_ok"] == 6)
        s = _state(fleet)
        assert s["boot_nonce"] == 0x77777777 and s["telemetry"]["t_ms"] == 4000
        assert s["replayed_hellos"] == 0 and s["t_ms_regressions"] == 0
        assert fleet.send_setpoint("storage", 1, P.MODE_NORMAL, 1.0) is not None
    finally:
        link.close()
        os.close(master)
        os.close(slave)


class _ResetOnFirstWrite:
    """A connected socket whose first write fails as on a board that reset right after accept."""

    def __init__(self, sock):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def sendall(self, data):
        raise ConnectionResetError(104, "Connection reset by peer")


def test_tcp_link_survives_a_connection_lost_at_its_first_write(monkeypatch):
    """The link's reader keeps running after a connection that fails at the resync byte, and
    connects again (the failed one is closed, never taken for a live connection)."""
    from picogrid.edge.boards import links

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5.0)
    real, attempts = socket.create_connection, []

    def connect(*args, **kwargs):
        sock = real(*args, **kwargs)
        attempts.append(sock)
        return _ResetOnFirstWrite(sock) if len(attempts) == 1 else sock

    monkeypatch.setattr(links.socket, "create_connection", connect)
    link = TcpLink("storage", "127.0.0.1:%d" % server.getsockname()[1], lambda *a: None, KEY)
    try:
        first, _ = server.accept()
        second, _ = server.accept()        # the reader tried again
        assert _wait(lambda: link.connected and link.connects == 1)
        assert attempts[0].fileno() == -1 and first.recv(16) == b""    # the failed one was closed
        # a live connection: it takes the edge's HELLO request (no session yet for the rest)
        assert second.recv(1) == b"\x00" and link.send(P.MSG_HELLO, STORAGE_ID, 1, b"")
        first.close()
        second.close()
    finally:
        link.close()
        server.close()


def test_tcp_link_closed_while_connecting_leaves_no_socket(monkeypatch):
    """close() waits out a connect under way (a slow board), which then closes its socket."""
    from picogrid.edge.boards import links

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5.0)
    real = socket.create_connection

    def slow(*args, **kwargs):
        time.sleep(1.5)                     # a slow SYN-ACK, within the 2 s connect timeout
        return real(*args, **kwargs)

    monkeypatch.setattr(links.socket, "create_connection", slow)
    link = TcpLink("storage", "127.0.0.1:%d" % server.getsockname()[1], lambda *a: None, KEY)
    try:
        time.sleep(0.05)
        link.close()
        assert not link._thread.is_alive() and not link.connected
        conn, _ = server.accept()
        assert conn.recv(16) == b""          # closed by the link, not left open
        conn.close()
    finally:
        server.close()
