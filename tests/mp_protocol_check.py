# Runs firmware/protocol.py under the MicroPython unix port and prints, one JSON object per
# line, what the codec computes for the shared test vectors, single-bit-flip checks, bad
# inputs and HMAC/CRC reference inputs. tests/test_protocol.py asserts on this output.
# Usage: MICROPYPATH=firmware micropython tests/mp_protocol_check.py tests/protocol_vectors.json
import sys
import json
import binascii

import protocol as p


def hx(b):
    return binascii.hexlify(b).decode()


def emit(obj):
    print(json.dumps(obj))


with open(sys.argv[1]) as f:
    spec = json.load(f)
key = binascii.unhexlify(spec["test_key_hex"])
BN = spec["session_board_nonce"]
EN = spec["session_edge_nonce"]
skey = p.session_key(key, BN, EN)
emit({"session_key_hex": hx(skey)})


def receiver(v):
    """The decoder of the side a vector goes to, with the test session open if it needs it."""
    side = p.SIDE_BOARD if v["to_board"] else p.SIDE_EDGE
    if v["key"] == "none":
        return p.Decoder(side=side)
    dec = p.Decoder(key=key, side=side)
    if v["msg_type"] == p.MSG_SESSION:
        dec.offer(BN)
    if v["key"] == "session":
        if side == p.SIDE_BOARD:
            dec.offer(BN)
            dec.feed(p.encode_frame(p.MSG_SESSION, 2, 0, p.pack_session(BN, EN), key, p.FRAME_FLAG_TO_BOARD))
        else:
            dec.answer(BN, EN)
    return dec


for v in spec["vectors"]:
    k = {"none": None, "board": key, "session": skey}[v["key"]]
    flags = (p.FRAME_FLAG_TO_BOARD if v["to_board"] else 0) | (p.FRAME_FLAG_SESSION if v["key"] == "session" else 0)
    out = {"name": v["name"]}
    try:
        payload = getattr(p, "pack_" + v["kind"])(*v["args"])
        frame = p.encode_frame(v["msg_type"], v["board_id"], v["seq"], payload, k, flags)
        out["payload_hex"] = hx(payload)
        out["frame_hex"] = hx(frame)
        out["body_hex"] = hx(p.cobs_decode(frame[:-1]))
        wire = binascii.unhexlify(v["frame_hex"])
        dec = receiver(v)
        frames = dec.feed(wire)
        out["decoded"] = [[t, b, s, hx(pl)] for (t, b, s, pl) in frames]
        out["unpacked"] = [list(getattr(p, "unpack_" + v["kind"])(pl)) for (t, b, s, pl) in frames]
        # The same frame again: a session frame is a replay, so is a SESSION whose offer it closed.
        out["again"] = len(dec.feed(wire))
        out["replay_errors"] = dec.replay_errors
        # Sent back to its sender (the other side's decoder): refused.
        other = p.Decoder(key=None if v["key"] == "none" else key,
                          side=p.SIDE_EDGE if v["to_board"] else p.SIDE_BOARD)
        out["reflected"] = len(other.feed(wire))
        flips = 0
        bad = 0
        for i in range(len(wire)):
            for bit in range(8):
                hit = bytearray(wire)
                hit[i] ^= 1 << bit
                for fr in receiver(v).feed(hit):
                    if fr != frames[0]:
                        bad += 1
                flips += 1
        out["flips"] = flips
        out["bad_accepts"] = bad
    except Exception as e:  # report, so pytest shows what failed under MicroPython
        out["exception"] = repr(e)
    emit(out)

