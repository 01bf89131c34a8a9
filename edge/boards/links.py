"""Links from the edge to its boards: a byte transport plus the shared frame codec.

A :class:`SerialLink` opens a USB-CDC serial port (``/dev/ttyACM0`` for a Pico, a
``/dev/pts/N`` pseudo-terminal for a HIL board) with pyserial and decodes frames on a reader
thread. A :class:`TcpLink` connects to a Pico W (or a HIL board) listening on TCP. A link
with the board's HMAC key (every TCP link; a serial link when the secrets file has one)
answers the board's OFFER with a SESSION (both nonces) itself, and all other frames travel
under that session's key with a direction bit, so recorded, replayed and reflected frames are
dropped (PROTOCOL.md §6).
Decoded frames go to a callback; corrupt bytes are counted by the decoder
(``picogrid.firmware.protocol.Decoder``) and dropped, never raised.
"""

import logging
import os
import socket
import threading
import time

import serial

from picogrid.firmware import protocol as P

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.02
#: a write to a board that stopped reading gives up after this [s]: a full pty or USB buffer
#: otherwise blocks the edge's tick for every board
_WRITE_TIMEOUT_S = 0.1
#: reopening a serial port that vanished (a Pico reset re-enumerates its USB CDC device)
_REOPEN_BACKOFF_S = (0.2, 2.0)


def _deliver(link, data):
    """Count received bytes, decode them, hand every good frame to the link's callback; a
    board's OFFER is answered here (the session handshake, PROTOCOL.md §6)."""
    link.bytes_in += len(data)
    link.last_rx_s = time.time()
    frames = link.decoder.feed(data)
    _report_auth_failures(link)
    for frame in frames:
        if frame[0] == P.MSG_OFFER:
            try:
                (board_nonce,) = P.unpack_offer(frame[3])
            except P.ProtocolError:
                continue
            edge_nonce = int.from_bytes(os.urandom(8), "little")
            link.sessions_answered += 1
            link.send_raw(link.decoder.encode(P.MSG_SESSION, frame[1], 0,
                                              link.decoder.answer(board_nonce, edge_nonce)))
            continue
        try:
            link._on_frame(link.name, *frame)
        except Exception:   # one bad handler must not kill the link
            log.exception("link %s: frame handler failed", link.name)


def _report_auth_failures(link):
    """Tell the link's ``on_event`` (the fleet) about frames that failed authentication: the
    1st, 2nd, 4th, 8th ... (said, without a flood). On a keyed link that never opens a session
    it is how a board flashed with another key (or none) shows."""
    n = link.decoder.auth_errors
    if n <= link.auth_reported:
        return
    link.auth_reported = n
    if n & (n - 1) == 0 and link.on_event is not None:
        detail = "%d frame(s) failed authentication on %s's %s link (%s, %s)" % (
            n, link.name, link.kind, "keyed" if link.decoder.keyed else "unkeyed",
            "session open" if link.decoder.session else "no session: is the board flashed with this key?")
        log.warning("link %s: %s", link.name, detail)
        try:
            link.on_event(link.name, "auth_failure", detail)
        except Exception:
            log.exception("link %s: event handler failed", link.name)


