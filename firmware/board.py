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
_OFFER_RETRY_MS = 1000        # a keyed board without a session offers again this often
_FAULT_RETRY_MS = 2000        # a failed sensor is tried again this often
_FAULT_REPEAT_MS = 10000      # and its EV_PERIPHERAL_FAULT repeated this often while it lasts


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


def _detail(text):
    """``text`` cut to an EVENT's ``MAX_DETAIL`` bytes of UTF-8."""
    text = text[:P.MAX_DETAIL]
    while len(text.encode()) > P.MAX_DETAIL:
        text = text[:-1]
    return text


def _counts(decoders):
    c = [0, 0, 0, 0, 0]
    for d in decoders:
        if d is not None:
            c[0] += d.crc_errors
            c[1] += d.framing_errors
            c[2] += d.auth_errors
            c[3] += d.replay_errors
            c[4] += d.oversize_errors
    return c


class Board:
    def __init__(self, cfg, hal, role, link):
        self.cfg = cfg
        self.hal = hal
        self.role = role
        self.link = link
        self.board_id = int(cfg["board_id"])
        self.key = bytes.fromhex(cfg["key_hex"]) if cfg.get("key_hex") else None
        self.decoder = P.Decoder(key=self.key, side=P.SIDE_BOARD)
        # a TCP board's decoder for a new connection that has not opened a session yet: it
        # cannot push the edge's connection off (PROTOCOL.md section 6, TCP transport)
        self.cand_decoder = P.Decoder(key=self.key, side=P.SIDE_BOARD)
        self.last_tick = None          # tick of the last setpoint accepted in this session
        self.stale_setpoints = 0
        self._last_offer_ms = time.ticks_ms()
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
        # a sensor or peripheral that failed ("part: error", from the HAL): the board keeps
        # its link, holds its stage at 0 A in failsafe and retries the part (PROTOCOL.md §7)
        self.fault = None  # type: str | None
        self._fault_sent_ms = time.ticks_ms()
        self._fault_retry_ms = time.ticks_ms()

    # -- sending ----------------------------------------------------------------
    def send(self, msg_type, payload, decoder=None, write=None):
        """Encode with ``decoder``'s session (default: the edge's connection) and write; a
        keyed board without a session sends only its OFFER."""
        frame = (decoder or self.decoder).encode(msg_type, self.board_id, (self.seq + 1) & 0xFFFFFFFF, payload)
        if frame is None:
            return
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        (write or self.link.write)(frame)

    def send_offer(self, decoder=None, write=None, again=False):
        """Offer a new session with a fresh nonce (PROTOCOL.md section 6); ``again``: the
        open offer's nonce once more (a retry must not outrun the edge's answer)."""
        d = decoder or self.decoder
        nonce = d.offered if again and d.offered is not None else int.from_bytes(_urandom(8), "little")
        self._last_offer_ms = time.ticks_ms()
        self.send(P.MSG_OFFER, d.offer(nonce), d, write)

    def greet(self):
        """What a board sends when the edge asks who it is: its HELLO, or on a keyed link an
        OFFER (the HELLO follows under the session key once the edge answered)."""
        if self.key is None:
            self.send_hello()
        else:
            self.send_offer(again=True)   # an offer still open is repeated, not replaced

    def send_hello(self):
        caps = _CAP_MPPT if self.cfg["role"] == "pv" else _CAP_ISLAND if self.cfg["role"] == "storage" else 0
        self.send(P.MSG_HELLO, P.pack_hello(self.cfg["role"], FIRMWARE_VERSION, caps, self.boot_nonce))
        if self.fault is not None:
            self.report_fault()        # whoever asks who we are learns what is broken

    def send_telemetry(self):
        m = self.meas
        flags = self.role.flags | (P.FLAG_FAILSAFE if self.failsafe else 0)
        if self.fault is not None:
            flags |= P.FLAG_FAULT
        self.send(P.MSG_TELEMETRY, P.pack_telemetry(
            self.uptime.ms(), m[2], m[0], m[1], m[2] * m[3], m[0] * m[1],
            self.energy_bus_j + self._energy_acc, self.role.reported_setpoint(), flags))

    def event(self, code, detail):
        self.send(P.MSG_EVENT, P.pack_event(code, detail))

    def report_fault(self):
        self._fault_sent_ms = time.ticks_ms()
        if self.fault is not None:
            self.event(P.EV_PERIPHERAL_FAULT, _detail(self.fault))

    def fault_changed(self):
        """Take the HAL's ``fault`` (a new fault, another one, or None: cleared)."""
        old, self.fault = self.fault, getattr(self.hal, "fault", None)
        if self.fault is None:
            if old is not None:
                self.event(P.EV_PERIPHERAL_OK, _detail(old.split(":")[0] + ": ok"))
            return
        m = self.meas
        m[0] = m[1] = m[2] = m[3] = 0.0     # unknown: telemetry reports 0 with FLAG_FAULT
        self.hal.set_current_ref(0.0)
        self.report_fault()
        if not self.failsafe:
            self.enter_failsafe("peripheral fault")
        else:
            self.role.failsafe()

    def hold_faulted(self, now):
        """One control period while a part is faulted: stage at 0 A, the part retried now and
        then, the fault repeated, the watchdog fed while the board is otherwise healthy."""
        if time.ticks_diff(now, self._fault_retry_ms) >= _FAULT_RETRY_MS:
            self._fault_retry_ms = now
            self.hal.recover(self.meas)
            if self.hal.fault != self.fault:
                self.fault_changed()
                if self.fault is None:
                    return
        if time.ticks_diff(now, self._fault_sent_ms) >= _FAULT_REPEAT_MS:
            self.report_fault()
        self.hal.set_current_ref(0.0)
        if self.healthy:
            self.hal.feed_watchdog()

    # -- receiving --------------------------------------------------------------
    def handle(self, msg_type, board_id, seq, payload):
        if board_id != self.board_id:
            return
        if msg_type == P.MSG_SETPOINT:
            if self.fault is not None:   # no sensors: it stays in failsafe at 0 A
                self.send(P.MSG_ACK, P.pack_ack(seq, P.ACK_REJECTED))
                return
            self.on_setpoint(seq, payload)
        elif msg_type == P.MSG_SESSION:
            self.on_session()        # the decoder checked it answers our offer
        elif msg_type == P.MSG_HELLO:
            self.greet()             # the edge asks who is on this link
        elif msg_type == P.MSG_HEARTBEAT:
            self.send(P.MSG_HEARTBEAT, P.pack_heartbeat(self.uptime.ms()))

    def on_session(self):
        self.last_tick = None        # the edge's ticks of the new session
        self.send_hello()
        self.send_telemetry()

    def on_candidate(self, msg_type, board_id, seq, payload):
        """A frame on a TCP connection that has no session yet: only the handshake counts."""
        if board_id != self.board_id:
            return
        c = self.cand_decoder
        if msg_type == P.MSG_HELLO:
            self.send_offer(c, self.link.write_candidate)
        elif msg_type == P.MSG_SESSION and c.session:
            # the new connection proved the key: it becomes the edge's connection
            self.link.promote()
            self.decoder, self.cand_decoder = c, self.decoder
            self.cand_decoder.reset()
            self.on_session()

    def on_setpoint(self, seq, payload):
        try:
            tick, mode, value = P.unpack_setpoint(payload)
        except P.ProtocolError:
            self.send(P.MSG_ACK, P.pack_ack(seq, P.ACK_REJECTED))
            return
        if not _finite(value) or mode > P.MODE_ISLAND:
            self.send(P.MSG_ACK, P.pack_ack(seq, P.ACK_REJECTED))
            return
        if self.key is not None and self.last_tick is not None and (
                tick < self.last_tick or tick - self.last_tick > P.MAX_TICK_STEP):
            self.stale_setpoints += 1          # older than the last applied, or far ahead
            self.send(P.MSG_ACK, P.pack_ack(seq, P.ACK_REJECTED))
            return
        if self.key is not None:
            self.last_tick = tick
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
            if self.fault is not None:
                self.hold_faulted(now)
                continue
            fresh = self.hal.measure(m)
            if getattr(self.hal, "fault", None) is not None:
                self.fault_changed()
                continue
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
        c = _counts((self.decoder, self.cand_decoder))   # both: they swap on a takeover
        n = c[0] + c[1] + c[2] + c[3] + c[4]
        now = time.ticks_ms()
        if n > self._errors_reported and time.ticks_diff(now, self._last_report_ms) >= _DECODE_REPORT_MS:
            self._last_report_ms = now
            self._errors_reported = n
            self.event(P.EV_DECODE_ERROR, "crc %d framing %d auth %d replay %d oversize %d" % (
                c[0], c[1], c[2], c[3], c[4]))

    async def link_loop(self):
        new_peer = getattr(self.link, "take_new_peer", None)
        while True:
            if self.key is None:
                new_peer = None                # (config.py refuses a TCP link without a key)
            if new_peer is not None and new_peer():
                # a new TCP connection: it gets its own handshake and becomes the edge's
                # connection only when it completes it (PROTOCOL.md section 6)
                self.cand_decoder.reset()
                self.send_offer(self.cand_decoder, self.link.write_candidate)
            if new_peer is not None:
                data = self.link.read_candidate()
                if data:
                    for frame in self.cand_decoder.feed(bytes(data)):
                        self.on_candidate(*frame)
            data = self.link.read()
            if data:
                for frame in self.decoder.feed(bytes(data)):
                    self.handle(*frame)
            if (self.key is not None and new_peer is None and not self.decoder.session
                    and time.ticks_diff(time.ticks_ms(), self._last_offer_ms) >= _OFFER_RETRY_MS):
                self.send_offer(again=True)  # keyed serial: until the edge answers
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
        self.fault = getattr(self.hal, "fault", None)   # a part that failed at boot: with the HELLO
        if not new_peer_link(self.link):   # TCP: each connection is greeted when it comes
            self.greet()
        self.enter_failsafe("boot")    # safe until the edge speaks
        asyncio.create_task(self.link_loop())
        asyncio.create_task(self.telemetry_loop())
        await self.control_loop()


def new_peer_link(link):
    return getattr(link, "take_new_peer", None) is not None


def _urandom(n):
    try:
        import os
        return os.urandom(n)
    except (ImportError, AttributeError):
        import random
        return bytes(random.getrandbits(8) for _ in range(n))
