"""A short run of the fuzz campaign (tools/fuzz.py, docs/fuzzing.md) and its regressions.

The campaign itself (>= 10^6 inputs, coverage-guided with atheris) is run by hand:
``python -m picogrid.tools.fuzz``. Here the seeded mutator runs 2,000 inputs per target in a
few seconds, deterministically, and must find nothing; the campaign's findings (F1, F2, fixed
in 8558d7e) are pinned as regressions below.
"""

import math

import pytest

from picogrid.tools import fuzz


def test_a_short_random_campaign_finds_nothing_on_the_decoder(tmp_path):
    c = fuzz.Campaign(tmp_path, slow_s=30.0)
    n, _ = fuzz.run_random(c, ("protocol",), 2000, None, seed=7)
    assert n == 2000 and c.inputs["protocol"] == 2000
    assert not c.findings, c.summary()["findings"]


def test_a_short_random_campaign_finds_nothing_on_the_feed_client(tmp_path):
    c = fuzz.Campaign(tmp_path, slow_s=30.0)
    n, _ = fuzz.run_random(c, ("labfeed",), 2000, None, seed=7)
    assert n == 2000 and c.inputs["labfeed"] == 2000
    assert not c.findings, c.summary()["findings"]


def test_the_oracle_sees_an_undocumented_exception(tmp_path, monkeypatch):
    """The harness is not blind: a decoder that raises on wire data is a finding."""
    c = fuzz.Campaign(tmp_path)
    fuzz._import_targets()

    def broken(self, data):
        raise IndexError("boom")

    monkeypatch.setattr(fuzz.P.Decoder, "feed", broken)
    c.run_one("protocol", b"\x00\x01\x02\x00")
    (f,) = c.findings.values()
    assert f["exception"] == "IndexError" and f["via"] == "raw stream to Decoder"
    assert (tmp_path / "findings").is_dir() and any((tmp_path / "findings").iterdir())


def test_seeds_are_valid_inputs():
    """The protocol seeds decode to frames (the test vectors) and the feed seeds parse."""
    fuzz._import_targets()
    dec = fuzz.P.Decoder()
    frames = dec.feed(fuzz.seeds("protocol")[0][2:])
    assert frames and dec.crc_errors == dec.framing_errors == 0
    for s in fuzz.seeds("labfeed"):
        if (s[0] // 5) % 5 == 0:
            fuzz.labfeed.parse(fuzz.ENDPOINTS[s[0] % 5], __import__("json").loads(s[1:]))


# ---------------------------------------------------------------- the campaign's findings
def test_huge_nesting_and_numbers_over_the_wire_are_lab_feed_errors(tmp_path):
    """Issue 27's bodies (100,000 '[', a 400-digit integer): LabFeedError, nothing else."""
    fuzz._import_targets()
    for body in (b"[" * 100_000, b'{"tick": 1, "sun": 1' + b"0" * 400 + b"}", b"[" * 5000 + b"]" * 5000):
        fuzz._ANSWER[0] = fuzz.http_answer(body)
        feed = fuzz.labfeed.LabFeed("http://fuzz.invalid:8080", timeout_s=5.0, clock=lambda: 1e6)
        with fuzz._fake_transport(), pytest.raises(fuzz.labfeed.LabFeedError):
            feed.get("sun")


def _nested(depth):
    v = []
    for _ in range(depth):
        v = [v]
    return v


def test_parse_of_a_structure_past_the_recursion_limit_is_a_value_error():
    """Finding F1 (fixed in 8558d7e): parse() put the payload's repr in its message, and a
    structure past the recursion limit raised RecursionError instead of ValueError."""
    with pytest.raises(ValueError):
        fuzz._import_targets()
        fuzz.labfeed.parse("sun", _nested(5000))


@pytest.mark.parametrize("endpoint, payload", [
    ("sun", {"tick": 0, "sun": 10 ** 400}),
    ("price", {"day": 10 ** 400, "tick": 0, "sell_price": 1, "buy_price": 1}),
    ("deferables", [{"start": 10 ** 400, "end": 1, "energy": 1}]),
])
def test_parse_of_an_int_past_the_float_range_is_a_value_error(endpoint, payload):
    """Finding F2 (fixed in 8558d7e): math.isfinite/float of an int past the float range raised
    OverflowError instead of ValueError."""
    fuzz._import_targets()
    with pytest.raises(ValueError):
        fuzz.labfeed.parse(endpoint, payload)


def test_unpack_round_trip_holds_on_the_test_vectors():
    """What unpack_* accepts packs back to the same bytes (the campaign's round-trip oracle)."""
    fuzz._import_targets()
    for s in fuzz.seeds("protocol"):
        if s[0] == 1:
            fuzz._unpack_all(s[2:])
    assert math.isfinite(fuzz.P.unpack_setpoint(fuzz.P.pack_setpoint(1, 0, 2.5))[2])


def test_the_session_conversation_opens_a_session_and_sees_a_replay(monkeypatch):
    """The keyed-link harness (protocol v2) gets frames accepted both ways, and a decoder that
    forgot its replay window would be caught by its at-most-once oracle."""
    fuzz._import_targets()
    P = fuzz.P
    script = fuzz.seeds("protocol")[-1]
    accepted = []
    feed = P.Decoder.feed

    def counting(self, data):
        frames = feed(self, data)
        accepted.extend((self.side, f[0]) for f in frames)
        return frames

    monkeypatch.setattr(P.Decoder, "feed", counting)
    fuzz._conversation(script)
    assert (P.SIDE_EDGE, P.MSG_TELEMETRY) in accepted and (P.SIDE_BOARD, P.MSG_SETPOINT) in accepted
    # replay a board frame at the edge with the window check disabled: a finding
    monkeypatch.setattr(P.Decoder, "feed", feed)
    frame = P.Decoder._frame

    def forgetful(self, n):
        self._last_seq = -1
        return frame(self, n)

    monkeypatch.setattr(P.Decoder, "_frame", forgetful)
    with pytest.raises(fuzz.Finding, match="accepted twice"):
        fuzz._conversation(script)


def test_fuzzing_the_feed_leaves_the_real_transport_in_place():
    """The feed target answers from a stand-in socket only while it runs an input: after it,
    ``socket.create_connection`` is the real one again (it once stayed replaced, and every later
    test of the process that opened a real connection failed)."""
    import socket

    from picogrid.tools import fuzz

    real = socket.create_connection
    fuzz.fuzz_labfeed(b"\x00{\"tick\": 1, \"sun\": 50}")
    assert socket.create_connection is real