class SerialLink:
    """One board on one serial port.

    Parameters
    ----------
    name : str, board name (for logs)
    port : str, device path
    on_frame : callable(name, msg_type, board_id, seq, payload), called on the reader thread
    key : bytes or None, the board's HMAC key when it was flashed with one (the secrets file's
        ``key_hex``); None: an unauthenticated link
    baudrate : int, ignored by USB CDC and pseudo-terminals, kept for UART adapters

    A port that fails (the board reset and its USB device came back, or went away) is closed
    and reopened by the reader thread with a growing back-off; the board is reported by the
    fleet through its silence meanwhile. A write that the board does not take within
    ``_WRITE_TIMEOUT_S`` is dropped (``send`` returns False), so one stuck board cannot stall
    the tick. After every open the link writes one 0x00, so a frame the board had half
    received is closed off (PROTOCOL.md §1).

    Raises
    ------
    serial.SerialException if the port cannot be opened.
    """

    kind = "serial"

    def __init__(self, name, port, on_frame, key=None, baudrate=115200):
        self.name = name
        self.port = port
        self._on_frame = on_frame
        self.decoder = P.Decoder(key=key, side=P.SIDE_EDGE)
        self._key = key
        self.sessions_answered = 0
        self.on_event = None          # callable(name, kind, detail), set by Fleet.attach
        self.auth_reported = 0
        self._baudrate = baudrate
        self.authenticated = key is not None     # frames carry an HMAC tag (PROTOCOL.md section 6)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self.bytes_in = 0
        self.last_rx_s = None
        self.reopens = 0
        self._serial = self._open()
        self._thread = threading.Thread(target=self._read_loop, name="link-" + name, daemon=True)
        self._thread.start()

    def _open(self):
        port = serial.Serial(self.port, baudrate=self._baudrate, timeout=_READ_TIMEOUT_S,
                             write_timeout=_WRITE_TIMEOUT_S)
        try:
            port.write(b"\x00")   # resynchronise the board's decoder (PROTOCOL.md §1)
        except serial.SerialException as exc:
            log.warning("link %s: resync byte not written: %s", self.name, exc)
        return port

    def _reopen(self):
        """Close the failed port and open it again until it opens or the link closes."""
        with self._write_lock:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
        delay = _REOPEN_BACKOFF_S[0]
        while not self._stop.wait(delay):
            try:
                port = self._open()
            except (serial.SerialException, OSError) as exc:
                log.debug("link %s: reopen of %s failed: %s", self.name, self.port, exc)
                delay = min(2 * delay, _REOPEN_BACKOFF_S[1])
                continue
            # a half frame from before means nothing now; the session stays: a board that
            # reset offers a new one itself (PROTOCOL.md §6), one that did not goes on in it
            self.decoder.resync()
            with self._write_lock:
                self._serial = port
            self.reopens += 1
            log.info("link %s: %s reopened", self.name, self.port)
            return

    def _read_loop(self):
        while not self._stop.is_set():
            try:
                data = self._serial.read(512)
            except (serial.SerialException, OSError, TypeError) as exc:
                if self._stop.is_set():
                    return
                # once per failure, not per retry: the fleet reports the board's silence
                log.warning("link %s read failed: %s; reopening %s", self.name, exc, self.port)
                self._reopen()
                continue
            if not data:
                continue
            _deliver(self, data)

    def send(self, msg_type, board_id, seq, payload):
        """Encode and write one frame (PROTOCOL.md); True if written, False (logged) if the
        port failed or the board did not take it within ``_WRITE_TIMEOUT_S``, or a keyed link
        has no session yet (the board has not answered the edge's HELLO request)."""
        frame = self.decoder.encode(msg_type, board_id, seq, payload)
        if frame is None:
            return False
        return self.send_raw(frame)

    def send_raw(self, frame):
        """Write bytes as they are; True if written (see :meth:`send`)."""
        with self._write_lock:
            try:
                self._serial.write(frame)
            except serial.SerialTimeoutException:
                # a board that stopped reading: drop what is queued, the next tick tries again
                self._discard_output()
                log.warning("link %s write timed out: the board is not reading", self.name)
                return False
            except (serial.SerialException, OSError) as exc:
                log.warning("link %s write failed: %s", self.name, exc)
                return False
        return True

    def _discard_output(self):
        try:
            self._serial.reset_output_buffer()
        except (serial.SerialException, OSError):
            pass

    @property
    def session(self):
        """True when a keyed link has an open session with its board."""
        return self.decoder.session

    @property
    def errors(self):
        d = self.decoder
        return {"crc_errors": d.crc_errors, "framing_errors": d.framing_errors,
                "auth_errors": d.auth_errors, "replay_errors": d.replay_errors,
                "oversize_errors": d.oversize_errors, "frames_ok": d.frames_ok}

    def close(self):
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._serial.close()


