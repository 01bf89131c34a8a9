# One board's behaviour on the link: hello, telemetry, setpoints and acks, the setpoint
# watchdog (failsafe, docs/design.md §3), and energy metering. Cooperative asyncio tasks after
# micropython-async: the control task is the only one that touches the power stage.
import asyncio
import time

import protocol as P

FIRMWARE_VERSION = "0.2.0"
_DECODE_REPORT_MS = 1000      # at most one decode-error event per second
_CAP_MPPT = 1
_CAP_ISLAND = 2


def _finite(x):
    return x == x and -1e9 < x < 1e9


class Uptime:
    """Milliseconds since boot as a u32 that wraps after 49.7 days (PROTOCOL.md §3).

    ``time.ticks_ms()`` wraps far sooner on the boards: its period is 2**30 ms (12.4 days) on
    32-bit ports (MicroPython's ``MP_SMALL_INT_POSITIVE_MASK``). The edge reads a step back as
    a replayed frame, so the count is widened by summing ``ticks_diff``; it must be read at
    least once per half period (6.2 days): telemetry reads it every period.
    ``ticks`` / ``diff`` stand in for ``time.ticks_ms`` / ``time.ticks_diff`` in tests.
    """

    def __init__(self, ticks=None, diff=None):
        self._ticks = ticks or time.ticks_ms
        self._diff = diff or time.ticks_diff
        self._last = self._ticks()
        # ticks_ms() is an opaque type to the stubs; on the boards it is a small int
        self._ms = self._last & 0xFFFFFFFF  # type: ignore[operator]

    def ms(self):
        now = self._ticks()
        self._ms = (self._ms + self._diff(now, self._last)) & 0xFFFFFFFF
        self._last = now
        return self._ms


def _decode_errors(d):
    return d.crc_errors + d.framing_errors + d.auth_errors + d.replay_errors + d.oversize_errors


