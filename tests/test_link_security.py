"""The keyed links against the real board firmware under MicroPython (PROTOCOL.md section 6).

A HIL bench runs ``load1`` on TCP (as a Pico W) and ``load2`` on a pseudo-terminal with a key
(a serial board flashed with one), each the real firmware under the MicroPython unix port. The
test plays the edge, and the attacker on the link, with raw sockets and the shared codec:
recorded setpoints replayed after a reconnect, a replayed HELLO request, the board's own frames
reflected back to it, a second connection that never authenticates, stale ticks. Point 2 of
issue 27: the edge opens a keyed serial board's link with its key (``edge/control/service.py``,
``hil/bench.py``), and a wrongly keyed pair is reported.
"""

import os
import socket
import time

import pytest

from picogrid.edge.boards.fleet import Fleet
from picogrid.firmware import protocol as P
from picogrid.hil.bench import Bench
from picogrid.hil.day import load_site

KEY_TCP = bytes(range(32))
KEY_SERIAL = bytes(range(100, 132))


def _wait(cond, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.01)
    return None


@pytest.fixture
def bench(tmp_path_factory):
    """A fresh bench per test: the boards' decode-error counters the tests read start at 0."""
    site = load_site()
    site["boards"] = {n: site["boards"][n] for n in ("load1", "load2")}
    site["bench"] = dict(site["bench"], watchdog_ms=60000)   # no failsafe during a test
    b = Bench(site, tmp_path_factory.mktemp("sec"), time.time(), 1.0, [0.5] * 600,
              tcp_keys={"load1": KEY_TCP}, serial_keys={"load2": KEY_SERIAL}).start()
    yield b
    b.stop()


def _connect(host, port):
    try:
        return socket.create_connection((host, port), timeout=5)
    except ConnectionRefusedError:
        return None


class RawEdge:
    """One TCP connection to the board, driven frame by frame with the shared codec."""

    def __init__(self, bench, name="load1", key=KEY_TCP):
        self.board_id = bench.boards[name]["id"]
        host, port = bench.ports[name].rsplit(":", 1)
        # the board listens once its firmware has booted
        self.sock = _wait(lambda: _connect(host, int(port)), 15.0)
        assert self.sock, "board %s does not listen on %s" % (name, bench.ports[name])
        self.sock.settimeout(0.02)
        self.dec = P.Decoder(key=key, side=P.SIDE_EDGE)
        self.frames = []        # decoded frames, in order
        self.raw = []           # every complete frame as received (for reflection)
        self._rest = b""
        self.seq = 0
        self.closed = False

    def pump(self):
        try:
            data = self.sock.recv(4096)
        except (TimeoutError, socket.timeout):
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        buf = self._rest + data
        *whole, self._rest = buf.split(b"\x00")
        self.raw += [w + b"\x00" for w in whole if w]
        self.frames += self.dec.feed(data)

    def wait(self, pred, timeout_s=5.0, start=None):
        """The first frame received from now on (or from index ``start``) for which ``pred``
        holds, or None."""
        start = len(self.frames) if start is None else start

        def look():
            self.pump()
            return next((f for f in self.frames[start:] if pred(f)), None)
        return _wait(look, timeout_s)

    def handshake(self, request=False):
        """Answer the board's OFFER (asking for one first if ``request``); returns the board's
        HELLO in the new session and the SESSION frame sent."""
        if request:
            self.send(P.MSG_HELLO, b"")
        offer = self.wait(lambda f: f[0] == P.MSG_OFFER)
        assert offer, "no OFFER from the board"
        (bn,) = P.unpack_offer(offer[3])
        session = self.dec.encode(P.MSG_SESSION, self.board_id, 0,
                                  self.dec.answer(bn, int.from_bytes(os.urandom(8), "little")))
        self.sock.sendall(session)
        hello = self.wait(lambda f: f[0] == P.MSG_HELLO)
        assert hello and self.dec.session
        return hello, session

    def send(self, msg_type, payload):
        """Send a frame with the next seq; returns (seq, the bytes sent)."""
        self.seq += 1
        frame = self.dec.encode(msg_type, self.board_id, self.seq, payload)
        self.sock.sendall(frame)
        return self.seq, frame

    def setpoint(self, tick, value):
        return self.send(P.MSG_SETPOINT, P.pack_setpoint(tick, P.MODE_NORMAL, value))

    def ack(self, seq, timeout_s=3.0):
        """The board's ACK status for our frame ``seq``, or None if none came in time."""
        f = self.wait(lambda f: f[0] == P.MSG_ACK and P.unpack_ack(f[3])[0] == seq, timeout_s)
        return None if f is None else P.unpack_ack(f[3])[1]

    def applied(self):
        """The setpoint the board reports in its next telemetry."""
        f = self.wait(lambda f: f[0] == P.MSG_TELEMETRY)
        return dict(zip(P.TELEMETRY_FIELDS, P.unpack_telemetry(f[3])))["setpoint"]

    def decode_errors(self, at_least, timeout_s=4.0):
        """The first EV_DECODE_ERROR the board sent on this connection whose counter
        ``at_least[0]`` is >= ``at_least[1]``, as a dict of counters (None if none came)."""
        def counters(f):
            if f[0] != P.MSG_EVENT or P.unpack_event(f[3])[0] != P.EV_DECODE_ERROR:
                return None
            words = P.unpack_event(f[3])[1].split()
            return {words[k]: int(words[k + 1]) for k in range(0, len(words), 2)}
        f = self.wait(lambda f: (counters(f) or {}).get(at_least[0], -1) >= at_least[1],
                      timeout_s, start=0)
        return None if f is None else counters(f)

    def close(self):
        self.sock.close()


