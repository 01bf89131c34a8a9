"""An emulated Raspberry Pi Pico whose USB serial is a pseudo-terminal (issue 33, point 2).

:class:`EmulatedPico` runs ``tools/rp2040/emulator/pico.mjs`` (rp2040js 1.4.1, pinned by that
folder's ``package.json``/``package-lock.json``) under Node: the chip boots the vendored
MicroPython UF2 (``tools/rp2040/firmware/``) with the B1 bootrom, and this class bridges the
chip's USB CDC serial, which the runner carries on its stdin/stdout, to the master side of a
pty. ``.port`` is the slave side (``/dev/pts/N``): ``mpremote connect <port> ...`` and pyserial
open it as they open a real Pico's ``/dev/ttyACM0``.

rp2040js is installed on first use with ``npm ci`` into ``build/rp2040js/`` (ignored by git;
the Makefile's setup does not install it yet). The runner's fixes for the emulator's gaps
(flash writes, the 512-byte host-to-device buffer, watchdog reboots, idle time at wall speed)
are described at the top of ``pico.mjs`` and in ``docs/rp2040.md``.

Usage::

    with EmulatedPico() as pico:          # waits until the board's USB is up
        subprocess.run(["mpremote", "connect", pico.port, "exec", "print(1+1)"])
"""

import logging
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tty

log = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parent.parent
EMULATOR_DIR = ROOT / "tools" / "rp2040" / "emulator"
RUNNER = EMULATOR_DIR / "pico.mjs"
FIRMWARE_UF2 = ROOT / "tools" / "rp2040" / "firmware" / "RPI_PICO-v1.28.0.uf2"
NODE_DIR = ROOT / "build" / "rp2040js"     # npm ci installs rp2040js here (git ignores build/)
_STAMP = NODE_DIR / ".installed"
_install_lock = threading.Lock()


class EmulatorUnavailable(RuntimeError):
    """Node or npm is missing, or rp2040js could not be installed."""


