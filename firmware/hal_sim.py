# Simulation hardware layer: the same methods as hal_rp2040, but the sensors and the PWM
# live in the HIL plant simulator (hil/plant_server.py), one UDP datagram per loop on
# loopback. The control code cannot tell the two apart.
import socket
import struct
import time

from protocol import ROLES

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython has no micropython.const
        return x

_WIRE_VERSION = const(1)
_TIMEOUT_S = 0.05
_READING_MAX = 1000.0         # [V] / [A]: a reading beyond this (or NaN) is a garbage sensor


class SimHal:
    """Sensors and power stage of one virtual board.

    measure(out) fills ``out`` with [v_port_v, i_port_a, v_bus_v, i_bus_a] and returns
    True when the plant answered; set_current_ref(i_a) sets the power stage's current
    reference through the 16-bit PWM duty, scaled by the board's current_range_a.
    A reply that is not a reading (NaN, or beyond ``_READING_MAX``: the plant's
    ``sensor_garbage`` fault) sets ``fault`` as hal_rp2040's garbage INA219 does; recover(out)
    asks again. A reply that does not come is a miss, not a fault.
    """

    def __init__(self, cfg):
        sim = cfg["sim"]
        self._addr = socket.getaddrinfo("127.0.0.1", sim["plant_port"])[0][-1]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(_TIMEOUT_S)
        self._role_index = ROLES.index(cfg["role"])  # the plant's index: one role list
        self._lo, self._hi = cfg["current_range_a"]
        self._duty = self.duty_for(0.0)
        self._req = bytearray(4)
        self.misses = 0
        self._stale = False
        self.fault = None  # type: str | None

    def duty_for(self, i_a):
        d = int((i_a - self._lo) / (self._hi - self._lo) * 65535 + 0.5)
        return 0 if d < 0 else 65535 if d > 65535 else d

    def set_current_ref(self, i_a):
        self._duty = self.duty_for(i_a)

    def _drain(self):
        """Drop replies that arrived after their request timed out: read later, they would
        leave every following reading one loop old."""
        self._sock.settimeout(0)
        try:
            while True:
                self._sock.recv(32)
        except OSError:
            pass
        self._sock.settimeout(_TIMEOUT_S)
        self._stale = False

    def measure(self, out):
        if self._stale:
            self._drain()
        struct.pack_into("<BBH", self._req, 0, _WIRE_VERSION, self._role_index, self._duty)
        try:
            self._sock.sendto(self._req, self._addr)
            data = self._sock.recv(32)
        except OSError:
            self.misses += 1
            self._stale = True
            return False
        vals = struct.unpack("<4f", data)
        for k in range(4):
            v = vals[k]
            if not -_READING_MAX < v < _READING_MAX:    # False for NaN too
                self.fault = "sim sensors: reading %r" % v
                return False
        for k in range(4):
            out[k] = vals[k]
        return True

    def recover(self, out):
        """Ask the plant again after a fault: True when the reading is sane."""
        self.fault = None
        return self.measure(out)

    def ticks_ms(self):
        return time.ticks_ms()

    def feed_watchdog(self):
        pass

    def deinit(self):
        self._sock.close()
