"""Figures for docs/rp2040.md: boot to USB, mpremote exec, fs cp, busy-code speed.

Run: .venv/bin/python tools/rp2040/measure.py
"""
import os, subprocess, sys, tempfile, time
from picogrid.hil.rp2040 import EmulatedPico
def mp(port, *a):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *a], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - t, r.stdout
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with EmulatedPico(flash_state=os.path.join(d, "f.bin")) as p:
        print("power on -> USB up: %.2f s wall" % (time.perf_counter() - t))
        print("mpremote exec print(1+1): %.2f s wall" % mp(p.port, "exec", "print(1+1)")[0])
        for size in (5000, 50000):
            src = os.path.join(d, "b"); open(src, "wb").write(os.urandom(size))
            w = mp(p.port, "fs", "cp", src, ":b")[0]
            r = mp(p.port, "fs", "cp", ":b", src + ".back")[0]
            assert open(src, "rb").read() == open(src + ".back", "rb").read()
            print("fs cp %d B: to board %.2f s, back %.2f s wall" % (size, w, r))
        code = "import time\nt=time.ticks_us()\nx=0\nfor i in range(20000): x+=i\nprint(time.ticks_diff(time.ticks_us(),t))"
        wall, out = mp(p.port, "exec", code)
        base, _ = mp(p.port, "exec", "pass")
        emu_us = int(out.split()[-1])
        print("busy loop: %d emulated us in %.2f s wall (mpremote overhead %.2f s): %.2f emulated us per wall us"
              % (emu_us, wall, base, emu_us / ((wall - base) * 1e6)))