def test_recorded_setpoint_is_refused_after_a_reconnect(bench):
    edge = RawEdge(bench)
    edge.handshake()
    seq, recorded = edge.setpoint(1, 0.6)
    assert edge.ack(seq) == P.ACK_OK
    seq, _ = edge.setpoint(2, 0.2)
    assert edge.ack(seq) == P.ACK_OK
    edge.close()
    # the attacker connects and replays the recorded frame: no session on its connection
    attacker = RawEdge(bench)
    attacker.wait(lambda f: f[0] == P.MSG_OFFER)
    attacker.sock.sendall(recorded)
    assert attacker.ack(1, 1.0) is None
    attacker.close()
    # the genuine edge reconnects and opens a new session; the recorded frame, replayed into
    # it, is refused too (the old session's key), while the edge's own setpoints go through
    edge = RawEdge(bench)
    edge.handshake()
    edge.sock.sendall(recorded)
    assert edge.ack(1, 1.0) is None
    assert edge.applied() == pytest.approx(0.2)
    assert edge.decode_errors(("auth", 2)), edge.frames
    seq, _ = edge.setpoint(1, 0.3)          # a new session: its ticks start again
    assert edge.ack(seq) == P.ACK_OK
    assert edge.wait(lambda f: f[0] == P.MSG_TELEMETRY
                     and abs(P.unpack_telemetry(f[3])[7] - 0.3) < 1e-6)
    edge.close()


def test_replayed_hello_request_does_not_reopen_the_window(bench):
    edge = RawEdge(bench)
    edge.handshake()
    seq1, recorded = edge.setpoint(1, 0.5)
    assert edge.ack(seq1) == P.ACK_OK
    _, request = edge.send(P.MSG_HELLO, b"")
    assert edge.wait(lambda f: f[0] == P.MSG_OFFER)       # the board offers; nobody answers
    edge.sock.sendall(request)                             # the request replayed
    assert edge.wait(lambda f: f[0] == P.MSG_OFFER)
    edge.sock.sendall(recorded)                            # and the setpoint before it
    assert edge.ack(seq1, 1.0) is None
    assert edge.decode_errors(("replay", 1)), edge.frames
    seq, _ = edge.setpoint(2, 0.25)                        # the session goes on
    assert edge.ack(seq) == P.ACK_OK
    edge.close()


def test_reflected_frames_are_refused(bench):
    """The board's own telemetry and acks sent back to it (their seq far above the edge's) are
    refused, and the edge's next real setpoint is applied, not dropped as a replay."""
    edge = RawEdge(bench)
    edge.handshake()
    seq, _ = edge.setpoint(1, 0.4)
    assert edge.ack(seq) == P.ACK_OK
    assert edge.wait(lambda f: f[0] == P.MSG_TELEMETRY)
    own = [r for r in edge.raw[-6:]]
    assert own
    for frame in own:
        edge.sock.sendall(frame)
    assert edge.decode_errors(("auth", len(own))), edge.frames
    seq, _ = edge.setpoint(2, 0.45)
    assert edge.ack(seq) == P.ACK_OK
    edge.close()


def test_second_connection_cannot_displace_the_edge(bench):
    edge = RawEdge(bench)
    _, session = edge.handshake()
    seq, recorded = edge.setpoint(1, 0.35)
    assert edge.ack(seq) == P.ACK_OK
    for _ in range(2):                    # two intruders, one after the other
        intruder = RawEdge(bench)
        assert intruder.wait(lambda f: f[0] == P.MSG_OFFER)
        intruder.sock.sendall(b"\x00garbage\x00" + session + recorded)   # old answer, old setpoint
        seq, _ = edge.setpoint(2 + _, 0.3)
        assert edge.ack(seq) == P.ACK_OK, "the edge's connection was displaced"
        assert intruder.ack(1, 0.5) is None and not edge.closed
        intruder.close()
    # a legitimate edge that restarted completes the handshake and takes over
    new = RawEdge(bench)
    new.handshake()
    seq, _ = new.setpoint(1, 0.2)
    assert new.ack(seq) == P.ACK_OK
    assert _wait(lambda: edge.pump() or edge.closed, 3.0), "the old connection stays open"
    new.close()


