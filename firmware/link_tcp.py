# Byte link over TCP for the Pico W (and for boards of the HIL bench that use TCP): the board
# listens on a port and serves one edge connection at a time. A new connection is a
# *candidate*: it is read and answered beside the edge's connection, and replaces it only when
# board.py has seen it complete the session handshake (PROTOCOL.md §6) — so a host without
# the key cannot push the edge off, and an edge that restarted gets back in. One candidate at
# a time: a newer one replaces an older candidate, never the edge's connection. Frames on it
# are authenticated (HMAC), which board.py enforces by refusing a TCP link without a key
# (config.py).
# Wi-Fi bring-up (Pico W, CYW43 through `network.WLAN`) happens once at boot, before the
# hardware watchdog starts, with a bounded wait: MicroPython docs, "network.WLAN".
import errno
import select
import socket
import time

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython has no micropython.const
        return x

_MAX_READ = const(128)
_WIFI_TIMEOUT_MS = const(15000)
# bytes a full send buffer may leave waiting: a few frames (MAX_ENCODED 157 + delimiter)
_MAX_PENDING = const(1024)


class WifiError(Exception):
    pass


def connect_wifi(wifi):
    """Join the access point in ``wifi`` ({"ssid", "password"}); returns the board's IP.

    Blocks at most 15 s (boot only, before the event loop and the hardware watchdog start).
    Raises WifiError if the board has no Wi-Fi or does not get an address in time.
    """
    try:
        import network
    except ImportError:
        raise WifiError("this board has no network module (not a Pico W?)")
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi["password"])
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > _WIFI_TIMEOUT_MS:
                raise WifiError("no Wi-Fi connection to %s after %d ms" % (wifi["ssid"], _WIFI_TIMEOUT_MS))
            time.sleep_ms(100)
    return wlan.ifconfig()[0]


class TcpLink:
    """Same methods as link_serial.SerialLink: read() -> bytes now, write(data), deinit(),
    on the edge's (authenticated) connection; ``read_candidate`` / ``write_candidate`` on the
    newest connection that has not proved itself yet, and ``promote`` to make it the edge's.

    ``new_peer`` is set when a connection came since the last call of ``take_new_peer``, so
    the board can offer it a session. A send the socket takes only in part keeps the rest
    (at most ``_MAX_PENDING`` bytes) and sends it first next time, so frames go out whole or
    not at all: a frame that does not fit is dropped whole and counted in ``dropped``.
    """

    def __init__(self, port, host="0.0.0.0"):
        addr = socket.getaddrinfo(host, port)[0][-1]
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(addr)
        self._srv.listen(1)
        self._srv.setblocking(False)
        self._conn = None
        self._cand = None        # the newest connection without a session yet
        self._poll = select.poll()
        self._poll.register(self._srv, select.POLLIN)
        self.new_peer = False
        self.peers = 0
        self._pending = b""
        self.dropped = 0

    def _accept(self):
        if not self._poll.poll(0):
            return
        try:
            conn, _ = self._srv.accept()
        except OSError:
            return
        if self._cand is not None:
            self._cand.close()   # one candidate: the newer one (the edge's stays)
        conn.setblocking(False)
        self._cand = conn
        self.new_peer = True
        self.peers += 1

    def promote(self):
        """The candidate completed the handshake: it becomes the edge's connection."""
        if self._cand is None:
            return
        self._drop()
        self._conn, self._cand = self._cand, None

    def _drop(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pending = b""      # the rest of a frame means nothing to the next peer

    def take_new_peer(self):
        new, self.new_peer = self.new_peer, False
        return new

    def read_candidate(self):
        """Bytes from the candidate connection now (possibly empty); never blocks."""
        self._accept()
        c = self._cand
        if c is None:
            return b""
        try:
            data = c.recv(_MAX_READ)
        except OSError:          # EAGAIN: nothing yet
            return b""
        if not data:
            c.close()
            self._cand = None
        return data

    def write_candidate(self, data):
        """Write a (small, handshake) frame to the candidate; lost if it does not fit."""
        c = self._cand
        if c is None:
            return
        try:
            c.send(data)
        except OSError:
            c.close()
            self._cand = None

    def read(self):
        """Bytes available now (possibly empty); never blocks."""
        self._accept()
        if self._conn is None:
            return b""
        if self._pending:
            self._send(b"")
        if self._conn is None:
            return b""
        try:
            data = self._conn.recv(_MAX_READ)
        except OSError:          # EAGAIN: nothing yet
            return b""
        if not data:             # the edge closed the connection
            self._drop()
            return b""
        return data

    def write(self, data):
        if self._conn is None:
            return
        if len(self._pending) + len(data) > _MAX_PENDING:
            self._send(b"")                    # room for this frame, if the peer took some
        if len(self._pending) + len(data) > _MAX_PENDING:
            self.dropped += 1                  # lost whole: the edge sees no torn frame
            return
        self._send(data)

    def _send(self, data):
        conn = self._conn
        if conn is None:
            return
        data = self._pending + data if self._pending else data
        try:
            n = conn.send(data)
        except OSError as exc:
            if exc.args and exc.args[0] == errno.EAGAIN:   # send buffer full: keep it all
                self._pending = data
                return
            self._drop()                       # peer gone: the edge resyncs on a new one
            return
        n = 0 if n is None else n              # some ports return None when nothing was taken
        self._pending = data[n:] if n < len(data) else b""

    def deinit(self):
        self._drop()
        if self._cand is not None:
            self._cand.close()
            self._cand = None
        self._srv.close()
