"""The vendored MicroPython UF2 on an emulated RP2040, driven by mpremote through its pty (issue 33).

One emulated Pico (hil/rp2040.py: rp2040js under Node, installed on first use with ``npm ci``)
for the module: ``mpremote exec`` runs code on it, ``mpremote fs cp`` puts a file larger than the
emulator's own 512-byte USB buffer on its littlefs (the runner's flash chip and paced host
queue) and reads it back, and ``mpremote reset`` reboots it (the runner's watchdog reset) with the file kept.
Skipped only when node/npm are missing. Every wait is on an event (the runner's "usb:
connected", mpremote's exit) with a generous limit; no wall-clock duration is asserted.
"""

import hashlib
import subprocess
import sys
import time

import pytest

from picogrid.hil import rp2040

MPREMOTE_TIMEOUT_S = 180    # the emulator runs busy code at ~0.4x real time; CI may be loaded
FAULT_TIMEOUT_S = 60        # for a board's event (its part is retried every 2 emulated s)
HW_WATCHDOG_MS = 2000       # hal_rp2040's machine.WDT timeout (board.json's hw_watchdog_ms default)


@pytest.fixture(scope="module")
def pico(tmp_path_factory):
    if rp2040.node_missing_reason():
        pytest.skip(f"no emulated RP2040: {rp2040.node_missing_reason()}")
    board = rp2040.EmulatedPico(flash_state=tmp_path_factory.mktemp("pico") / "flash.bin")
    board.start(timeout=300)
    yield board
    board.stop()


def mpremote(pico, *args):
    run = subprocess.run([sys.executable, "-m", "mpremote", "connect", pico.port, *args],
                         capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S)
    assert run.returncode == 0, f"mpremote {' '.join(args)}: {run.stdout}{run.stderr}"
    return run.stdout


def test_the_vendored_firmware_matches_its_readme():
    readme = (rp2040.FIRMWARE_UF2.parent / "README.md").read_text()
    digest = hashlib.sha256(rp2040.FIRMWARE_UF2.read_bytes()).hexdigest()
    assert digest in readme
    for licence in ("micropython-MIT", "pico-sdk-BSD-3-Clause", "tinyusb-MIT",
                    "mbedtls-Apache-2.0", "micropython-lib-MIT"):
        assert (rp2040.FIRMWARE_UF2.parent / "LICENSES" / f"{licence}.txt").stat().st_size > 0


def test_mpremote_exec_runs_on_the_emulated_rp2040(pico):
    out = mpremote(pico, "exec", "import sys; print(1+1, sys.implementation._machine, sys.version)")
    assert out.split()[0] == "2"
    assert "RP2040" in out
    assert "1.28.0" in out


def test_fs_cp_round_trip_beyond_the_usb_buffer(pico, tmp_path):
    payload = bytes((i * 7 + 3) % 251 for i in range(5000))     # ~10x the 512-byte CDC buffer
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    mpremote(pico, "fs", "cp", str(src), ":blob.bin")
    back = tmp_path / "back.bin"
    mpremote(pico, "fs", "cp", ":blob.bin", str(back))
    assert back.read_bytes() == payload
    listing = mpremote(pico, "fs", "ls")
    assert f"{len(payload)} blob.bin" in listing


def test_a_reset_reboots_the_chip_and_keeps_the_filesystem(pico):
    mpremote(pico, "exec", "open('kept.txt', 'w').write('still here')")
    boots = pico.boots
    mpremote(pico, "reset")     # machine.reset() without waiting for an answer, as on a real Pico
    assert pico.wait_boot(boots + 1, timeout=MPREMOTE_TIMEOUT_S), pico.reboot_reasons
    assert pico.reboot_reasons[-1].startswith("watchdog")
    out = mpremote(pico, "exec", "import machine; print(open('kept.txt').read(), "
                                 "machine.reset_cause() == machine.WDT_RESET)")
    assert out.split() == ["still", "here", "True"]


