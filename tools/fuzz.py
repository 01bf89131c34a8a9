"""Fuzz campaign over the wire decoder and the lab-feed client (issue 27, point 6).

``python -m picogrid.tools.fuzz [--engine atheris|random] [--target protocol|labfeed|all]
[--runs N] [--seconds S] [--out DIR]`` (also ``picogrid fuzz ...``).

Targets and the property each input is held to (anything else is a *finding*):

``protocol`` (:mod:`picogrid.firmware.protocol`)
    * the streaming :class:`Decoder` fed arbitrary bytes in arbitrary chunks, without a key and
      with one, raises nothing at all (its docstring: "never raises on wire data"), returns as
      many frames as ``frames_ok`` grew, keeps its partial frame within ``max_frame`` and its
      remembered nonces within ``SUPERSEDED_KEPT`` per board;
    * every ``unpack_*`` and :func:`cobs_decode` on arbitrary bytes raises only
      :class:`ProtocolError`; what an ``unpack_*`` accepts packs back to the same bytes, and
      ``cobs_decode(cobs_encode(x)) == x``;
    * streams of *valid* frames (arbitrary types, board ids, sequence numbers and payloads, keyed
      or not, some bytes flipped) reach the same checks through the decoder's accepting path,
      which random bytes cannot (they never carry a right CRC, let alone a right tag).

``labfeed`` (:mod:`picogrid.edge.sources.labfeed`)
    * :meth:`LabFeed.get` of every endpoint, its HTTP answer (a 200 carrying the input as its
      body, or the whole answer: status line, headers, body) coming from an in-process stand-in
      for ``socket.create_connection``, raises only :class:`LabFeedError`;
    * :func:`labfeed.parse` of every endpoint on the JSON the body decodes to, and on arbitrary
      Python structures (huge ints, NaN, bools, None, strings, deep nesting), raises only
      ``ValueError`` (its documented error).

Both: no input takes longer than ``--slow-s`` (a hang; atheris also kills at ``-timeout``),
and memory stays bounded (libFuzzer's ``-rss_limit_mb``; the random engine checks its peak RSS).

Engines: ``atheris`` (coverage-guided libFuzzer, ``pip install 'picogrid[fuzz]'``) or
``random`` (seeded mutation of the valid test vectors in ``tests/protocol_vectors.json`` and of
valid feed answers, structure-aware; needs nothing, deterministic per ``--seed``; what
``tests/test_fuzz.py`` runs). Findings are grouped by (target, exception type, innermost
project line); each group's first and smallest reproducer is written under ``--out`` and the
summary to ``--out/summary.json``. docs/fuzzing.md has the campaign and its results.
"""

from __future__ import annotations

import argparse
import io
import contextlib
import json
import math
import os
import pathlib
import random
import resource
import struct
import subprocess
import sys
import time
import traceback

KEY = bytes(range(1, 33))          # a per-board key (>= MIN_KEY_LEN) for the keyed decoder
ENDPOINTS = ("sun", "price", "demand", "deferables", "yesterday")
TARGETS = ("protocol", "labfeed")
MAX_LEN = {"protocol": 1024, "labfeed": 8192}
NEST_MAX = 100_000                  # the amplifiers' bound: depth of nesting, digits of a number

# Python (and atheris) are imported lazily so that `--engine atheris` can instrument them first.
P = None
labfeed = None


def _import_targets(instrument=False):
    global P, labfeed
    if P is not None:
        return
    if instrument:
        import atheris
        with atheris.instrument_imports(include=["picogrid.firmware", "picogrid.edge.sources.labfeed"]):
            from picogrid.firmware import protocol as P_
            from picogrid.edge.sources import labfeed as L_
    else:
        from picogrid.firmware import protocol as P_
        from picogrid.edge.sources import labfeed as L_
    P, labfeed = P_, L_
    import logging
    logging.getLogger(L_.__name__).setLevel(logging.CRITICAL)   # every bad answer is logged once


# ------------------------------------------------------------------ findings
class Finding(Exception):
    """An input broke the property (not an exception the code documents); ``stage`` says which
    step of the input's path raised, when it is not the path's first (e.g. parse after JSON)."""

    def __init__(self, message, stage=None):
        super().__init__(message)
        self.stage = stage


