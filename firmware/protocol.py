"""PicoGrid board <-> edge wire codec (one source for MicroPython and CPython).

Framing is COBS with a 0x00 delimiter; each frame body carries a version,
message type, board id, flags and a sequence number, an optional truncated
HMAC-SHA256 tag and a CRC-32. The normative description, with byte layouts
and test vectors, is ``firmware/PROTOCOL.md``; this file must keep to it.

Runs unchanged on MicroPython 1.2x (unix port, rp2) and CPython >= 3.11, hence:
no typing, no dataclasses, no ``hmac`` module (HMAC is built from
``hashlib.sha256`` per RFC 2104), explicit range checks (MicroPython's
``struct`` silently truncates out-of-range integers).

References: S. Cheshire, M. Baker, "Consistent Overhead Byte Stuffing",
IEEE/ACM Trans. Networking 7(2), 1999; RFC 2104 (HMAC); FIPS 180-4 (SHA-256);
CRC-32/ISO-HDLC as in ``binascii.crc32`` (IEEE 802.3 polynomial).
"""

import hashlib
import math
import struct

try:
    from binascii import crc32 as _crc32
except ImportError:  # MicroPython builds without MICROPY_PY_BINASCII_CRC32
    _crc32 = None  # type: ignore[assignment]

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):  # type: ignore[misc]  # CPython has no micropython.const
        return value


PROTOCOL_VERSION = const(2)

MSG_HELLO = const(1)
MSG_TELEMETRY = const(2)
MSG_SETPOINT = const(3)
MSG_ACK = const(4)
MSG_EVENT = const(5)
MSG_HEARTBEAT = const(6)
MSG_OFFER = const(7)      # board -> edge, base key: the board's session nonce (section 6)
MSG_SESSION = const(8)    # edge -> board, base key: both nonces; opens the session

FRAME_FLAG_AUTH = const(1)  # header flags bit0: a 16-byte HMAC tag follows the payload
FRAME_FLAG_TO_BOARD = const(2)  # bit1: direction, set on every edge -> board frame
FRAME_FLAG_SESSION = const(4)   # bit2: the tag is under the session key, not the board key
_FLAGS_KNOWN = const(7)

# the side a Decoder runs on: it accepts only frames whose direction bit points to it
SIDE_EDGE = const(1)
SIDE_BOARD = const(2)

MODE_NORMAL = const(0)
MODE_SHED = const(1)
MODE_ISLAND = const(2)

ACK_OK = const(0)
ACK_REJECTED = const(1)
ACK_LIMITED = const(2)

EV_BOOT = const(1)
EV_FAILSAFE_ENTER = const(2)
EV_FAILSAFE_EXIT = const(3)
EV_LIMIT = const(4)
EV_FAULT = const(5)
EV_DECODE_ERROR = const(6)
EV_PERIPHERAL_FAULT = const(7)  # detail "part: error"; PROTOCOL.md section 3 (revision 2.1)
EV_PERIPHERAL_OK = const(8)     # the part answers sanely again

FLAG_FAILSAFE = const(1)
FLAG_LIMITED = const(2)
FLAG_FAULT = const(4)
FLAG_ISLANDED = const(8)
FLAG_SHED = const(16)

ROLES = ("pv", "storage", "grid", "load1", "load2", "load3")
TELEMETRY_FIELDS = ("t_ms", "v_bus_v", "v_port_v", "i_port_a", "p_bus_w",
                    "p_port_w", "energy_bus_j", "setpoint", "flags")

HEADER_LEN = const(8)
TAG_LEN = const(16)
CRC_LEN = const(4)
MAX_PAYLOAD = const(128)
MAX_FW_VERSION = const(32)
MAX_DETAIL = const(96)
MIN_KEY_LEN = const(16)
NONCE_LEN = const(8)  # session nonces are u64
# a keyed board refuses a setpoint whose tick is this far above the last one it accepted in
# the session (or below it): PROTOCOL.md section 3
MAX_TICK_STEP = const(100000)
# Longest encoded frame without its delimiter: body + 1 COBS code byte (body < 254).
MAX_ENCODED = const(HEADER_LEN + MAX_PAYLOAD + TAG_LEN + CRC_LEN + 1)

