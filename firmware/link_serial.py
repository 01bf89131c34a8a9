# Byte link over the USB CDC serial port: the board's stdin/stdout. On the RP2040 that is
# the USB serial device; in the HIL bench the unix port's stdin/stdout are the board end of
# a pseudo-terminal, so the edge opens both with pyserial the same way.
# The REPL's stdin turns the interrupt character 0x03 (Ctrl-C) into a KeyboardInterrupt, and
# frames carry 0x03 (MSG_SETPOINT's type byte, board id 3): the link switches that off.
# To get the REPL back for mpremote, see main.py (BOOTSEL at boot).
import select
import sys

import micropython

_MAX_READ = 128


class SerialLink:
    def __init__(self):
        micropython.kbd_intr(-1)
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._buf = bytearray(_MAX_READ)

    def read(self):
        """Bytes available now (possibly empty); never blocks."""
        n = 0
        while n < _MAX_READ and self._poll.poll(0):
            b = self._in.read(1)
            if not b:
                break
            self._buf[n] = b[0]
            n += 1
        return memoryview(self._buf)[:n]

    def write(self, data):
        self._out.write(data)
        if hasattr(self._out, "flush"):
            self._out.flush()

    def deinit(self):
        micropython.kbd_intr(3)       # the REPL's Ctrl-C again