class Campaign:
    """Counts inputs and groups findings; the same oracle for both engines."""

    def __init__(self, out: pathlib.Path | None = None, slow_s: float = 2.0):
        self.out = out
        self.slow_s = slow_s
        self.inputs = {t: 0 for t in TARGETS}
        self.findings: dict[str, dict] = {}
        self.slowest = 0.0

    def run_one(self, target: str, data: bytes) -> None:
        self.inputs[target] += 1
        t0 = time.perf_counter()
        try:
            (fuzz_protocol if target == "protocol" else fuzz_labfeed)(data)
        except Exception as exc:                 # noqa: BLE001 - every escape is a finding
            self.record(target, data, exc)
        dt = time.perf_counter() - t0
        if dt > self.slow_s:     # timed again: on a shared machine one slow run may be the machine's
            t1 = time.perf_counter()
            try:
                (fuzz_protocol if target == "protocol" else fuzz_labfeed)(data)
            except Exception:    # noqa: BLE001 - recorded above
                pass
            dt = min(dt, time.perf_counter() - t1)
            if dt > self.slow_s:
                self.record(target, data, Finding(f"slow input: {dt:.2f} s twice (limit {self.slow_s} s)"))
        self.slowest = max(self.slowest, dt)

    def record(self, target, data, exc):
        where = "?"
        cause = exc.__cause__ if isinstance(exc, Finding) and exc.stage else None
        for fr in traceback.extract_tb((cause or exc).__traceback__)[::-1]:
            if "/picogrid/" in fr.filename or "/work/" in fr.filename and "/tools/fuzz.py" not in fr.filename:
                where = f"{pathlib.Path(fr.filename).name}:{fr.lineno} ({fr.name})"
                break
        kind = type(cause or exc).__name__
        via = input_kind(target, data) + (f" -> {exc.stage}" if cause else "")
        key = f"{target} | {via} | {kind} | {where}"
        f = self.findings.get(key)
        if f is None:
            f = self.findings[key] = {"target": target, "via": via, "exception": kind, "where": where, "count": 0,
                                      "message": str(exc)[:300], "first_index": self.inputs[target],
                                      "reproducer_len": len(data), "reproducer": data}
            self._save(key, f)
        f["count"] += 1
        if len(data) < f["reproducer_len"]:
            f["reproducer"], f["reproducer_len"], f["message"] = data, len(data), str(exc)[:300]
            self._save(key, f)

    def _save(self, key, f):
        if self.out is None:
            return
        d = self.out / "findings"
        d.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() else "_" for c in key)[:120]
        (d / name).write_bytes(f["reproducer"])

    def summary(self) -> dict:
        return {"inputs": dict(self.inputs), "slowest_input_s": round(self.slowest, 4),
                "findings": [{k: (v.hex()[:400] if isinstance(v, bytes) else v) for k, v in f.items()}
                             for f in self.findings.values()]}