_MSG_TYPES = (MSG_HELLO, MSG_TELEMETRY, MSG_SETPOINT, MSG_ACK, MSG_EVENT, MSG_HEARTBEAT,
              MSG_OFFER, MSG_SESSION)
_MODES = (MODE_NORMAL, MODE_SHED, MODE_ISLAND)
_ACKS = (ACK_OK, ACK_REJECTED, ACK_LIMITED)
_EVENTS = (EV_BOOT, EV_FAILSAFE_ENTER, EV_FAILSAFE_EXIT, EV_LIMIT, EV_FAULT, EV_DECODE_ERROR,
           EV_PERIPHERAL_FAULT, EV_PERIPHERAL_OK)
_F32_MAX = 3.4028234663852886e38
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF
_HDR_FMT = "<BBBBI"
_TELEM_FMT = "<I7fH"
_TELEM_LEN = const(34)
_SETPT_FMT = "<IBf"
_SETPT_LEN = const(9)


def _crc32_py(data):
    """Bitwise CRC-32/ISO-HDLC (reflected poly 0xEDB88320), for builds without binascii.crc32."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


if _crc32 is None:
    _crc32 = _crc32_py


class ProtocolError(ValueError):
    """Raised for any malformed, out-of-range or unauthenticated wire data."""


# ---------------------------------------------------------------- checks
def _uint(name, value, maximum):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > maximum:
        raise ProtocolError("%s must be an int in [0, %d], got %r" % (name, maximum, value))
    return value


def _f32(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("%s must be a number, got %r" % (name, value))
    value = float(value)
    # NaN fails both comparisons; beyond f32 range CPython raises and MicroPython gives inf.
    if not (-_F32_MAX <= value <= _F32_MAX):
        raise ProtocolError("%s must be finite and within f32 range, got %r" % (name, value))
    return value


def _finite(name, value):
    if not math.isfinite(value):
        raise ProtocolError("%s is not finite on the wire" % name)
    return value


def _payload_len(name, payload, n):
    if len(payload) != n:
        raise ProtocolError("%s payload must be %d bytes, got %d" % (name, n, len(payload)))


def _pack_str(name, text, max_len):
    if not isinstance(text, str):
        raise ProtocolError("%s must be a str, got %r" % (name, text))
    raw = text.encode("utf-8")
    if len(raw) > max_len:
        raise ProtocolError("%s is %d bytes UTF-8, max %d" % (name, len(raw), max_len))
    return bytes((len(raw),)) + raw


def _unpack_str(name, payload, pos, max_len):
    if pos >= len(payload):
        raise ProtocolError("%s: payload truncated" % name)
    n = payload[pos]
    end = pos + 1 + n
    if n > max_len or end > len(payload):
        raise ProtocolError("%s: bad string length %d" % (name, n))
    try:
        return str(bytes(payload[pos + 1:end]), "utf-8"), end
    except UnicodeError:
        raise ProtocolError("%s: invalid UTF-8" % name)


# ---------------------------------------------------------------- payloads
def pack_hello(role, fw_version, capabilities, boot_nonce):
    """Pack a HELLO payload.

    Parameters
    ----------
    role : str
        One of ``ROLES``.
    fw_version : str
        Firmware version, at most ``MAX_FW_VERSION`` bytes of UTF-8.
    capabilities : int
        Capability bit field (u32), carried opaquely; meaning set by the firmware.
    boot_nonce : int
        Random u32 drawn at boot; lets the edge tell a new session from a replay.

    Returns
    -------
    bytes

    Raises
    ------
    ProtocolError
        If a field is of the wrong type or out of range.
    """
    if role not in ROLES:
        raise ProtocolError("unknown role %r" % (role,))
    return (_pack_str("role", role, 7) + _pack_str("fw_version", fw_version, MAX_FW_VERSION)
            + struct.pack("<II", _uint("capabilities", capabilities, _U32_MAX),
                          _uint("boot_nonce", boot_nonce, _U32_MAX)))


def unpack_hello(payload):
    """Unpack a HELLO payload into ``(role, fw_version, capabilities, boot_nonce)``.

    Raises ``ProtocolError`` on a bad length, invalid UTF-8 or an unknown role.
    """
    role, pos = _unpack_str("role", payload, 0, 7)
    fw_version, pos = _unpack_str("fw_version", payload, pos, MAX_FW_VERSION)
    _payload_len("hello", payload, pos + 8)
    if role not in ROLES:
        raise ProtocolError("unknown role %r" % (role,))
    capabilities, boot_nonce = struct.unpack_from("<II", payload, pos)
    return role, fw_version, capabilities, boot_nonce


def pack_telemetry(t_ms, v_bus_v, v_port_v, i_port_a, p_bus_w, p_port_w, energy_bus_j,
                   setpoint, flags):
    """Pack a TELEMETRY payload (34 bytes).

    Parameters
    ----------
    t_ms : int
        Board uptime [ms], u32 (wraps after 49.7 days).
    v_bus_v, v_port_v : float
        DC bus and port voltage [V].
    i_port_a : float
        Port current [A], positive out of the port into the converter.
    p_bus_w : float
        Power into the DC bus [W] (project sign convention: into the bus is +).
    p_port_w : float
        Power at the port [W], positive when the port delivers power.
    energy_bus_j : float
        Energy into the bus since boot [J], integral of ``p_bus_w``.
    setpoint : float
        Setpoint being applied, after local limits; its unit depends on the role: [W] for
        pv (its cap, -1 for none), storage and loadN, [V] for grid (PROTOCOL.md section 3).
    flags : int
        u16 bit field of ``FLAG_*``.

    Returns
    -------
    bytes

    Raises
    ------
    ProtocolError
        On wrong types, non-finite values or out-of-range integers.
    """
    return struct.pack(_TELEM_FMT, _uint("t_ms", t_ms, _U32_MAX), _f32("v_bus_v", v_bus_v),
                       _f32("v_port_v", v_port_v), _f32("i_port_a", i_port_a),
                       _f32("p_bus_w", p_bus_w), _f32("p_port_w", p_port_w),
                       _f32("energy_bus_j", energy_bus_j), _f32("setpoint", setpoint),
                       _uint("flags", flags, 0xFFFF))


def unpack_telemetry(payload):
    """Unpack a TELEMETRY payload into a tuple ordered as ``TELEMETRY_FIELDS``.

    Raises ``ProtocolError`` on a bad length or a non-finite float.
    """
    _payload_len("telemetry", payload, _TELEM_LEN)
    values = struct.unpack(_TELEM_FMT, payload)
    for k in range(1, 8):
        _finite(TELEMETRY_FIELDS[k], values[k])
    return values


def pack_setpoint(tick, mode, value):
    """Pack a SETPOINT payload (9 bytes).

    Parameters
    ----------
    tick : int
        Edge controller tick index (u32) the setpoint belongs to.
    mode : int
        ``MODE_NORMAL``, ``MODE_SHED`` or ``MODE_ISLAND``.
    value : float
        Role-specific value, its unit by role: pv power cap [W]; storage bus-side power [W]
        (+ discharge); grid bus-voltage reference [V]; loadN served power [W].

    Raises
    ------
    ProtocolError
        On an unknown mode, a non-finite value or an out-of-range tick.
    """
    if mode not in _MODES:
        raise ProtocolError("unknown setpoint mode %r" % (mode,))
    return struct.pack(_SETPT_FMT, _uint("tick", tick, _U32_MAX), mode, _f32("value", value))


def unpack_setpoint(payload):
    """Unpack a SETPOINT payload into ``(tick, mode, value)``; ``ProtocolError`` if invalid."""
    _payload_len("setpoint", payload, _SETPT_LEN)
    tick, mode, value = struct.unpack(_SETPT_FMT, payload)
    if mode not in _MODES:
        raise ProtocolError("unknown setpoint mode %d" % mode)
    return tick, mode, _finite("value", value)


def pack_ack(acked_seq, status):
    """Pack an ACK payload (5 bytes): the ``seq`` being acknowledged and an ``ACK_*`` status."""
    if status not in _ACKS:
        raise ProtocolError("unknown ack status %r" % (status,))
    return struct.pack("<IB", _uint("acked_seq", acked_seq, _U32_MAX), status)


def unpack_ack(payload):
    """Unpack an ACK payload into ``(acked_seq, status)``; ``ProtocolError`` if invalid."""
    _payload_len("ack", payload, 5)
    acked_seq, status = struct.unpack("<IB", payload)
    if status not in _ACKS:
        raise ProtocolError("unknown ack status %d" % status)
    return acked_seq, status


def pack_event(code, detail):
    """Pack an EVENT payload: ``EV_*`` code and a UTF-8 detail of <= ``MAX_DETAIL`` bytes."""
    if code not in _EVENTS:
        raise ProtocolError("unknown event code %r" % (code,))
    return bytes((code,)) + _pack_str("detail", detail, MAX_DETAIL)


def unpack_event(payload):
    """Unpack an EVENT payload into ``(code, detail)``; ``ProtocolError`` if invalid."""
    if len(payload) < 2:
        raise ProtocolError("event payload truncated")
    code = payload[0]
    if code not in _EVENTS:
        raise ProtocolError("unknown event code %d" % code)
    detail, end = _unpack_str("detail", payload, 1, MAX_DETAIL)
    _payload_len("event", payload, end)
    return code, detail


def pack_heartbeat(t_ms):
    """Pack a HEARTBEAT payload (4 bytes): sender uptime ``t_ms`` [ms], u32."""
    return struct.pack("<I", _uint("t_ms", t_ms, _U32_MAX))


def unpack_heartbeat(payload):
    """Unpack a HEARTBEAT payload into ``(t_ms,)``; ``ProtocolError`` on a bad length."""
    _payload_len("heartbeat", payload, 4)
    return struct.unpack("<I", payload)


def pack_offer(board_nonce):
    """Pack an OFFER payload (8 bytes): the board's fresh session nonce, u64."""
    return struct.pack("<Q", _uint("board_nonce", board_nonce, _U64_MAX))