def test_stale_and_far_ticks_are_refused(bench):
    edge = RawEdge(bench)
    edge.handshake()
    seq, _ = edge.setpoint(10, 0.3)
    assert edge.ack(seq) == P.ACK_OK
    seq, _ = edge.setpoint(9, 0.8)
    assert edge.ack(seq) == P.ACK_REJECTED
    seq, _ = edge.setpoint(10 + P.MAX_TICK_STEP + 1, 0.8)
    assert edge.ack(seq) == P.ACK_REJECTED
    seq, _ = edge.setpoint(10, 0.31)     # the same tick again (a retry) is fine
    assert edge.ack(seq) == P.ACK_OK
    seq, _ = edge.setpoint(11, 0.32)
    assert edge.ack(seq) == P.ACK_OK
    assert edge.wait(lambda f: f[0] == P.MSG_TELEMETRY and abs(P.unpack_telemetry(f[3])[7] - 0.32) < 1e-6)
    edge.close()


# ------------------------------------------------------------------ point 2: keyed serial
def _wait_hello(fleet, name, timeout_s=8.0):
    def asked():
        fleet.request_hello()
        time.sleep(0.2)
        return fleet.snapshot()[name]["role"]
    return _wait(asked, timeout_s)


def test_keyed_serial_board_from_the_bench_links(bench):
    """The bench's links are keyed as its boards: the keyed serial board opens a session,
    and its setpoints are applied and acked OK."""
    fleet = Fleet({n: b["id"] for n, b in bench.boards.items()})
    links = bench.open_links(fleet.on_frame, fleet)
    try:
        assert links["load2"].kind == "serial" and links["load2"].authenticated
        assert _wait_hello(fleet, "load2") == "load2" and _wait_hello(fleet, "load1") == "load1"
        for tick in (1, 2):
            sent = {n: fleet.send_setpoint(n, tick, P.MODE_NORMAL, 0.3) for n in ("load1", "load2")}
            acks = fleet.wait_acks(sent, 3.0)
            assert {n: a[0] for n, a in acks.items()} == {"load1": P.ACK_OK, "load2": P.ACK_OK}
        assert links["load2"].errors["auth_errors"] == 0
    finally:
        for link in links.values():
            link.close()


def test_keyed_serial_board_through_the_service_links(bench):
    """edge/control/service.py opens a serial board with the secrets file's key."""
    from picogrid.edge.control.service import open_links

    fleet = Fleet({"load2": bench.boards["load2"]["id"]})
    site = {"boards": {"load2": {"port": bench.ports["load2"]}}}
    links = open_links(site, fleet.on_frame, {"boards": {"load2": {"key_hex": KEY_SERIAL.hex()}}})
    try:
        fleet.attach("load2", links["load2"])
        assert links["load2"].authenticated
        assert _wait_hello(fleet, "load2") == "load2"
        seq = fleet.send_setpoint("load2", 1, P.MODE_NORMAL, 0.2)
        assert fleet.wait_acks({"load2": seq}, 3.0)["load2"][0] == P.ACK_OK
    finally:
        links["load2"].close()
    # without a key in the secrets, the link is unkeyed (and this board then refuses it)
    links = open_links(site, fleet.on_frame, {})
    try:
        assert not links["load2"].authenticated
    finally:
        links["load2"].close()


def test_wrongly_keyed_serial_board_is_reported(bench):
    fleet = Fleet({"load2": bench.boards["load2"]["id"]})
    links = bench.open_links(fleet.on_frame, None, keys={"load2": bytes(32)})
    try:
        link = links["load2"]
        fleet.attach("load2", link)
        assert _wait_hello(fleet, "load2", 3.0) is None      # no session, so no HELLO
        events = _wait(lambda: [e for e in fleet.drain_events() if e[2] == "auth_failure"])
        assert events and events[0][1] == "load2" and "no session" in events[0][3]
        assert not link.session and link.errors["auth_errors"] > 0
        assert fleet.send_setpoint("load2", 1, P.MODE_NORMAL, 0.2) is None
    finally:
        for link in links.values():
            link.close()


def test_keyed_boards_that_restart_open_a_new_session_by_themselves(bench):
    """A keyed board that resets (serial: its boot OFFER; TCP: the edge's link reconnects) is
    back in a new session without the edge asking, and its setpoints are acked again."""
    fleet = Fleet({n: b["id"] for n, b in bench.boards.items()})
    links = bench.open_links(fleet.on_frame, fleet)
    try:
        assert _wait_hello(fleet, "load1") and _wait_hello(fleet, "load2")
        before = {n: links[n].decoder.sessions for n in links}
        for name in ("load1", "load2"):
            bench.kill_board(name)
            bench.start_board(name)
        assert _wait(lambda: all(links[n].decoder.sessions > before[n] for n in links), 15.0)
        for tick in (1, 2):
            sent = {n: fleet.send_setpoint(n, tick, P.MODE_NORMAL, 0.3) for n in links}
            acks = fleet.wait_acks(sent, 3.0)
            assert {n: a[0] for n, a in acks.items()} == {"load1": P.ACK_OK, "load2": P.ACK_OK}
    finally:
        for link in links.values():
            link.close()