def input_kind(target: str, data: bytes) -> str:
    """What an input exercises (its first byte's mode), to tell the findings' ways in apart."""
    if not data:
        return "empty"
    if target == "protocol":
        return ("raw stream to Decoder", "raw payload to unpack_*/COBS", "valid frames to Decoder",
                "keyed session conversation")[data[0] % 4]
    return "/%s %s" % (ENDPOINTS[data[0] % 5], ("HTTP body", "HTTP body, nesting amplified", "HTTP body, number amplified",
                                                "HTTP body, repeated", "Python structure to parse")[(data[0] // 5) % 5])


# ------------------------------------------------------------------ protocol oracle
def _unpack_all(payload: bytes) -> None:
    """Every unpack_* on ``payload``: only ProtocolError, and what one accepts packs back."""
    for name in sorted(set(_by_type().values())):
        repack = getattr(P, "pack_" + name)
        _unpack_one(name, getattr(P, "unpack_" + name), lambda v, r=repack: r(*v), payload)


def _unpack_one(name, unpack, repack, payload):
    try:
        values = unpack(payload)
    except P.ProtocolError:
        return
    try:
        again = repack(values)
    except P.ProtocolError as exc:
        raise Finding(f"unpack_{name} accepted {payload.hex()} as {values!r} that pack_{name} refuses") from exc
    if again != bytes(payload):
        raise Finding(f"unpack_{name}({payload.hex()}) = {values!r} packs to {again.hex()}")


_BY_TYPE = None


def _by_type():
    global _BY_TYPE
    if _BY_TYPE is None:
        _BY_TYPE = {P.MSG_HELLO: "hello", P.MSG_TELEMETRY: "telemetry", P.MSG_SETPOINT: "setpoint",
                    P.MSG_ACK: "ack", P.MSG_EVENT: "event", P.MSG_HEARTBEAT: "heartbeat"}
        for name in ("offer", "session"):            # protocol v2's handshake (PROTOCOL.md section 6)
            if hasattr(P, "MSG_" + name.upper()):
                _BY_TYPE[getattr(P, "MSG_" + name.upper())] = name
    return _BY_TYPE


def _feed(dec, stream: bytes, cuts: bytes) -> list:
    """Feed ``stream`` to ``dec`` in chunks whose sizes ``cuts`` gives; check its invariants."""
    frames, i, k = [], 0, 0
    while i < len(stream):
        step = (cuts[k % len(cuts)] if cuts else 255) + 1
        k += 1
        before = dec.frames_ok
        chunk = stream[i:i + step]
        got = dec.feed(memoryview(chunk) if k % 3 == 0 else chunk)   # bytes-likes the links pass
        if len(got) != dec.frames_ok - before:
            raise Finding(f"feed returned {len(got)} frames but frames_ok grew by {dec.frames_ok - before}")
        frames += got
        i += step
    if not 0 <= dec._len <= dec.max_frame or len(dec._buf) != dec.max_frame:
        raise Finding(f"decoder buffer out of bounds: _len {dec._len}, buffer {len(dec._buf)}")
    kept = getattr(P, "SUPERSEDED_KEPT", None)
    old = getattr(dec, "_old_nonces", {})
    if kept is not None and any(len(v) > kept for v in old.values()):
        raise Finding("decoder keeps more superseded nonces than SUPERSEDED_KEPT")
    for msg_type, board_id, seq, payload in frames:
        if not (isinstance(payload, bytes) and 0 <= board_id <= 255 and 0 <= seq <= 0xFFFFFFFF):
            raise Finding(f"decoder returned a malformed frame {(msg_type, board_id, seq, payload)!r}")
        name = _by_type().get(msg_type)
        if name is None:
            raise Finding(f"decoder passed an unknown message type {msg_type}")
        repack = getattr(P, "pack_" + name)
        _unpack_one(name, getattr(P, "unpack_" + name), lambda v, r=repack: r(*v), payload)
    return frames


def _frames_from(data: bytes) -> bytes:
    """A stream of valid frames described by ``data`` (type, id, seq, key, payload, damage)."""
    out, i = bytearray(), 0
    while i + 8 <= len(data):
        t, board, flags = data[i], data[i + 1], data[i + 2]
        seq = struct.unpack_from("<I", data, i + 3)[0]
        n = data[i + 7] % (P.MAX_PAYLOAD + 1)
        payload = bytes(data[i + 8:i + 8 + n])
        i += 8 + n
        msg_type = (P.MSG_HELLO, P.MSG_TELEMETRY, P.MSG_SETPOINT, P.MSG_ACK, P.MSG_EVENT, P.MSG_HEARTBEAT)[t % 6]
        if flags & 0x40:     # a well-formed payload of that type (a HELLO with a nonce) sometimes
            payload = _valid_payload(msg_type, payload)
        frame = bytearray(P.encode_frame(msg_type, board, seq, payload, KEY if flags & 1 else None))
        if flags & 2 and len(frame) > 1:     # damage one byte (not the delimiter)
            frame[(flags >> 2) % (len(frame) - 1)] ^= 1 << (t % 8)
        if flags & 0x80:                     # glue: no delimiter (the next frame is appended)
            frame = frame[:-1]
        out += frame
    return bytes(out)


def _valid_payload(msg_type, raw: bytes) -> bytes:
    r = raw + bytes(40)
    u32 = struct.unpack_from("<I", r, 0)[0]
    if msg_type == P.MSG_HELLO:
        return P.pack_hello(P.ROLES[r[4] % 6], "1.%d" % r[5], u32, struct.unpack_from("<I", r, 6)[0] % (r[10] + 1))
    if msg_type == P.MSG_SETPOINT:
        return P.pack_setpoint(u32, r[4] % 3, float(struct.unpack_from("<h", r, 5)[0]))
    if msg_type == P.MSG_ACK:
        return P.pack_ack(u32, r[4] % 3)
    if msg_type == P.MSG_HEARTBEAT:
        return P.pack_heartbeat(u32)
    if msg_type == P.MSG_EVENT:
        return P.pack_event((1, 2, 3, 4, 5, 6)[r[4] % 6], raw[5:5 + r[5] % 97].decode("utf-8", "replace")[:32])
    return P.pack_telemetry(u32, *(float(struct.unpack_from("<h", r, 4 + 2 * k)[0]) for k in range(7)), r[20] | r[21] << 8)


def _conversation(data: bytes) -> None:
    """A keyed link's two ends (protocol v2: a board-side and an edge-side Decoder) talking,
    the input scripting who sends what and what the wire does to it: deliver, drop, replay an
    old frame, reflect a frame to its sender, flip a bit, reset an end (a new connection),
    re-offer. Beyond "never raises", the security properties of PROTOCOL.md section 6:
    an end accepts only frames its peer encoded (nothing forged, nothing reflected), and a
    session frame is accepted at most once by an end (no replay)."""
    SB, SE = P.SIDE_BOARD, P.SIDE_EDGE
    ends = {SB: P.Decoder(key=KEY, side=SB), SE: P.Decoder(key=KEY, side=SE)}
    sent = {SB: set(), SE: set()}       # (type, id, seq, payload) each end encoded
    wire = []                           # (from, bytes) every frame put on the wire
    queue = []                          # indices into wire, in flight
    seen_session = {SB: set(), SE: set()}   # session frames (bytes) each end accepted
    seq = {SB: 0, SE: 0}
    bid = data[1] if len(data) > 1 else 1
    edge_nonce = [_nonce(data[2:10]) & 0xFFFFFFFF]
    board_nonce = [(_nonce(data[2:10]) >> 32) << 32]

    def send(side, msg_type, payload):
        frame = ends[side].encode(msg_type, bid, seq[side], payload)
        if frame is not None:
            sent[side].add((msg_type, bid, seq[side], payload))
            wire.append((side, frame))
            queue.append(len(wire) - 1)
        seq[side] += 1

    def deliver(to, frame):
        other = SE if to == SB else SB
        before = ends[to].frames_ok
        frames = ends[to].feed(frame)
        if len(frames) != ends[to].frames_ok - before:
            raise Finding("feed returned %d frames, frames_ok grew by %d" % (len(frames), ends[to].frames_ok - before))
        for f in frames:
            if f not in sent[other]:
                raise Finding("%s end accepted a frame its peer never sent: %r" % ("board" if to == SB else "edge", f))
            if f[0] == P.MSG_OFFER and to == SE:          # the edge answers every offer
                (nonce,) = P.unpack_offer(f[3])
                edge_nonce[0] += 1                          # fresh per answer, as os.urandom's
                send(SE, P.MSG_SESSION, ends[SE].answer(nonce, edge_nonce[0]))
        try:
            parsed = P.cobs_decode(frame[:-1]) if frame[-1:] == b"\x00" and b"\x00" not in frame[:-1] else None
        except P.ProtocolError:
            parsed = None
        if frames and parsed is not None and parsed[3] & P.FRAME_FLAG_SESSION:
            if frame in seen_session[to]:
                raise Finding("session frame accepted twice (a replay): %s" % frame.hex())
            seen_session[to].add(frame)

    i = 2
    while i < len(data):
        op, arg = data[i] % 10, data[i + 1] if i + 1 < len(data) else 0
        i += 2
        if op == 0:     # the board offers a session: a fresh nonce, or the open offer's again (a
            # retry, as firmware/board.py's send_offer(again=True)); a board nonce is never reused
            # once its offer was answered (with reuse, a recorded SESSION reopens an old session)
            again = arg & 1 and ends[SB].offered is not None
            board_nonce[0] += 0 if again else 1
            send(SB, P.MSG_OFFER, ends[SB].offer(ends[SB].offered if again else board_nonce[0]))
        elif op in (1, 2) and queue:                  # the wire delivers the next (or a later) frame
            k = queue.pop(0 if op == 1 else arg % len(queue))
            src, frame = wire[k]
            deliver(SE if src == SB else SB, frame)
        elif op == 3:                                 # the board reports
            send(SB, (P.MSG_TELEMETRY, P.MSG_EVENT, P.MSG_HEARTBEAT, P.MSG_ACK)[arg % 4],
                 _valid_payload((P.MSG_TELEMETRY, P.MSG_EVENT, P.MSG_HEARTBEAT, P.MSG_ACK)[arg % 4], data[i:i + 24]))
        elif op == 4:                                 # the edge commands (or asks for a HELLO)
            if arg & 1:
                send(SE, P.MSG_SETPOINT, _valid_payload(P.MSG_SETPOINT, data[i:i + 12]))
            else:
                send(SE, P.MSG_HELLO, b"")
        elif op == 5 and wire:                        # an attacker replays a recorded frame
            src, frame = wire[arg % len(wire)]
            deliver(SE if src == SB else SB, frame)
        elif op == 6 and wire:                        # ... or reflects one to its sender
            src, frame = wire[arg % len(wire)]
            deliver(src, frame)
        elif op == 7 and wire:                        # ... or flips a bit of one
            src, frame = wire[arg % len(wire)]
            b = bytearray(frame)
            k = (arg * 7) % max(1, len(b) - 1)
            b[k] ^= 1 << (arg % 8)
            deliver(SE if src == SB else SB, bytes(b))
        elif op == 8 and queue:                       # the wire drops a frame
            queue.pop(arg % len(queue))
        elif op == 9:                                 # a new connection at one end
            ends[SB if arg & 1 else SE].reset()
            if arg & 2:
                queue.clear()
        if len(wire) > 400:
            break


def _nonce(raw: bytes) -> int:
    return int.from_bytes((bytes(raw) + bytes(8))[:8], "little")


def fuzz_protocol(data: bytes) -> None:
    """One protocol input: byte 0 picks the mode, byte 1 the chunking, the rest is the input."""
    _import_targets()
    if len(data) < 2:
        return
    mode, cuts, rest = data[0] % 4, data[1:2] * 3 + data[2:6], data[2:]
    if mode == 0:       # raw bytes to a decoder without a key and one with
        for key in (None, KEY):
            _feed(P.Decoder(key=key, max_frame=256), rest, cuts)
    elif mode == 1:     # raw payloads to every unpack_*, COBS both ways
        _unpack_all(rest)
        try:
            P.cobs_decode(rest)
        except P.ProtocolError:
            pass
        if P.cobs_decode(P.cobs_encode(rest)) != rest:
            raise Finding(f"COBS round trip changed {rest.hex()}")
    elif mode == 3 and hasattr(P, "SIDE_BOARD"):    # protocol v2: a keyed link's session
        _conversation(data)
    else:               # streams of valid frames (some damaged): the accepting path
        stream = _frames_from(rest)
        for key in (None, KEY):
            _feed(P.Decoder(key=key, max_frame=64 + (data[1] % 4) * 64), stream, cuts)


# ------------------------------------------------------------------ lab-feed oracle
class _FakeSocket:
    """A connected TCP socket whose peer sends the fuzz input as its HTTP answer, then closes.

    ``socket.create_connection`` is replaced by one that returns this, so the whole client path
    runs as in production: ``http.client`` (status line, headers, body), the deadline and size
    bounds, the JSON decoding and :func:`parse` (urllib's and the client's own transports alike).
    """

    def __init__(self, answer: bytes):
        self._in = io.BytesIO(answer)
        self._timeout = None

    def recv_into(self, b, n=0):
        data = self._in.read(len(b) if not n else min(n, len(b)))
        b[:len(data)] = data
        return len(data)

    def recv(self, n, flags=0):
        return self._in.read(n)

    def makefile(self, mode="rb", *args, **kwargs):
        return io.BufferedReader(_SocketRaw(self))

    def sendall(self, data, *args):
        return None

    def send(self, data, *args):
        return len(data)

    def settimeout(self, t):
        self._timeout = t

    def gettimeout(self):
        return self._timeout

    def setsockopt(self, *args):
        return None

    def fileno(self):
        return -1

    def close(self):
        return None

    def shutdown(self, how):
        return None


class _SocketRaw(io.RawIOBase):
    def __init__(self, sock):
        self._sock = sock

    def readable(self):
        return True

    def readinto(self, b):
        return self._sock.recv_into(b)


_ANSWER = [b""]
_CONNECTS = [0]


def _fake_create_connection(address, *args, **kwargs):
    _CONNECTS[0] += 1
    return _FakeSocket(_ANSWER[0])


@contextlib.contextmanager
def _fake_transport():
    """``socket.create_connection`` answers from :data:`_ANSWER` inside the block only: the real
    one is put back after each input, so a process that fuzzed (pytest running tests/test_fuzz.py
    before the link and feed tests) still reaches real servers afterwards."""
    import socket
    real = socket.create_connection
    socket.create_connection = _fake_create_connection
    try:
        yield
    finally:
        socket.create_connection = real


def http_answer(body: bytes) -> bytes:
    """A plain 200 answer carrying ``body`` (ended by the connection closing, as many servers do)."""
    return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body


_NODES = [0]
NODE_BUDGET = 4000      # values per structure: objects of objects would otherwise grow as 9**depth


def _structure(data: bytes, pos: int = 0, depth: int = 0):
    """An arbitrary JSON-ish Python value read from ``data`` (returns value, next position)."""
    if depth == 0:
        _NODES[0] = 0
    _NODES[0] += 1
    if pos >= len(data) or _NODES[0] > NODE_BUDGET:
        return None, pos
    b = data[pos]
    pos += 1
    kind = b % 13
    arg = data[pos] if pos < len(data) else 0
    if kind == 0:
        return None, pos
    if kind == 1:
        return bool(b & 16), pos
    if kind == 2:
        return arg - 64, pos + 1
    if kind == 3:
        return (10 ** (arg + 300)) * (-1 if b & 16 else 1), pos + 1   # past the float range
    if kind == 4:
        return (math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5, 59.0, 59.5, 60.0, 1e16, -1.0)[arg % 12], pos + 1
    if kind == 5:
        return struct.unpack("<d", (data[pos:pos + 8] + bytes(8))[:8])[0], pos + 8
    if kind == 6:
        n = arg % 16
        return data[pos + 1:pos + 1 + n].decode("latin-1"), pos + 1 + n
    if kind == 7:
        return ("tick", "sun", "day", "demand", "sell_price", "buy_price", "start", "end", "energy")[arg % 9], pos + 1
    if kind == 8:      # deep nesting of lists
        v = []
        for _ in range(min(arg * 40, NEST_MAX)):
            v = [v]
        return v, pos + 1
    if depth > 8:
        return 0, pos
    if kind == 10 and depth:   # 60 shared records only at the top: deeper, a DAG whose repr is
        kind = 9               # 60**depth long, which no JSON body of the input's size gives
    if kind in (9, 10):  # a list of values (a long one: /yesterday's 60 records)
        n = arg % 8 if kind == 9 else 60
        out = []
        pos += 1
        proto = None
        for k in range(n):
            if kind == 10 and proto is not None:
                out.append(dict(proto, tick=k) if isinstance(proto, dict) else proto)
                continue
            v, pos = _structure(data, pos, depth + 1)
            proto = v
            out.append(v)
        return out, pos
    # kind 11, 12: an object with spec keys, each value arbitrary
    keys = ("tick", "sun", "day", "demand", "sell_price", "buy_price", "start", "end", "energy")
    out = {}
    pos += 1
    for k, name in enumerate(keys):
        if arg >> (k % 8) & 1 or kind == 12:
            out[name], pos = _structure(data, pos, depth + 1)
    return out, pos


def _amplify(mode: int, data: bytes) -> bytes:
    """Large bodies from small inputs: deep nesting, long digit runs, a long repeated chunk."""
    n = (int.from_bytes(data[:2], "little") * 2) % NEST_MAX if len(data) >= 2 else 0
    body = data[2:]
    if mode == 1:
        return b"[" * n + body + b"]" * (n if data[:1] and data[0] & 1 else 0)
    if mode == 2:
        return body.replace(b"1", b"1" + b"7" * min(n, 5000), 1) if b"1" in body else b"9" * min(n, 5000)
    return body * (1 + n // max(len(body), 1) // 8) if body else body


def fuzz_labfeed(data: bytes) -> None:
    """One feed input: byte 0 picks the endpoint and the mode, the rest is the body/structure."""
    _import_targets()
    if not data:
        return
    endpoint = ENDPOINTS[data[0] % 5]
    mode = (data[0] // 5) % 5
    rest = data[1:]
    if mode == 4:                                   # a Python structure straight to parse
        value, _ = _structure(rest)
        try:
            labfeed.parse(endpoint, value)
        except ValueError:
            pass
        return
    body = rest if mode == 0 else _amplify(mode, rest)
    # mode 3 and a body that starts like a status line: the whole answer is the input (status,
    # headers, chunked encoding ...); otherwise a 200 answer carries the body
    _ANSWER[0] = rest if mode == 3 and rest[:5] == b"HTTP/" else http_answer(body)
    # a generous timeout: a loaded machine must not turn every input into a deadline miss
    feed = labfeed.LabFeed("http://fuzz.invalid:8080", timeout_s=5.0, clock=lambda: 1_000_000.0)
    calls = _CONNECTS[0]
    try:
        with _fake_transport():
            feed.get(endpoint)
    except labfeed.LabFeedError:
        pass
    if _CONNECTS[0] == calls:
        raise Finding("LabFeed.get did not reach socket.create_connection: the harness needs its transport")
    try:                                             # and parse on what the body decodes to
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return
    try:
        labfeed.parse(endpoint, value)
    except ValueError:
        pass
    except Exception as exc:                          # noqa: BLE001 - the finding, with its stage
        raise Finding(f"{type(exc).__name__}: {exc}", stage="parse(json.loads(body))") from exc


# ------------------------------------------------------------------ seeds
def _vectors_path():
    here = pathlib.Path(__file__).resolve()
    for p in (here.parent.parent / "tests" / "protocol_vectors.json", pathlib.Path.cwd() / "tests" / "protocol_vectors.json"):
        if p.exists():
            return p
    return None


def seeds(target: str) -> list[bytes]:
    """Valid inputs in each target's input format: the protocol test vectors, valid feed answers."""
    _import_targets()
    out = []
    if target == "protocol":
        vp = _vectors_path()
        vectors = json.loads(vp.read_text())["vectors"] if vp else []
        stream = b"".join(bytes.fromhex(v["frame_hex"]) for v in vectors)
        out.append(b"\x00\x07" + stream)
        for v in vectors:
            out.append(b"\x00\x1f" + bytes.fromhex(v["frame_hex"]))
            out.append(b"\x01\x00" + bytes.fromhex(v["payload_hex"]))
            payload = bytes.fromhex(v["payload_hex"])
            out.append(b"\x02\x05" + bytes([v["msg_type"] - 1, v["board_id"], 1]) + struct.pack("<I", v["seq"])
                       + bytes([len(payload)]) + payload)
        # a keyed session: offer, answer, reports and commands both ways, then replay, reflect,
        # a flipped bit, a reconnect and a second offer
        out.append(b"\x03\x05" + bytes([0, 0, 1, 0, 1, 0, 3, 1, 1, 0, 4, 1, 1, 0, 3, 2, 1, 0, 5, 3, 6, 2, 7, 9,
                                          9, 1, 0, 7, 1, 0, 1, 0, 3, 0, 1, 0, 5, 4, 4, 1, 1, 0]) + bytes(range(40)))
        return out
    for k, endpoint in enumerate(ENDPOINTS):
        for body in _valid_answers(endpoint, random.Random(k)):
            out.append(bytes([k]) + body)
            out.append(bytes([k + 15]) + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        out.append(bytes([k + 15]) + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    return out


def _valid_answers(endpoint, rng):
    if endpoint == "sun":
        vals = [{"tick": rng.randrange(60), "sun": rng.randrange(101)} for _ in range(3)]
    elif endpoint == "price":
        vals = [{"day": rng.randrange(10**7), "tick": rng.randrange(60), "sell_price": rng.randrange(1, 20),
                 "buy_price": rng.randrange(0, 10)} for _ in range(3)]
    elif endpoint == "demand":
        vals = [{"day": rng.randrange(10**7), "tick": rng.randrange(60), "demand": rng.uniform(0, 3)} for _ in range(3)]
    elif endpoint == "deferables":
        vals = [[{"start": rng.randrange(60), "end": rng.randrange(60), "energy": rng.uniform(0, 50)}
                 for _ in range(rng.randrange(4))] for _ in range(3)]
    else:
        vals = [[{"tick": t, "demand": rng.uniform(0, 3), "sell_price": rng.randrange(1, 20),
                  "buy_price": rng.randrange(0, 10)} for t in range(60)]]
    return [json.dumps(v).encode() for v in vals]


# ------------------------------------------------------------------ random engine
_INTERESTING_JSON = ("null", "true", "false", "-0", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 400,
                     "9" * 5000, "0.1e-400", "59.5", "60", "-1", "\"\"", "\"x\"", "[]", "{}", "[" * 2000,
                     "{\"a\":" * 1200, "\"\\ud800\"", "1.0", "1e16", "4294967296")


def _mutate(rng: random.Random, seed: bytes, pool: list[bytes], target: str) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        op = rng.randrange(9)
        n = len(data)
        if op == 0 and n:                         # flip a bit
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                       # set a byte to an interesting value
            data[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0xFE, ord("["), ord("{"), ord('"')))
        elif op == 2:                             # insert random bytes
            i = rng.randrange(n + 1)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and n > 2:                   # delete a run
            i = rng.randrange(1, n)
            del data[i:i + rng.randrange(1, 17)]
        elif op == 4 and n > 2:                   # duplicate a chunk
            i = rng.randrange(1, n)
            j = min(n, i + rng.randrange(1, 33))
            data[i:i] = data[i:j] * rng.randrange(1, 5)
        elif op == 5 and pool:                    # splice with another input
            other = rng.choice(pool)
            i = rng.randrange(1, max(2, n))
            data[i:] = other[rng.randrange(1, max(2, len(other))):]
        elif op == 6 and target == "labfeed" and n > 1:   # a JSON token replaced by a nasty one
            text = bytes(data[1:])
            starts = [k for k, c in enumerate(text) if c in b'0123456789-"tfn[{']
            if starts:
                k = rng.choice(starts)
                end = k + 1
                while end < len(text) and text[end] not in b",]}:":
                    end += 1
                data[1:] = text[:k] + rng.choice(_INTERESTING_JSON).encode() + text[end:]
        elif op == 7 and n:                       # another mode / endpoint / chunking
            data[0] = rng.randrange(256)
        elif op == 8 and target == "labfeed" and n > 1:   # a key dropped or renamed
            text = bytes(data[1:])
            for name in (b'"tick"', b'"day"', b'"sun"', b'"demand"', b'"start"', b'"end"', b'"energy"',
                         b'"sell_price"', b'"buy_price"'):
                if name in text and rng.random() < 0.3:
                    text = text.replace(name, rng.choice((b'"x"', b'"tick"', b'"end"')), 1)
            data[1:] = text
    return bytes(data[:MAX_LEN[target] * 16])


def run_random(campaign: Campaign, targets, runs: int, seconds: float | None, seed: int, log_every: int = 0):
    """Seeded mutation (plus fresh random inputs) over ``targets``, ``runs`` inputs in all."""
    _import_targets()
    rng = random.Random(seed)
    pools = {t: seeds(t) for t in targets}
    per = {t: list(p) for t, p in pools.items()}
    t_end = None if seconds is None else time.monotonic() + seconds
    t0 = time.monotonic()
    done = 0
    while done < runs and (t_end is None or time.monotonic() < t_end):
        target = targets[done % len(targets)]
        r = rng.random()
        if r < 0.1:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        else:
            data = _mutate(rng, rng.choice(per[target]), per[target], target)
        campaign.run_one(target, data)
        if rng.random() < 0.002 and len(per[target]) < 500:
            per[target].append(data)             # keep a few mutants as new seeds
        done += 1
        if log_every and done % log_every == 0:
            el = time.monotonic() - t0
            sys.stderr.write(f"[random] {done} inputs, {done / el:.0f}/s, {len(campaign.findings)} finding group(s)\n")
    return done, time.monotonic() - t0


# ------------------------------------------------------------------ atheris engine
def _atheris_child(target: str, out: pathlib.Path, runs: int, seconds: float | None, extra: list[str],
                   attempt: int = 0):
    """Runs in a child process: libFuzzer exits the process when done, so stats go to a file."""
    import atheris
    _import_targets(instrument=True)
    campaign = Campaign(out, slow_s=2.0)
    stats = out / f"stats-{attempt}.json"
    t0 = time.monotonic()

    def dump():
        s = campaign.summary()
        s["elapsed_s"] = round(time.monotonic() - t0, 2)
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(s, indent=1))
        os.replace(tmp, stats)

    def one(data):
        campaign.run_one(target, data)
        n = campaign.inputs[target]
        if n % 2000 == 0 or n == runs:
            dump()

    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(seeds(target)):
        (corpus / f"seed{k:03d}").write_bytes(s)
    (out / "artifacts").mkdir(exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-runs={runs}", f"-max_len={MAX_LEN[target]}", "-timeout=60",
            "-rss_limit_mb=2048", "-print_final_stats=1", "-len_control=50",
            f"-artifact_prefix={out / 'artifacts'}/"] + extra
    if seconds:
        argv.append(f"-max_total_time={max(1, int(seconds))}")
    atheris.Setup(argv, one)
    dump()
    atheris.Fuzz()


def run_atheris(target: str, out: pathlib.Path, runs: int, seconds: float | None, extra: list[str],
                max_attempts: int = 6) -> dict:
    """One target's libFuzzer campaign, restarted on its corpus when libFuzzer stops early (a
    timeout or an out-of-memory stops the process: the unit is kept under ``artifacts/`` and
    re-timed here without instrumentation, the campaign goes on from the coverage reached)."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    total = {"inputs": {t: 0 for t in TARGETS}, "findings": {}, "stops": [], "slowest_input_s": 0.0}
    cov = ft = None
    attempt = 0
    while attempt < max_attempts:
        left_runs = runs - total["inputs"][target]
        left_s = None if seconds is None else seconds - (time.monotonic() - t_start)
        if left_runs <= 0 or (left_s is not None and left_s < 5):
            break
        cmd = [sys.executable, "-m", "picogrid.tools.fuzz", "--child", target, "--attempt", str(attempt),
               "--out", str(out), "--runs", str(left_runs)] + (["--seconds", str(left_s)] if left_s else []) + ["--"] + extra
        log = out / f"libfuzzer-{attempt}.log"
        with open(log, "w") as logf:
            rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        st_path = out / f"stats-{attempt}.json"
        st = json.loads(st_path.read_text()) if st_path.exists() else {"inputs": {}, "findings": []}
        n = st["inputs"].get(target, 0)
        for line in text.splitlines():
            parts = line.split()
            if "cov:" in parts:
                cov = int(parts[parts.index("cov:") + 1])
            if "ft:" in parts:
                ft = int(parts[parts.index("ft:") + 1])
            if line.startswith("stat::number_of_executed_units:"):
                n = max(n, int(line.split(":")[-1]))
        total["inputs"][target] += n
        total["slowest_input_s"] = max(total["slowest_input_s"], st.get("slowest_input_s", 0.0))
        for f in st["findings"]:
            key = (f["via"], f["exception"], f["where"])
            if key in total["findings"]:
                total["findings"][key]["count"] += f["count"]
            else:
                total["findings"][key] = f
        stop = next((l for l in text.splitlines() if "ERROR: libFuzzer:" in l), None)
        if stop:
            unit = next((l.split("written to ")[-1].strip() for l in text.splitlines() if "Test unit written to" in l), None)
            retimed = None
            if unit and os.path.exists(unit):
                data = pathlib.Path(unit).read_bytes()
                t1 = time.perf_counter()
                try:
                    (fuzz_protocol if target == "protocol" else fuzz_labfeed)(data)
                except Exception:   # noqa: BLE001 - the oracle's verdict was taken in the child
                    pass
                retimed = round(time.perf_counter() - t1, 4)
            total["stops"].append({"attempt": attempt, "error": stop.strip(), "unit": unit,
                                   "uninstrumented_rerun_s": retimed, "inputs_before": n})
        attempt += 1
        if rc == 0 and not stop:
            break
    el = time.monotonic() - t_start
    return {"inputs": total["inputs"], "elapsed_s": round(el, 1), "attempts": attempt,
            "slowest_input_s": total["slowest_input_s"], "libfuzzer_cov": cov, "libfuzzer_ft": ft,
            "libfuzzer_stops": total["stops"], "findings": list(total["findings"].values())}


# ------------------------------------------------------------------ command line
def main(argv=None):
    ap = argparse.ArgumentParser(prog="picogrid fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("atheris", "random"), default=None,
                    help="default: atheris if it imports, else random")
    ap.add_argument("--target", choices=TARGETS + ("all",), default="all")
    ap.add_argument("--runs", type=int, default=500_000, help="inputs per target")
    ap.add_argument("--seconds", type=float, default=None, help="time limit per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="var/fuzz")
    ap.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    ap.add_argument("--attempt", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="after --: libFuzzer options (atheris engine)")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.child:
        return _atheris_child(args.child, out, args.runs, args.seconds, args.extra, args.attempt)
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    targets = TARGETS if args.target == "all" else (args.target,)
    report = {"engine": engine, "command": " ".join(["python -m picogrid.tools.fuzz"] + (argv or sys.argv[1:])),
              "targets": {}}
    status = 0
    results = {}
    if engine == "atheris":      # the targets side by side, one libFuzzer process each
        import threading
        threads = [threading.Thread(target=lambda t=t: results.__setitem__(
            t, run_atheris(t, out / t, args.runs, args.seconds, args.extra))) for t in targets]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for target in targets:
        if engine == "atheris":
            s = results[target]
        else:
            c = Campaign(out / target)
            n, el = run_random(c, (target,), args.runs, args.seconds, args.seed, log_every=100_000)
            s = c.summary()
            s.update(elapsed_s=round(el, 2), peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        n = sum(s.get("inputs", {}).values())
        el = s.get("elapsed_s") or 1.0
        s["rate_per_s"] = round(n / el) if el else None
        report["targets"][target] = s
        print(f"{target}: {n} inputs in {el:.1f} s ({s['rate_per_s']}/s)"
              + (f", libFuzzer cov {s.get('libfuzzer_cov')} ft {s.get('libfuzzer_ft')}" if engine == "atheris" else "")
              + f", {len(s.get('findings', []))} finding group(s)")
        for f in s.get("findings", []):
            status = 1
            print(f"  FINDING [{f['via']}] {f['exception']} at {f['where']} x{f['count']}: {f['message'][:160]}"
                  f" (reproducer {f['reproducer_len']} bytes: {f['reproducer'][:80]}...)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