def unpack_offer(payload):
    """Unpack an OFFER payload into ``(board_nonce,)``; ``ProtocolError`` on a bad length."""
    _payload_len("offer", payload, NONCE_LEN)
    return struct.unpack("<Q", payload)


def pack_session(board_nonce, edge_nonce):
    """Pack a SESSION payload (16 bytes): the board's nonce echoed and the edge's fresh one."""
    return struct.pack("<QQ", _uint("board_nonce", board_nonce, _U64_MAX),
                       _uint("edge_nonce", edge_nonce, _U64_MAX))


def unpack_session(payload):
    """Unpack a SESSION payload into ``(board_nonce, edge_nonce)``; ``ProtocolError`` if invalid."""
    _payload_len("session", payload, 2 * NONCE_LEN)
    return struct.unpack("<QQ", payload)


# ---------------------------------------------------------------- HMAC (RFC 2104)
class Hmac:
    """HMAC-SHA256 with the key pads computed once (MicroPython has no ``hmac``)."""

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_LEN:
            raise ProtocolError("key must be bytes of length >= %d" % MIN_KEY_LEN)
        if len(key) > 64:  # RFC 2104 section 2: longer keys are hashed first
            key = hashlib.sha256(key).digest()
        key = bytes(key) + bytes(64 - len(key))
        self._ikey = bytes(b ^ 0x36 for b in key)
        self._okey = bytes(b ^ 0x5C for b in key)

    def digest(self, msg):
        inner = hashlib.sha256(self._ikey)
        inner.update(msg)
        outer = hashlib.sha256(self._okey)
        outer.update(inner.digest())
        return outer.digest()


