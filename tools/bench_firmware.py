"""``picogrid bench firmware``: cost of one control iteration per role, MicroPython unix port.

Runs the real firmware (roles.py, control.py, the HAL's duty computation, the board's energy
metering) under the ``micropython`` command on this machine and reports microseconds per
control iteration for each role, plus the cost of one telemetry frame (encode, every 250 ms)
and one setpoint (decode + apply). The same script runs unchanged on a Pico:
``picogrid bench firmware --script-out loop_cost.py`` then ``mpremote run loop_cost.py`` with
the firmware copied to the board; do that to replace the estimate below with a measurement.

Headroom on an RP2040 for a 1 kHz loop (1000 us budget) is ESTIMATED from the x86 figure with
``RP2040_SLOWDOWN``: an assumption, not a measurement. Its basis: clock 125 MHz vs ~3 GHz
(~25x), and a Cortex-M0+ (ARMv6-M, Arm's Cortex-M0+ technical reference) has no FPU, so every
float operation of this float-heavy code is a software routine: we assume ~4x on top, ~100x in
all. Both factors are our estimate; measure on a board with the script to replace it.
Figures are best-of-5 so that a busy host inflates them less.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

from picogrid.hil.bench import FIRMWARE_DIR, micropython_command

RP2040_SLOWDOWN = 100.0          # assumed RP2040 / x86-unix-port time ratio, see docstring
LOOP_BUDGET_US = 1000.0          # 1 kHz inner loop (docs/design.md §2)

SCRIPT = r'''
# PicoGrid loop-cost benchmark: runs under MicroPython (unix port or a Pico) with firmware/ on the path.
import time
import config
import roles
import protocol as P

N = 2000
RANGES = {"pv": [0.0, 1.0], "storage": [-2.0, 2.0], "grid": [-2.0, 2.0]}
MEAS = {"pv": (4.55, 0.85, 7.0, 0.52), "storage": (9.0, 0.1, 7.0, 0.12), "grid": (12.0, 0.1, 7.0, 0.16),
        "load1": (3.6, 0.2, 7.0, -0.1), "load2": (3.6, 0.1, 7.0, -0.05), "load3": (3.6, 0.1, 7.0, -0.05)}


def duty_for(i, lo, hi):
    d = int((i - lo) / (hi - lo) * 65535 + 0.5)
    return 0 if d < 0 else 65535 if d > 65535 else d


def one(role_name):
    return min(one_run(role_name) for _ in range(5))


def one_run(role_name):
    rng = RANGES.get(role_name, [0.0, 0.4])
    cfg = config.validate({"board_id": 1, "role": role_name, "hal": "sim", "current_range_a": rng,
                           "priority": "critical" if role_name == "load1" else "normal"})
    role = roles.make(cfg)
    role.setpoint(0, 7.0 if role_name == "grid" else 0.5)
    m = list(MEAS[role_name])
    lo, hi = rng
    energy = 0.0
    t = time.ticks_us()
    for k in range(N):
        # the body of board.control_loop: metering, role step, duty
        m[2] = 7.0 + (k & 7) * 0.001          # vary the bus a little so branches stay live
        energy += m[2] * m[3] * 0.001
        i = role.step(m[0], m[1], m[2], m[3], 0.001)
        duty_for(i, lo, hi)
    return time.ticks_diff(time.ticks_us(), t) / N


def codec():
    key = bytes(range(32))
    t = time.ticks_us()
    for k in range(500):
        P.encode_frame(P.MSG_TELEMETRY, 1, k + 1, P.pack_telemetry(k, 7.0, 5.0, 0.5, 2.5, 2.6, 1.0, 2.5, 0))
    tele = time.ticks_diff(time.ticks_us(), t) / 500
    # a keyed board's session (PROTOCOL.md section 6): its offer, the edge's SESSION under the
    # board key, then setpoints under the session key, each marked edge -> board
    dec = P.Decoder(key=key, side=P.SIDE_BOARD)
    dec.offer(1)
    dec.feed(P.encode_frame(P.MSG_SESSION, 1, 1, P.pack_session(1, 2), key, P.FRAME_FLAG_TO_BOARD))
    skey, flags = P.session_key(key, 1, 2), P.FRAME_FLAG_TO_BOARD | P.FRAME_FLAG_SESSION
    frames = [P.encode_frame(P.MSG_SETPOINT, 1, k + 2, P.pack_setpoint(k, 0, 0.5), skey, flags) for k in range(200)]
    t = time.ticks_us()
    n = 0
    for f in frames:
        for fr in dec.feed(f):
            P.unpack_setpoint(fr[3])
            n += 1
    sp = time.ticks_diff(time.ticks_us(), t) / 200
    if n != 200:
        raise RuntimeError("decoded %d of 200 setpoints" % n)
    return tele, sp


for name in ("pv", "storage", "grid", "load1", "load2", "load3"):
    print("role %s %.2f" % (name, one(name)))
tele, sp = codec()
print("telemetry_encode %.2f" % tele)
print("setpoint_decode_hmac %.2f" % sp)
'''


def run_script():
    """Run the benchmark under the MicroPython unix port; returns dict name -> us."""
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "loop_cost.py"
        path.write_text(SCRIPT)
        env = dict(os.environ, MICROPYPATH=".frozen:" + str(FIRMWARE_DIR))
        run = subprocess.run([micropython_command(), str(path)], env=env, capture_output=True,
                             text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError("loop-cost script failed: " + run.stderr)
    out = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        out[" ".join(parts[:-1])] = float(parts[-1])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="picogrid bench firmware")
    ap.add_argument("--script-out", help="write the MicroPython benchmark script here (to run on a Pico) and exit")
    args = ap.parse_args(argv)
    if args.script_out:
        pathlib.Path(args.script_out).write_text(SCRIPT)
        return 0
    res = run_script()
    w = sys.stdout.write
    w("control iteration cost, MicroPython unix port on this machine (%s)\n" % micropython_command())
    w("%-8s %12s %22s %16s\n" % ("role", "x86 [us]", "RP2040 est. [us] (x%g)" % RP2040_SLOWDOWN, "1 kHz headroom"))
    for k, us in res.items():
        if k.startswith("role "):
            est = us * RP2040_SLOWDOWN
            w("%-8s %12.2f %22.0f %15.0f%%\n" % (k[5:], us, est, 100 * (1 - est / LOOP_BUDGET_US)))
    w("telemetry frame encode: %.1f us x86 (every 250 ms); authenticated setpoint decode+unpack: %.1f us x86\n"
      % (res["telemetry_encode"], res["setpoint_decode_hmac"]))
    w("RP2040 figures are estimates (assumed slowdown x%g, see tools/bench_firmware.py); I/O not included:\n"
      "two INA219 reads at 400 kHz I2C (~2 x 4 bytes + addressing, ~0.2 ms) and two ADC reads come on top.\n"
      % RP2040_SLOWDOWN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