# The handshake and its replay rules, as tests/test_protocol.py checks them under CPython.
try:
    board = p.Decoder(key=key, side=p.SIDE_BOARD)
    edge = p.Decoder(key=key, side=p.SIDE_EDGE)

    def handshake(bn, en):
        edge.feed(board.encode(p.MSG_OFFER, 2, 1, board.offer(bn)))
        sess = edge.encode(p.MSG_SESSION, 2, 0, edge.answer(bn, en))
        board.feed(sess)
        edge.feed(board.encode(p.MSG_HELLO, 2, 2, p.pack_hello("storage", "2", 0, 7)))
        return sess

    r = {"no_session_encode": board.encode(p.MSG_TELEMETRY, 2, 1, bytes(34)) is None}
    old_session = handshake(11, 22)
    r["opened"] = [board.session, edge.session]
    sp = edge.encode(p.MSG_SETPOINT, 2, 5, p.pack_setpoint(1, 0, 1.0))
    r["setpoint"] = len(board.feed(sp))
    r["setpoint_again"] = len(board.feed(sp))
    tel = board.encode(p.MSG_TELEMETRY, 2, 9, p.pack_telemetry(0, 7.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0))
    r["reflected"] = len(board.feed(tel))
    request = edge.encode(p.MSG_HELLO, 2, 6, b"")
    r["request"] = len(board.feed(request))
    r["request_replayed_then_setpoint"] = len(board.feed(request)) + len(board.feed(sp))
    board.reset()
    edge.reset()                         # a new connection
    r["old_setpoint_no_session"] = len(board.feed(sp))
    board.offer(33)
    r["old_session_answer"] = len(board.feed(old_session))
    handshake(44, 55)
    r["old_setpoint_new_session"] = len(board.feed(sp))
    r["counters"] = [board.auth_errors, board.replay_errors]
    emit({"handshake": r})
except Exception as e:
    emit({"handshake": {"exception": repr(e)}})

bad_inputs = (
    ("heartbeat_negative", lambda: p.pack_heartbeat(-1)),
    ("heartbeat_2_32", lambda: p.pack_heartbeat(1 << 32)),
    ("setpoint_mode", lambda: p.pack_setpoint(1, 3, 0.0)),
    ("setpoint_nan", lambda: p.pack_setpoint(1, 0, float("nan"))),
    ("setpoint_f32_overflow", lambda: p.pack_setpoint(1, 0, 1e39)),
    ("ack_status", lambda: p.pack_ack(0, 9)),
    ("hello_role", lambda: p.pack_hello("boiler", "1", 0, 0)),
    ("hello_fw_long", lambda: p.pack_hello("pv", "x" * 33, 0, 0)),
    ("telemetry_flags", lambda: p.pack_telemetry(0, 0, 0, 0, 0, 0, 0, 0, 1 << 16)),
    ("event_code", lambda: p.pack_event(0, "")),
    ("frame_type", lambda: p.encode_frame(9, 1, 1, b"")),
    ("frame_board", lambda: p.encode_frame(1, 256, 1, b"")),
    ("frame_short_key", lambda: p.encode_frame(6, 1, 1, b"\x00" * 4, b"short")),
    ("frame_flags", lambda: p.encode_frame(6, 1, 1, b"\x00" * 4, None, p.FRAME_FLAG_SESSION)),
    ("offer_range", lambda: p.pack_offer(1 << 64)),
    ("unpack_session_len", lambda: p.unpack_session(b"\x00" * 15)),
    ("unpack_telemetry_len", lambda: p.unpack_telemetry(b"\x00" * 33)),
    ("unpack_hello_utf8", lambda: p.unpack_hello(b"\x02\xff\xfe\x00" + b"\x00" * 8)),
    ("unpack_setpoint_inf", lambda: p.unpack_setpoint(b"\x00" * 5 + b"\x00\x00\x80\x7f")),
)
for name, fn in bad_inputs:
    try:
        fn()
        raised = "none"
    except p.ProtocolError:
        raised = "ProtocolError"
    except Exception as e:
        raised = repr(e)
    emit({"bad_input": name, "raised": raised})

emit({"crc_check": binascii.crc32(b"123456789"), "crc_py": p._crc32_py(b"123456789")})
for k_hex, msg in (("0b" * 20, b"Hi There"),
                   ("aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")):
    emit({"hmac_key": k_hex, "msg_hex": hx(msg),
          "tag_hex": hx(p.hmac_sha256(binascii.unhexlify(k_hex), msg))})
emit({"done": True})
