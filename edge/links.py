"""Links from the edge to its boards: a byte transport plus the shared frame codec.

A :class:`SerialLink` opens a USB-CDC serial port (``/dev/ttyACM0`` for a Pico, a
``/dev/pts/N`` pseudo-terminal for a HIL board) with pyserial and decodes frames on a reader
thread. Decoded frames go to a callback; corrupt bytes are counted by the decoder
(``picogrid.firmware.protocol.Decoder``) and dropped, never raised.
"""

import logging
import threading
import time

import serial

from picogrid.firmware import protocol as P

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.02


class SerialLink:
    """One board on one serial port.

    Parameters
    ----------
    name : str, board name (for logs)
    port : str, device path
    on_frame : callable(name, msg_type, board_id, seq, payload), called on the reader thread
    key : bytes or None, HMAC key (serial links are unauthenticated: None)
    baudrate : int, ignored by USB CDC and pseudo-terminals, kept for UART adapters

    Raises
    ------
    serial.SerialException if the port cannot be opened.
    """

    kind = "serial"

    def __init__(self, name, port, on_frame, key=None, baudrate=115200):
        self.name = name
        self.port = port
        self._on_frame = on_frame
        self.decoder = P.Decoder(key=key)
        self._key = key
        self._serial = serial.Serial(port, baudrate=baudrate, timeout=_READ_TIMEOUT_S)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self.bytes_in = 0
        self.last_rx_s = None
        self._thread = threading.Thread(target=self._read_loop, name="link-" + name, daemon=True)
        self._thread.start()

    def _read_loop(self):
        while not self._stop.is_set():
            try:
                data = self._serial.read(512)
            except (serial.SerialException, OSError, TypeError) as exc:
                # a board that vanished is reported by the fleet through its silence
                if self._stop.is_set():
                    return
                log.warning("link %s read failed: %s", self.name, exc)
                time.sleep(0.2)
                continue
            if not data:
                continue
            self.bytes_in += len(data)
            self.last_rx_s = time.time()
            for frame in self.decoder.feed(data):
                try:
                    self._on_frame(self.name, *frame)
                except Exception:   # one bad handler must not kill the link
                    log.exception("link %s: frame handler failed", self.name)

    def send(self, msg_type, board_id, seq, payload):
        frame = P.encode_frame(msg_type, board_id, seq, payload, self._key)
        with self._write_lock:
            try:
                self._serial.write(frame)
            except (serial.SerialException, OSError) as exc:
                log.warning("link %s write failed: %s", self.name, exc)
                return False
        return True

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