def node_missing_reason():
    """Why an emulated Pico cannot start here (None when node and npm are there)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install nodejs npm)"
    return None


def ensure_rp2040js():
    """Install the pinned rp2040js into ``build/rp2040js/node_modules`` once (``npm ci``)."""
    reason = node_missing_reason()
    if reason:
        raise EmulatorUnavailable(reason)
    with _install_lock:
        lock = (EMULATOR_DIR / "package-lock.json").read_bytes()
        if _STAMP.exists() and _STAMP.read_bytes() == lock:
            return NODE_DIR / "node_modules"
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(EMULATOR_DIR / name, NODE_DIR / name)
        run = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                             cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
        if run.returncode:
            raise EmulatorUnavailable(f"npm ci for rp2040js failed: {run.stderr.strip()[-2000:]}")
        _STAMP.write_bytes(lock)
        log.info("rp2040js installed in %s", NODE_DIR)
    return NODE_DIR / "node_modules"


class EmulatedPico:
    """One emulated Pico: ``start()`` boots it and returns when USB is up; ``.port`` is its pty.

    ``uid`` (8 bytes as 16 hex digits) is the flash chip's unique id, so the board's
    ``machine.unique_id()`` and USB serial number; ``flash_state`` a file that keeps the 2 MB
    flash (firmware and littlefs) across runs, loaded instead of the UF2 when it exists.
    """

    def __init__(self, uf2=FIRMWARE_UF2, uid="e660583883724a32", flash_state=None,
                 speed=1.0, name="pico", ina219="absent"):
        self.uf2 = pathlib.Path(uf2)
        self.uid = uid
        self.flash_state = pathlib.Path(flash_state) if flash_state else None
        self.speed = speed
        self.name = name
        self.ina219 = ina219        # the INA219s on I2C0: "absent", "garbage" or "ok" (the runner's --ina219)
        self._ina219_file = None
        self.port = None
        self.proc = None
        self.boots = 0              # "usb: connected" lines seen (power on and each reboot)
        self.reboot_reasons = []
        self._master = self._slave = None
        self._threads = []
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._stderr_tail = []

    # -- life cycle ------------------------------------------------------------------------
    def start(self, timeout=120.0):
        """Start the emulator and wait (on its own report, not a fixed delay) for USB to be up."""
        modules = ensure_rp2040js()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)          # no echo, no line discipline: a serial port's bytes
        self.port = os.ttyname(self._slave)
        cmd = [shutil.which("node"), str(RUNNER), "--modules", str(modules), "--uid", self.uid,
               "--speed", str(self.speed), "--ina219", self.ina219]
        fd, self._ina219_file = tempfile.mkstemp(prefix=f"{self.name}-ina219-")
        os.close(fd)
        cmd += ["--ina219-file", self._ina219_file]
        if self.uf2 and (self.flash_state is None or not self.flash_state.exists()):
            cmd += ["--uf2", str(self.uf2)]
        if self.flash_state:
            cmd += ["--flash-state", str(self.flash_state)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "picogrid.hil.child"] + cmd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            bufsize=0, cwd=ROOT)
        for target in (self._to_device, self._from_device, self._read_stderr):
            t = threading.Thread(target=target, name=f"{self.name}-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        if not self.wait_boot(1, timeout):
            tail = "".join(self._stderr_tail[-20:])
            exited = self.proc.poll()
            self.stop()
            why = f"the runner exited ({exited})" if exited is not None else f"not within {timeout} s"
            raise TimeoutError(f"{self.name}: USB did not come up: {why}\n{tail}")
        return self

    def wait_boot(self, count, timeout):
        """Wait until the board has enumerated on USB ``count`` times (1: power on)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.boots >= count or self.proc.poll() is not None, timeout
            ) and self.boots >= count

    def press_reset(self, bootsel=False, timeout=120.0):
        """The RESET button (with BOOTSEL held through the first 1.5 s if ``bootsel``): the chip
        reboots with its flash kept; returns when its USB is up again."""
        import signal

        boots = self.boots
        self.proc.send_signal(signal.SIGUSR1 if bootsel else signal.SIGUSR2)
        if not self.wait_boot(boots + 1, timeout):
            raise TimeoutError(f"{self.name}: no USB after the reset button within {timeout} s")

    def set_ina219(self, state):
        """Change the INA219s' state while the board runs ("absent", "garbage", "ok"): as
        unplugging, breaking or mending the parts. The runner takes it on SIGHUP."""
        import signal

        pathlib.Path(self._ina219_file).write_text(state)
        self.ina219 = state
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        self._stopping.set()
        if self._ina219_file:
            try:
                os.unlink(self._ina219_file)
            except OSError:
                pass
            self._ina219_file = None
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()     # the runner saves its flash state and exits
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        for t in self._threads:
            t.join(timeout=2)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- the bridge --------------------------------------------------------------------------
    def _to_device(self):
        """pty master -> the runner's stdin (host to device; the runner queues and paces it)."""
        while not self._stopping.is_set():
            r, _, _ = select.select([self._master], [], [], 0.2)
            if not r:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                time.sleep(0.05)    # no process has the slave open: nothing to read
                continue
            try:
                self.proc.stdin.write(data)
            except (BrokenPipeError, ValueError, OSError):
                return

    def _from_device(self):
        """The runner's stdout -> pty master (device to host). While no program has the port
        open, the pty keeps up to its buffer's worth; past 2 s of a full buffer, data is dropped,
        as a serial port nobody reads loses it."""
        out = self.proc.stdout
        while True:
            try:
                data = out.read(4096)
            except (OSError, ValueError):
                return
            if not data:
                return
            while data and not self._stopping.is_set():
                _, w, _ = select.select([], [self._master], [], 2.0)
                if not w:
                    break
                try:
                    n = os.write(self._master, data)
                except OSError:
                    break
                data = data[n:]

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            self._stderr_tail = (self._stderr_tail + [line])[-50:]
            log.debug("%s: %s", self.name, line.rstrip())
            with self._cond:
                if line.startswith("usb: connected"):
                    self.boots += 1
                elif line.startswith("reboot: "):
                    self.reboot_reasons.append(line[8:].strip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()


def main(argv=None):
    """``picogrid pico``: start one emulated Pico, print its port, run until Ctrl-C or SIGTERM."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="picogrid pico", description=main.__doc__.split(":", 1)[1].strip())
    ap.add_argument("--uf2", default=str(FIRMWARE_UF2), help="firmware (default: the vendored MicroPython v1.28.0)")
    ap.add_argument("--uid", default="e660583883724a32", help="the flash chip's unique id, 16 hex digits")
    ap.add_argument("--flash-state", help="file that keeps the board's 2 MB flash across runs")
    ap.add_argument("--link", help="also make this path a symlink to the port (e.g. build/ttyPICO0)")
    ap.add_argument("--ina219", choices=("absent", "garbage", "ok"), default="absent",
                    help="the INA219s at 0x40/0x41 on I2C0: absent (default), answering garbage, or sane")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the runner's lines")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    pico = EmulatedPico(uf2=args.uf2, uid=args.uid, flash_state=args.flash_state, ina219=args.ina219)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        pico.start()
    except (EmulatorUnavailable, TimeoutError) as exc:
        sys.stderr.write(f"picogrid pico: {exc}\n")
        return 2
    link = pathlib.Path(args.link) if args.link else None
    if link:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(pico.port)
    sys.stdout.write(f"{pico.port}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5) and pico.proc.poll() is None:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        pico.stop()
        if link and link.is_symlink():
            link.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