def test_picogrid_flash_installs_the_firmware_on_an_emulated_pico(tmp_path):
    """``picogrid flash`` against the emulated chip (issue 33, points 3 and 6): mpremote copies
    every module and board.json and resets the board, main.py starts, and with no INA219
    answering on I2C the board still says HELLO (``picogrid flash`` verifies it), then tells
    the edge (a real Fleet on a SerialLink) what failed, keeps answering with its hardware
    watchdog armed and fed, clears the fault when the part answers, and reports a part answering
    garbage, at run time and at boot."""
    if rp2040.node_missing_reason():
        pytest.skip(f"no emulated RP2040: {rp2040.node_missing_reason()}")
    from picogrid.edge.boards.fleet import Fleet
    from picogrid.edge.boards.links import SerialLink
    from picogrid.firmware import protocol as P
    from picogrid.tools import flash

    with rp2040.EmulatedPico(flash_state=tmp_path / "flash.bin", uid="e660583883724a33") as board:
        run = subprocess.run([sys.executable, "-m", "picogrid", "flash", "--board", "load1",
                              "--port", board.port, "--build-dir", str(tmp_path / "build")],
                             capture_output=True, text=True, timeout=2 * MPREMOTE_TIMEOUT_S)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "# verified: load1 answers HELLO" in run.stdout
        assert board.reboot_reasons[-1].startswith("watchdog (forced)")    # mpremote's reset
        boots = board.boots

        fleet = Fleet({"load1": 4})
        link = SerialLink("load1", board.port, fleet.on_frame)
        fleet.attach("load1", link)
        events = []

        def wait_event(kind, detail, timeout_s=FAULT_TIMEOUT_S, since=0.0):
            """Ask for HELLOs every second until ``kind`` with ``detail`` arrives after ``since``."""
            deadline = time.time() + timeout_s
            while time.time() < deadline:
                fleet.request_hello()
                time.sleep(1.0)
                events.extend(fleet.drain_events())
                if any(e[2] == kind and e[3] == detail and e[0] >= since for e in events):
                    return True
            return False

        try:
            # no INA219 at boot: a HELLO and the fault, and HELLOs go on being answered
            assert wait_event("peripheral_fault", "ina219@0x40: EIO"), events
            # past twice its hardware watchdog's time (emulated), still answering: it is fed
            deadline = time.time() + FAULT_TIMEOUT_S
            while time.time() < deadline and fleet.snapshot()["load1"]["telemetry"]["t_ms"] < 2 * HW_WATCHDOG_MS:
                time.sleep(0.5)
            t = time.time()
            assert wait_event("hello", "load1 fw 0.2.0", since=t), events
            tel = fleet.snapshot()["load1"]["telemetry"]
            assert tel["flags"] & P.FLAG_FAULT and tel["flags"] & P.FLAG_FAILSAFE, tel
            assert tel["t_ms"] > 2 * HW_WATCHDOG_MS, tel
            assert board.boots == boots, board.reboot_reasons
            # the part answers: the fault clears
            t = time.time()
            board.set_ina219("ok")
            assert wait_event("peripheral_ok", "ina219@0x40: ok", since=t), events
            # the part answers garbage while the board runs (the once-a-second register check)
            t = time.time()
            board.set_ina219("garbage")
            assert wait_event("peripheral_fault", "ina219@0x40: config reads 0xffff", since=t), events
            # ... and at boot
            t = time.time()
            board.press_reset()
            assert wait_event("peripheral_fault", "ina219@0x40: config reads 0xffff", since=t), events
            assert [r for r in board.reboot_reasons if r.startswith("watchdog (timer)")] == []
        finally:
            link.close()
        board.press_reset(bootsel=True)     # main.py returns to the REPL: the board is free again
        listing = mpremote(board, "fs", "ls")
        for src in flash.firmware_modules():
            name = "main.py" if src.name == "main.py" else src.stem + ".mpy"
            assert f" {name}\n" in listing, listing
        assert " board.json\n" in listing
        config = mpremote(board, "exec", "import json; c = json.load(open('board.json')); "
                                         "print(c['name'], c['hal'])")
        assert config.split() == ["load1", "rp2040"]