def hmac_sha256(key, msg):
    """Full 32-byte HMAC-SHA256 of ``msg`` under ``key`` (RFC 2104, FIPS 180-4).

    Raises ``ProtocolError`` if ``key`` is not bytes of at least ``MIN_KEY_LEN``.
    """
    return Hmac(key).digest(msg)


_Hmac = Hmac


def session_key(key, board_nonce, edge_nonce):
    """The 32-byte session key: HMAC-SHA256(key, b"picogrid-session" + u64 board_nonce +
    u64 edge_nonce), both little-endian (PROTOCOL.md section 6)."""
    hm = key if isinstance(key, Hmac) else Hmac(key)
    return hm.digest(b"picogrid-session" + struct.pack("<QQ", _uint("board_nonce", board_nonce, _U64_MAX),
                                                       _uint("edge_nonce", edge_nonce, _U64_MAX)))


def _tags_equal(a, b, b_off):
    # Constant-time compare of TAG_LEN bytes so a timing side channel does not leak the tag.
    diff = 0
    for k in range(TAG_LEN):
        diff |= a[k] ^ b[b_off + k]
    return diff == 0


# ---------------------------------------------------------------- COBS
def cobs_encode(data):
    """COBS-encode ``data`` (bytes-like); the result holds no 0x00 and no delimiter.

    Canonical encoding of Cheshire & Baker (1999): a full 254-byte block at the
    very end gets no extra code byte.
    """
    n = len(data)
    out = bytearray(n + n // 254 + 1)
    ci = 0  # index of the pending code byte
    o = 1
    code = 1
    i = 0
    while i < n:
        b = data[i]
        i += 1
        if b == 0:
            out[ci] = code
            ci = o
            o += 1
            code = 1
        else:
            out[o] = b
            o += 1
            code += 1
            if code == 0xFF and i < n:
                out[ci] = code
                ci = o
                o += 1
                code = 1
    out[ci] = code
    return bytes(out[:o])


def _cobs_decode_into(src, n, dst):
    # Decode src[:n] into dst; return the decoded length, or -1 if malformed.
    i = 0
    o = 0
    while i < n:
        code = src[i]
        if code == 0:
            return -1
        i += 1
        end = i + code - 1
        if end > n:
            return -1
        dst[o:o + code - 1] = src[i:end]
        o += code - 1
        i = end
        if code != 0xFF and i < n:
            dst[o] = 0
            o += 1
    return o


def cobs_decode(data):
    """Decode one COBS block (no delimiter) and return the bytes.

    Raises ``ProtocolError`` if ``data`` is not valid COBS.
    """
    n = len(data)
    out = bytearray(n)
    m = _cobs_decode_into(memoryview(bytes(data)), n, memoryview(out))
    if m < 0:
        raise ProtocolError("malformed COBS data")
    return bytes(out[:m])


# ---------------------------------------------------------------- frames
def encode_frame(msg_type, board_id, seq, payload, key=None, flags=0):
    """Build one complete on-wire frame, including the trailing 0x00 delimiter.

    Parameters
    ----------
    msg_type : int
        One of the ``MSG_*`` constants.
    board_id : int
        u8; the sending board, or for edge -> board frames the addressed board.
    seq : int
        u32 sequence number, strictly increasing per sender within a session.
    payload : bytes
        Output of a ``pack_*`` helper, at most ``MAX_PAYLOAD`` bytes.
    key : bytes or Hmac or None
        The HMAC key (the board key, or with ``FRAME_FLAG_SESSION`` the session key,
        >= ``MIN_KEY_LEN`` bytes, or an :class:`Hmac` of it); if given, the frame is
        authenticated (flags bit0 and a 16-byte HMAC-SHA256 tag).
    flags : int
        ``FRAME_FLAG_TO_BOARD`` on edge -> board frames, ``FRAME_FLAG_SESSION`` when ``key``
        is the session key (PROTOCOL.md section 2); ``FRAME_FLAG_AUTH`` is added for a key.

    Returns
    -------
    bytes
        COBS-encoded frame followed by one 0x00.

    Raises
    ------
    ProtocolError
        On an unknown message type, out-of-range ids, oversize payload, bad flags or bad key.
    """
    if msg_type not in _MSG_TYPES:
        raise ProtocolError("unknown message type %r" % (msg_type,))
    _uint("board_id", board_id, 0xFF)
    _uint("seq", seq, _U32_MAX)
    if not isinstance(payload, (bytes, bytearray)) or len(payload) > MAX_PAYLOAD:
        raise ProtocolError("payload must be bytes of at most %d" % MAX_PAYLOAD)
    if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~(FRAME_FLAG_TO_BOARD | FRAME_FLAG_SESSION):
        raise ProtocolError("flags may only hold FRAME_FLAG_TO_BOARD and FRAME_FLAG_SESSION")
    if key is None:
        if flags & FRAME_FLAG_SESSION:
            raise ProtocolError("a session frame needs the session key")
    else:
        flags |= FRAME_FLAG_AUTH
        if not isinstance(key, Hmac):
            key = Hmac(key)
    body = struct.pack(_HDR_FMT, PROTOCOL_VERSION, msg_type, board_id, flags, seq) + payload
    if key is not None:
        body += key.digest(body)[:TAG_LEN]
    body += struct.pack("<I", _crc32(body) & _U32_MAX)
    return cobs_encode(body) + b"\x00"


def _handshake(msg_type, payload_len):
    # the only frames under the board key on a keyed link (PROTOCOL.md section 6)
    return msg_type == MSG_OFFER or msg_type == MSG_SESSION or (msg_type == MSG_HELLO and payload_len == 0)


class Decoder:
    """Stream decoder and session state of one link: bytes in, validated frames out; never
    raises on wire data.

    Frames are checked in this order, each failure counted once in the named counter and the
    frame dropped: encoded length > ``max_frame`` (``oversize_errors``); COBS or a body too
    short (``framing_errors``); CRC-32 (``crc_errors``: a corrupted header lands here);
    version, unknown message type or reserved flag bits (``framing_errors``); direction bit
    not pointing to this ``side`` (a reflected frame), tag missing, unexpected or wrong, or a
    frame other than the handshake's under the board key (``auth_errors``); a session frame
    whose sequence number is not above the last accepted one of the session, or a SESSION
    answer that does not echo the board's open offer (``replay_errors``).

    With a key, the link runs the session handshake of PROTOCOL.md section 6: the board
    calls :meth:`offer` and sends OFFER; the edge answers OFFER with :meth:`answer` (which
    keeps the session open as *pending* until the board's first frame under it arrives) and
    sends the SESSION it returns; the board's decoder opens the session on a SESSION that
    echoes its offer. :meth:`encode` tags frames under the right key with the direction bit.

    Parameters
    ----------
    key : bytes or None
        The board's HMAC key. ``None`` (serial links): authenticated frames are rejected
        because they cannot be checked, and there is no session and no replay check.
    max_frame : int
        Largest accepted encoded frame [bytes], delimiter excluded; the two work buffers are
        allocated once with this size.
    side : int or None
        ``SIDE_BOARD`` or ``SIDE_EDGE``: the side this decoder runs on; it sets the direction
        bit of what it encodes and accepts only frames sent towards it. ``None`` (tools):
        either direction is accepted, and :meth:`encode` is not available.

    Raises
    ------
    ProtocolError
        On a bad key, side or ``max_frame`` < 16 (constructor only).
    """

    def __init__(self, key=None, max_frame=256, side=None):
        self._hmac = None if key is None else Hmac(key)
        if isinstance(max_frame, bool) or not isinstance(max_frame, int) or max_frame < 16:
            raise ProtocolError("max_frame must be an int >= 16")
        if side not in (None, SIDE_EDGE, SIDE_BOARD):
            raise ProtocolError("side must be SIDE_EDGE, SIDE_BOARD or None")
        self.side = side
        self.max_frame = max_frame
        self._buf = bytearray(max_frame)
        self._mv = memoryview(self._buf)
        self._out = bytearray(max_frame)
        self._omv = memoryview(self._out)
        self._len = 0
        self._dropping = False  # after an oversize frame: drop until the next 0x00
        self._sess = None       # Hmac of the session key in use
        self._pend = None       # edge: Hmac of the session answered, until the board uses it
        self._pend_prev = None  # edge: the one answered before (its HELLO may still be coming)
        self._offered = None    # board: the nonce of its open offer
        self._last_seq = -1     # last accepted seq of the peer in this session
        self._prev = None       # board: the session before, until the edge uses the new one
        self._prev_seq = -1     # ...and its window
        self.sessions = 0       # sessions opened
        self.frames_ok = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.auth_errors = 0
        self.replay_errors = 0
        self.oversize_errors = 0

    # -- session ------------------------------------------------------------------
    @property
    def keyed(self):
        return self._hmac is not None

    @property
    def session(self):
        """True when a session is open (always False without a key)."""
        return self._sess is not None

    @property
    def offered(self):
        """Board: the nonce of the open offer, or None."""
        return self._offered

    def offer(self, board_nonce):
        """Board: open an offer with a fresh random u64 ``board_nonce``; returns the OFFER
        payload. The current session (if any) goes on until a SESSION echoes this nonce."""
        payload = pack_offer(board_nonce)
        self._offered = board_nonce
        return payload

    def answer(self, board_nonce, edge_nonce):
        """Edge: answer an OFFER with a fresh random u64 ``edge_nonce``; returns the SESSION
        payload. The new session becomes current with the board's first frame under it."""
        payload = pack_session(board_nonce, edge_nonce)
        self._pend_prev = self._pend
        self._pend = Hmac(session_key(self._hmac, board_nonce, edge_nonce))
        return payload

    def _open(self, hm, keep_prev=False):
        # keep_prev (board): frames the edge sent under the session before, until its first
        # frame under the new one, are still taken in that session's window
        self._prev, self._prev_seq = (self._sess, self._last_seq) if keep_prev else (None, -1)
        self._sess = hm
        self._pend = None
        self._pend_prev = None
        self._last_seq = -1
        self.sessions += 1

    def encode(self, msg_type, board_id, seq, payload):
        """Encode a frame from this side: the direction bit, and on a keyed link the board key
        for the handshake (OFFER, SESSION, the empty HELLO request), else the session key.
        Returns None when that needs a session and none is open (the frame cannot be sent)."""
        flags = FRAME_FLAG_TO_BOARD if self.side == SIDE_EDGE else 0
        if self.side is None:
            raise ProtocolError("encode needs a decoder with a side")
        if self._hmac is None:
            return encode_frame(msg_type, board_id, seq, payload, None, flags)
        if _handshake(msg_type, len(payload)):
            return encode_frame(msg_type, board_id, seq, payload, self._hmac, flags)
        sess = self._sess       # once: the edge's reader thread may open or drop a session
        if sess is None:
            return None
        return encode_frame(msg_type, board_id, seq, payload, sess, flags | FRAME_FLAG_SESSION)

    def resync(self):
        """Drop any partial frame (a port that was reopened); the session stays."""
        self._len = 0
        self._dropping = False

    def reset(self):
        """Drop any partial frame and the session (a new connection starts a new one)."""
        self._len = 0
        self._dropping = False
        self._sess = None
        self._pend = None
        self._pend_prev = None
        self._offered = None
        self._last_seq = -1
        self._prev = None
        self._prev_seq = -1

    # -- bytes in -----------------------------------------------------------------
    def feed(self, data):
        """Consume received bytes and return the good frames completed by them.

        Parameters
        ----------
        data : bytes or bytearray or memoryview
            Any received bytes; partial frames are kept for the next call.

        Returns
        -------
        list of tuple
            ``(msg_type, board_id, seq, payload)`` per accepted frame, payload as bytes.
        """
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        frames = []
        n = len(data)
        i = 0
        while i < n:
            j = data.find(b"\x00", i)
            end = n if j < 0 else j
            if self._dropping:
                pass
            elif self._len + end - i > self.max_frame:
                self.oversize_errors += 1
                self._dropping = True
            else:
                self._mv[self._len:self._len + end - i] = data[i:end]
                self._len += end - i
            if j < 0:
                break
            if self._len and not self._dropping:
                frame = self._frame(self._len)
                if frame is not None:
                    frames.append(frame)
            self._len = 0
            self._dropping = False
            i = j + 1
        return frames

    def _frame(self, n):
        out = self._out
        m = _cobs_decode_into(self._mv, n, self._omv)
        if m < HEADER_LEN + CRC_LEN:
            self.framing_errors += 1
            return None
        m -= CRC_LEN
        if _crc32(self._omv[:m]) & _U32_MAX != struct.unpack_from("<I", out, m)[0]:
            self.crc_errors += 1
            return None
        version, msg_type, board_id, flags, seq = struct.unpack_from(_HDR_FMT, out, 0)
        auth = flags & FRAME_FLAG_AUTH
        if (version != PROTOCOL_VERSION or msg_type not in _MSG_TYPES
                or flags & ~_FLAGS_KNOWN
                or (flags & FRAME_FLAG_SESSION and not auth)
                or (auth and m < HEADER_LEN + TAG_LEN)):
            self.framing_errors += 1
            return None
        if self.side is not None and bool(flags & FRAME_FLAG_TO_BOARD) != (self.side == SIDE_BOARD):
            self.auth_errors += 1        # sent the other way: a reflected frame
            return None
        if self._hmac is None:
            if auth:
                self.auth_errors += 1
                return None
            self.frames_ok += 1
            return msg_type, board_id, seq, bytes(self._omv[HEADER_LEN:m])
        if not auth:
            self.auth_errors += 1
            return None
        m -= TAG_LEN
        if flags & FRAME_FLAG_SESSION:
            if self._sess is not None and _tags_equal(self._sess.digest(self._omv[:m]), out, m):
                self._prev = None                # the edge uses the new session
            elif self._prev is not None and _tags_equal(self._prev.digest(self._omv[:m]), out, m):
                if seq <= self._prev_seq:        # the session before, still in its window
                    self.replay_errors += 1
                    return None
                self._prev_seq = seq
                self.frames_ok += 1
                return msg_type, board_id, seq, bytes(self._omv[HEADER_LEN:m])
            elif self._pend is not None and _tags_equal(self._pend.digest(self._omv[:m]), out, m):
                self._open(self._pend)           # the board's first frame of the new session
            elif self._pend_prev is not None and _tags_equal(self._pend_prev.digest(self._omv[:m]), out, m):
                self._open(self._pend_prev)      # (two offers crossed two answers)
            else:
                self.auth_errors += 1
                return None
            if seq <= self._last_seq:
                self.replay_errors += 1
                return None
            self._last_seq = seq
        else:
            if not _handshake(msg_type, m - HEADER_LEN) or not _tags_equal(self._hmac.digest(self._omv[:m]), out, m):
                self.auth_errors += 1
                return None
            if msg_type == MSG_SESSION and self.side == SIDE_BOARD:
                if m - HEADER_LEN != 2 * NONCE_LEN:
                    self.framing_errors += 1
                    return None
                board_nonce, edge_nonce = struct.unpack_from("<QQ", out, HEADER_LEN)
                if self._offered is None or board_nonce != self._offered:
                    self.replay_errors += 1      # not the answer to the open offer
                    return None
                self._offered = None
                self._open(Hmac(session_key(self._hmac, board_nonce, edge_nonce)), True)
        self.frames_ok += 1
        return msg_type, board_id, seq, bytes(self._omv[HEADER_LEN:m])
