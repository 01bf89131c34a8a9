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

for v in spec["vectors"]:
    k = key if v["authenticated"] else None
    out = {"name": v["name"]}
    try:
        payload = getattr(p, "pack_" + v["kind"])(*v["args"])
        frame = p.encode_frame(v["msg_type"], v["board_id"], v["seq"], payload, k)
        out["payload_hex"] = hx(payload)
        out["frame_hex"] = hx(frame)
        out["body_hex"] = hx(p.cobs_decode(frame[:-1]))
        wire = binascii.unhexlify(v["frame_hex"])
        dec = p.Decoder(key=k)
        frames = dec.feed(wire)
        out["decoded"] = [[t, b, s, hx(pl)] for (t, b, s, pl) in frames]
        out["unpacked"] = [list(getattr(p, "unpack_" + v["kind"])(pl)) for (t, b, s, pl) in frames]
        # Same frame again on a keyed link is a replay (a HELLO repeats its nonce and seq).
        out["again"] = len(dec.feed(wire))
        out["replay_errors"] = dec.replay_errors
        flips = 0
        bad = 0
        for i in range(len(wire)):
            for bit in range(8):
                hit = bytearray(wire)
                hit[i] ^= 1 << bit
                for fr in p.Decoder(key=k).feed(hit):
                    if fr != frames[0]:
                        bad += 1
                flips += 1
        out["flips"] = flips
        out["bad_accepts"] = bad
    except Exception as e:  # report, so pytest shows what failed under MicroPython
        out["exception"] = repr(e)
    emit(out)

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