class Board:
    def __init__(self, cfg, hal, role, link):
        self.cfg = cfg
        self.hal = hal
        self.role = role
        self.link = link
        self.board_id = int(cfg["board_id"])
        self.key = bytes.fromhex(cfg["key_hex"]) if cfg.get("key_hex") else None
        self.decoder = P.Decoder(key=self.key)
        self.seq = 0
        self.meas = [0.0, 0.0, 0.0, 0.0]
        self.uptime = Uptime()
        # bus-side energy meter: small steps collect in _energy_acc and move to the total
        # in >= 1 J lumps, because the RP2040's 32-bit floats would round a 4 mJ step away
        # once the total is large (float32 spacing is 8 mJ at 7e4 J)
        self.energy_bus_j = 0.0
        self._energy_acc = 0.0
        self.failsafe = False
        self.boot_nonce = int.from_bytes(_urandom(4), "little")
        self._last_setpoint_ms = time.ticks_ms()
        self._errors_reported = 0
        self._last_report_ms = time.ticks_add(time.ticks_ms(), -_DECODE_REPORT_MS)
        self.healthy = True

    # -- sending ----------------------------------------------------------------
    def send(self, msg_type, payload):
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.link.write(P.encode_frame(msg_type, self.board_id, self.seq, payload, self.key))

    def send_hello(self):
        caps = _CAP_MPPT if self.cfg["role"] == "pv" else _CAP_ISLAND if self.cfg["role"] == "storage" else 0
        self.send(P.MSG_HELLO, P.pack_hello(self.cfg["role"], FIRMWARE_VERSION, caps, self.boot_nonce))

    def send_telemetry(self):
        m = self.meas
        flags = self.role.flags | (P.FLAG_FAILSAFE if self.failsafe else 0)
        self.send(P.MSG_TELEMETRY, P.pack_telemetry(
            self.uptime.ms(), m[2], m[0], m[1], m[2] * m[3], m[0] * m[1],
            self.energy_bus_j + self._energy_acc, self.role.setpoint_w, flags))

    def event(self, code, detail):
        self.send(P.MSG_EVENT, P.pack_event(code, detail))

    # -- receiving --------------------------------------------------------------
    def handle(self, msg_type, board_id, seq, payload):
        if board_id != self.board_id:
            return
        if msg_type == P.MSG_SETPOINT:
            self.on_setpoint(seq, payload)
        elif msg_type == P.MSG_HELLO:
            self.send_hello()        # the edge asks who is on this link
        elif msg_type == P.MSG_HEARTBEAT:
            self.send(P.MSG_HEARTBEAT, P.pack_heartbeat(self.uptime.ms()))

    def on_setpoint(self, seq, payload):
        try:
            tick, mode, value = P.unpack_setpoint(payload)
        except P.ProtocolError:
            self.send(P.MSG_ACK, P.pack_ack(seq, P.ACK_REJECTED))
            return
        if not _finite(value) or mode > P.MODE_ISLAND:
            self.send(P.MSG_ACK, P.pack_ack(seq, P.ACK_REJECTED))
            return
        status = self.role.setpoint(mode, value)
        self._last_setpoint_ms = time.ticks_ms()
        if self.failsafe:
            self.failsafe = False
            self.event(P.EV_FAILSAFE_EXIT, "setpoint tick %d" % tick)
        self.send(P.MSG_ACK, P.pack_ack(seq, status))
        self.send_telemetry()        # a snapshot at the tick boundary for the edge's metering

    def enter_failsafe(self, why):
        self.role.failsafe()
        self.failsafe = True
        self.event(P.EV_FAILSAFE_ENTER, why)

    # -- tasks ------------------------------------------------------------------
    async def control_loop(self):
        period = self.cfg["loop_period_ms"]
        wd_ms = self.cfg["watchdog_ms"]
        last = time.ticks_ms()
        m = self.meas
        while True:
            await asyncio.sleep_ms(period)
            now = time.ticks_ms()
            dt_s = time.ticks_diff(now, last) / 1000.0
            last = now
            fresh = self.hal.measure(m)
            # meter the bus-side energy with the power of the last interval
            self._energy_acc += m[2] * m[3] * dt_s
            if self._energy_acc > 1.0 or self._energy_acc < -1.0:
                self.energy_bus_j += self._energy_acc
                self._energy_acc = 0.0
            if not self.failsafe and time.ticks_diff(now, self._last_setpoint_ms) > wd_ms:
                self.enter_failsafe("no setpoint for %d ms" % wd_ms)
            self.hal.set_current_ref(self.role.step(m[0], m[1], m[2], m[3], dt_s))
            if fresh and self.healthy:
                self.hal.feed_watchdog()   # only the healthy loop feeds it: a dead task stops it

    def report_decode_errors(self):
        """Tell the edge (rate-limited) that malformed or unauthenticated input arrived."""
        d = self.decoder
        n = _decode_errors(d)
        now = time.ticks_ms()
        if n > self._errors_reported and time.ticks_diff(now, self._last_report_ms) >= _DECODE_REPORT_MS:
            self._last_report_ms = now
            self._errors_reported = n
            self.event(P.EV_DECODE_ERROR, "crc %d framing %d auth %d replay %d oversize %d" % (
                d.crc_errors, d.framing_errors, d.auth_errors, d.replay_errors, d.oversize_errors))

    async def link_loop(self):
        new_peer = getattr(self.link, "take_new_peer", None)
        while True:
            if new_peer is not None and new_peer():
                self.decoder.reset()        # a new edge session (PROTOCOL.md §5)
                self.send_hello()
            data = self.link.read()
            if data:
                for frame in self.decoder.feed(bytes(data)):
                    self.handle(*frame)
            # every pass, not only when bytes came: errors held back by the rate limit must
            # still be reported once the second is over, even if the link then falls silent
            self.report_decode_errors()
            await asyncio.sleep_ms(2)

    async def telemetry_loop(self):
        period = self.cfg["telemetry_period_ms"]
        while True:
            self.send_telemetry()
            await asyncio.sleep_ms(period)

    async def run(self):
        # one 0x00 first: it ends whatever half frame the edge's decoder held from before the
        # reset, so the boot HELLO arrives whole (PROTOCOL.md section 1)
        self.link.write(b"\x00")
        self.send_hello()
        self.enter_failsafe("boot")    # safe until the edge speaks
        asyncio.create_task(self.link_loop())
        asyncio.create_task(self.telemetry_loop())
        await self.control_loop()


def _urandom(n):
    try:
        import os
        return os.urandom(n)
    except (ImportError, AttributeError):
        import random
        return bytes(random.getrandbits(8) for _ in range(n))
