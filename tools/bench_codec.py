"""``picogrid bench codec``: frames decoded per second by the edge's codec (CPython).

Measures ``protocol.Decoder.feed`` on a stream of telemetry frames fed in 512-byte reads (what
a link's reader thread does), plain and authenticated (HMAC-SHA256), and encoding for
comparison. The edge needs 6 boards x 4 telemetry frames/s plus acks and events: ~30 frames/s;
the figure of merit is the ratio of the measured rate to that need.
"""

import sys
import time

from picogrid.firmware import protocol as P

EDGE_NEED_FRAMES_PER_S = 6 * 4 + 6 + 6      # telemetry at 4 Hz, one ack and one event per board
_KEY = bytes(range(32))
_N = 5000


#: the session's nonces (PROTOCOL.md section 6): keyed telemetry travels under the session key
_BOARD_NONCE, _EDGE_NONCE = 1, 2


def _frames(key):
    """Telemetry as boards send it: plain, or under the session key with the session flag."""
    if key is None:
        tag_key, flags = None, 0
    else:
        tag_key, flags = P.session_key(key, _BOARD_NONCE, _EDGE_NONCE), P.FRAME_FLAG_SESSION
    return [P.encode_frame(P.MSG_TELEMETRY, 1 + k % 6, k + 1,
                           P.pack_telemetry(k, 7.0, 5.0, 0.5, 2.5, 2.6, float(k), 2.5, 0), key=tag_key, flags=flags)
            for k in range(_N)]


def decode_rate(key, repeats=3):
    """Best-of-``repeats`` decode rate [frames/s] of ``_N`` frames fed in 512-byte reads."""
    stream = b"".join(_frames(key))
    chunks = [stream[i:i + 512] for i in range(0, len(stream), 512)]
    best = float("inf")
    for _ in range(repeats):
        dec = P.Decoder(key=key, side=P.SIDE_EDGE)
        if key is not None:          # the edge answered the boards' offer: that session is open
            dec.answer(_BOARD_NONCE, _EDGE_NONCE)
        t = time.perf_counter()
        n = sum(len(dec.feed(c)) for c in chunks)
        best = min(best, time.perf_counter() - t)
        if n != _N:
            raise RuntimeError("decoded %d of %d frames" % (n, _N))
    return _N / best


def encode_rate(key):
    t = time.perf_counter()
    _frames(key)
    return _N / (time.perf_counter() - t)


def main(argv=None):
    rows = []
    for label, key in (("plain (serial)", None), ("HMAC (tcp)", _KEY)):
        rows.append((label, decode_rate(key), encode_rate(key)))
    sys.stdout.write("codec: %d telemetry frames, 512-byte reads, best of 3 (CPython %s)\n"
                     % (_N, sys.version.split()[0]))
    sys.stdout.write("%-16s %14s %14s %18s\n" % ("link", "decode [fr/s]", "encode [fr/s]", "decode / need"))
    for label, dec, enc in rows:
        sys.stdout.write("%-16s %14.0f %14.0f %17.0fx\n" % (label, dec, enc, dec / EDGE_NEED_FRAMES_PER_S))
    return 0


if __name__ == "__main__":
    sys.exit(main())