class TcpLink:
    """One board over TCP, authenticated; the same interface as :class:`SerialLink`.

    The reader thread (re)connects by itself: a board that reboots or a dropped connection
    is reported by the fleet through silence meanwhile, and frames sent while disconnected
    are lost (``send`` returns False), as on an unplugged cable.

    Parameters
    ----------
    name : str, board name (for logs)
    address : str, ``"host:port"`` of the board
    on_frame : callable(name, msg_type, board_id, seq, payload), called on the reader thread
    key : bytes, the board's HMAC key (>= 16 bytes)
    connect_timeout_s : float [s]

    Raises
    ------
    ValueError if ``key`` is missing (a TCP link is never unauthenticated) or ``address`` is
    not ``host:port``.
    """

    kind = "tcp"

    def __init__(self, name, address, on_frame, key, connect_timeout_s=2.0):
        if not key:
            raise ValueError("TCP link %s needs the board's HMAC key" % name)
        host, sep, port = str(address).rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("TCP address must be host:port, got %r" % (address,))
        self.name = name
        self.port = address
        self._addr = (host or "127.0.0.1", int(port))
        self._on_frame = on_frame
        self._key = key
        self.authenticated = True
        self.decoder = P.Decoder(key=key, side=P.SIDE_EDGE)
        self.sessions_answered = 0
        self.on_event = None
        self.auth_reported = 0
        self._timeout_s = connect_timeout_s
        self._sock = None
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self.connects = 0
        self.bytes_in = 0
        self.last_rx_s = None
        self._thread = threading.Thread(target=self._read_loop, name="link-" + name, daemon=True)
        self._thread.start()

    def _connect(self):
        try:
            sock = socket.create_connection(self._addr, timeout=self._timeout_s)
        except OSError as exc:
            log.debug("link %s: connect to %s failed: %s", self.name, self.port, exc)
            return None
        try:
            if self._stop.is_set():     # closed while connecting: nobody would close it
                raise OSError("link closed")
            sock.settimeout(_READ_TIMEOUT_S * 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.decoder.reset()   # a new connection needs a new session (the board offers one)
            with self._write_lock:
                sock.sendall(b"\x00")    # flush whatever the board had buffered (PROTOCOL.md §1)
                self._sock = sock       # only a connection that took the resync byte
        except OSError as exc:          # e.g. a board that reset right after accepting
            sock.close()
            log.debug("link %s: connection to %s lost at once: %s", self.name, self.port, exc)
            return None
        self.connects += 1
        log.info("link %s: connected to %s", self.name, self.port)
        return sock

    def _drop(self):
        with self._write_lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _read_loop(self):
        while not self._stop.is_set():
            sock = self._sock or self._connect()
            if sock is None:
                self._stop.wait(0.2)
                continue
            try:
                data = sock.recv(512)
            except socket.timeout:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("link %s read failed: %s", self.name, exc)
                self._drop()
                continue
            if not data:
                self._drop()
                continue
            _deliver(self, data)

    def send(self, msg_type, board_id, seq, payload):
        """Encode and write one frame; True if written, False if the connection is down, has
        no session yet, or the write failed (logged; the reader reconnects)."""
        frame = self.decoder.encode(msg_type, board_id, seq, payload)
        if frame is None:
            return False
        with self._write_lock:
            if self._sock is None:
                return False
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                log.warning("link %s write failed: %s", self.name, exc)
                return False
        return True

    def send_raw(self, data):
        """Write bytes as they are (tests: replayed or forged frames). Returns False if down."""
        with self._write_lock:
            if self._sock is None:
                return False
            try:
                self._sock.sendall(data)
            except OSError:
                return False
        return True

    @property
    def connected(self):
        return self._sock is not None

    errors = SerialLink.errors
    session = SerialLink.session

    def close(self):
        self._stop.set()
        # a connect under way may take its whole timeout before it sees the stop
        self._thread.join(timeout=self._timeout_s + 1.0)
        self._drop()
